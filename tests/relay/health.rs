//! Health checks and metrics.

use std::sync::Arc;
use std::time::Duration;

use outbox::health::{HealthCheck, HealthStatus, HealthThresholds};
use outbox::publisher::InMemoryPublisher;
use outbox::relay::Relay;
use outbox::repository::Failure;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;
use outbox_tests::running::Running;

use crate::accounting::fast_config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_database_broker_lag_and_relay() {
    let t = TestDb::with_config(Backend::Postgres, fast_config()).await;
    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    let check = HealthCheck::new(t.db.clone(), t.outbox.clone(), Arc::new(broker.clone()))
        .with_relay(relay.handle());

    // A relay that was built but never started is not alive.
    let report = check.check_health().await;
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert_eq!(report.database.status, HealthStatus::Healthy);
    assert!(!report.relay.as_ref().unwrap().running);

    let running = Running::start(relay);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = check.check_health().await;
    assert_eq!(report.status, HealthStatus::Healthy, "{report:#?}");
    assert_eq!(report.http_status(), 200);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["broker"]["status"], "healthy");
    assert_eq!(json["outbox"]["pending"], 0);
    assert_eq!(json["relay"]["running"], true);

    // Broker down: unhealthy, with the reason, while it lasts.
    broker.set_unavailable(true);
    let report = check.check_health().await;
    assert_eq!(report.broker.status, HealthStatus::Unhealthy);
    assert!(
        report
            .broker
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("down"),
        "{report:?}"
    );
    assert_eq!(report.http_status(), 503);
    broker.set_unavailable(false);

    // The relay stops: unhealthy.
    running.stop().await;
    assert_eq!(check.check_health().await.status, HealthStatus::Unhealthy);
    t.drop_tables().await;
}

#[tokio::test]
async fn lag_thresholds_turn_the_outbox_degraded_then_unhealthy() {
    // The rows design whatever the suite's: the dead letter is made through its claim.
    let t = TestDb::with_design(Backend::SqliteMemory, outbox::OutboxConfig::default()).await;
    let broker = Arc::new(InMemoryPublisher::new());
    let mut thresholds = HealthThresholds::default();
    thresholds.pending_degraded = 2;
    thresholds.pending_unhealthy = 4;
    let check =
        HealthCheck::new(t.db.clone(), t.outbox.clone(), broker).with_thresholds(thresholds);
    assert_eq!(check.check_outbox_lag().await.status, HealthStatus::Healthy);
    t.outbox
        .add_events(&t.db, [opened("a", 1), opened("b", 1)])
        .await
        .unwrap();
    assert_eq!(
        check.check_outbox_lag().await.status,
        HealthStatus::Degraded
    );
    t.outbox
        .add_events(&t.db, [opened("c", 1), opened("d", 1)])
        .await
        .unwrap();
    let lag = check.check_outbox_lag().await;
    assert_eq!((lag.status, lag.pending), (HealthStatus::Unhealthy, 4));
    assert!(lag.oldest_pending_age_seconds.is_some());
    // No relay attached: the overall status is the worst of database, broker and lag.
    let report = check.check_health().await;
    assert!(report.relay.is_none());
    assert_eq!(report.status, HealthStatus::Unhealthy);

    // A dead letter alone makes it degraded.
    let claim = t.outbox.claim(&t.db, 10).await.unwrap();
    let ids: Vec<i64> = claim.events[1..].iter().map(|e| e.id).collect();
    t.outbox
        .mark_published(&t.db, claim.token, &ids)
        .await
        .unwrap();
    t.outbox
        .mark_failed(
            &t.db,
            claim.token,
            &[Failure::new(&claim.events[0], "x").permanent()],
        )
        .await
        .unwrap();
    let lag = check.check_outbox_lag().await;
    assert_eq!(
        (lag.status, lag.pending, lag.dead_letters),
        (HealthStatus::Degraded, 0, 1)
    );
}

