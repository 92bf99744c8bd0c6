//! The sea-orm repository (python-outbox-core's `IOutboxRepository`): events stored in the caller's transaction, claimed
//! by relays under leases, marked in one statement per batch.
//!
//! ```no_run
//! # use outbox::{OutboxEvent, repository::OutboxRepository};
//! # use sea_orm::TransactionTrait;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize, OutboxEvent)]
//! # #[outbox(type = "com.example.user.created")]
//! # struct UserCreated { #[outbox(aggregate_id)] user_id: u64 }
//! # async fn example(db: sea_orm::DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
//! let outbox = OutboxRepository::new();
//! let txn = db.begin().await?;
//! // ... the domain change, on `txn` ...
//! outbox.add_event(&txn, UserCreated { user_id: 7 }).await?; // no commit here
//! txn.commit().await?; // the change and its event are stored together, or neither is
//! # Ok(())
//! # }
//! ```
//!
//! How claims stay safe with several relays, and why the table looks the way it does, is in `docs/design.md`.
//!
//! One file per concept: adding events here, and with the caller's own statement in `change.rs`; claiming in
//! `claim.rs` (with each backend's claim, statements and `Dialect` in `postgres.rs`, `mysql.rs` and `sqlite.rs`,
//! picked in `dialect.rs`), marking outcomes in `mark.rs`, what operators do in `admin.rs`, the relays' own rows
//! in `relays.rs`, the shared SQL in `sql.rs`, and what the relay sees in `store.rs`.

mod admin;
mod change;
mod claim;
mod connect;
mod cursor;
mod dialect;
mod error;
mod inbox;
mod lease;
mod mark;
mod mysql;
mod postgres;
mod relays;
mod row;
mod scan;
mod sql;
mod sqlite;
mod store;
mod wake;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{
    AccessMode, ConnectionTrait, DbBackend, IsolationLevel, QueryResult, Statement,
    TransactionTrait, Value,
};
use uuid::Uuid;

pub use crate::partition::partition_of;
pub use admin::{Backlog, DeadLetterFilter, OutboxStats, PartitionLag};
pub use change::{ChangeAndEvent, ChangeAndEvents};
pub use claim::{Claim, ClaimedEvent, DeadLettered};
pub(crate) use claim::{Leased, LeasedRow, log_undecodable};
pub use connect::connect;
pub(crate) use dialect::{Dialect, SchemaObject};
pub use error::RepositoryError;
pub use inbox::{Inbox, InboxDeadLetter, NewDeadLetter, Recorded};
pub use lease::{ClaimToken, LeaseOwner};
pub use mark::{Failure, FailureOutcome};
pub(crate) use relays::Heartbeat;
pub use relays::{ALIVE_WITHIN, RelayInfo};
pub use row::{EventStatus, StoredEvent};
pub(crate) use sql::TableName;
pub(crate) use store::{Store, WakeUps};
pub(crate) use wake::Since;

use crate::config::OutboxConfig;
use crate::envelope::{AsDynEvent, EventEnvelope};
use crate::registry::Registry;
use scan::ScanStart;

type Result<T> = std::result::Result<T, RepositoryError>;

/// The outbox table, and every operation on it.
///
/// Cheap to clone (one `Arc`). Every method takes the connection or transaction to run on, so events are
/// written in the caller's transaction and the repository never commits one it did not open.
#[derive(Clone, Debug)]
pub struct OutboxRepository {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    table: TableName,
    config: OutboxConfig,
    registry: &'static Registry,
    scan: ScanStart,
    /// Whether the MySQL-family server is MariaDB (it can end idle transactions), learnt at the first claim.
    mariadb: std::sync::OnceLock<bool>,
    /// Whether the MySQL-family table numbers events as they are inserted (its `_seq` trigger), learnt at the
    /// first `add_event` under the cursor.
    sequence_trigger: std::sync::OnceLock<bool>,
}

impl Default for OutboxRepository {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds an [`OutboxRepository`] with a non-default table, configuration or registry.
#[derive(Debug, Default)]
#[must_use]
pub struct RepositoryBuilder {
    table: Option<String>,
    config: Option<OutboxConfig>,
    registry: Option<&'static Registry>,
}

impl RepositoryBuilder {
    /// The table name (default `outbox_events`); the migration must have created it under the same name.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = Some(name.into());
        self
    }

