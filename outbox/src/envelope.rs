//! Per-instance metadata of a recorded event: id, time, correlation, causation and trace context.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::event::{DynEvent, OutboxEvent};
use crate::message::Message;

/// An event together with the metadata it gets when it is recorded.
///
/// `EventEnvelope::new(event)` gives it a time-ordered (v7) id and the current UTC time; builder methods set the
/// rest. An event converts into an envelope with `From`, so APIs that take `impl Into<EventEnvelope<E>>` accept
/// a bare event as well.
///
/// ```
/// # use outbox::{EventEnvelope, OutboxEvent};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize, OutboxEvent)]
/// # #[outbox(type = "com.example.order.placed", source = "/orders")]
/// # struct OrderPlaced { #[outbox(aggregate_id)] order_id: u64 }
/// # #[derive(Serialize, Deserialize, OutboxEvent)]
/// # #[outbox(type = "com.example.order.paid", source = "/orders")]
/// # struct OrderPaid { #[outbox(aggregate_id)] order_id: u64 }
/// let placed = EventEnvelope::new(OrderPlaced { order_id: 1 }).with_correlation_id("req-42");
/// // The payment is caused by the placement and belongs to the same flow.
/// let paid = EventEnvelope::new(OrderPaid { order_id: 1 }).caused_by(&placed);
/// assert_eq!(paid.causation_id(), Some(placed.event_id().to_string().as_str()));
/// assert_eq!(paid.correlation_id(), Some("req-42"));
///
/// let message = paid.to_message()?;
/// assert_eq!(message.id, paid.event_id());
/// assert_eq!(message.key, "1");
/// # Ok::<(), outbox::EncodeError>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct EventEnvelope<E> {
    event_id: Uuid,
    occurred_at: DateTime<Utc>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    trace_context: Option<TraceContext>,
    event: E,
}

impl<E> EventEnvelope<E> {
    /// Wraps `event` with a new time-ordered (UUID v7) id and the current time.
    ///
    /// Times are kept to the microsecond, the precision databases store, so an event reads back from the outbox
    /// table with exactly the time it was recorded with.
    pub fn new(event: E) -> Self {
        Self::stored(event, Uuid::now_v7(), Utc::now())
    }

    /// `event` with the id and time given, as an event read back from the outbox table has them. The repository
    /// does not go through `new` and the builders: `new` draws a v7 id (a `getrandom` call) and reads the clock,
    /// 6% of a relay's CPU in a drain for values thrown away at once (`perf`).
    pub(crate) fn stored(event: E, event_id: Uuid, occurred_at: DateTime<Utc>) -> Self {
        Self {
            event_id,
            occurred_at: occurred_at.trunc_subsecs(6),
            correlation_id: None,
            causation_id: None,
            trace_context: None,
            event,
        }
    }

    /// Replaces the event id, e.g. to make a retried command produce the same event id (idempotency).
    pub fn with_event_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }

    /// Replaces the time the event occurred (kept to the microsecond, like [`new`](Self::new)).
    pub fn with_occurred_at(mut self, occurred_at: DateTime<Utc>) -> Self {
        self.occurred_at = occurred_at.trunc_subsecs(6);
        self
    }

    /// Sets the correlation id: the request or business flow this event belongs to.
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Sets the causation id: the event or command that caused this one.
    pub fn with_causation_id(mut self, causation_id: impl Into<String>) -> Self {
        self.causation_id = Some(causation_id.into());
        self
    }

    /// Marks this event as caused by `cause`: causation = the cause's id, correlation = the cause's correlation
    /// id, or its id when it has none (the cause started the flow).
    pub fn caused_by<C>(mut self, cause: &EventEnvelope<C>) -> Self {
        self.causation_id = Some(cause.event_id.to_string());
        self.correlation_id = Some(
            cause
                .correlation_id
                .clone()
                .unwrap_or_else(|| cause.event_id.to_string()),
        );
        self
    }

    /// Attaches W3C trace context, sent as the `traceparent`/`tracestate` extensions so a trace runs from the
    /// request that recorded the event through the broker.
    pub fn with_trace_context(mut self, trace_context: TraceContext) -> Self {
        self.trace_context = Some(trace_context);
        self
    }

    /// The event id (CloudEvents `id`).
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }

    /// When the event occurred (CloudEvents `time`), in UTC.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }

    /// The correlation id, if set.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// The causation id, if set.
    pub fn causation_id(&self) -> Option<&str> {
        self.causation_id.as_deref()
    }

    /// The trace context, if set.
    pub fn trace_context(&self) -> Option<&TraceContext> {
        self.trace_context.as_ref()
    }

    /// The domain event.
    pub fn event(&self) -> &E {
        &self.event
    }

    /// The domain event, by value.
    pub fn into_event(self) -> E {
        self.event
    }

    /// Swaps the event for another, keeping the metadata (e.g. after decoding or downcasting).
    pub fn map<F>(self, f: impl FnOnce(E) -> F) -> EventEnvelope<F> {
        EventEnvelope {
            event_id: self.event_id,
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            trace_context: self.trace_context,
            event: f(self.event),
        }
    }
}

