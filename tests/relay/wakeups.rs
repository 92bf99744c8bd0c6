//! Wake-ups on demand (PostgreSQL): writers NOTIFY only while a relay sleeps until woken; a relay under load
//! polls and asks them not to; one that goes back to sleep first waits out every transaction that may have
//! missed its request.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use outbox::publisher::InMemoryPublisher;
use outbox::relay::Relay;
use outbox::sea_orm::TransactionTrait;
use outbox::sea_orm::sqlx::postgres::PgListener;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;
use outbox_tests::running::Running;

use crate::lifecycle::idle_config;

async fn listen(t: &TestDb) -> PgListener {
    let mut listener = PgListener::connect(&t.url).await.unwrap();
    listener.listen(t.outbox.table()).await.unwrap();
    listener
}

/// How many times relays of this process switched to `polling`, `settling` and `asleep`
/// (`outbox_relay_wakeup_switches_total`) since the last call: a snapshot takes the counts away. The relay counts
/// on its own tasks, on any thread, so the recorder is the process's, installed once for this binary.
fn switches() -> [u64; 3] {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    let snapshotter = SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::set_global_recorder(recorder).expect("no other global recorder in this binary");
        snapshotter
    });
    let snapshot = snapshotter.snapshot().into_vec();
    ["polling", "settling", "asleep"].map(|to| {
        snapshot
            .iter()
            .filter(|(key, ..)| {
                key.key().name() == "outbox_relay_wakeup_switches_total"
                    && key
                        .key()
                        .labels()
                        .any(|label| label.key() == "to" && label.value() == to)
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("the switches are not a counter: {other:?}"),
            })
            .sum()
    })
}

/// Whether a notification arrives within `within`.
async fn notified(listener: &mut PgListener, within: Duration) -> bool {
    tokio::time::timeout(within, listener.recv()).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_notify_only_while_a_relay_waits_to_be_woken() {
    let t = TestDb::new(Backend::Postgres).await;
    let mut listener = listen(&t).await;

    t.outbox.add_event(&t.db, opened("a", 1)).await.unwrap();
    assert!(
        !notified(&mut listener, Duration::from_millis(300)).await,
        "a commit notified with no relay recorded"
    );

    t.sql(
        "INSERT INTO {t}_relays (relay_id, name, started_at, heartbeat_at, wants_notify) \
         VALUES ('polling', 'polling', 0, 0, FALSE)",
    )
    .await;
    t.outbox.add_event(&t.db, opened("a", 2)).await.unwrap();
    assert!(
        !notified(&mut listener, Duration::from_millis(300)).await,
        "a commit notified while the only relay polls"
    );

    // A relay that does not say otherwise (an older version's) sleeps until woken.
    t.sql(
        "INSERT INTO {t}_relays (relay_id, name, started_at, heartbeat_at) \
         VALUES ('asleep', 'asleep', 0, 0)",
    )
    .await;
    t.outbox.add_event(&t.db, opened("a", 3)).await.unwrap();
    assert!(
        notified(&mut listener, Duration::from_secs(10)).await,
        "a commit did not notify while a relay sleeps"
    );
    let wishes: Vec<_> = t
        .outbox
        .relays(&t.db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.relay_id, r.wants_notify))
        .collect();
    assert_eq!(
        wishes,
        [
            ("asleep".to_owned(), Some(true)),
            ("polling".to_owned(), Some(false))
        ]
    );
    t.drop_tables().await;
}

/// A writer that stored its event before the relay asked to be woken, and commits after, sent no notification:
/// the relay polls until that transaction has ended instead of sleeping through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_missed_the_relays_request_is_not_left_for_the_poll() {
    let t = TestDb::with_config(Backend::Postgres, idle_config()).await;
    let straggler = t.db.begin().await.unwrap();
    t.outbox
        .add_event(&straggler, opened("late", 1))
        .await
        .unwrap();
    let broker = InMemoryPublisher::new();
    let running =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    // The relay has asked to be woken by now, and found nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broker.len(), 0);
    straggler.commit().await.unwrap();
    assert!(
        broker.wait_for(1, Duration::from_secs(10)).await,
        "an event committed by a transaction older than the relay's request waited for the 10-minute poll"
    );
    running.stop().await;
    t.drop_tables().await;
}

