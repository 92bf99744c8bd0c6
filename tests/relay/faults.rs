//! A relay task aborted, a broker outage and poison events, in-process. (Relay processes killed, databases and
//! brokers restarted: the reliability suite.)

use std::collections::HashSet;
use std::time::Duration;

use outbox::OutboxConfig;
use outbox::publisher::InMemoryPublisher;
use outbox::relay::{ErrorHandler, Relay};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::running::Running;

use crate::accounting::{account, fast_config, write};

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

/// A publish that never answers (a client stuck on a connection it has not noticed is gone) must not stall the
/// relay: past the publish timeout the broker counts as unavailable and the batch is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_never_answers_times_out_as_unavailable() {
    let t = TestDb::with_config(Backend::SqliteMemory, fast_config()).await;
    write(&t, 2, 4).await;
    let broker = InMemoryPublisher::new();
    broker.set_delay(Duration::from_secs(3600));
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone())
        .publish_timeout(Duration::from_millis(100))
        .build();
    let report = tokio::time::timeout(Duration::from_secs(10), relay.publish_batch(100))
        .await
        .expect("the batch ends despite the silent broker")
        .unwrap();
    let unavailable = report.publisher_unavailable.clone().unwrap_or_default();
    assert!(
        unavailable.contains("did not answer within 100ms"),
        "{report:?}"
    );
    assert_eq!((report.published, report.released), (0, 4), "{report:?}");
    let rows = t.outbox.get_unpublished(&t.db, 10, 0).await.unwrap();
    assert!(
        rows.iter().all(|r| r.attempts == 0),
        "a silent broker is not the events' failure"
    );
}
