//! Batches in flight: the relay claims its next batch, behind its own leases, while the current one publishes,
//! and an aggregate's events still go out in order when one of them fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outbox::publisher::{InMemoryPublisher, PublishError, Publisher, Reason};
use outbox::relay::Relay;
use outbox::{Message, OutboxConfig};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::AccountOpened;
use outbox_tests::on_every_backend;
use outbox_tests::running::Running;

use crate::accounting::{account, fast_config, write};

on_every_backend!(
    the_next_batch_is_claimed_behind_the_relays_own_leases,
    a_failure_gives_back_the_next_batchs_events_of_its_aggregate,
    no_publish_starts_that_could_outlast_the_lease,
    no_publish_runs_past_the_lease_while_another_relay_may_claim_its_event,
);

const BATCH: u32 = 10;

fn config() -> OutboxConfig {
    let mut config = fast_config();
    config.batch_size = BATCH;
    config
}

async fn test_db(backend: Backend) -> TestDb {
    TestDb::with_config(backend, config()).await
}

/// Two batches in flight on every backend (the default on PostgreSQL only), so the mechanism is tested on all.
fn relay(t: &TestDb, publisher: impl Publisher) -> Relay {
    Relay::builder(t.db.clone(), t.outbox.clone(), publisher)
        .max_batches_in_flight(2)
        .build()
}

async fn the_next_batch_is_claimed_behind_the_relays_own_leases(backend: Backend) {
    // Leases are the rows design's own: the cursor claims nothing row by row.
    let t = TestDb::with_design(backend, config()).await;
    let written = write(&t, 1, 3 * BATCH).await;
    let broker = InMemoryPublisher::new();
    broker.set_delay(Duration::from_millis(50)); // the first batch takes half a second
    let running = Running::start(relay(&t, broker.clone()));

    // While the first batch publishes, its successor is leased too: twice the batch, one aggregate.
    let leased = "SELECT COUNT(*) FROM {t} WHERE status = 0 AND locked_until IS NOT NULL";
    let mut most = 0;
    while broker.len() < BATCH as usize / 2 {
        most = most.max(t.scalar(leased).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        most,
        2 * i64::from(BATCH),
        "{backend:?}: the second batch was not claimed while the first was publishing"
    );

    assert!(
        broker
            .wait_for(written.len(), Duration::from_secs(30))
            .await
    );
    running.stop().await;
    let totals = account(&broker, &written);
    assert_eq!(totals.duplicates, 0, "{backend:?}: {totals:?}");
    t.drop_tables().await;
}

/// Fails the first attempt at one event, as a broker that nacks it would.
struct FailOnce {
    inner: InMemoryPublisher,
    seq: u32,
    failed: AtomicBool,
}

#[async_trait::async_trait]
impl Publisher for FailOnce {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        let event: AccountOpened = serde_json::from_str(message.data.get()).unwrap();
        if event.seq == self.seq && !self.failed.swap(true, Ordering::Relaxed) {
            return Err(PublishError::transient(Reason("nacked once".to_owned())));
        }
        self.inner.publish(message).await
    }
    fn name(&self) -> &str {
        "fail-once"
    }
}

async fn a_failure_gives_back_the_next_batchs_events_of_its_aggregate(backend: Backend) {
    let t = test_db(backend).await;
    let written = write(&t, 1, 3 * BATCH).await;
    let broker = InMemoryPublisher::new();
    // Slow enough that the second batch (events 11-20) is claimed, behind the first's leases, before event 5
    // fails: it must then wait for event 5's retry instead of going out.
    broker.set_delay(Duration::from_millis(20));
    let publisher = FailOnce {
        inner: broker.clone(),
        seq: 5,
        failed: AtomicBool::new(false),
    };
    let running = Running::start(relay(&t, publisher));
    assert!(
        broker
            .wait_for(written.len(), Duration::from_secs(30))
            .await,
        "{backend:?}: {} of {} arrived",
        broker.len(),
        written.len()
    );
    running.stop().await;
    let totals = account(&broker, &written); // first arrivals in order: 1-4, then 5 (retried), 6, ...
    assert_eq!(totals.duplicates, 0, "{backend:?}: {totals:?}");
    t.drop_tables().await;
}

