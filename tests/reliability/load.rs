//! Writers at full speed with a relay process running: its memory stays flat and the backlog drains.

use std::time::{Duration, Instant};

use outbox_tests::backend::{Backend, TestDb};

use crate::child::{Faults, RelayProcess, Sink};
use crate::crashes::drain_within;
use crate::ledger::{serial, soak};
use crate::writers::{Plan, Writers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_speed_writers_keep_the_relay_memory_flat() {
    let _serial = serial().await;
    let run = if soak() {
        Duration::from_secs(30 * 60)
    } else {
        Duration::from_secs(60)
    };
    let t = TestDb::new(Backend::Postgres).await;
    let sink = Sink::create(&t).await;
    let relay = RelayProcess::spawn(&t, &sink, Faults::default());
    let writers = Writers::start(
        &t,
        Plan {
            writers: 1,
            aggregates: 100,
            events_per_transaction: 20,
            pause: Duration::ZERO,
        },
    );
    // Resident memory sampled every second: the first quarter of the run against the last.
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < run {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(relay.memory_kib().0);
    }
    let ledger = writers.stop().await;
    let backlog = t.outbox.count_unpublished(&t.db).await.unwrap();
    let drain_started = Instant::now();
    // The relay child publishes one sink INSERT per event, a few thousand per second here: allow for that.
    let allowed = Duration::from_secs(60 + backlog / 500);
    let tally = drain_within(&t, &sink, &ledger, allowed).await;
    let drained_in = drain_started.elapsed();
    let (_, peak) = relay.memory_kib();
    let quarter = samples.len() / 4;
    let early = samples[..quarter].iter().max().copied().unwrap_or(0);
    let late = samples[samples.len() - quarter..]
        .iter()
        .max()
        .copied()
        .unwrap_or(0);
    let mib = |kib: u64| kib as f64 / 1024.0;
    sink.check(
        &t,
        &tally,
        "7. load: writers at full speed",
        &format!(
            "one writer, {} s of 20-event transactions at full speed ({:.0} events/s committed); relay RSS {:.1} MiB in the first \
             quarter, {:.1} MiB in the last, peak {:.1} MiB; backlog {backlog} at the end, drained in {:.1} s",
            run.as_secs(),
            tally.written as f64 / run.as_secs_f64(),
            mib(early),
            mib(late),
            mib(peak),
            drained_in.as_secs_f64()
        ),
        0,
    )
    .await;
    // Flat: the last quarter within 25% (and 8 MiB of allocator slack) of the first.
    assert!(
        late <= early + early / 4 + 8 * 1024,
        "the relay's memory grew from {early} KiB to {late} KiB"
    );
    sink.tear_down(t, [relay]).await;
}
