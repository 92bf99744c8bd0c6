//! Crashes, a broker outage and poison events.

use std::collections::HashSet;
use std::process::{Child, Command};
use std::time::Duration;

use outbox::publisher::InMemoryPublisher;
use outbox::relay::{ErrorHandler, Relay};
use outbox::sea_orm::{ConnectionTrait, Statement};
use outbox::{EventEnvelope, OutboxConfig};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::{AccountOpened, opened};

use crate::accounting::{Running, account, fast_config};

async fn write(t: &TestDb, aggregates: u32, events: u32) -> HashSet<uuid::Uuid> {
    let envelopes: Vec<_> = (1..=events)
        .map(|seq| EventEnvelope::new(opened(&format!("agg-{}", seq % aggregates), seq)))
        .collect();
    t.outbox
        .add_events(&t.db, envelopes)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_task_aborted_mid_batch_loses_nothing() {
    let mut config = fast_config();
    config.lease_duration = Duration::from_secs(1);
    let t = TestDb::with_config(Backend::Postgres, config).await;
    let written = write(&t, 10, 300).await;
    let broker = InMemoryPublisher::new();
    broker.set_delay(Duration::from_millis(5));

    let first =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    assert!(broker.wait_for(40, Duration::from_secs(30)).await);
    first.task.abort(); // mid-batch: its claimed events stay leased, unmarked
    let _ = first.task.await;
    let before = broker.len();
    assert!(
        before < written.len(),
        "the abort came too late to test anything"
    );

    let second =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    let all = async {
        while account_unique(&broker) < written.len() {
            broker
                .wait_for(broker.len() + 1, Duration::from_millis(200))
                .await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("everything arrives after the restart");
    second.stop().await;
    let totals = account(&broker, &written);
    eprintln!("aborted relay: {totals:?}");
    t.drop_tables().await;
}

fn account_unique(broker: &InMemoryPublisher) -> usize {
    broker
        .messages()
        .iter()
        .map(|m| m.message.id)
        .collect::<HashSet<_>>()
        .len()
}

/// The relay as a real process, killed with SIGKILL three times while it publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_process_killed_with_sigkill_loses_nothing() {
    let t = TestDb::new(Backend::Postgres).await;
    let sink = format!("{}_deliveries", t.outbox.table());
    t.db.execute_unprepared(&format!(
        "CREATE TABLE {sink} (n BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, aggregate_id TEXT NOT NULL, payload TEXT NOT NULL)"
    ))
    .await
    .unwrap();
    let written = write(&t, 20, 3000).await;
    let url = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let spawn = || -> Child {
        Command::new(env!("CARGO_BIN_EXE_relay_child"))
            .args([url.as_str(), t.outbox.table(), sink.as_str()])
            .spawn()
            .expect("start the relay process")
    };
    let delivered = |db: outbox::sea_orm::DatabaseConnection, sink: String| async move {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(DISTINCT event_id) FROM {sink}"),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap() as usize
    };

    let mut kills = 0;
    let mut child = spawn();
    while kills < 3 {
        let target = (kills + 1) * written.len() / 5;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while delivered(t.db.clone(), sink.clone()).await < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay process made no progress"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap(); // SIGKILL: no shutdown, no release, leases left behind
        child.wait().unwrap();
        kills += 1;
        child = spawn();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while delivered(t.db.clone(), sink.clone()).await < written.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not everything arrived after {kills} kills"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Accounting from the sink: every event at least once, first arrivals in order per aggregate.
    let rows =
        t.db.query_all_raw(Statement::from_string(
            t.db.get_database_backend(),
            format!("SELECT event_id, aggregate_id, payload FROM {sink} ORDER BY n"),
        ))
        .await
        .unwrap();
    let mut seen = HashSet::new();
    let mut last: std::collections::HashMap<String, u32> = Default::default();
    for row in &rows {
        let id: String = row.try_get_by_index(0).unwrap();
        let aggregate: String = row.try_get_by_index(1).unwrap();
        let event: AccountOpened =
            serde_json::from_str(&row.try_get_by_index::<String>(2).unwrap()).unwrap();
        if !seen.insert(uuid::Uuid::parse_str(&id).unwrap()) {
            continue; // redelivered after a kill: a de-duplicating consumer drops it
        }
        if let Some(previous) = last.insert(aggregate.clone(), event.seq) {
            assert!(
                event.seq > previous,
                "{aggregate}: {} first arrived after {previous}",
                event.seq
            );
        }
    }
    assert_eq!(seen, written, "every committed event arrived");
    eprintln!(
        "{kills} SIGKILLs: {} deliveries, {} duplicates",
        rows.len(),
        rows.len() - seen.len()
    );
    t.db.execute_unprepared(&format!("DROP TABLE {sink}"))
        .await
        .unwrap();
    t.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_backs_off_without_burning_retry_budgets() {
    let mut config = fast_config();
    config.retry_initial_delay = Duration::from_millis(50);
    config.retry_max_delay = Duration::from_millis(400);
    config.max_retry_count = 3;
    let t = TestDb::with_config(Backend::Postgres, config).await;
    let written = write(&t, 5, 50).await;
    let broker = InMemoryPublisher::new();
    broker.set_unavailable(true);
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    let running = Running::start(relay);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let attempts_while_down = broker.attempts();
    // Backing off: a handful of probes in 1.5 s, not one per event per poll.
    assert!(
        attempts_while_down < 60,
        "{attempts_while_down} publish attempts while the broker was down"
    );
    let rows = t.outbox.get_unpublished(&t.db, 100, 0).await.unwrap();
    assert_eq!(rows.len(), 50);
    assert!(
        rows.iter().all(|r| r.attempts == 0),
        "an outage must not count as the events' failures"
    );
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);

    broker.set_unavailable(false);
    assert!(
        broker.wait_for(50, Duration::from_secs(30)).await,
        "the relay resumes by itself"
    );
    running.stop().await;
    account(&broker, &written);
    t.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_while_its_neighbours_flow() {
    let t = TestDb::with_config(Backend::MariaDb, fast_config()).await;
    let written = write(&t, 4, 40).await;
    let broker = InMemoryPublisher::new();
    // Seq 6 is on aggregate agg-2, which also has 2, 10, 14, ...
    broker.reject_when(|m| {
        m.data
            .get()
            .contains(r#""seq":6}"#)
            .then(|| "message too large".to_owned())
    });
    let running =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    assert!(broker.wait_for(39, Duration::from_secs(30)).await);
    running.stop().await;

    let dead = t.outbox.dead_letters(&t.db, 10, 0).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("message too large"),
        "{dead:?}"
    );
    let poison = dead[0].event_id;
    let rest: HashSet<_> = written.iter().copied().filter(|id| *id != poison).collect();
    let totals = account(&broker, &rest);
    assert_eq!(
        totals.unique, 39,
        "everything else, including the poison's own aggregate, went out"
    );
    t.drop_tables().await;
}

/// Gives up at the first failure, whatever it is.
struct NeverRetry;

impl ErrorHandler for NeverRetry {
    fn max_retries(&self) -> u32 {
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_handler_decides_retry_or_dead_letter() {
    let t = TestDb::with_config(Backend::SqliteFile, fast_config()).await;
    write(&t, 3, 9).await;
    let broker = InMemoryPublisher::new();
    broker.fail_next(2);
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone())
        .error_handler(NeverRetry)
        .build();
    let report = relay.publish_batch(100).await.unwrap();
    assert_eq!(report.claimed, 9);
    assert_eq!(report.dead_lettered, 2, "{report:?}");
    assert_eq!(report.failed, 0);
    // The failed heads' later events were given back, not published out of order; the third aggregate flowed.
    assert_eq!(
        report.published + report.released + report.dead_lettered,
        9,
        "{report:?}"
    );
    let again = relay.publish_batch(100).await.unwrap();
    assert_eq!(
        report.published + again.published,
        7,
        "the rest go out once the dead heads step aside"
    );
    t.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batch_reports_what_it_did() {
    let mut config = OutboxConfig::default();
    config.max_retry_count = 3;
    let t = TestDb::with_config(Backend::SqliteMemory, config).await;
    write(&t, 10, 10).await;
    let broker = InMemoryPublisher::new();
    broker.fail_next(1);
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    let report = relay.publish_batch(100).await.unwrap();
    assert_eq!(
        (report.claimed, report.published, report.failed),
        (10, 9, 1),
        "{report:?}"
    );
    assert_eq!(
        (report.dead_lettered, report.released, report.fenced_out),
        (0, 0, 0)
    );
    assert!(report.publisher_unavailable.is_none());
    let empty = relay.publish_batch(100).await.unwrap();
    assert_eq!(empty.claimed, 0, "the failed event waits for its backoff");
    let row = &t.outbox.get_unpublished(&t.db, 10, 0).await.unwrap()[0];
    assert_eq!(row.attempts, 1);
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("refused"),
        "{row:?}"
    );
}

/// The relay's database connections are killed mid-flow (`pg_terminate_backend`): it reconnects and resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_connection_is_survived() {
    let t = TestDb::with_config(Backend::Postgres, fast_config()).await;
    let written = write(&t, 10, 2000).await;
    // The relay gets connections of its own, named, so only they are terminated.
    let name = format!("outbox-relay-{}", uuid::Uuid::new_v4().simple());
    let base = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let separator = if base.contains('?') { '&' } else { '?' };
    let relay_db =
        outbox::repository::connect(&format!("{base}{separator}application_name={name}"))
            .await
            .unwrap();
    let broker = InMemoryPublisher::new();
    broker.set_delay(Duration::from_millis(2));
    let running =
        Running::start(Relay::builder(relay_db, t.outbox.clone(), broker.clone()).build());

    assert!(broker.wait_for(50, Duration::from_secs(30)).await);
    let kill = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
    );
    for _ in 0..3 {
        let killed =
            t.db.query_all_raw(Statement::from_string(
                t.db.get_database_backend(),
                kill.clone(),
            ))
            .await
            .unwrap();
        assert!(!killed.is_empty(), "the relay's connections were found");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let all = async {
        while account_unique(&broker) < written.len() {
            broker
                .wait_for(broker.len() + 1, Duration::from_millis(200))
                .await;
        }
    };
    tokio::time::timeout(Duration::from_secs(90), all)
        .await
        .expect("the relay resumes after losing its connections");
    running.stop().await;
    let totals = account(&broker, &written);
    eprintln!("connections killed 3 times: {totals:?}");
    t.drop_tables().await;
}
