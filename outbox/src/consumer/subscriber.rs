//! Where a consumer's messages come from: a broker subscription behind one small trait, and the in-memory one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::delivery::{Delivery, DeliveryError};
use crate::cloudevents::BinaryMode;
use crate::message::Message;

/// One message from a subscription: what it says, and how to settle it with the broker.
pub struct Received {
    /// The message read as a CloudEvent, or why it cannot be (it then becomes a dead letter).
    pub delivery: Result<Delivery, DeliveryError>,
    /// The message as received, kept for a dead letter when it cannot be read.
    pub raw: String,
    /// Settles the message with the broker.
    pub settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("delivery", &self.delivery)
            .finish_non_exhaustive()
    }
}

/// Settling one message: acknowledged (done with, never to come again) or given back for redelivery.
#[async_trait::async_trait]
pub trait Settle: Send + Sync {
    /// The message is done with: applied, a duplicate, or kept as a dead letter.
    async fn ack(self: Box<Self>) -> Result<(), SubscribeError>;
    /// The message was not handled (the consumer is stopping): the broker redelivers it.
    async fn give_back(self: Box<Self>) -> Result<(), SubscribeError>;
}

/// A subscription to a broker: the messages of one consumer.
#[async_trait::async_trait]
pub trait Subscriber: Send {
    /// The next message; `None` once the subscription has ended. Cancellation-safe: a message is not lost if the
    /// future is dropped before it completes.
    async fn receive(&mut self) -> Result<Option<Received>, SubscribeError>;
}

#[async_trait::async_trait]
impl Subscriber for Box<dyn Subscriber> {
    async fn receive(&mut self) -> Result<Option<Received>, SubscribeError> {
        (**self).receive().await
    }
}

/// A subscription failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("subscription error: {0}")]
pub struct SubscribeError(pub String);

/// An in-process queue of messages, for tests and demos: [`InMemorySubscription::send`] puts a message in as a
/// publisher would (binary mode, HTTP-style headers), a message given back goes to the front again, and
/// [`acknowledged`](InMemorySubscription::acknowledged) counts what was settled for good.
#[derive(Clone, Default)]
pub struct InMemorySubscription {
    inner: Arc<Queue>,
}

#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    arrived: Notify,
}

/// A message as it waits in the queue: headers and body.
type Raw = (Vec<(String, String)>, Vec<u8>);

#[derive(Default)]
struct QueueState {
    messages: VecDeque<Raw>,
    acknowledged: u64,
    given_back: u64,
    closed: bool,
}

impl InMemorySubscription {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `message` at the end of the queue, as a binary-mode publisher would render it.
    pub fn send(&self, message: &Message) {
        let headers = BinaryMode::HTTP.headers(message);
        self.send_raw(headers, message.data.get().as_bytes().to_vec());
    }

    /// Puts a message of any headers and body at the end of the queue (to inject what no publisher would send).
    pub fn send_raw(&self, headers: Vec<(String, String)>, body: Vec<u8>) {
        self.state().messages.push_back((headers, body));
        self.inner.arrived.notify_one();
    }

    /// Ends the subscription once the queue is empty: the consumer's `run` then returns.
    pub fn close(&self) {
        self.state().closed = true;
        self.inner.arrived.notify_one();
    }

    /// How many messages were acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.state().acknowledged
    }

    /// How many messages were given back for redelivery.
    pub fn given_back(&self) -> u64 {
        self.state().given_back
    }

    /// How many messages wait in the queue.
    pub fn len(&self) -> usize {
        self.state().messages.len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A subscriber reading this queue.
    pub fn subscriber(&self) -> InMemorySubscriber {
        InMemorySubscriber {
            queue: self.clone(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads an [`InMemorySubscription`].
pub struct InMemorySubscriber {
    queue: InMemorySubscription,
}

#[async_trait::async_trait]
impl Subscriber for InMemorySubscriber {
    async fn receive(&mut self) -> Result<Option<Received>, SubscribeError> {
        loop {
            // Registered before looking, so a message sent in between still wakes this wait.
            let arrived = self.queue.inner.arrived.notified();
            {
                let mut state = self.queue.state();
                if let Some((headers, body)) = state.messages.pop_front() {
                    drop(state);
                    return Ok(Some(received(&self.queue, headers, body)));
                }
                if state.closed {
                    return Ok(None);
                }
            }
            arrived.await;
        }
    }
}

fn received(
    queue: &InMemorySubscription,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Received {
    let delivery = Delivery::from_headers(&headers, &body);
    Received {
        delivery,
        raw: String::from_utf8_lossy(&body).into_owned(),
        settle: Box::new(InMemorySettle {
            queue: queue.clone(),
            message: Some((headers, body)),
        }),
    }
}

struct InMemorySettle {
    queue: InMemorySubscription,
    message: Option<Raw>,
}

#[async_trait::async_trait]
impl Settle for InMemorySettle {
    async fn ack(self: Box<Self>) -> Result<(), SubscribeError> {
        self.queue.state().acknowledged += 1;
        Ok(())
    }

    async fn give_back(mut self: Box<Self>) -> Result<(), SubscribeError> {
        let mut state = self.queue.state();
        state.given_back += 1;
        if let Some(message) = self.message.take() {
            state.messages.push_front(message);
        }
        drop(state);
        self.queue.inner.arrived.notify_one();
        Ok(())
    }
}
