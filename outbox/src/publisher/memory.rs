//! A publisher that keeps messages in memory: for tests and demos, with knobs to make it fail or slow.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{PublishError, Publisher, Reason};
use crate::cloudevents::BinaryMode;
use crate::message::Message;

type RejectFn = dyn Fn(&Message) -> Option<String> + Send + Sync;

/// Records every message it is given, with its binary-mode headers, in publish order.
///
/// It can be told to fail: the next N sends, a random fraction of sends, permanently for messages a predicate
/// picks, or entirely (broker down); to lose acknowledgements (deliver, then report failure, the way a crash
/// between a broker's ack and the relay's mark produces a duplicate); and to be slow. Clones share one state.
///
/// ```
/// # use outbox::publisher::{InMemoryPublisher, Publisher};
/// # use outbox::{EventEnvelope, OutboxEvent, cloudevents::BinaryMode};
/// # #[derive(serde::Serialize, serde::Deserialize, OutboxEvent)]
/// # #[outbox(type = "com.example.thing.done")]
/// # struct ThingDone { #[outbox(aggregate_id)] id: u32 }
/// # tokio_test(async {
/// let broker = InMemoryPublisher::new();
/// let message = EventEnvelope::new(ThingDone { id: 1 }).to_message().unwrap();
/// broker.fail_next(1);
/// assert!(broker.publish(&message).await.is_err());
/// assert!(broker.publish(&message).await.is_ok());
/// assert_eq!(broker.messages().len(), 1);
/// // Headers as the binary mode renders them: HTTP's `ce-` unless told otherwise.
/// let header = ("ce-type".to_owned(), "com.example.thing.done".to_owned());
/// assert!(broker.messages()[0].headers.contains(&header));
/// let kafka = InMemoryPublisher::new().with_mode(BinaryMode::KAFKA);
/// kafka.publish(&message).await.unwrap();
/// let header = ("ce_type".to_owned(), "com.example.thing.done".to_owned());
/// assert!(kafka.messages()[0].headers.contains(&header));
/// # });
/// # fn tokio_test(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Default)]
pub struct InMemoryPublisher {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    messages: Mutex<Vec<Accepted>>,
    attempts: AtomicU64,
    lost_acks: AtomicU64,
    fail_next: AtomicU64,
    unavailable: AtomicBool,
    knobs: Mutex<Knobs>,
    delivered: tokio::sync::Notify,
}

#[derive(Default)]
struct Knobs {
    fail_fraction: f64,
    lose_ack_fraction: f64,
    delay: Duration,
    reject: Option<Arc<RejectFn>>,
    mode: Option<BinaryMode>,
}

/// One message the in-memory publisher accepted.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PublishedMessage {
    /// The message as the relay handed it over.
    pub message: Message,
    /// Its headers in binary mode (HTTP-style `ce-` headers unless [`InMemoryPublisher::with_mode`] says otherwise).
    pub headers: Vec<(String, String)>,
    /// When it was accepted.
    pub at: Instant,
}

/// A message as kept: its headers are rendered when read, since rendering them was most of a publish's cost
/// (callgrind) and a test reads only some of what it publishes.
struct Accepted {
    message: Message,
    mode: BinaryMode,
    at: Instant,
}

impl std::fmt::Debug for InMemoryPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryPublisher")
            .field("messages", &self.len())
            .field("attempts", &self.attempts())
            .finish_non_exhaustive()
    }
}

impl InMemoryPublisher {
    /// An empty publisher that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records headers as `mode` renders them.
    pub fn with_mode(self, mode: BinaryMode) -> Self {
        self.knobs().mode = Some(mode);
        self
    }

