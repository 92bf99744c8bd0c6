//! Sending an aggregate's events ahead of their acknowledgements (`RelayBuilder::unacknowledged_per_aggregate`):
//! bounded by the setting, in order while the broker acknowledges everything, and with no loss when it refuses
//! an event sent ahead of others, which then arrive first, as documented.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use outbox::Message;
use outbox::publisher::{Acknowledgement, PublishError, Publisher, Reason};
use outbox::relay::Relay;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::AccountOpened;
use outbox_tests::on_every_backend;
use outbox_tests::running::Running;

use crate::accounting::{fast_config, write};

on_every_backend!(
    events_are_sent_ahead_of_their_acknowledgements_up_to_the_limit,
    a_refused_event_sent_ahead_arrives_after_the_later_ones_and_nothing_is_lost,
);

/// A broker that stores a message as it is sent (in send order, as RabbitMQ and JetStream do for one
/// connection) and acknowledges it 10 ms after the relay starts waiting; it refuses the first sending of
/// event `refuse`, which it then does not store.
struct SendsAhead {
    stored: Mutex<Vec<u32>>,
    unacknowledged: std::sync::Arc<AtomicUsize>,
    most_unacknowledged: std::sync::Arc<AtomicUsize>,
    refuse: Option<u32>,
    refused: AtomicBool,
}

impl SendsAhead {
    fn new(refuse: Option<u32>) -> Self {
        Self {
            stored: Mutex::new(Vec::new()),
            unacknowledged: Default::default(),
            most_unacknowledged: Default::default(),
            refuse,
            refused: AtomicBool::new(false),
        }
    }

    fn stored(&self) -> Vec<u32> {
        self.stored.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Publisher for SendsAhead {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        self.send(message).await?.await
    }

    async fn send(&self, message: &Message) -> Result<Acknowledgement, PublishError> {
        let seq = serde_json::from_str::<AccountOpened>(message.data.get())
            .unwrap()
            .seq;
        let refuse = self.refuse == Some(seq) && !self.refused.swap(true, Ordering::Relaxed);
        if !refuse {
            self.stored.lock().unwrap().push(seq);
        }
        let now = self.unacknowledged.fetch_add(1, Ordering::Relaxed) + 1;
        self.most_unacknowledged.fetch_max(now, Ordering::Relaxed);
        let unacknowledged = self.unacknowledged.clone();
        Ok(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            unacknowledged.fetch_sub(1, Ordering::Relaxed);
            if refuse {
                Err(PublishError::transient(Reason("nacked".to_owned())))
            } else {
                Ok(())
            }
        }))
    }

    fn name(&self) -> &str {
        "sends-ahead"
    }
}

/// Runs one relay (one batch in flight, `ahead` unacknowledged per aggregate) until `broker` stored `events`.
async fn drain(t: &TestDb, broker: &std::sync::Arc<SendsAhead>, ahead: usize, events: usize) {
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone())
        .max_batches_in_flight(1)
        .unacknowledged_per_aggregate(ahead)
        .build();
    let running = Running::start(relay);
    let stored = async {
        while broker.stored().len() < events || t.outbox.count_unpublished(&t.db).await.unwrap() > 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let done = tokio::time::timeout(Duration::from_secs(30), stored).await;
    running.stop().await;
    assert!(done.is_ok(), "not drained: stored {:?}", broker.stored());
}

async fn events_are_sent_ahead_of_their_acknowledgements_up_to_the_limit(backend: Backend) {
    for ahead in [1, 4] {
        let t = TestDb::with_config(backend, fast_config()).await;
        write(&t, 1, 20).await;
        let broker = std::sync::Arc::new(SendsAhead::new(None));
        drain(&t, &broker, ahead, 20).await;
        assert_eq!(
            broker.most_unacknowledged.load(Ordering::Relaxed),
            ahead,
            "{backend:?}: at most {ahead} unacknowledged, and that many when the batch allows"
        );
        assert_eq!(broker.stored(), (1..=20).collect::<Vec<_>>(), "{backend:?}");
        t.drop_tables().await;
    }
}

async fn a_refused_event_sent_ahead_arrives_after_the_later_ones_and_nothing_is_lost(
    backend: Backend,
) {
    let t = TestDb::with_config(backend, fast_config()).await;
    write(&t, 1, 8).await;
    let broker = std::sync::Arc::new(SendsAhead::new(Some(3)));
    drain(&t, &broker, 4, 8).await;
    // 1-4 are sent at once, 5 and 6 as 1 and 2 are acknowledged; 3 is refused, so 7 and 8 are not sent and go
    // back with 3, which is retried first. 4-6 were stored already: they arrive before 3.
    assert_eq!(broker.stored(), [1, 2, 4, 5, 6, 3, 7, 8], "{backend:?}");
    t.drop_tables().await;
}
