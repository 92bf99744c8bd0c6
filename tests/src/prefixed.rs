//! A publisher wrapper that keeps test runs apart on shared brokers.

use outbox::Message;
use outbox::publisher::{Acknowledgement, PublishError, Publisher};

/// Publishes under `prefix` + destination, so parallel test runs never share a subject, queue, stream or topic.
pub struct Prefixed<P> {
    pub inner: P,
    pub prefix: String,
}

impl<P> Prefixed<P> {
    fn prefixed(&self, message: &Message) -> Message {
        let mut message = message.clone();
        message.destination = format!("{}{}", self.prefix, message.destination);
        message
    }
}

#[async_trait::async_trait]
impl<P: Publisher> Publisher for Prefixed<P> {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        self.inner.publish(&self.prefixed(message)).await
    }
    async fn send(&self, message: &Message) -> Result<Acknowledgement, PublishError> {
        self.inner.send(&self.prefixed(message)).await
    }
    async fn check(&self) -> Result<(), PublishError> {
        self.inner.check().await
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}
