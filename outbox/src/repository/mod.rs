//! The sea-orm repository (the seed's `IOutboxRepository`): events stored in the caller's transaction, claimed
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

mod connect;
mod error;
mod lease;
mod row;
mod scan;
mod sql;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{
    AccessMode, ConnectionTrait, DbBackend, IsolationLevel, QueryResult, Statement,
    TransactionTrait, Value,
};
use uuid::Uuid;

pub use connect::connect;
pub use error::RepositoryError;
pub use lease::{ClaimToken, LeaseOwner};
pub use row::{EventStatus, StoredEvent};
pub(crate) use sql::{TableName, schema};

use crate::config::OutboxConfig;
use crate::envelope::{AsDynEvent, EventEnvelope};
use crate::event::DynEvent;
use crate::registry::Registry;
use scan::ScanStart;

/// The PostgreSQL claim's windows, in multiples of the batch size: the first fits a backlog whose head is this
/// relay's own or free (a relay claims with at most one of its batches in flight by default, two at three in
/// flight), and every row it reads costs: 3x instead of 4x took a claim of 1,000 from 9.3 to 7.8 ms (`EXPLAIN
/// ANALYZE`, medians of 8). The second reaches past the batches other relays hold at the head (4 relays with 2
/// batches in flight each lease 8 batches there).
const WINDOWS: [i64; 2] = [3, 16];

/// Longest error text kept per event; the rest is cut so one huge message cannot bloat the table.
const MAX_ERROR_LEN: usize = 4096;

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

/// Events claimed for publishing: leased to this claim until the lease expires.
#[derive(Debug)]
#[must_use = "claimed events are leased: publish and mark them, or release them"]
#[non_exhaustive]
pub struct Claim {
    /// The fence to pass to `mark_published`, `mark_failed` and `release`.
    pub token: ClaimToken,
    /// Decoded events, in write order. Events of one aggregate are consecutive in that order and must be
    /// published one after the other.
    pub events: Vec<ClaimedEvent>,
    /// Rows that could not be decoded (unknown type or version, JSON that no longer fits): already dead letters.
    pub dead_lettered: Vec<DeadLettered>,
}

/// Rows a claim leased, in write order, not decoded yet (see `OutboxRepository::lease_as`).
pub(crate) struct Leased {
    pub(crate) token: ClaimToken,
    pub(crate) rows: Vec<LeasedRow>,
}

/// One leased row: its id and aggregate, read at once for the ordering, and the row to decode later.
pub(crate) struct LeasedRow {
    pub(crate) id: i64,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    row: QueryResult,
}

/// A claimed, decoded event.
#[derive(Debug)]
#[non_exhaustive]
pub struct ClaimedEvent {
    /// Row id.
    pub id: i64,
    /// Failed attempts before this claim.
    pub attempts: u32,
    /// Aggregate type (with the id, the ordering key).
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// The event with its recorded metadata; `to_message()` renders what to publish.
    pub envelope: EventEnvelope<Box<dyn DynEvent>>,
}

/// A row the claim turned into a dead letter because it could not be decoded.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLettered {
    /// Row id.
    pub id: i64,
    /// Event type of the row.
    pub event_type: String,
    /// Why it could not be decoded.
    pub reason: String,
}

/// One event whose publish failed, for [`OutboxRepository::mark_failed`].
#[derive(Clone, Debug)]
pub struct Failure {
    id: i64,
    attempts: u32,
    error: String,
    kind: FailureKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailureKind {
    /// Counts an attempt; retried after backoff until the budget is spent.
    Retry,
    /// A dead letter at once.
    Permanent,
    /// Not the event's fault: tried again after this long, no attempt counted.
    Held(Duration),
}

impl Failure {
    /// A failure worth retrying (after backoff, until the retry budget is spent).
    pub fn new(event: &ClaimedEvent, error: impl Into<String>) -> Self {
        Self {
            id: event.id,
            attempts: event.attempts,
            error: error.into(),
            kind: FailureKind::Retry,
        }
    }

    /// A failure that no retry can fix (the broker rejected the message for good): a dead letter at once.
    pub fn permanent(mut self) -> Self {
        self.kind = FailureKind::Permanent;
        self
    }

    /// Not the event's failure (its destination cannot take messages now): the event is tried again after
    /// `retry_in`, with no attempt counted, and holds its aggregate back until then. The error is kept as the
    /// event's last error.
    pub fn held(event: &ClaimedEvent, error: impl Into<String>, retry_in: Duration) -> Self {
        Self {
            kind: FailureKind::Held(retry_in),
            ..Self::new(event, error)
        }
    }
}

/// What [`OutboxRepository::mark_failed`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureOutcome {
    /// Events scheduled for another attempt.
    pub retrying: u64,
    /// Events that became dead letters.
    pub dead_lettered: u64,
    /// Events held for a while with no attempt counted ([`Failure::held`]).
    pub held: u64,
    /// Events not marked because the claim no longer owns them (its lease expired and another relay claimed them).
    pub fenced_out: u64,
}

