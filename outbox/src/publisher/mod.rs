//! Publishers (python-outbox-core's `IEventPublisher`): where the relay sends messages.
//!
//! A publisher sends one [`Message`] and reports the broker's acknowledgement. The relay calls it concurrently
//! for different aggregates (and one at a time within an aggregate), so implementations should let many sends
//! be in flight at once.
//!
//! How a publisher fails decides what the relay does:
//! - [`PublishError::Unavailable`]: the broker as a whole cannot take messages (unreachable, a lost connection,
//!   Redis `LOADING` or `READONLY`). Nothing is wrong with the event: the relay gives the batch back without
//!   counting an attempt and backs off as a whole until the broker answers again, so an outage never burns the
//!   events' retry budgets.
//! - [`PublishError::DestinationUnavailable`]: one destination cannot take messages (no NATS stream captures the
//!   subject, a Kafka topic that is missing or cannot be created). The relay holds that destination only: its
//!   events wait, without an attempt counted, while every other destination flows, and the hold is in the logs
//!   and the relay's health.
//! - [`PublishError::Rejected`]: this event failed. Transient rejections are retried with backoff; permanent ones
//!   (too large, unroutable, a value the broker's protocol cannot carry) become dead letters with the broker's
//!   reason.
//!
//! A publisher must never panic on a message's content: map it, encode it, or reject it. (The relay still
//! catches a panic while publishing one event and makes that event a dead letter with the panic's message.)

#[cfg(feature = "kafka")]
mod kafka;
mod memory;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "rabbitmq")]
pub(crate) mod rabbitmq;
#[cfg(feature = "redis")]
pub(crate) mod redis;
mod stdout;
mod url;

use std::fmt;

use crate::cloudevents;
use crate::message::Message;

#[cfg(feature = "kafka")]
pub use kafka::KafkaPublisher;
pub use memory::{InMemoryPublisher, PublishedMessage};
#[cfg(feature = "nats")]
pub use nats::NatsPublisher;
#[cfg(feature = "rabbitmq")]
pub use rabbitmq::RabbitMqPublisher;
#[cfg(feature = "redis")]
pub use redis::{RedisPublisher, faststream_envelope};
pub use stdout::StdoutPublisher;
pub use url::from_url;

/// The broker's answer to a message already sent: resolves when it acknowledges or refuses the message.
pub type Acknowledgement = futures_util::future::BoxFuture<'static, Result<(), PublishError>>;

/// Sends messages to a broker.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Sends `message` and waits for the broker's acknowledgement.
    async fn publish(&self, message: &Message) -> Result<(), PublishError>;

    /// Sends `message` without waiting for its acknowledgement, and returns the acknowledgement to wait for; the
    /// relay uses it to keep several of an aggregate's events unacknowledged at once
    /// ([`RelayBuilder::unacknowledged_per_aggregate`](crate::relay::RelayBuilder::unacknowledged_per_aggregate)).
    ///
    /// An implementation must guarantee that messages sent one after the other reach their destination in that
    /// order unless one is refused: RabbitMQ does for one channel and one queue, NATS JetStream for one
    /// connection and one stream, Kafka's idempotent producer for one partition. The default waits for the
    /// acknowledgement ([`publish`](Self::publish)), so a publisher that cannot promise that order never has two
    /// of an aggregate's messages in flight. A publisher that wraps another (to rename destinations, count, trace)
    /// must forward `send` as well, or every message through it waits for its acknowledgement.
    async fn send(&self, message: &Message) -> Result<Acknowledgement, PublishError> {
        self.publish(message).await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    /// Whether the broker is reachable now, for health checks and the relay's start-up check.
    async fn check(&self) -> Result<(), PublishError> {
        Ok(())
    }

    /// A short name for logs and health reports, e.g. `nats` or `memory`.
    fn name(&self) -> &str;
}

/// Shared and boxed publishers are publishers: `Arc<dyn Publisher>` for one publisher serving a relay and a
/// health check, `Box<dyn Publisher>` from [`from_url`].
macro_rules! forward_publisher {
    ($($pointer:ident),*) => {$(
        #[async_trait::async_trait]
        impl<P: Publisher + ?Sized> Publisher for $pointer<P> {
            async fn publish(&self, message: &Message) -> Result<(), PublishError> {
                (**self).publish(message).await
            }
            async fn send(&self, message: &Message) -> Result<Acknowledgement, PublishError> {
                (**self).send(message).await
            }
            async fn check(&self) -> Result<(), PublishError> {
                (**self).check().await
            }
            fn name(&self) -> &str {
                (**self).name()
            }
        }
    )*};
}