impl<E: AsDynEvent> EventEnvelope<E> {
    /// The CloudEvents `type` of the event.
    pub fn event_type(&self) -> &'static str {
        self.event.as_dyn().meta().event_type
    }

    /// The CloudEvents `source` of the event.
    pub fn source(&self) -> &'static str {
        self.event.as_dyn().meta().source
    }

    /// The data version of the event (`"1.0"` unless the type says otherwise).
    pub fn data_version(&self) -> &'static str {
        self.event.as_dyn().meta().data_version
    }

    /// The aggregate the event belongs to.
    pub fn aggregate_id(&self) -> String {
        self.event.as_dyn().aggregate_id()
    }

    /// Renders the broker-neutral message (python-outbox-core's `to_message()`).
    ///
    /// Fails only if the event's `Serialize` implementation fails (e.g. a map with non-string keys).
    pub fn to_message(&self) -> Result<Message, EncodeError> {
        let event = self.event.as_dyn();
        let meta = event.meta();
        let data = event.message_data().map_err(|source| EncodeError {
            event_type: meta.event_type,
            source,
        })?;
        Ok(Message {
            id: self.event_id,
            event_type: meta.event_type.to_owned(),
            source: meta.source.to_owned(),
            time: self.occurred_at,
            subject: event.subject(),
            dataschema: meta.dataschema.map(str::to_owned),
            data_version: meta.data_version.to_owned(),
            aggregate_type: meta.aggregate_type.to_owned(),
            key: event.aggregate_id(),
            destination: meta.destination.to_owned(),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            traceparent: self.trace_context.as_ref().map(|t| t.traceparent.clone()),
            tracestate: self
                .trace_context
                .as_ref()
                .and_then(|t| t.tracestate.clone()),
            extensions: meta
                .extensions
                .iter()
                .map(|&(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            headers: event.headers(),
            data,
        })
    }
}

impl<E: OutboxEvent> From<E> for EventEnvelope<E> {
    fn from(event: E) -> Self {
        Self::new(event)
    }
}

/// Events an [`EventEnvelope`] can render: every [`OutboxEvent`], and a decoded `Box<dyn DynEvent>`.
///
/// Sealed: it only exists so that one `to_message` serves both.
pub trait AsDynEvent: sealed::Sealed {
    #[doc(hidden)]
    fn as_dyn(&self) -> &dyn DynEvent;
}

impl<E: OutboxEvent> AsDynEvent for E {
    fn as_dyn(&self) -> &dyn DynEvent {
        self
    }
}

impl AsDynEvent for Box<dyn DynEvent> {
    fn as_dyn(&self) -> &dyn DynEvent {
        self.as_ref()
    }
}

mod sealed {
    pub trait Sealed {}
    impl<E: super::OutboxEvent> Sealed for E {}
    impl Sealed for Box<dyn super::DynEvent> {}
}

/// An event whose data could not be serialized to JSON.
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize event `{event_type}` to JSON: {source}")]
pub struct EncodeError {
    /// The event type that failed.
    pub event_type: &'static str,
    /// What serde_json said.
    #[source]
    pub source: serde_json::Error,
}

/// W3C trace context (`traceparent` and optional `tracestate`), validated.
///
/// ```
/// let ctx: outbox::TraceContext = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse()?;
/// assert_eq!(ctx.trace_id(), "0af7651916cd43dd8448eb211c80319c");
/// # Ok::<(), outbox::InvalidTraceparent>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// Validates a `traceparent` header value (`version-traceid-parentid-flags`, lowercase hex).
    pub fn new(traceparent: &str, tracestate: Option<String>) -> Result<Self, InvalidTraceparent> {
        let parts: Vec<&str> = traceparent.split('-').collect();
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let valid = parts.len() >= 4
            && hex(parts[0], 2)
            && parts[0] != "ff"
            && hex(parts[1], 32)
            && parts[1].bytes().any(|b| b != b'0')
            && hex(parts[2], 16)
            && parts[2].bytes().any(|b| b != b'0')
            && hex(parts[3], 2)
            // Version 00 has exactly four fields; later versions may append more.
            && (parts[0] != "00" || parts.len() == 4);
        if !valid {
            return Err(InvalidTraceparent(traceparent.to_owned()));
        }
        let tracestate = tracestate.filter(|s| !s.is_empty());
        Ok(Self {
            traceparent: traceparent.to_owned(),
            tracestate,
        })
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }
}

impl FromStr for TraceContext {
    type Err = InvalidTraceparent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s, None)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent)
    }
}

/// A `traceparent` value that is not W3C trace context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid traceparent {0:?}: expected `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (W3C trace context)"
)]
pub struct InvalidTraceparent(pub String);