#[tokio::test]
async fn a_database_that_is_gone_is_unhealthy() {
    let t = TestDb::new(Backend::SqliteMemory).await;
    let check = HealthCheck::new(
        t.db.clone(),
        t.outbox.clone(),
        Arc::new(InMemoryPublisher::new()),
    );
    t.db.clone().close().await.unwrap();
    let report = check.check_health().await;
    assert_eq!(report.database.status, HealthStatus::Unhealthy);
    assert!(report.database.error.is_some());
    assert_eq!(report.status, HealthStatus::Unhealthy);
}

/// The relay's counters and histograms reach whatever recorder the application installs.
#[test]
fn metrics_count_what_the_relay_did() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A current-thread runtime keeps every await on this thread, where the local recorder is installed.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let mut config = outbox::OutboxConfig::default();
            config.max_retry_count = 0;
            // One batch of the rows design holds all six; a cursor batch reads some partitions at a time.
            let t = TestDb::with_design(Backend::SqliteMemory, config).await;
            t.outbox
                .add_events(&t.db, (1..=6).map(|seq| opened(&format!("m{seq}"), seq)))
                .await
                .unwrap();
            // A row that no longer decodes: a dead letter too.
            t.sql("UPDATE {t} SET event_type = 'com.example.gone' WHERE aggregate_id = 'm6'")
                .await;
            let broker = InMemoryPublisher::new();
            broker.fail_next(1);
            let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker).build();
            relay.publish_batch(10).await.unwrap();
        })
    });

    // One snapshot: taking one drains histograms.
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str| -> u64 {
        snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == name)
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    };
    assert_eq!(counter("outbox_events_published_total"), 4);
    assert_eq!(
        counter("outbox_events_dead_lettered_total"),
        2,
        "max_retry_count = 0: the failure is final; and the row that no longer decodes"
    );
    let histograms: Vec<String> = snapshot
        .iter()
        .filter(|(.., value)| matches!(value, DebugValue::Histogram(_)))
        .map(|(key, ..)| key.key().name().to_owned())
        .collect();
    for name in [
        "outbox_batch_size",
        "outbox_batch_duration_seconds",
        "outbox_publish_latency_seconds",
    ] {
        assert!(
            histograms.iter().any(|h| h == name),
            "{name} missing from {histograms:?}"
        );
    }
}

/// An error handler with a bug: a panic outside any one publish ends the relay task.
struct PanickingHandler;

impl outbox::relay::ErrorHandler for PanickingHandler {
    fn handle(&self, _: &outbox::repository::ClaimedEvent, _: &outbox::publisher::PublishError) {
        panic!("the error handler has a bug");
    }

    fn max_retries(&self) -> u32 {
        3
    }
}

/// A relay that stops on an error or a panic is reported stopped at once, with why, not when its heartbeat goes
/// stale two minutes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_stopped_on_an_error_or_a_panic_is_unhealthy_at_once() {
    let t = TestDb::new(Backend::SqliteFile).await;
    let broker = InMemoryPublisher::new();
    let check = |relay: &Relay| {
        HealthCheck::new(t.db.clone(), t.outbox.clone(), Arc::new(broker.clone()))
            .with_relay(relay.handle())
    };

    // An error: a table that is not there.
    let missing = outbox::repository::OutboxRepository::builder()
        .table("not_migrated")
        .build()
        .unwrap();
    let relay = Relay::builder(t.db.clone(), missing, broker.clone()).build();
    let health = check(&relay);
    assert!(relay.run(std::future::pending()).await.is_err());
    let report = health.check_relay().unwrap();
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert!(!report.running);
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("not_migrated"),
        "{report:?}"
    );

    // A panic.
    t.outbox.add_event(&t.db, opened("a", 1)).await.unwrap();
    broker.fail_next(1);
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone())
        .error_handler(PanickingHandler)
        .build();
    let health = check(&relay);
    let task = tokio::spawn(relay.run(std::future::pending()));
    let ended = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap();
    assert!(ended.unwrap_err().is_panic());
    let report = health.check_relay().unwrap();
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert_eq!(report.error.as_deref(), Some("the relay task panicked"));
}