/// Two relays, one aggregate, publishes of 200 ms and a lease of 1 s: a batch of ten would take 2 s, so past
/// half its lease a relay gives the rest back rather than publish events the other relay may claim meanwhile.
async fn no_publish_starts_that_could_outlast_the_lease(backend: Backend) {
    let mut config = fast_config();
    config.batch_size = BATCH;
    config.lease_duration = Duration::from_secs(1);
    let t = TestDb::with_config(backend, config).await;
    let written = write(&t, 1, BATCH).await;
    let broker = InMemoryPublisher::new();
    broker.set_delay(Duration::from_millis(200));
    let relays = [
        Running::start(relay(&t, broker.clone())),
        Running::start(relay(&t, broker.clone())),
    ];
    // Until every event is published and marked (counting arrivals would count duplicates).
    let drained = async {
        while t.outbox.count_unpublished(&t.db).await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), drained)
        .await
        .unwrap_or_else(|_| panic!("{backend:?}: not drained; {} arrived", broker.len()));
    for running in relays {
        running.stop().await;
    }
    let totals = account(&broker, &written);
    assert_eq!(
        totals.duplicates, 0,
        "{backend:?}: an event was published after its lease ran out: {totals:?}"
    );
    t.drop_tables().await;
}

/// Records when each publish of an event ran, from its call until it answered or was dropped. Event `seq` 1
/// answers after `first` the first time and at once after that; every other event never answers.
struct Timeline {
    first: Duration,
    runs: std::sync::Mutex<Vec<(uuid::Uuid, Instant, Option<Instant>)>>,
}

/// Closes its run when the publish answers or is dropped.
struct Run<'a> {
    timeline: &'a Timeline,
    index: usize,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.timeline.runs.lock().unwrap()[self.index].2 = Some(Instant::now());
    }
}

#[async_trait::async_trait]
impl Publisher for Timeline {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        let (index, again) = {
            let mut runs = self.runs.lock().unwrap();
            let again = runs.iter().any(|(id, ..)| *id == message.id);
            runs.push((message.id, Instant::now(), None));
            (runs.len() - 1, again)
        };
        let _run = Run {
            timeline: self,
            index,
        };
        let event: AccountOpened = serde_json::from_str(message.data.get()).unwrap();
        if event.seq == 1 {
            if !again {
                tokio::time::sleep(self.first).await;
            }
            Ok(())
        } else {
            std::future::pending().await
        }
    }

    fn name(&self) -> &str {
        "timeline"
    }
}

/// A publish bounded only by the publish timeout (80% of the lease here) could start late in the lease and run
/// past it, while another relay claims the event and publishes it too. Every publish must end before the lease
/// does, with a margin for the mark.
async fn no_publish_runs_past_the_lease_while_another_relay_may_claim_its_event(backend: Backend) {
    let mut config = fast_config();
    config.lease_duration = Duration::from_secs(2);
    let t = TestDb::with_config(backend, config).await;
    write(&t, 1, 2).await;
    let timeline = std::sync::Arc::new(Timeline {
        first: Duration::from_millis(900),
        runs: std::sync::Mutex::default(),
    });
    let relay = || {
        Relay::builder(t.db.clone(), t.outbox.clone(), timeline.clone())
            .publish_timeout(Duration::from_millis(1600))
            .build()
    };
    let relays = [Running::start(relay()), Running::start(relay())];
    tokio::time::sleep(Duration::from_secs(4)).await;
    for running in relays {
        running.stop().await;
    }
    let mut runs = timeline.runs.lock().unwrap().clone();
    runs.sort_by_key(|&(id, start, _)| (id, start));
    assert!(runs.len() >= 3, "{backend:?}: {runs:?}");
    for pair in runs.windows(2) {
        let ((id, _, end), (next_id, next_start, _)) = (pair[0], pair[1]);
        if id == next_id {
            let end = end.expect("every publish ended by the time the relays stopped");
            assert!(
                end <= next_start,
                "{backend:?}: event {id} was published by two relays at once"
            );
        }
    }
    t.drop_tables().await;
}