    /// Retry, lease and delete-on-publish settings (default [`OutboxConfig::default`]).
    pub fn config(mut self, config: OutboxConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// The registry claimed rows are decoded with (default [`Registry::global`]).
    pub fn registry(mut self, registry: &'static Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Checks the table name and the configuration.
    pub fn build(self) -> std::result::Result<OutboxRepository, BuildError> {
        let table = match self.table {
            Some(name) => TableName::new(&name)?,
            None => TableName::default(),
        };
        let config = self.config.unwrap_or_default();
        config.validate()?;
        Ok(OutboxRepository {
            inner: Arc::new(Inner {
                table,
                config,
                registry: self.registry.unwrap_or_else(Registry::global),
                scan: ScanStart::default(),
                mariadb: std::sync::OnceLock::new(),
                sequence_trigger: std::sync::OnceLock::new(),
            }),
        })
    }
}

/// A repository that could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The table name cannot be used.
    #[error(transparent)]
    Table(#[from] RepositoryError),
    /// The configuration is invalid.
    #[error("invalid outbox configuration:\n{0}")]
    Config(#[from] crate::ConfigError),
}

impl OutboxRepository {
    /// A repository on the default table (`outbox_events`) with the default configuration and the global registry.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                table: TableName::default(),
                config: OutboxConfig::default(),
                registry: Registry::global(),
                scan: ScanStart::default(),
                mariadb: std::sync::OnceLock::new(),
                sequence_trigger: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Starts a builder for a custom table, configuration or registry.
    pub fn builder() -> RepositoryBuilder {
        RepositoryBuilder::default()
    }

    /// The table name.
    pub fn table(&self) -> &str {
        self.inner.table.as_str()
    }

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    /// The registry stored rows are decoded with.
    pub fn registry(&self) -> &'static Registry {
        self.inner.registry
    }

    /// Stores one event on `db`, which may be the caller's transaction; never commits.
    ///
    /// On a transaction, the event is stored if and only if the transaction commits. On a plain connection the
    /// INSERT is its own transaction. Returns the event id. An event with a value no broker could carry (a
    /// payload over [`OutboxConfig::max_payload_bytes`], a correlation id over 255 bytes, a header name with a
    /// space: see [`crate::limits`]) is refused with [`RepositoryError::InvalidEvent`], naming the value and the
    /// limit, and nothing is stored.
    pub async fn add_event<C, E>(&self, db: &C, event: impl Into<EventEnvelope<E>>) -> Result<Uuid>
    where
        C: ConnectionTrait,
        E: AsDynEvent,
    {
        let ids = self.add_events(db, [event.into()]).await?;
        Ok(ids[0])
    }

    /// Stores several events on `db` with one INSERT per 500 events; never commits. Returns their ids. Every
    /// event is checked as [`add_event`](Self::add_event) does before anything is stored.
    ///
    /// Pass a transaction to store a large batch atomically: on a plain connection each INSERT of 500 is its own
    /// transaction. Events of mixed types can be passed as `EventEnvelope<Box<dyn DynEvent>>`.
    pub async fn add_events<C, E, I>(&self, db: &C, events: I) -> Result<Vec<Uuid>>
    where
        C: ConnectionTrait,
        E: AsDynEvent,
        I: IntoIterator,
        I::Item: Into<EventEnvelope<E>>,
    {
        let envelopes: Vec<EventEnvelope<E>> = events.into_iter().map(Into::into).collect();
        for (insert, values) in self.inserts(db, &envelopes).await? {
            self.execute(db, "storing events", &insert, values).await?;
        }
        Ok(envelopes.iter().map(EventEnvelope::event_id).collect())
    }

    /// The INSERTs that store `envelopes`, one per [`sql::CHUNK`] events, written with `?` placeholders and
    /// `{t}` for the table. Every event is encoded and checked before any is returned.
    async fn inserts<C, E>(
        &self,
        db: &C,
        envelopes: &[EventEnvelope<E>],
    ) -> Result<Vec<(String, Vec<Value>)>>
    where
        C: ConnectionTrait,
        E: AsDynEvent,
    {
        let dialect = Dialect::of(db);
        // Every event is encoded and checked before the first INSERT: on a plain connection each INSERT commits on
        // its own, and a bad event must not leave the ones before it stored.
        let payloads = envelopes
            .iter()
            .map(|envelope| {
                let event = envelope.event().as_dyn();
                let payload = event.to_json().map_err(|source| crate::EncodeError {
                    event_type: event.meta().event_type,
                    source,
                })?;
                crate::limits::check(
                    envelope,
                    payload.get().len(),
                    self.inner.config.max_payload_bytes,
                )?;
                Ok(payload)
            })
            .collect::<Result<Vec<_>>>()?;
        // The caller's trace, for events whose envelope names none (see `outbox::otel`).
        #[cfg(feature = "otel")]
        let ambient = crate::otel::context_of(&tracing::Span::current());
        #[cfg(not(feature = "otel"))]
        let ambient: Option<crate::TraceContext> = None;
        let partitions: Vec<i16> = envelopes
            .iter()
            .map(|envelope| {
                let event = envelope.event().as_dyn();
                let partition = partition_of(
                    event.meta().aggregate_type,
                    &event.aggregate_id(),
                    self.inner.config.partitions,
                );
                i16::try_from(partition).unwrap_or_default()
            })
            .collect();
        // Where commit order is the writer's to keep (MySQL under the cursor), each event's place in it, taken at
        // the INSERTs: the counter rows stay locked until the caller's transaction ends. The events go in partition
        // order, so that a writer of several partitions takes their counters in one direction.
        let sequenced =
            self.inner.config.delivery == crate::Delivery::Cursor && dialect.cursor.sequenced;
        let mut order: Vec<usize> = (0..envelopes.len()).collect();
        let places = if sequenced {
            order.sort_by_key(|&at| partitions[at]);
            Some(self.places(db, &partitions).await?)
        } else {
            None
        };
        let columns = if sequenced { 13 } else { 12 };
        let mut inserts = Vec::with_capacity(order.len().div_ceil(sql::CHUNK));
        for chunk in order.chunks(sql::CHUNK) {
            let mut values = Vec::with_capacity(chunk.len() * columns);
            for &at in chunk {
                let (envelope, payload) = (&envelopes[at], &payloads[at]);
                let event = envelope.event().as_dyn();
                let meta = event.meta();
                let aggregate_id = event.aggregate_id();
                let trace = envelope.trace_context().or(ambient.as_ref());
                values.extend([
                    dialect.event_id(envelope.event_id()),
                    meta.event_type.into(),
                    meta.data_version.into(),
                    meta.aggregate_type.into(),
                    aggregate_id.clone().into(),
                    payload.get().to_owned().into(),
                    envelope.correlation_id().map(str::to_owned).into(),
                    envelope.causation_id().map(str::to_owned).into(),
                    trace.map(|t| t.traceparent().to_owned()).into(),
                    trace.and_then(|t| t.tracestate()).map(str::to_owned).into(),
                    envelope.occurred_at().into(),
                    partitions[at].into(),
                ]);
                if let Some(places) = &places {
                    values.push(places[at].into());
                }
            }
            let rows = vec![format!("({})", sql::placeholders(columns)); chunk.len()].join(", ");
            let insert = format!(
                "INSERT INTO {{t}} (event_id, event_type, data_version, aggregate_type, aggregate_id, payload, \
                 correlation_id, causation_id, traceparent, tracestate, occurred_at, partition_no{}) VALUES {rows}",
                if sequenced { ", seq" } else { "" }
            );
            inserts.push((insert, values));
        }
        Ok(inserts)
    }

    fn statement(&self, backend: DbBackend, query: &str, values: Vec<Value>) -> Statement {
        Dialect::for_backend(backend).statement(&self.inner.table, query, values)
    }

    async fn execute<C: ConnectionTrait>(
        &self,
        db: &C,
        operation: &'static str,
        query: &str,
        values: Vec<Value>,
    ) -> Result<u64> {
        let backend = db.get_database_backend();
        db.execute_raw(self.statement(backend, query, values))
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| self.db_error(operation, backend, e))
    }

    async fn query<C: ConnectionTrait>(
        &self,
        db: &C,
        operation: &'static str,
        query: &str,
        values: Vec<Value>,
    ) -> Result<Vec<QueryResult>> {
        let backend = db.get_database_backend();
        db.query_all_raw(self.statement(backend, query, values))
            .await
            .map_err(|e| self.db_error(operation, backend, e))
    }

    async fn begin<C: TransactionTrait + ConnectionTrait>(&self, db: &C) -> Result<C::Transaction> {
        // READ COMMITTED: every statement of the claim sees what other relays committed up to that point.
        db.begin_with_config(
            Some(IsolationLevel::ReadCommitted),
            Some(AccessMode::ReadWrite),
        )
        .await
        .map_err(|e| self.db_error("starting a claim", db.get_database_backend(), e))
    }

    async fn commit<T: sea_orm::TransactionSession + ConnectionTrait>(&self, txn: T) -> Result<()> {
        let backend = txn.get_database_backend();
        txn.commit()
            .await
            .map_err(|e| self.db_error("committing a claim", backend, e))
    }

    fn db_error(
        &self,
        operation: &'static str,
        backend: DbBackend,
        error: sea_orm::DbErr,
    ) -> RepositoryError {
        RepositoryError::db(operation, self.inner.table.as_str(), backend, error)
    }
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}
