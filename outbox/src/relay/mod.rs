//! The relay (python-outbox-core's `OutboxPublisherBase`): a tokio worker that claims stored events, publishes them and
//! marks the outcome.
//!
//! ```no_run
//! # use outbox::publisher::StdoutPublisher;
//! # use outbox::relay::Relay;
//! # use outbox::repository::{OutboxRepository, connect};
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let db = connect("postgres://postgres@127.0.0.1/app").await?;
//! let relay = Relay::builder(db, OutboxRepository::new(), StdoutPublisher).build();
//! let handle = relay.handle(); // wake it, or watch it from a health check
//! let task = tokio::spawn(relay.run(async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }));
//! // ... serve requests; on Ctrl+C the relay stops claiming, finishes its batch, and returns.
//! task.await??;
//! # Ok(())
//! # }
//! ```
//!
//! - **Batches**: one claim and one mark statement per batch; the batch's messages are published with up to
//!   `max_in_flight` aggregates at once, and one after the other within an aggregate (each waits for the
//!   previous one's acknowledgement). On PostgreSQL `run` keeps two batches in flight: it claims the next one
//!   while the current one publishes (the claim hands it the events queued behind its own leases, see
//!   [`LeaseOwner`](crate::repository::LeaseOwner)), and an aggregate's events in the next batch wait for its
//!   events in the current one, or are given back if one of those failed.
//! - **Wake-up**: on PostgreSQL a LISTEN on the table's channel (a trigger NOTIFYs on insert, delivered at
//!   commit) wakes the relay within milliseconds; [`RelayHandle::wake`] does the same in-process; otherwise it
//!   polls every `poll_interval`. A full batch is followed by another at once.
//! - **Failures**: a broker that is unreachable stops the batch, gives its events back without counting an
//!   attempt, and backs the whole relay off (exponentially, with jitter); a rejected event is retried with
//!   backoff or made a dead letter as the [`ErrorHandler`] decides, and the later events of its aggregate wait
//!   for it while other aggregates flow.
//! - **Shutdown**: when the shutdown future completes, the relay stops claiming, lets the publishes in flight
//!   finish within `shutdown_timeout`, gives back what it did not publish, marks what it did, and returns.
mod batch;
mod builder;
mod chain;
mod handler;
mod heartbeat;
mod hold;
mod observe;
mod order;
mod presence;
mod report;
mod schedule;
mod wake;

use std::sync::Arc;
use std::time::Duration;

pub use builder::RelayBuilder;
pub use handler::{DefaultErrorHandler, ErrorHandler};
pub use heartbeat::RelayHandle;
pub use hold::HeldDestination;
pub use report::{BatchReport, RelayError};

use crate::config::OutboxConfig;
use crate::publisher::Publisher;
use crate::repository::Store;

/// Publishes stored events; see the [module docs](self).
#[must_use = "a relay does nothing until `run` or `publish_batch` is called"]
pub struct Relay {
    store: Store,
    publisher: Arc<dyn Publisher>,
    handler: Arc<dyn ErrorHandler>,
    max_in_flight: usize,
    unacknowledged_per_aggregate: usize,
    /// `None`: per backend (see the builder).
    max_batches_in_flight: Option<usize>,
    shutdown_timeout: Duration,
    publish_timeout: Option<Duration>,
    listen: bool,
    name: String,
    heartbeat_interval: Duration,
    /// Where the payload schemas are served; see [`RelayBuilder::dataschema_base`].
    dataschema_base: Option<String>,
    handle: RelayHandle,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("table", &self.store.repository().table())
            .field("publisher", &self.publisher.name())
            .field("max_in_flight", &self.max_in_flight)
            .field("max_batches_in_flight", &self.max_batches_in_flight)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A handle to wake the relay and to check it is alive (for [`HealthCheck`](crate::health::HealthCheck)).
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    fn config(&self) -> &OutboxConfig {
        self.store.repository().config()
    }

    /// What `run` checks before its first batch: the registry has no conflicting types, the outbox table
    /// exists (under [`Delivery::Cursor`](crate::Delivery::Cursor): with as many partitions as configured, its
    /// earlier pending events adopted), and the broker answers (an unreachable broker is logged, not fatal: the
    /// relay waits for it).
    pub async fn check(&self) -> Result<(), RelayError> {
        let registry = self.store.repository().registry();
        registry.validate()?;
        let entries = registry.entries();
        if entries.is_empty() {
            tracing::warn!(
                target: "outbox",
                "no event types are registered: every claimed event will become a dead letter; is the crate that \
                 defines them linked (see outbox::registry)?"
            );
        }
        let types: Vec<String> = entries
            .iter()
            .map(|e| format!("{}@{}", e.meta.event_type, e.meta.data_version))
            .collect();
        tracing::info!(target: "outbox", registered = entries.len(), types = %types.join(", "), "event types registered");
        self.store.check().await?;
        // A partition count that disagrees with the table's, a database the cursor does not run on, or a rows
        // relay on a table the cursor delivers stops the relay here; anything else that keeps the cursors from
        // being made (a busy SQLite file, relays starting together) is tried again by every batch.
        match self.store.prepare().await {
            Err(
                error @ (crate::repository::RepositoryError::PartitionMismatch { .. }
                | crate::repository::RepositoryError::CursorUnsupported { .. }
                | crate::repository::RepositoryError::DeliveredByCursor { .. }),
            ) => {
                return Err(error.into());
            }
            Err(error) => {
                tracing::warn!(target: "outbox", %error, "table not ready at start; the relay will keep trying");
            }
            Ok(()) => {}
        }
        if let Err(error) = self.publisher.check().await {
            tracing::error!(
                target: "outbox",
                publisher = self.publisher.name(),
                %error,
                "broker unreachable at start; the relay will keep trying"
            );
        }
        Ok(())
    }
}
