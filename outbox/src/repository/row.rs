//! Stored events as read back from the outbox table.

use chrono::{DateTime, Utc};
use sea_orm::{DbErr, QueryResult};
use uuid::Uuid;

use crate::envelope::{EventEnvelope, TraceContext};
use crate::event::{DynEvent, OutboxEvent};
use crate::registry::{Registry, RegistryError};

use super::sql;

/// Where a stored event is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventStatus {
    /// Waiting to be published, or being published under a lease.
    Pending,
    /// Published (kept until the retention cleanup removes it).
    Published,
    /// Gave up on: a dead letter, kept with its last error until replayed or purged.
    DeadLetter,
}

impl EventStatus {
    fn from_code(code: i16) -> Result<Self, String> {
        match code {
            sql::PENDING => Ok(Self::Pending),
            sql::PUBLISHED => Ok(Self::Published),
            sql::DEAD => Ok(Self::DeadLetter),
            other => Err(format!("unknown status code {other}")),
        }
    }
}

/// One row of the outbox table: the stored event and its bookkeeping.
///
/// The event itself is kept as JSON; [`decode`](Self::decode) turns it back into its Rust type through the
/// [registry](crate::registry), by `event_type` and `data_version`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoredEvent {
    /// Row id: the order events were written in.
    pub id: i64,
    /// The event id (CloudEvents `id`).
    pub event_id: Uuid,
    /// CloudEvents `type`.
    pub event_type: String,
    /// Data version.
    pub data_version: String,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// The event as stored: its serde JSON.
    pub payload: String,
    /// Correlation id, if any.
    pub correlation_id: Option<String>,
    /// Causation id, if any.
    pub causation_id: Option<String>,
    /// W3C `traceparent`, if any.
    pub traceparent: Option<String>,
    /// W3C `tracestate`, if any.
    pub tracestate: Option<String>,
    /// When the event occurred.
    pub occurred_at: DateTime<Utc>,
    /// Pending, published or dead letter.
    pub status: EventStatus,
    /// Failed publish attempts so far.
    pub attempts: u32,
    /// The last failure, or why the event became a dead letter.
    pub last_error: Option<String>,
    /// When it was published.
    pub published_at: Option<DateTime<Utc>>,
}

/// A [`StoredEvent`] from the columns of [`sql::COLUMNS`], read with `$row.$get(index)` (sea-orm's getter, or
/// sqlx's on PostgreSQL), given the event id and the status, whose reading differs between the two, and the
/// aggregate (columns 4 and 5) where it was read already.
macro_rules! stored_event {
    ($row:ident . $get:ident, $event_id:expr, $status:expr, $aggregate:expr) => {{
        let attempts: i32 = $row.$get(13)?;
        let (aggregate_type, aggregate_id) = match $aggregate {
            Some(aggregate) => aggregate,
            None => ($row.$get(4)?, $row.$get(5)?),
        };
        StoredEvent {
            id: $row.$get(0)?,
            event_id: $event_id,
            event_type: $row.$get(2)?,
            data_version: $row.$get(3)?,
            aggregate_type,
            aggregate_id,
            payload: $row.$get(6)?,
            correlation_id: $row.$get(7)?,
            causation_id: $row.$get(8)?,
            traceparent: $row.$get(9)?,
            tracestate: $row.$get(10)?,
            occurred_at: $row.$get(11)?,
            status: $status,
            attempts: u32::try_from(attempts).unwrap_or(0),
            last_error: $row.$get(14)?,
            published_at: $row.$get(15)?,
        }
    }};
}

impl StoredEvent {
    /// Reads a row selected with [`sql::COLUMNS`].
    pub(crate) fn from_row(row: &QueryResult) -> Result<Self, DbErr> {
        Self::from_row_with(row, None)
    }

    /// [`from_row`](Self::from_row) for a row whose aggregate (type, id) was read already, as a claim reads it
    /// to order the batch before decoding: not decoded twice.
    pub(crate) fn from_row_with(
        row: &QueryResult,
        aggregate: Option<(String, String)>,
    ) -> Result<Self, DbErr> {
        #[cfg(feature = "postgres")]
        if let Some(row) = row.try_as_pg_row() {
            return Self::from_pg_row(row, aggregate).map_err(|e| DbErr::Type(e.to_string()));
        }
        // MySQL and SQLite store the event id as text.
        let text: String = row.try_get_by_index(1)?;
        let event_id = Uuid::parse_str(&text)
            .map_err(|e| DbErr::Type(format!("event_id {text:?} is not a UUID: {e}")))?;
        let status: i16 = row.try_get_by_index(12)?;
        Ok(stored_event!(
            row.try_get_by_index,
            event_id,
            EventStatus::from_code(status).map_err(DbErr::Type)?,
            aggregate
        ))
    }