use std::sync::Arc;
forward_publisher!(Arc, Box);

type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a publish failed, and so what the relay should do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker cannot be reached: back off the whole relay, count no attempt.
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// One destination cannot take messages: hold it, count no attempt, let the others flow.
    #[error("destination `{destination}` unavailable: {cause}")]
    DestinationUnavailable {
        /// The topic, subject, stream or routing key.
        destination: String,
        /// The broker's reason.
        #[source]
        cause: Cause,
    },
    /// The broker refused this event.
    #[error("{} rejection: {cause}", if *.permanent { "permanent" } else { "transient" })]
    Rejected {
        /// Whether no retry can succeed (too large, unroutable, invalid).
        permanent: bool,
        /// The broker's reason.
        #[source]
        cause: Cause,
    },
}

impl PublishError {
    /// The broker cannot be reached.
    pub fn unavailable(cause: impl Into<Cause>) -> Self {
        Self::Unavailable(cause.into())
    }

    /// The destination `destination` cannot take messages now.
    pub fn destination_unavailable(
        destination: impl Into<String>,
        cause: impl Into<Cause>,
    ) -> Self {
        Self::DestinationUnavailable {
            destination: destination.into(),
            cause: cause.into(),
        }
    }

    /// This event failed, and a retry may succeed.
    pub fn transient(cause: impl Into<Cause>) -> Self {
        Self::Rejected {
            permanent: false,
            cause: cause.into(),
        }
    }

    /// This event failed for good.
    pub fn permanent(cause: impl Into<Cause>) -> Self {
        Self::Rejected {
            permanent: true,
            cause: cause.into(),
        }
    }

    /// Whether the broker itself is unavailable (as opposed to this event being refused).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Whether one destination, not the broker or this event, is the trouble.
    pub fn is_destination_unavailable(&self) -> bool {
        matches!(self, Self::DestinationUnavailable { .. })
    }

    /// Whether no retry of this event can succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Rejected {
                permanent: true,
                ..
            }
        )
    }
}

/// A plain-text cause, for publishers whose client reports errors as strings.
#[derive(Debug)]
pub struct Reason(pub String);

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Reason {}

/// A publisher that could not be set up: which broker, where (password hidden), and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {broker} at `{url}`: {cause}")]
pub struct ConnectError {
    /// `kafka`, `rabbitmq`, `nats`, `redis`, ...
    pub broker: &'static str,
    /// The address, with any password replaced by `***`.
    pub url: String,
    /// What the client said.
    #[source]
    pub cause: Cause,
}

impl ConnectError {
    /// An error connecting to `broker` at `url`.
    pub fn new(broker: &'static str, url: &str, cause: impl Into<Cause>) -> Self {
        Self {
            broker,
            url: crate::redact::password(url),
            cause: cause.into(),
        }
    }
}

/// How a message is laid out on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(dead_code)] // every variant is used once any broker feature is on
pub(crate) enum Encoding {
    /// Body = the data as JSON (`application/json`), attributes in headers: what FastStream decodes.
    #[default]
    Binary,
    /// Body = the whole CloudEvent as JSON (`application/cloudevents+json`).
    Structured,
}

impl Encoding {
    /// The headers a broker that carries the content type as a header sends: `binary`'s CloudEvents headers, or
    /// the structured content type and the message's own headers.
    #[allow(dead_code)] // used by the Kafka and Redis publishers
    pub(crate) fn headers(
        self,
        message: &Message,
        binary: &cloudevents::BinaryMode,
    ) -> Vec<(String, String)> {
        match self {
            Self::Binary => binary.headers(message),
            Self::Structured => {
                let mut headers = vec![(
                    "content-type".to_owned(),
                    cloudevents::STRUCTURED_CONTENT_TYPE.to_owned(),
                )];
                headers.extend(message.headers.iter().cloned());
                headers
            }
        }
    }

    #[allow(dead_code)] // used by the broker publishers
    pub(crate) fn body(self, message: &Message) -> Vec<u8> {
        match self {
            Self::Binary => message.data.get().as_bytes().to_vec(),
            Self::Structured => cloudevents::to_structured(message),
        }
    }
}
