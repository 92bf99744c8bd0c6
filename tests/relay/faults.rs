//! A relay task aborted, a broker outage and poison events, in-process. (Relay processes killed, databases and
//! brokers restarted: the reliability suite.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outbox::health::{HealthCheck, HealthStatus};
use outbox::publisher::{InMemoryPublisher, PublishError, Publisher, Reason};
use outbox::relay::{ErrorHandler, Relay};
use outbox::{EventEnvelope, Message, OutboxConfig};
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
    // The counts are those of one batch of the rows design; a cursor batch reads some partitions at a time.
    let t = TestDb::with_design(Backend::SqliteMemory, config).await;
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

/// Panics on one aggregate's messages, as a publisher with a bug in some corner of its encoding would; passes
/// the others on.
struct PanicsOn {
    inner: InMemoryPublisher,
    aggregate: &'static str,
}

#[async_trait::async_trait]
impl Publisher for PanicsOn {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        assert_ne!(
            message.key, self.aggregate,
            "the publisher cannot encode this"
        );
        self.inner.publish(message).await
    }

    fn name(&self) -> &str {
        "panics-on"
    }
}

/// A panic while publishing one event is that event's permanent failure: a dead letter with the panic's
/// message. The relay goes on, and so does everything else, the panicking event's own aggregate included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_publishing_one_event_dead_letters_it_and_the_relay_goes_on() {
    for backend in [Backend::Postgres, Backend::SqliteMemory] {
        let mut config = fast_config();
        config.max_retry_count = 3;
        let t = TestDb::with_config(backend, config).await;
        let written = write(&t, 4, 40).await;
        let broker = InMemoryPublisher::new();
        let publisher = PanicsOn {
            inner: broker.clone(),
            aggregate: "agg-3",
        };
        let relay = Relay::builder(t.db.clone(), t.outbox.clone(), publisher).build();
        let handle = relay.handle();
        let running = Running::start(relay);
        // Every event of agg-3 panics once and becomes a dead letter: 10 of them; the other 30 arrive.
        let settled = async {
            while t.outbox.count_dead_letters(&t.db).await.unwrap() < 10 || broker.len() < 30 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), settled)
            .await
            .unwrap_or_else(|_| panic!("{backend:?}: {} arrived", broker.len()));
        assert!(handle.is_running(), "{backend:?}: the relay stopped");
        let dead = t.outbox.dead_letters(&t.db, 100, 0).await.unwrap();
        for row in &dead {
            assert_eq!(row.aggregate_id, "agg-3");
            assert_eq!(row.attempts, 1, "permanent: no retry");
            let error = row.last_error.as_deref().unwrap_or_default();
            assert!(
                error.contains("panicked while publishing") && error.contains("cannot encode this"),
                "{error}"
            );
        }
        running.stop().await;
        let dead: HashSet<_> = dead.iter().map(|d| d.event_id).collect();
        let rest: HashSet<_> = written.difference(&dead).copied().collect();
        account(&broker, &rest);
        t.drop_tables().await;
    }
}

/// Refuses one destination as a broker does when no stream captures a subject or a topic cannot be created,
/// until told otherwise.
struct RefusesDestination {
    inner: InMemoryPublisher,
    destination: &'static str,
    refusing: AtomicBool,
}

#[async_trait::async_trait]
impl Publisher for RefusesDestination {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        if message.destination == self.destination && self.refusing.load(Ordering::Relaxed) {
            return Err(PublishError::destination_unavailable(
                &message.destination,
                Reason("no stream captures it".into()),
            ));
        }
        self.inner.publish(message).await
    }

    fn name(&self) -> &str {
        "refuses-destination"
    }
}

/// One destination that cannot take messages holds that destination only: its events wait with no attempt
/// counted and no dead letter, the other destinations flow, health names the held destination, and once it
/// takes messages again its events go out in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_takes_no_messages_holds_only_itself() {
    let mut config = fast_config();
    config.max_retry_count = 1;
    config.retry_initial_delay = Duration::from_millis(100);
    config.retry_max_delay = Duration::from_millis(300);
    let t = TestDb::with_config(Backend::Postgres, config).await;
    let mut written = write(&t, 4, 40).await;
    // A second destination: the notes of the same accounts go to a topic of their own.
    let noted = t
        .outbox
        .add_events(
            &t.db,
            (1..=20).map(|seq| {
                EventEnvelope::new(AccountNoted {
                    account: format!("agg-{}", seq % 4),
                    seq,
                })
            }),
        )
        .await
        .unwrap();
    written.extend(noted.iter().copied());
    let broker = InMemoryPublisher::new();
    let publisher = std::sync::Arc::new(RefusesDestination {
        inner: broker.clone(),
        destination: "account.notes",
        refusing: AtomicBool::new(true),
    });
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), publisher.clone()).build();
    let handle = relay.handle();
    let health = HealthCheck::new(t.db.clone(), t.outbox.clone(), publisher.clone())
        .with_relay(relay.handle());
    let running = Running::start(relay);
    assert!(
        broker.wait_for(40, Duration::from_secs(30)).await,
        "the other destination flows"
    );
    // Several holds in a row, far more than the retry budget allows for a failing event.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = handle.held_destinations();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].destination, "account.notes");
    assert!(held[0].reason.contains("no stream captures it"), "{held:?}");
    let report = health.check_relay().expect("a relay is attached");
    assert_eq!(report.status, HealthStatus::Degraded);
    let names: Vec<&str> = report
        .held_destinations
        .iter()
        .map(|h| h.destination.as_str())
        .collect();
    assert_eq!(names, ["account.notes"]);
    let waiting = t.outbox.get_unpublished(&t.db, 100, 0).await.unwrap();
    assert_eq!(waiting.len(), 20);
    assert!(
        waiting.iter().all(|e| e.attempts == 0),
        "no attempt counted"
    );
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);

    publisher.refusing.store(false, Ordering::Relaxed);
    assert!(
        broker.wait_for(60, Duration::from_secs(30)).await,
        "the held destination's events go out once it takes messages"
    );
    assert!(handle.held_destinations().is_empty(), "the hold is lifted");
    running.stop().await;
    // Order per aggregate across both destinations' events: by sequence, each kind in its own order.
    let messages = broker.messages();
    let notes: Vec<(String, u32)> = messages
        .iter()
        .filter(|m| m.message.destination == "account.notes")
        .map(|m| {
            let note: AccountNoted = serde_json::from_str(m.message.data.get()).unwrap();
            (note.account, note.seq)
        })
        .collect();
    for account in ["agg-0", "agg-1", "agg-2", "agg-3"] {
        let seqs: Vec<u32> = notes
            .iter()
            .filter(|(a, _)| a == account)
            .map(|(_, s)| *s)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{account}: {seqs:?}");
    }
    assert_eq!(
        messages
            .iter()
            .map(|m| m.message.id)
            .collect::<HashSet<_>>(),
        written
    );
    t.drop_tables().await;
}

#[derive(Debug, serde::Serialize, serde::Deserialize, outbox::OutboxEvent)]
#[outbox(
    type = "com.example.account.noted",
    source = "/accounts",
    topic = "account.notes"
)]
struct AccountNoted {
    #[outbox(aggregate_id)]
    account: String,
    seq: u32,
}
