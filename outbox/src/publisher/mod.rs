//! Publishers (the seed's `IEventPublisher`): where the relay sends messages.
//!
//! A publisher sends one [`Message`] and reports the broker's acknowledgement. The relay calls it concurrently
//! for different aggregates (and one at a time within an aggregate), so implementations should let many sends
//! be in flight at once.
//!
//! How a publisher fails decides what the relay does:
//! - [`PublishError::Unavailable`]: the broker cannot be reached. Nothing is wrong with the event: the relay
//!   gives the batch back without counting an attempt and backs off as a whole until the broker answers again,
//!   so an outage never burns the events' retry budgets.
//! - [`PublishError::Rejected`]: this event failed. Transient rejections are retried with backoff; permanent ones
//!   (too large, unroutable) become dead letters with the broker's reason.

mod memory;
mod stdout;

use std::fmt;

use crate::message::Message;

pub use memory::{InMemoryPublisher, PublishedMessage};
pub use stdout::StdoutPublisher;

/// Sends messages to a broker.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Sends `message` and waits for the broker's acknowledgement.
    async fn publish(&self, message: &Message) -> Result<(), PublishError>;

    /// Whether the broker is reachable now, for health checks and the relay's start-up check.
    async fn check(&self) -> Result<(), PublishError> {
        Ok(())
    }

    /// A short name for logs and health reports, e.g. `nats` or `memory`.
    fn name(&self) -> &str;
}

#[async_trait::async_trait]
impl<P: Publisher + ?Sized> Publisher for std::sync::Arc<P> {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        (**self).publish(message).await
    }
    async fn check(&self) -> Result<(), PublishError> {
        (**self).check().await
    }
    fn name(&self) -> &str {
        (**self).name()
    }
}

#[async_trait::async_trait]
impl<P: Publisher + ?Sized> Publisher for Box<P> {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        (**self).publish(message).await
    }
    async fn check(&self) -> Result<(), PublishError> {
        (**self).check().await
    }
    fn name(&self) -> &str {
        (**self).name()
    }
}

type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a publish failed, and so what the relay should do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker cannot be reached: back off the whole relay, count no attempt.
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] Cause),
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
