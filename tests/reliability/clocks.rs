//! Relay hosts whose clocks disagree: leases are judged on the database's clock, so a relay whose clock runs
//! behind does not write leases the others take for expired.

use std::time::Duration;

use outbox::EventEnvelope;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;

use crate::child::{Faults, RelayProcess, Sink, postgres_url};
use crate::crashes::drain;
use crate::ledger::{Ledger, serial};

/// libfaketime, which `.ci/run` installs (Debian's `faketime` package).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_clock_runs_behind_never_shares_an_event_with_another() {
    let _serial = serial().await;
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: install Debian's `faketime` package (.ci/run does)"
    );
    let t = TestDb::new(Backend::Postgres).await;
    let sink = Sink::create(&t).await;
    let mut ledger = Ledger::default();
    let keys: Vec<(String, u32)> = (1..=40)
        .flat_map(|seq| (0..50).map(move |a| (format!("agg-{a}"), seq)))
        .collect();
    t.outbox
        .add_events(
            &t.db,
            keys.iter().map(|(a, s)| EventEnvelope::new(opened(a, *s))),
        )
        .await
        .unwrap();
    ledger.committed.extend(keys);
    let url = postgres_url();
    // Its clock 20 s behind: by its own clock, every lease it writes (2 s) has expired 18 s ago.
    let behind = RelayProcess::spawn_with(
        &url,
        &t,
        &sink,
        Faults::default(),
        &[("LD_PRELOAD", FAKETIME), ("FAKETIME", "-20")],
    );
    let on_time = RelayProcess::spawn(&t, &sink, Faults::default());
    let tally = drain(&t, &sink, &ledger).await;
    sink.check(
        &t,
        &tally,
        "9. relay hosts whose clocks disagree",
        "two relay processes on one backlog, one with its clock 20 s behind (libfaketime; leases of 2 s)",
        0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    sink.tear_down(t, [behind, on_time]).await;
}
