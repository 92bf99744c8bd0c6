//! What a batch did, and why a relay could not start or run.

use std::time::Duration;

use crate::registry::RegistryError;
use crate::repository::RepositoryError;

/// What one batch did (python-outbox-core's `publish_batch` returned the published count).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchReport {
    /// Events claimed, including rows dead-lettered because they could not be decoded.
    pub claimed: u64,
    /// Events the broker acknowledged and that were marked published.
    pub published: u64,
    /// Failed publishes scheduled for another attempt.
    pub failed: u64,
    /// Events made dead letters (given up on, or undecodable).
    pub dead_lettered: u64,
    /// Events held back, with no attempt counted, because their destination cannot take messages now (see
    /// [`HeldDestination`](super::HeldDestination)).
    pub held: u64,
    /// Events given back unpublished: after an earlier failure of their aggregate, a broker outage, or shutdown.
    pub released: u64,
    /// Events this relay published but could not mark because its lease had expired and another relay claimed
    /// them: they will be published again (a duplicate, never a loss).
    pub fenced_out: u64,
    /// Set when the broker was unreachable: the relay backs off before the next batch.
    pub publisher_unavailable: Option<String>,
    /// Claim to mark.
    pub duration: Duration,
}

/// Why the relay could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The event registry is inconsistent (two Rust types claim one type and version).
    #[error("the relay cannot start: {0}")]
    Registry(#[from] RegistryError),
    /// The database or the outbox table is not usable.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}
