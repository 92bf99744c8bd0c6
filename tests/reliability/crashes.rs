//! Relay processes killed (SIGKILL) or stopped (SIGTERM) while writers run.

use std::time::Duration;

use outbox_tests::backend::{Backend, TestDb};

use crate::child::{Faults, RelayProcess, Sink};
use crate::ledger::{Ledger, Tally, serial, soak};
use crate::writers::{Plan, Writers};

/// The child relay's batch size: the most events one killed relay can leave published but unmarked.
pub const CHILD_BATCH: usize = 50;

/// A pause drawn uniformly from `[low, high)` milliseconds: kills land at random points of the relay's work.
pub fn random_pause(low: u64, high: u64) -> Duration {
    Duration::from_millis(fastrand::u64(low..high))
}

/// Waits until every committed event arrived (two minutes at most), then counts.
pub async fn drain(t: &TestDb, sink: &Sink, ledger: &Ledger) -> Tally {
    drain_within(t, sink, ledger, Duration::from_secs(120)).await
}

pub async fn drain_within(t: &TestDb, sink: &Sink, ledger: &Ledger, within: Duration) -> Tally {
    sink.wait_for(t, ledger.committed.len(), within).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let tally = ledger.tally(sink.arrivals(t).await);
        // The count above may include events of uncertain commits: wait for the committed ones themselves.
        if tally.missing.is_empty() || tokio::time::Instant::now() > deadline {
            return tally;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two writers committing 10-event transactions every few milliseconds.
pub fn steady_writers(aggregates: u32) -> Plan {
    Plan {
        writers: 2,
        aggregates,
        events_per_transaction: 10,
        pause: Duration::from_millis(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_at_random_points_loses_nothing() {
    let _serial = serial().await;
    let kills = if soak() { 20 } else { 3 };
    let t = TestDb::new(Backend::Postgres).await;
    let sink = Sink::create(&t).await;
    let writers = Writers::start(&t, steady_writers(100));
    let mut relay = RelayProcess::spawn(&t, &sink, Faults::default());
    for _ in 0..kills {
        tokio::time::sleep(random_pause(300, 1500)).await;
        relay.kill();
        relay = RelayProcess::spawn(&t, &sink, Faults::default());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = writers.stop().await;
    let tally = drain(&t, &sink, &ledger).await;
    sink.check(
        &t,
        &tally,
        "1. relay process SIGKILLed while writers run",
        &format!("{kills} SIGKILLs at random points, relay restarted after each"),
        kills * CHILD_BATCH,
    )
    .await;
    sink.tear_down(t, [relay]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_relay_processes_two_killed_repeatedly_with_failures() {
    four_processes_two_killed(
        Backend::Postgres,
        &[],
        "4. four relay processes, two SIGKILLed in turn",
        "",
        1,
    )
    .await;
}

/// The same four processes under the commit-order cursor: the killed relays' partitions are taken over when their
/// leases end, and the relays rebalance as victims come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_cursor_relay_processes_two_killed_repeatedly_with_failures() {
    // A killed relay's batches in flight (two, each of up to half its partitions) go out again from the cursor.
    four_processes_two_killed(
        Backend::Postgres,
        &[("OUTBOX_DELIVERY", "cursor")],
        "4e. four cursor relay processes, two SIGKILLed in turn",
        "OUTBOX_DELIVERY=cursor, 8 partitions; ",
        4,
    )
    .await;
}

/// The cursor's four processes on MariaDB, where the writers number each partition's events in their
/// transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_cursor_relay_processes_on_mariadb_two_killed_repeatedly_with_failures() {
    four_processes_two_killed(
        Backend::MariaDb,
        &[("OUTBOX_DELIVERY", "cursor")],
        "4f. four cursor relay processes on MariaDB, two SIGKILLed in turn",
        "MariaDB, OUTBOX_DELIVERY=cursor, 8 partitions; ",
        4,
    )
    .await;
}

/// Four relay processes on `backend` with `settings`, two of them SIGKILLed in turn and restarted while writers
/// (with the same delivery setting) run over 1,000 aggregates, 10% of publishes failing and 2% of
/// acknowledgements lost; each kill may leave up to `batches_per_kill` batches published again.
async fn four_processes_two_killed(
    backend: Backend,
    settings: &[(&str, &str)],
    scenario: &str,
    note: &str,
    batches_per_kill: usize,
) {
    let _serial = serial().await;
    let rounds = if soak() { 40 } else { 8 };
    let faults = Faults {
        fail: 0.1,
        lose_ack: 0.02,
    };
    let url = match backend {
        Backend::MariaDb => crate::child::mariadb_url(),
        _ => crate::child::postgres_url(),
    };
    let spawn = |t: &TestDb, sink: &Sink| RelayProcess::spawn_with(&url, t, sink, faults, settings);
    let mut config = outbox::OutboxConfig::default();
    if settings.contains(&("OUTBOX_DELIVERY", "cursor")) {
        config.delivery = outbox::Delivery::Cursor;
    }
    let t = TestDb::with_config(backend, config).await;
    let sink = Sink::create(&t).await;
    let writers = Writers::start(&t, steady_writers(1000));
    let steady = [spawn(&t, &sink), spawn(&t, &sink)];
    let mut victims = [Some(spawn(&t, &sink)), Some(spawn(&t, &sink))];
    for round in 0..rounds {
        tokio::time::sleep(random_pause(200, 900)).await;
        let victim = &mut victims[round % 2];
        if let Some(relay) = victim.take() {
            relay.kill();
        }
        *victim = Some(spawn(&t, &sink));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = writers.stop().await;
    let tally = drain(&t, &sink, &ledger).await;
    let lost_acks = sink.lost_acks(&t).await;
    sink.check(
        &t,
        &tally,
        scenario,
        &format!(
            "{note}{rounds} SIGKILLs, 1,000 aggregates, 10% publish failures, 2% lost acks ({lost_acks} lost)"
        ),
        rounds * batches_per_kill * CHILD_BATCH + lost_acks,
    )
    .await;
    sink.tear_down(t, steady.into_iter().chain(victims.into_iter().flatten()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_in_time_and_leaves_no_lease() {
    let _serial = serial().await;
    let t = TestDb::new(Backend::Postgres).await;
    let sink = Sink::create(&t).await;
    let writers = Writers::start(&t, steady_writers(100));
    let relay = RelayProcess::spawn(&t, &sink, Faults::default());
    sink.wait_for(&t, 500, Duration::from_secs(60)).await;
    // The relay's deadline is 5 s (`relay_child`); a second more for the process to exit.
    let (status, took) = relay.terminate(Duration::from_secs(6));
    assert!(status.success(), "the relay exits cleanly: {status}");
    let leased = t
        .scalar("SELECT COUNT(*) FROM {t} WHERE status = 0 AND locked_until IS NOT NULL")
        .await;
    assert_eq!(
        leased, 0,
        "a graceful stop releases what it did not publish"
    );
    let restarted = RelayProcess::spawn(&t, &sink, Faults::default());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = writers.stop().await;
    let tally = drain(&t, &sink, &ledger).await;
    sink.check(
        &t,
        &tally,
        "8. graceful shutdown under load",
        &format!(
            "SIGTERM mid-publish: exit 0 after {} ms (deadline 5 s), {leased} leases left; restarted",
            took.as_millis()
        ),
        0,
    )
    .await;
    sink.tear_down(t, [restarted]).await;
}
