//! A publisher wrapper that keeps test runs apart on shared brokers.

use outbox::Message;
use outbox::publisher::{PublishError, Publisher};

/// Publishes under `prefix` + destination, so parallel test runs never share a subject, queue, stream or topic.
pub struct Prefixed<P> {
    pub inner: P,
    pub prefix: String,
}

#[async_trait::async_trait]
impl<P: Publisher> Publisher for Prefixed<P> {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        let mut message = message.clone();
        message.destination = format!("{}{}", self.prefix, message.destination);
        self.inner.publish(&message).await
    }
    async fn check(&self) -> Result<(), PublishError> {
        self.inner.check().await
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}