/// Under load the relay polls and writers stop notifying; once the load is gone it asks to be woken again and
/// is woken. A relay killed while it asked to be woken does not keep writers notifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_relay_polls_and_writers_stop_notifying_until_it_is_idle_again() {
    let t = TestDb::with_config(Backend::Postgres, idle_config()).await;
    t.sql(
        "INSERT INTO {t}_relays (relay_id, name, started_at, heartbeat_at) \
         VALUES ('killed', 'killed', 0, 0)",
    )
    .await;
    let wishes = |relay: &'static str| {
        format!("SELECT COUNT(*) FROM {{t}}_relays WHERE relay_id <> '{relay}' AND wants_notify")
    };
    switches();
    let broker = InMemoryPublisher::new();
    let running =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        t.scalar("SELECT COUNT(*) FROM {t}_relays WHERE relay_id = 'killed' AND wants_notify")
            .await,
        0,
        "the wish of a relay gone for a day was kept"
    );
    assert_eq!(
        t.scalar(&wishes("killed")).await,
        1,
        "the relay asks to be woken"
    );

    // 2,000 events a second, in transactions of 100, for 3 s.
    let mut listener = listen(&t).await;
    let mut written: u32 = 0;
    let mut polled = false;
    let mut late_notifications = 0;
    let load = Instant::now();
    while load.elapsed() < Duration::from_secs(3) {
        let txn = t.db.begin().await.unwrap();
        t.outbox
            .add_events(
                &txn,
                (0..100u32).map(|i| opened(&format!("agg{}", i % 20), written + i)),
            )
            .await
            .unwrap();
        txn.commit().await.unwrap();
        written += 100;
        tokio::time::sleep(Duration::from_millis(50)).await;
        polled |= t.scalar(&wishes("killed")).await == 0;
        // Notifications of the last second: the relay polls by then.
        while notified(&mut listener, Duration::ZERO).await {
            if load.elapsed() > Duration::from_secs(2) {
                late_notifications += 1;
            }
        }
    }
    assert!(polled, "the relay never asked writers to stop waking it");
    assert_eq!(late_notifications, 0, "writers notified a polling relay");

    // A writer that stores an event while the relay still polls, and commits once the relay asked to be woken
    // again: its commit sends nothing, so the relay must not sleep before it ended.
    let straggler = t.db.begin().await.unwrap();
    t.outbox
        .add_event(&straggler, opened("late", 1))
        .await
        .unwrap();

    // Idle again: it asks to be woken, and is.
    let asked_again = Instant::now();
    while t.scalar(&wishes("killed")).await == 0 {
        assert!(
            asked_again.elapsed() < Duration::from_secs(15),
            "the relay did not ask to be woken again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        broker
            .wait_for(written as usize, Duration::from_secs(20))
            .await
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    straggler.commit().await.unwrap();
    assert!(
        broker
            .wait_for(written as usize + 1, Duration::from_secs(10))
            .await,
        "an event committed by a transaction older than the relay's request waited for the 10-minute poll"
    );
    // Past the settling, asleep: only a notification brings the next event before the 10-minute poll.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    while notified(&mut listener, Duration::ZERO).await {}
    t.outbox.add_event(&t.db, opened("after", 1)).await.unwrap();
    assert!(
        notified(&mut listener, Duration::from_secs(10)).await,
        "no notification once the relay sleeps again"
    );
    // Operators see the same switches in the metrics (other tests' relays may add to them, never take away).
    let [polling, settling, asleep] = switches();
    assert!(
        polling > 0 && settling > 0 && asleep > 0,
        "switches counted in outbox_relay_wakeup_switches_total: {polling} to polling, {settling} to settling, \
         {asleep} to asleep"
    );
    running.stop().await;
    t.drop_tables().await;
}

/// A relay killed while it waited to be woken keeps its row for a day; running relays withdraw its wish at their
/// heartbeat once it is a minute old, so writers stop notifying for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_relays_withdraw_the_wish_of_a_relay_gone() {
    let t = TestDb::with_config(Backend::Postgres, idle_config()).await;
    let running = Running::start(
        Relay::builder(t.db.clone(), t.outbox.clone(), InMemoryPublisher::new())
            .heartbeat_interval(Duration::from_millis(50))
            .build(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.sql(
        "INSERT INTO {t}_relays (relay_id, name, started_at, heartbeat_at) \
         VALUES ('killed', 'killed', 0, 0)",
    )
    .await;
    let wish = "SELECT COUNT(*) FROM {t}_relays WHERE relay_id = 'killed' AND wants_notify";
    let since = Instant::now();
    while t.scalar(wish).await > 0 {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the wish of a relay gone was kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    t.drop_tables().await;
}
