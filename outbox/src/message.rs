//! The broker-neutral message a relay hands to a publisher.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

/// One event, ready to publish: where it goes, its key, its CloudEvents attributes, extra headers and JSON data.
///
/// Built by [`EventEnvelope::to_message`](crate::EventEnvelope::to_message). Publishers render it for their
/// broker with the [`cloudevents`](crate::cloudevents) module (binary mode by default: body = `data`, attributes
/// as headers; or structured mode: the whole event as one JSON object).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Message {
    /// CloudEvents `id`: the stable event id. Republishing the same event reuses it, so consumers and brokers
    /// can de-duplicate.
    pub id: Uuid,
    /// CloudEvents `type`.
    pub event_type: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `time`: when the event occurred.
    pub time: DateTime<Utc>,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// CloudEvents `dataschema`.
    pub dataschema: Option<String>,
    /// Version of the data's shape (`dataversion` extension).
    pub data_version: String,
    /// The kind of aggregate (`aggregatetype` extension).
    pub aggregate_type: String,
    /// Broker key: the aggregate id (`partitionkey` extension). Brokers that partition use it so one aggregate's
    /// events stay in order.
    pub key: String,
    /// Topic, subject, stream or routing key.
    pub destination: String,
    /// The request or flow this event belongs to (`correlationid` extension).
    pub correlation_id: Option<String>,
    /// The event or command that caused this one (`causationid` extension).
    pub causation_id: Option<String>,
    /// W3C trace context captured when the event was recorded (`traceparent` extension).
    pub traceparent: Option<String>,
    /// W3C trace state, sent with `traceparent` (`tracestate` extension).
    pub tracestate: Option<String>,
    /// Constant CloudEvents extension attributes declared on the event type.
    pub extensions: Vec<(String, String)>,
    /// Extra transport headers, sent verbatim after the CloudEvents ones.
    pub headers: Vec<(String, String)>,
    /// The event data, as JSON (`datacontenttype` is `application/json`).
    pub data: Box<RawValue>,
}

impl Message {
    /// The correlation id consumers should see: the event's own, or else its id (a flow starts with its first
    /// event). FastStream reads this as the message's `correlation_id`.
    pub fn effective_correlation_id(&self) -> String {
        self.correlation_id
            .clone()
            .unwrap_or_else(|| self.id.to_string())
    }
}