    /// [`from_row`](Self::from_row) on PostgreSQL, through sqlx: sea-orm's getters format an error message for
    /// every NULL they read, and reading a row through them was 10.5k instructions, a quarter of the relay's work
    /// per event in a drain; 6.1k this way (callgrind).
    #[cfg(feature = "postgres")]
    fn from_pg_row(
        row: &sea_orm::sqlx::postgres::PgRow,
        aggregate: Option<(String, String)>,
    ) -> Result<Self, sea_orm::sqlx::Error> {
        use sea_orm::sqlx::Row;
        let status: i16 = row.try_get(12)?;
        Ok(stored_event!(
            row.try_get,
            row.try_get(1)?,
            EventStatus::from_code(status).map_err(|e| sea_orm::sqlx::Error::Decode(e.into()))?,
            aggregate
        ))
    }

    /// The event decoded through the global registry, with its recorded metadata.
    pub fn decode(&self) -> Result<EventEnvelope<Box<dyn DynEvent>>, RegistryError> {
        self.decode_with(Registry::global())
    }

    /// The event decoded through `registry`, with its recorded metadata.
    pub fn decode_with(
        &self,
        registry: &Registry,
    ) -> Result<EventEnvelope<Box<dyn DynEvent>>, RegistryError> {
        let event = registry.decode(&self.event_type, &self.data_version, &self.payload)?;
        Ok(self.envelope(event))
    }

    /// The event as `E`, whose type and version must be this row's.
    pub fn decode_as<E: OutboxEvent>(&self) -> Result<EventEnvelope<E>, RegistryError> {
        if E::EVENT_TYPE != self.event_type || E::DATA_VERSION != self.data_version {
            return Err(RegistryError::WrongType {
                event_type: self.event_type.clone(),
                data_version: self.data_version.clone(),
                requested: std::any::type_name::<E>(),
            });
        }
        let event = E::from_json(&self.payload).map_err(|source| RegistryError::Decode {
            event_type: self.event_type.clone(),
            data_version: self.data_version.clone(),
            rust_type: std::any::type_name::<E>(),
            source,
        })?;
        Ok(self.envelope(event))
    }

    fn envelope<E>(&self, event: E) -> EventEnvelope<E> {
        let mut envelope = EventEnvelope::stored(event, self.event_id, self.occurred_at);
        if let Some(correlation) = &self.correlation_id {
            envelope = envelope.with_correlation_id(correlation.clone());
        }
        if let Some(causation) = &self.causation_id {
            envelope = envelope.with_causation_id(causation.clone());
        }
        if let Some(traceparent) = &self.traceparent {
            // Validated when recorded; a value edited in the table since is dropped rather than sent on.
            match TraceContext::new(traceparent, self.tracestate.clone()) {
                Ok(context) => envelope = envelope.with_trace_context(context),
                Err(error) => {
                    tracing::warn!(target: "outbox", event_id = %self.event_id, %error, "dropping stored trace context")
                }
            }
        }
        envelope
    }
}

/// The id and aggregate of a claimed row (columns 0, 4 and 5 of [`sql::COLUMNS`]), read before the row is decoded.
/// An id that cannot be read comes back 0, an aggregate `None`: the decoding dead-letters that row.
pub(crate) fn lease_key(row: &QueryResult) -> (i64, Option<(String, String)>) {
    #[cfg(feature = "postgres")]
    if let Some(row) = row.try_as_pg_row() {
        use sea_orm::sqlx::Row;
        return (
            row.try_get(0).unwrap_or_default(),
            row.try_get(4).ok().zip(row.try_get(5).ok()),
        );
    }
    (
        row.try_get_by_index(0).unwrap_or_default(),
        row.try_get_by_index(4)
            .ok()
            .zip(row.try_get_by_index(5).ok()),
    )
}