/// Which dead letters to replay or purge.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterFilter {
    /// Every dead letter.
    All,
    /// One event, by event id.
    EventId(Uuid),
    /// One row, by row id.
    Id(i64),
    /// Every dead letter of one event type.
    EventType(String),
}

/// Lag figures for health checks and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Events not yet published (including those being published now).
    pub pending: u64,
    /// When the oldest pending event occurred.
    pub oldest_pending: Option<chrono::DateTime<Utc>>,
    /// Dead letters waiting for replay or purge.
    pub dead_letters: u64,
}

impl OutboxStats {
    /// How long the oldest pending event has waited.
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        self.oldest_pending
            .map(|t| (Utc::now() - t).to_std().unwrap_or_default())
    }
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
        let backend = db.get_database_backend();
        let envelopes: Vec<EventEnvelope<E>> = events.into_iter().map(Into::into).collect();
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
        let mut ids = Vec::with_capacity(envelopes.len());
        for (chunk, payloads) in envelopes
            .chunks(sql::CHUNK)
            .zip(payloads.chunks(sql::CHUNK))
        {
            let mut values = Vec::with_capacity(chunk.len() * 11);
            for (envelope, payload) in chunk.iter().zip(payloads) {
                let event = envelope.event().as_dyn();
                let meta = event.meta();
                let trace = envelope.trace_context();
                values.extend([
                    row::event_id_value(backend, envelope.event_id()),
                    meta.event_type.into(),
                    meta.data_version.into(),
                    meta.aggregate_type.into(),
                    event.aggregate_id().into(),
                    payload.get().to_owned().into(),
                    envelope.correlation_id().map(str::to_owned).into(),
                    envelope.causation_id().map(str::to_owned).into(),
                    trace.map(|t| t.traceparent().to_owned()).into(),
                    trace.and_then(|t| t.tracestate()).map(str::to_owned).into(),
                    envelope.occurred_at().into(),
                ]);
                ids.push(envelope.event_id());
            }
            let rows = vec![format!("({})", sql::placeholders(11)); chunk.len()].join(", ");
            let insert = format!(
                "INSERT INTO {{t}} (event_id, event_type, data_version, aggregate_type, aggregate_id, payload, \
                 correlation_id, causation_id, traceparent, tracestate, occurred_at) VALUES {rows}"
            );
            self.execute(db, "storing events", &insert, values).await?;
        }
        Ok(ids)
    }

    /// Pending events in write order (the seed's `get_unpublished`). Use [`StoredEvent::decode`] to get the
    /// typed events; a row that no longer decodes is still listed, so nothing is hidden.
    pub async fn get_unpublished<C: ConnectionTrait>(
        &self,
        db: &C,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<StoredEvent>> {
        self.list(db, "listing pending events", sql::PENDING, limit, offset)
            .await
    }

    /// How many events are pending (the seed's `count_unpublished`), including those being published now.
    pub async fn count_unpublished<C: ConnectionTrait>(&self, db: &C) -> Result<u64> {
        self.count(db, "counting pending events", sql::PENDING)
            .await
    }

    /// Claims up to `limit` events for publishing, leased for [`OutboxConfig::lease_duration`].
    ///
    /// Safe with any number of relays at once: claims are serialized per table (a row lock on PostgreSQL and
    /// MySQL, SQLite's single writer), and an event is only handed out when every earlier pending event of its
    /// aggregate is handed out with it or already done. Rows that cannot be decoded become dead letters here,
    /// with the reason, and are reported in [`Claim::dead_lettered`]; the other events are not held up.
    pub async fn claim<C>(&self, db: &C, limit: u32) -> Result<Claim>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        self.claim_as(db, &LeaseOwner::new(), limit).await
    }

    /// [`claim`](Self::claim) on behalf of `owner`, which may then also receive the events queued behind its own
    /// unexpired leases: see [`LeaseOwner`] for the promise that comes with them.
    pub async fn claim_as<C>(&self, db: &C, owner: &LeaseOwner, limit: u32) -> Result<Claim>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let leased = self.lease_as(db, owner, limit).await?;
        self.decode_leased(db, leased).await
    }

    /// The first half of [`claim_as`](Self::claim_as): leases the rows and reads their ids and aggregates, leaving
    /// the events undecoded. The relay decodes them with [`decode_leased`](Self::decode_leased) while its next
    /// claim runs, so that decoding is off the path that claims follow one another on.
    pub(crate) async fn lease_as<C>(&self, db: &C, owner: &LeaseOwner, limit: u32) -> Result<Leased>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let now = now_micros();
        let lease = Lease {
            token: owner.next_token(),
            owner: owner.tokens(),
            now,
            until: now + micros(self.inner.config.lease_duration),
        };
        let backend = db.get_database_backend();
        let rows = match backend {
            DbBackend::MySql => self.claim_mysql(db, &lease, limit).await?,
            DbBackend::Postgres => self.claim_postgres(db, &lease, limit).await?,
            _ => self.claim_sqlite(db, &lease, limit).await?,
        };
        let mut rows: Vec<LeasedRow> = rows
            .into_iter()
            .map(|row| {
                let (id, aggregate_type, aggregate_id) = row::lease_key(&row);
                LeasedRow {
                    id,
                    aggregate_type,
                    aggregate_id,
                    row,
                }
            })
            .collect();
        rows.sort_by_key(|row| row.id);
        Ok(Leased {
            token: lease.token,
            rows,
        })
    }

    /// The second half of [`claim_as`](Self::claim_as): decodes leased rows into events, in write order, and turns
    /// the rows that cannot be decoded into dead letters.
    pub(crate) async fn decode_leased<C: ConnectionTrait>(
        &self,
        db: &C,
        leased: Leased,
    ) -> Result<Claim> {
        let Leased { token, rows } = leased;
        let mut claim = Claim {
            token,
            events: Vec::with_capacity(rows.len()),
            dead_lettered: Vec::new(),
        };
        let mut failures = Vec::new();
        for row in &rows {
            // Decoding a batch takes milliseconds: yield to the runtime's other tasks (the relay's next claim, the
            // service) when tokio's budget says so.
            tokio::task::consume_budget().await;
            match self.decode_claimed(&row.row) {
                Ok(event) => claim.events.push(event),
                Err(dead) => {
                    failures.push(Failure {
                        id: dead.id,
                        attempts: 0,
                        error: dead.reason.clone(),
                        kind: FailureKind::Permanent,
                    });
                    claim.dead_lettered.push(dead);
                }
            }
        }
        if !failures.is_empty() {
            for dead in &claim.dead_lettered {
                tracing::error!(
                    target: "outbox.dead_letter",
                    id = dead.id,
                    event_type = %dead.event_type,
                    reason = %dead.reason,
                    "undecodable event moved to the dead letters"
                );
            }
            self.mark_failed(db, token, &failures).await?;
        }
        Ok(claim)
    }

    /// PostgreSQL: the window of the oldest pending rows from where nothing older is pending (see
    /// [`sql::CLAIM_POSTGRES_WINDOW`] and `scan.rs`), then the full statement for the rest if the window was full
    /// and fell short; in one transaction under the claim lock.
    async fn claim_postgres<C>(&self, db: &C, lease: &Lease, limit: u32) -> Result<Vec<QueryResult>>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let txn = self.begin(db).await?;
        let timeout = self.inner.config.claim_timeout.as_millis().to_string();
        let locked = self
            .lock(
                &txn,
                sql::LOCK_POSTGRES,
                sql::LOCK_ROW_POSTGRES,
                vec![
                    timeout.as_str().into(),
                    timeout.as_str().into(),
                    timeout.into(),
                ],
            )
            .await?;
        let lease = lease.on_clock(locked.try_get::<i64>("", "now_micros").ok());
        let started = std::time::Instant::now();
        let read_writers = self.inner.scan.wants_writers(started);
        let claim = format!(
            "{} RETURNING {}, {}",
            sql::CLAIM_POSTGRES_WINDOW,
            sql::COLUMNS,
            if read_writers {
                sql::WINDOW_RETURNING_WRITERS
            } else {
                sql::WINDOW_RETURNING
            }
        );
        let from = self.inner.scan.next(started);
        let (now, (mine_from, mine_to)) = (lease.now, lease.owner);
        let mut rows: Vec<QueryResult> = Vec::new();
        let mut observation = None;
        let mut missing = limit;
        // A window that was not full held every pending row from its start: nothing is left beyond it. One that
        // was full but short (its head leased by other relays or retrying) is tried once more, wider, before the
        // full statement, which reads every pending row.
        let mut window_full = true;
        for window in WINDOWS.map(|times| i64::from(limit) * times) {
            if missing == 0 || !window_full {
                break;
            }
            let values = vec![
                now.into(),
                now.into(),
                mine_from.into(),
                mine_to.into(),
                now.into(),
                from.into(),
                window.into(),
                lease.token.0.into(),
                lease.until.into(),
                missing.into(),
            ];
            let claimed = self.query(&txn, "claiming events", &claim, values).await?;
            if let Some(row) = claimed.first() {
                window_full = row
                    .try_get::<i64>("", "window_rows")
                    .is_ok_and(|n| n >= window);
                let start = row.try_get::<i64>("", "window_start");
                let end = row.try_get::<i64>("", "window_end");
                if let (Ok(oldest_pending), Ok(newest)) = (start, end) {
                    observation = Some(scan::Observation {
                        oldest_pending,
                        newest,
                        writers: read_writers.then(|| writers(row)).flatten(),
                    });
                }
            }
            missing = missing.saturating_sub(u32::try_from(claimed.len()).unwrap_or(missing));
            rows.extend(claimed);
        }
        if missing > 0 && window_full {
            self.query(&txn, "planning the claim", sql::FREE_PLANNER, Vec::new())
                .await?;
            let claim = format!("{} RETURNING {}", sql::CLAIM_POSTGRES, sql::COLUMNS);
            let values = vec![
                now.into(),
                mine_from.into(),
                mine_to.into(),
                now.into(),
                lease.token.0.into(),
                lease.until.into(),
                now.into(),
                now.into(),
                missing.into(),
            ];
            rows.extend(self.query(&txn, "claiming events", &claim, values).await?);
        }
        self.commit(txn).await?;
        // Only once committed: a claim rolled back saw nothing that lasts.
        self.inner.scan.saw(started, from, observation);
        Ok(rows)
    }

    /// SQLite: one UPDATE ... RETURNING, atomic under its single writer.
    async fn claim_sqlite<C: ConnectionTrait>(
        &self,
        db: &C,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<QueryResult>> {
        let update = format!(
            "UPDATE {{t}} SET claim_token = ?, locked_until = ? WHERE status = {} AND id IN (SELECT o.id {}) \
             RETURNING {}",
            sql::PENDING,
            sql::CLAIMABLE,
            sql::COLUMNS
        );
        let mut values: Vec<Value> = vec![lease.token.0.into(), lease.until.into()];
        values.extend(lease.claimable_values(limit));
        self.query(db, "claiming events", &update, values).await
    }

    /// MySQL cannot `UPDATE` with a `LIMIT` subquery on the same table, nor return updated rows. Under the claim
    /// lock, in one READ COMMITTED transaction: pick the claimable ids, lease them, read back the rows that carry
    /// this claim's token. No data row is locked by a read, so marks running on other relays cannot deadlock with
    /// the claim (they did, measured, with `SELECT ... FOR UPDATE`); a row whose expired lease its old owner
    /// marks at the same moment simply does not come back.
    async fn claim_mysql<C>(&self, db: &C, lease: &Lease, limit: u32) -> Result<Vec<QueryResult>>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let mariadb = match self.inner.mariadb.get() {
            Some(&mariadb) => mariadb,
            None => {
                let version = self
                    .query(
                        db,
                        "reading the server version",
                        "SELECT VERSION()",
                        Vec::new(),
                    )
                    .await?;
                let mariadb = version
                    .first()
                    .and_then(|row| row.try_get_by_index::<String>(0).ok())
                    .is_some_and(|v| v.to_ascii_lowercase().contains("mariadb"));
                *self.inner.mariadb.get_or_init(|| mariadb)
            }
        };
        let (bound, restore) = if mariadb {
            (sql::BOUND_MARIADB, sql::RESTORE_MARIADB)
        } else {
            (sql::BOUND_MYSQL, sql::RESTORE_MYSQL)
        };
        // Whole seconds, at least one, rounded up.
        let seconds = self.inner.config.claim_timeout.as_millis().div_ceil(1000) as u64;
        let txn = self.begin(db).await?;
        let values = if mariadb {
            vec![seconds.into(), seconds.into()]
        } else {
            vec![seconds.into()]
        };
        self.execute(&txn, "bounding the claim", bound, values)
            .await?;
        let claimed = self.claim_mysql_bounded(&txn, lease, limit).await;
        // The session's own timeouts come back before the connection returns to the pool, on success or not.
        let restored = self
            .execute(&txn, "ending the claim's bounds", restore, Vec::new())
            .await;
        let rows = claimed?;
        restored?;
        self.commit(txn).await?;
        Ok(rows)
    }

    /// [`claim_mysql`](Self::claim_mysql)'s work, inside the bounds it set on `txn`.
    async fn claim_mysql_bounded<T: ConnectionTrait>(
        &self,
        txn: &T,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<QueryResult>> {
        let locked = self
            .lock(txn, sql::LOCK, sql::LOCK_ROW_MYSQL, Vec::new())
            .await?;
        let lease = lease.on_clock(locked.try_get::<i64>("", "now_micros").ok());
        let select = format!("SELECT o.id {}", sql::CLAIMABLE);
        let candidates = self
            .query(
                txn,
                "claiming events",
                &select,
                lease.claimable_values(limit),
            )
            .await?;
        let ids: Vec<i64> = candidates
            .iter()
            .map(|r| r.try_get_by_index::<i64>(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.db_error("claiming events", txn.get_database_backend(), e))?;
        let mut rows = Vec::new();
        if !ids.is_empty() {
            // Every id in one statement, not in chunks: the claim is one transaction, and the largest batch stays
            // within MySQL's limit on bound parameters (tested).
            let (id_in, id_values) = sql::id_in(txn.get_database_backend(), &ids);
            let update = format!(
                "UPDATE {{t}} SET claim_token = ?, locked_until = ? WHERE status = {} AND {id_in}",
                sql::PENDING
            );
            let mut values: Vec<Value> = vec![lease.token.0.into(), lease.until.into()];
            values.extend(id_values.iter().cloned());
            self.execute(txn, "claiming events", &update, values)
                .await?;
            let read = format!(
                "SELECT {} FROM {{t}} WHERE claim_token = ? AND {id_in}",
                sql::COLUMNS
            );
            let mut values: Vec<Value> = vec![lease.token.0.into()];
            values.extend(id_values);
            rows = self.query(txn, "claiming events", &read, values).await?;
        }
        Ok(rows)
    }

    /// Takes the claim lock with `lock`, putting the lock row back with `recreate` first if it was deleted (an
    /// empty lock table would silently stop serializing the claims). Returns the lock statement's row.
    async fn lock<C: ConnectionTrait>(
        &self,
        txn: &C,
        lock: &str,
        recreate: &str,
        values: Vec<Value>,
    ) -> Result<QueryResult> {
        for attempt in 0..2 {
            let row = self
                .query(txn, "taking the claim lock", lock, values.clone())
                .await?
                .into_iter()
                .next();
            match row {
                Some(row) => return Ok(row),
                None if attempt == 0 => {
                    tracing::warn!(
                        target: "outbox",
                        table = %self.inner.table.as_str(),
                        "the claim lock row was missing: recreating it"
                    );
                    self.execute(txn, "recreating the claim lock row", recreate, Vec::new())
                        .await?;
                }
                None => {}
            }
        }
        Err(RepositoryError::MissingLockRow(
            self.inner.table.as_str().to_owned(),
        ))
    }

    fn decode_claimed(&self, row: &QueryResult) -> std::result::Result<ClaimedEvent, DeadLettered> {
        let id: i64 = row.try_get_by_index(0).unwrap_or_default();
        let stored = StoredEvent::from_row(row).map_err(|e| DeadLettered {
            id,
            event_type: row.try_get_by_index::<String>(2).unwrap_or_default(),
            reason: format!("unreadable row: {e}"),
        })?;
        match stored.decode_with(self.inner.registry) {
            Ok(envelope) => Ok(ClaimedEvent {
                id: stored.id,
                attempts: stored.attempts,
                aggregate_type: stored.aggregate_type,
                aggregate_id: stored.aggregate_id,
                envelope,
            }),
            Err(error) => Err(DeadLettered {
                id: stored.id,
                event_type: stored.event_type,
                reason: error.to_string(),
            }),
        }
    }

    /// Marks claimed events published in one statement (one per 500 on MySQL and SQLite), or deletes them with
    /// [`OutboxConfig::delete_on_publish`]. Returns how many were marked: fewer than given means the claim lost
    /// the others (its lease expired and another relay claimed them, which will publish them again).
    pub async fn mark_published<C: ConnectionTrait>(
        &self,
        db: &C,
        token: ClaimToken,
        ids: &[i64],
    ) -> Result<u64> {
        let backend = db.get_database_backend();
        let mut marked = 0;
        for chunk in ids.chunks(sql::id_chunk(backend)) {
            let (id_in, id_values) = sql::id_in(backend, chunk);
            let (query, mut values) = if self.inner.config.delete_on_publish {
                (
                    format!(
                        "DELETE FROM {{t}} WHERE claim_token = ? AND status = {} AND {id_in}",
                        sql::PENDING,
                    ),
                    vec![Value::from(token.0)],
                )
            } else {
                (
                    format!(
                        "UPDATE {{t}} SET status = {}, published_at = ?, locked_until = NULL, claim_token = NULL \
                         WHERE claim_token = ? AND status = {} AND {id_in}",
                        sql::PUBLISHED,
                        sql::PENDING,
                    ),
                    vec![Value::from(Utc::now()), Value::from(token.0)],
                )
            };
            values.extend(id_values);
            marked += self
                .execute(db, "marking events published", &query, values)
                .await?;
        }
        Ok(marked)
    }

    /// How many of the rows `ids` are still pending.
    pub(crate) async fn count_pending_ids<C: ConnectionTrait>(
        &self,
        db: &C,
        ids: &[i64],
    ) -> Result<u64> {
        let backend = db.get_database_backend();
        let mut pending = 0;
        for chunk in ids.chunks(sql::id_chunk(backend)) {
            let (id_in, values) = sql::id_in(backend, chunk);
            let query = format!(
                "SELECT COUNT(*) FROM {{t}} WHERE status = {} AND {id_in}",
                sql::PENDING
            );
            let rows = self
                .query(db, "reading marked events", &query, values)
                .await?;
            if let Some(row) = rows.first() {
                let count = row
                    .try_get_by_index::<i64>(0)
                    .map_err(|e| self.db_error("reading marked events", backend, e))?;
                pending += u64::try_from(count).unwrap_or(0);
            }
        }
        Ok(pending)
    }

    /// Records failed publishes in one statement per outcome (retry, dead letter) and 500 events: the error text, one more attempt, and the next attempt
    /// time (exponential backoff from the configuration, with jitter). An event whose attempts exceed
    /// [`OutboxConfig::max_retry_count`], or whose failure is permanent, becomes a dead letter. Nothing is deleted.
    pub async fn mark_failed<C: ConnectionTrait>(
        &self,
        db: &C,
        token: ClaimToken,
        failures: &[Failure],
    ) -> Result<FailureOutcome> {
        let config = &self.inner.config;
        let now = now_micros();
        // Retries, dead letters and holds go in separate statements (one each at most per 500), so each count is
        // exact even when another relay has taken some rows over since the claim.
        let (mut retries, mut dead, mut held) = (Vec::new(), Vec::new(), Vec::new());
        for failure in failures {
            let attempts = failure.attempts.saturating_add(1);
            match failure.kind {
                FailureKind::Held(retry_in) => held.push((failure, Some(now + micros(retry_in)))),
                FailureKind::Permanent => dead.push((failure, None)),
                FailureKind::Retry if attempts > config.max_retry_count => {
                    dead.push((failure, None));
                }
                FailureKind::Retry => {
                    let delay = config
                        .retry_delay(attempts)
                        .mul_f64(0.5 + fastrand::f64() * 0.5);
                    retries.push((failure, Some(now + micros(delay))));
                }
            }
        }
        let mut outcome = FailureOutcome::default();
        let groups = [
            (retries, sql::PENDING, 1, &mut outcome.retrying),
            (dead, sql::DEAD, 1, &mut outcome.dead_lettered),
            (held, sql::PENDING, 0, &mut outcome.held),
        ];
        let mut fenced_out = 0;
        for (group, status, attempt, count) in groups {
            for chunk in group.chunks(sql::CHUNK) {
                let marked = self.fail_rows(db, token, chunk, status, attempt).await?;
                *count += marked;
                fenced_out += chunk.len() as u64 - marked;
            }
        }
        outcome.fenced_out = fenced_out;
        Ok(outcome)
    }

    /// One UPDATE for failures that all end in `status`, each row with its own next attempt time and error,
    /// adding `attempt` (1 or 0) to the attempts.
    async fn fail_rows<C: ConnectionTrait>(
        &self,
        db: &C,
        token: ClaimToken,
        rows: &[(&Failure, Option<i64>)],
        status: i16,
        attempt: u8,
    ) -> Result<u64> {
        let cases = vec![" WHEN ? THEN ?"; rows.len()].concat();
        let ids: Vec<i64> = rows.iter().map(|(f, _)| f.id).collect();
        let (id_in, id_values) = sql::id_in(db.get_database_backend(), &ids);
        let query = format!(
            "UPDATE {{t}} SET attempts = attempts + {attempt}, status = {status}, \
             next_attempt_at = CASE id{cases} END, last_error = CASE id{cases} END, \
             locked_until = NULL, claim_token = NULL \
             WHERE claim_token = ? AND status = {} AND {id_in}",
            sql::PENDING,
        );
        let mut values = Vec::with_capacity(rows.len() * 5 + 1);
        for (failure, next_attempt) in rows {
            values.extend([Value::from(failure.id), Value::from(*next_attempt)]);
        }
        for (failure, _) in rows {
            values.extend([
                Value::from(failure.id),
                Value::from(truncate(&failure.error)),
            ]);
        }
        values.push(token.0.into());
        values.extend(id_values);
        self.execute(db, "recording failed publishes", &query, values)
            .await
    }

    /// Gives claimed events back without counting an attempt: on shutdown, or for the later events of an
    /// aggregate whose earlier event failed. Returns how many were released.
    pub async fn release<C: ConnectionTrait>(
        &self,
        db: &C,
        token: ClaimToken,
        ids: &[i64],
    ) -> Result<u64> {
        let backend = db.get_database_backend();
        let mut released = 0;
        for chunk in ids.chunks(sql::id_chunk(backend)) {
            let (id_in, id_values) = sql::id_in(backend, chunk);
            let query = format!(
                "UPDATE {{t}} SET locked_until = NULL, claim_token = NULL \
                 WHERE claim_token = ? AND status = {} AND {id_in}",
                sql::PENDING,
            );
            let mut values = vec![Value::from(token.0)];
            values.extend(id_values);
            released += self.execute(db, "releasing events", &query, values).await?;
        }
        Ok(released)
    }

    /// Marks one event published by row id, whoever holds it (the seed's `mark_published(id)`). Relays use the
    /// fenced [`mark_published`](Self::mark_published); this is for tools and hand-written schedules.
    pub async fn mark_event_published<C: ConnectionTrait>(&self, db: &C, id: i64) -> Result<bool> {
        let query = format!(
            "UPDATE {{t}} SET status = {}, published_at = ?, locked_until = NULL, claim_token = NULL \
             WHERE id = ? AND status = {}",
            sql::PUBLISHED,
            sql::PENDING
        );
        let marked = self
            .execute(
                db,
                "marking an event published",
                &query,
                vec![Utc::now().into(), id.into()],
            )
            .await?;
        Ok(marked == 1)
    }

    /// Records one failed publish by row id (the seed's `mark_failed(id, error)`), with the same backoff and
    /// dead-letter rule as [`mark_failed`](Self::mark_failed). Returns false if the event is not pending.
    pub async fn mark_event_failed<C: ConnectionTrait>(
        &self,
        db: &C,
        id: i64,
        error: &str,
    ) -> Result<bool> {
        // Take the event over under a one-off token, then fail it through the fenced path.
        let token = ClaimToken(fastrand::i64(..));
        let query = format!(
            "UPDATE {{t}} SET claim_token = ? WHERE id = ? AND status = {}",
            sql::PENDING
        );
        if self
            .execute(
                db,
                "recording a failed publish",
                &query,
                vec![token.0.into(), id.into()],
            )
            .await?
            == 0
        {
            return Ok(false);
        }
        let select = "SELECT attempts FROM {t} WHERE id = ? AND claim_token = ?";
        let rows = self
            .query(
                db,
                "recording a failed publish",
                select,
                vec![id.into(), token.0.into()],
            )
            .await?;
        let attempts = match rows.first() {
            Some(row) => row.try_get_by_index::<i32>(0).map_err(|e| {
                self.db_error("recording a failed publish", db.get_database_backend(), e)
            })?,
            None => return Ok(false),
        };
        let failure = Failure {
            id,
            attempts: u32::try_from(attempts).unwrap_or(0),
            error: error.to_owned(),
            kind: FailureKind::Retry,
        };
        let outcome = self.mark_failed(db, token, &[failure]).await?;
        Ok(outcome.fenced_out == 0)
    }

    /// Dead letters in id order, with their last error.
    pub async fn dead_letters<C: ConnectionTrait>(
        &self,
        db: &C,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<StoredEvent>> {
        self.list(db, "listing dead letters", sql::DEAD, limit, offset)
            .await
    }

    /// How many dead letters there are.
    pub async fn count_dead_letters<C: ConnectionTrait>(&self, db: &C) -> Result<u64> {
        self.count(db, "counting dead letters", sql::DEAD).await
    }

    /// Makes dead letters pending again with a fresh retry budget (their last error is kept until the next
    /// attempt). Returns how many.
    ///
    /// Order: a dead letter does not hold its aggregate back, so the aggregate's later events may have gone out
    /// meanwhile; a replayed event is then published after them. Among events still pending, it keeps its place
    /// by id (it goes out before the aggregate's later pending events).
    pub async fn replay_dead_letters<C: ConnectionTrait>(
        &self,
        db: &C,
        filter: DeadLetterFilter,
    ) -> Result<u64> {
        let (condition, values) = self.filter(db.get_database_backend(), &filter);
        let query = format!(
            "UPDATE {{t}} SET status = {}, attempts = 0, next_attempt_at = NULL, locked_until = NULL, \
             claim_token = NULL WHERE status = {}{condition}",
            sql::PENDING,
            sql::DEAD
        );
        self.execute(db, "replaying dead letters", &query, values)
            .await
    }

    /// Deletes dead letters for good. Returns how many.
    pub async fn purge_dead_letters<C: ConnectionTrait>(
        &self,
        db: &C,
        filter: DeadLetterFilter,
    ) -> Result<u64> {
        let (condition, values) = self.filter(db.get_database_backend(), &filter);
        let query = format!("DELETE FROM {{t}} WHERE status = {}{condition}", sql::DEAD);
        self.execute(db, "purging dead letters", &query, values)
            .await
    }

    fn filter(&self, backend: DbBackend, filter: &DeadLetterFilter) -> (&'static str, Vec<Value>) {
        match filter {
            DeadLetterFilter::All => ("", Vec::new()),
            DeadLetterFilter::Id(id) => (" AND id = ?", vec![(*id).into()]),
            DeadLetterFilter::EventId(id) => {
                (" AND event_id = ?", vec![row::event_id_value(backend, *id)])
            }
            DeadLetterFilter::EventType(t) => (" AND event_type = ?", vec![t.clone().into()]),
        }
    }

    /// Deletes published events older than `older_than`, `batch_size` rows per statement so the table is never
    /// locked for long. Returns how many were deleted.
    pub async fn purge_published<C: ConnectionTrait>(
        &self,
        db: &C,
        older_than: Duration,
        batch_size: u32,
    ) -> Result<u64> {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let batch = batch_size.max(1);
        let query = match db.get_database_backend() {
            // MySQL refuses a subquery on the table it deletes from, but has DELETE ... LIMIT.
            DbBackend::MySql => format!(
                "DELETE FROM {{t}} WHERE status = {} AND published_at < ? ORDER BY id LIMIT ?",
                sql::PUBLISHED
            ),
            _ => format!(
                "DELETE FROM {{t}} WHERE id IN (SELECT id FROM {{t}} WHERE status = {} AND published_at < ? \
                 ORDER BY id LIMIT ?)",
                sql::PUBLISHED
            ),
        };
        let mut total = 0;
        loop {
            let deleted = self
                .execute(
                    db,
                    "purging published events",
                    &query,
                    vec![cutoff.into(), batch.into()],
                )
                .await?;
            total += deleted;
            if deleted < u64::from(batch) {
                return Ok(total);
            }
        }
    }

    /// Pending count, oldest pending time and dead-letter count, for health checks and metrics.
    pub async fn stats<C: ConnectionTrait>(&self, db: &C) -> Result<OutboxStats> {
        let query = format!(
            "SELECT COUNT(*), MIN(occurred_at) FROM {{t}} WHERE status = {}",
            sql::PENDING
        );
        let rows = self
            .query(db, "reading outbox lag", &query, Vec::new())
            .await?;
        let backend = db.get_database_backend();
        let (pending, oldest_pending) = match rows.first() {
            Some(row) => (
                row.try_get_by_index::<i64>(0)
                    .map_err(|e| self.db_error("reading outbox lag", backend, e))?,
                row.try_get_by_index(1)
                    .map_err(|e| self.db_error("reading outbox lag", backend, e))?,
            ),
            None => (0, None),
        };
        Ok(OutboxStats {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest_pending,
            dead_letters: self.count_dead_letters(db).await?,
        })
    }

    /// Checks that the table exists with every column the repository uses; the error says to run the
    /// migration if not.
    pub async fn check<C: ConnectionTrait>(&self, db: &C) -> Result<()> {
        let query = format!(
            "SELECT {}, next_attempt_at, locked_until, claim_token FROM {{t}} WHERE 1 = 0",
            sql::COLUMNS
        );
        self.query(db, "checking the outbox table", &query, Vec::new())
            .await
            .map(drop)
    }

    async fn list<C: ConnectionTrait>(
        &self,
        db: &C,
        operation: &'static str,
        status: i16,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<StoredEvent>> {
        let query = format!(
            "SELECT {} FROM {{t}} WHERE status = {status} ORDER BY id LIMIT ? OFFSET ?",
            sql::COLUMNS
        );
        self.select(db, operation, &query, vec![limit.into(), offset.into()])
            .await
    }

    async fn count<C: ConnectionTrait>(
        &self,
        db: &C,
        operation: &'static str,
        status: i16,
    ) -> Result<u64> {
        let query = format!("SELECT COUNT(*) FROM {{t}} WHERE status = {status}");
        let rows = self.query(db, operation, &query, Vec::new()).await?;
        let count = match rows.first() {
            Some(row) => row
                .try_get_by_index::<i64>(0)
                .map_err(|e| self.db_error(operation, db.get_database_backend(), e))?,
            None => 0,
        };
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn select<C: ConnectionTrait>(
        &self,
        db: &C,
        operation: &'static str,
        query: &str,
        values: Vec<Value>,
    ) -> Result<Vec<StoredEvent>> {
        let backend = db.get_database_backend();
        self.query(db, operation, query, values)
            .await?
            .iter()
            .map(|row| StoredEvent::from_row(row).map_err(|e| self.db_error(operation, backend, e)))
            .collect()
    }

    fn statement(&self, backend: DbBackend, query: &str, values: Vec<Value>) -> Statement {
        sql::statement(backend, &self.inner.table, query, values)
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

/// One claim's lease: its token, its owner's token range, the time it is judged at and when it expires.
#[derive(Clone, Copy)]
struct Lease {
    token: ClaimToken,
    owner: (i64, i64),
    now: i64,
    until: i64,
}

impl Lease {
    /// The same lease judged at `now` on the database's clock, so that relays on hosts whose clocks disagree
    /// agree on when a lease ends. `None` (the clock could not be read) keeps the relay's own.
    fn on_clock(self, now: Option<i64>) -> Self {
        match now {
            Some(now) => Self {
                until: now + (self.until - self.now),
                now,
                ..self
            },
            None => self,
        }
    }

    /// The values of [`sql::CLAIMABLE`].
    fn claimable_values(&self, limit: u32) -> Vec<Value> {
        let (now, (mine_from, mine_to)) = (self.now, self.owner);
        vec![
            now.into(),
            now.into(),
            now.into(),
            mine_from.into(),
            mine_to.into(),
            now.into(),
            limit.into(),
        ]
    }
}

/// The `writers` column of [`sql::WINDOW_RETURNING_WRITERS`]: virtual transaction ids. `None` when it cannot be
/// read, which settles nothing.
fn writers(row: &QueryResult) -> Option<Vec<String>> {
    let list = row.try_get::<Option<String>>("", "writers").ok()?;
    Some(list.map_or_else(Vec::new, |list| {
        list.split(',').map(str::to_owned).collect()
    }))
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn truncate(error: &str) -> String {
    if error.len() <= MAX_ERROR_LEN {
        return error.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}
