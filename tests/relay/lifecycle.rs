//! Start-up checks, wake-ups and graceful shutdown.

use std::time::Duration;

use outbox::OutboxEvent;
use outbox::publisher::InMemoryPublisher;
use outbox::registry::Registry;
use outbox::relay::{Relay, RelayError};
use outbox::repository::{OutboxRepository, RepositoryError};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::{AccountClosed, AccountOpened, opened};
use outbox_tests::running::Running;

use crate::accounting::fast_config;

pub(crate) fn idle_config() -> outbox::OutboxConfig {
    let mut config = fast_config();
    // So long that only a wake-up can explain a prompt delivery.
    config.poll_interval = Duration::from_secs(600);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_wakes_an_idle_relay_long_before_its_poll() {
    let t = TestDb::with_config(Backend::Postgres, idle_config()).await;
    let broker = InMemoryPublisher::new();
    let running =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    // Let it find nothing and go idle (LISTEN is set up before the first batch returns).
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.outbox.add_event(&t.db, opened("a", 1)).await.unwrap();
    assert!(
        broker.wait_for(1, Duration::from_secs(20)).await,
        "a committed event was not picked up before the 10-minute poll: NOTIFY did not wake the relay"
    );
    running.stop().await;
    t.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_handle_wakes_an_idle_relay_on_any_backend() {
    let t = TestDb::with_config(Backend::SqliteFile, idle_config()).await;
    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    let handle = relay.handle();
    let running = Running::start(relay);
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.outbox.add_event(&t.db, opened("a", 1)).await.unwrap();
    handle.wake(); // after the commit, as a writer in the same process would
    assert!(
        broker.wait_for(1, Duration::from_secs(20)).await,
        "the wake-up was not heard"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_batch_in_hand_and_gives_back_the_rest() {
    let mut config = fast_config();
    config.batch_size = 100;
    let t = TestDb::with_config(Backend::Postgres, config).await;
    // One aggregate: its 40 events are published one after the other, 50 ms each.
    let written = t
        .outbox
        .add_events(&t.db, (1..=40).map(|seq| opened("slow", seq)))
        .await
        .unwrap();
    let broker = InMemoryPublisher::new();
    broker.set_delay(Duration::from_millis(50));
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone())
        .shutdown_timeout(Duration::from_secs(5))
        .build();
    let handle = relay.handle();
    let running = Running::start(relay);
    assert!(broker.wait_for(3, Duration::from_secs(20)).await);
    running.stop().await; // Running::stop fails the test if the relay outlives its deadline
    assert!(handle.has_stopped());

    let delivered = broker.len();
    assert!(
        delivered < written.len(),
        "shutdown came after the whole batch; nothing was tested"
    );
    // What was published is marked, what was not is pending again, unleased, with no attempt counted.
    let pending = t.outbox.get_unpublished(&t.db, 100, 0).await.unwrap();
    assert_eq!(pending.len() + delivered, written.len());
    assert!(pending.iter().all(|r| r.attempts == 0));
    let next = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    broker.set_delay(Duration::ZERO);
    let report = next.publish_batch(100).await.unwrap();
    assert_eq!(
        report.published as usize,
        pending.len(),
        "released events are claimable at once"
    );
    t.drop_tables().await;
}

#[tokio::test]
async fn start_up_refuses_a_missing_table_with_the_fix_in_the_message() {
    let t = TestDb::new(Backend::SqliteMemory).await;
    let missing = OutboxRepository::builder()
        .table("not_migrated")
        .build()
        .unwrap();
    let err = Relay::builder(t.db.clone(), missing, InMemoryPublisher::new())
        .build()
        .run(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RelayError::Repository(RepositoryError::MissingTable { .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("run the outbox migration"),
        "{err}"
    );
}

#[tokio::test]
async fn start_up_refuses_conflicting_event_types_naming_both() {
    let t = TestDb::new(Backend::SqliteMemory).await;
    let registry: &'static Registry = Box::leak(Box::new(Registry::new()));
    registry.register::<AccountOpened>().unwrap();
    // A second Rust type claiming AccountOpened's type and version, through a hand-made registration.
    let _ = registry.register_entry(outbox::registry::Registration::of::<Impostor>(
        "tests::Impostor",
    ));
    // The relay validates the registry the repository decodes with.
    let repository = OutboxRepository::builder()
        .table(t.outbox.table())
        .registry(registry)
        .build()
        .unwrap();
    let err = Relay::builder(t.db.clone(), repository, InMemoryPublisher::new())
        .build()
        .run(std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, RelayError::Registry(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("AccountOpened") && text.contains("tests::Impostor"),
        "{text}"
    );
}

/// Same type and version as `AccountOpened`, written by hand.
#[derive(serde::Serialize, serde::Deserialize)]
struct Impostor {
    account: String,
}

impl OutboxEvent for Impostor {
    const EVENT_TYPE: &'static str = AccountOpened::EVENT_TYPE;
    const SOURCE: &'static str = "/impostor";
    const DATA_VERSION: &'static str = "1.0";
    const AGGREGATE_TYPE: &'static str = "com.example.account";
    const DESTINATION: &'static str = "com.example.account";

    fn aggregate_id(&self) -> String {
        self.account.clone()
    }
    fn to_json(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
        serde_json::value::to_raw_value(self)
    }
    fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

#[tokio::test]
async fn an_unreachable_broker_at_start_is_not_fatal() {
    let t = TestDb::with_config(Backend::SqliteMemory, fast_config()).await;
    t.outbox
        .add_event(
            &t.db,
            AccountClosed {
                account: "a".into(),
                reason: "r".into(),
            },
        )
        .await
        .unwrap();
    let broker = InMemoryPublisher::new();
    broker.set_unavailable(true);
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    relay
        .check()
        .await
        .expect("a broker that is down is reported, and waited for");
    let running = Running::start(relay);
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.set_unavailable(false);
    assert!(broker.wait_for(1, Duration::from_secs(20)).await);
    running.stop().await;
}

/// The shutdown deadline bounds the whole shutdown, a claim waiting on the database included: a relay whose
/// claim waits for a lock held elsewhere still returns within its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_within_its_deadline_even_from_a_claim_that_waits() {
    let mut config = fast_config();
    config.claim_timeout = Duration::from_secs(60);
    let t = TestDb::with_config(Backend::Postgres, config).await;
    t.outbox.add_event(&t.db, opened("a", 1)).await.unwrap();
    let holder = t.hold_claim_lock().await;
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), InMemoryPublisher::new())
        .shutdown_timeout(Duration::from_millis(500))
        .build();
    let handle = relay.handle();
    let running = Running::start(relay);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(handle.is_running());
    let started = std::time::Instant::now();
    running.stop().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?} with a 500 ms deadline"
    );
    holder.rollback().await.unwrap();
    t.drop_tables().await;
}

/// A running relay is in `<table>_relays` under its name, alive, with what it published; a clean stop removes it;
/// a relay that ends without stopping (its task aborted, like a killed process) stays, its heartbeat ageing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_record_themselves_for_operators_on_every_backend() {
    for backend in [Backend::Postgres, Backend::MariaDb, Backend::SqliteFile] {
        let t = TestDb::with_config(backend, fast_config()).await;
        let broker = InMemoryPublisher::new();
        t.outbox
            .add_events(&t.db, (1..=5).map(|seq| opened("a", seq)))
            .await
            .unwrap();
        let running = Running::start(
            Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone())
                .name("orders-relay-1")
                .heartbeat_interval(Duration::from_millis(50))
                .build(),
        );
        assert!(broker.wait_for(5, Duration::from_secs(20)).await);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let relay = loop {
            let relays = t.outbox.relays(&t.db).await.unwrap();
            assert_eq!(relays.len(), 1, "{backend:?}: {relays:?}");
            if relays[0].published == 5 || tokio::time::Instant::now() > deadline {
                break relays[0].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(relay.name, "orders-relay-1");
        assert_eq!(relay.published, 5, "{backend:?}: {relay:?}");
        assert_eq!(relay.dead_lettered, 0);
        assert!(relay.is_alive(), "{relay:?}");
        assert!(relay.started_at <= relay.heartbeat_at, "{relay:?}");
        running.stop().await;
        assert_eq!(t.outbox.relays(&t.db).await.unwrap(), vec![], "{backend:?}");

        let killed = Running::start(
            Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone())
                .heartbeat_interval(Duration::from_millis(50))
                .build(),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while t.outbox.relays(&t.db).await.unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend:?}: never recorded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        killed.task.abort();
        let left = t.outbox.relays(&t.db).await.unwrap();
        assert_eq!(left.len(), 1, "{backend:?}: {left:?}");
        assert!(
            left[0].name.ends_with(&format!(":{}", std::process::id())),
            "the default name is host:pid: {left:?}"
        );
        t.drop_tables().await;
    }
}

/// A table created before the relays table: the relay says what is missing and delivers all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_without_the_relays_table_still_delivers() {
    let t = TestDb::with_config(Backend::SqliteFile, fast_config()).await;
    t.sql("DROP TABLE {t}_relays").await;
    t.outbox.add_event(&t.db, opened("a", 1)).await.unwrap();
    let broker = InMemoryPublisher::new();
    let running =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    assert!(broker.wait_for(1, Duration::from_secs(20)).await);
    running.stop().await;
    assert!(t.outbox.relays(&t.db).await.is_err());
}