    /// Every accepted message, in publish order.
    pub fn messages(&self) -> Vec<PublishedMessage> {
        self.inner
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|accepted| PublishedMessage {
                message: accepted.message.clone(),
                headers: accepted.mode.headers(&accepted.message),
                at: accepted.at,
            })
            .collect()
    }

    /// How many messages were accepted.
    pub fn len(&self) -> usize {
        self.inner
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no message was accepted yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the accepted messages.
    pub fn clear(&self) {
        self.inner
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// How many publishes were attempted, successful or not.
    pub fn attempts(&self) -> u64 {
        self.inner.attempts.load(Ordering::Relaxed)
    }

    /// How many acknowledgements [`lose_acks`](Self::lose_acks) dropped: each is a message delivered that the
    /// relay will deliver again.
    pub fn lost_acks(&self) -> u64 {
        self.inner.lost_acks.load(Ordering::Relaxed)
    }

    /// Makes the next `n` sends fail with a transient rejection.
    pub fn fail_next(&self, n: u64) {
        self.inner.fail_next.store(n, Ordering::Relaxed);
    }

    /// Makes each send fail with a transient rejection with probability `fraction` (0.0 to 1.0).
    pub fn fail_fraction(&self, fraction: f64) {
        self.knobs().fail_fraction = fraction;
    }

    /// Makes each accepted send report a transient failure anyway with probability `fraction`: the message is
    /// delivered, the acknowledgement lost, so the relay publishes it again (a duplicate).
    pub fn lose_acks(&self, fraction: f64) {
        self.knobs().lose_ack_fraction = fraction;
    }

    /// Rejects, permanently, every message for which `reason` returns a reason.
    pub fn reject_when(&self, reason: impl Fn(&Message) -> Option<String> + Send + Sync + 'static) {
        self.knobs().reject = Some(Arc::new(reason));
    }

    /// Simulates the broker being down (`true`) or back (`false`).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.inner.unavailable.store(unavailable, Ordering::Relaxed);
    }

    /// Makes every send take `delay` before it is acknowledged.
    pub fn set_delay(&self, delay: Duration) {
        self.knobs().delay = delay;
    }

    /// Waits until at least `n` messages were accepted, or `timeout` passed; returns whether they were.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.delivered.notified();
            if self.len() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.len() >= n;
            }
        }
    }

    fn knobs(&self) -> std::sync::MutexGuard<'_, Knobs> {
        self.inner
            .knobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Publisher for InMemoryPublisher {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        self.inner.attempts.fetch_add(1, Ordering::Relaxed);
        let (delay, fail_fraction, lose_ack_fraction, reject, mode) = {
            let knobs = self.knobs();
            (
                knobs.delay,
                knobs.fail_fraction,
                knobs.lose_ack_fraction,
                knobs.reject.clone(),
                knobs.mode.clone(),
            )
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.inner.unavailable.load(Ordering::Relaxed) {
            return Err(PublishError::unavailable(Reason(
                "in-memory broker is down".into(),
            )));
        }
        if let Some(reason) = reject.and_then(|r| r(message)) {
            return Err(PublishError::permanent(Reason(reason)));
        }
        let failing = self
            .inner
            .fail_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if failing || (fail_fraction > 0.0 && fastrand::f64() < fail_fraction) {
            return Err(PublishError::transient(Reason(
                "in-memory broker refused the message".into(),
            )));
        }
        self.inner
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Accepted {
                message: message.clone(),
                mode: mode.unwrap_or(BinaryMode::HTTP),
                at: Instant::now(),
            });
        self.inner.delivered.notify_waiters();
        if lose_ack_fraction > 0.0 && fastrand::f64() < lose_ack_fraction {
            self.inner.lost_acks.fetch_add(1, Ordering::Relaxed);
            return Err(PublishError::transient(Reason(
                "acknowledgement lost".into(),
            )));
        }
        Ok(())
    }

    async fn check(&self) -> Result<(), PublishError> {
        if self.inner.unavailable.load(Ordering::Relaxed) {
            Err(PublishError::unavailable(Reason(
                "in-memory broker is down".into(),
            )))
        } else {
            Ok(())
        }
    }

    fn name(&self) -> &str {
        "memory"
    }
}
