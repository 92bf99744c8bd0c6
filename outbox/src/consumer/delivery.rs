//! A received message read back as a CloudEvent: its attributes from the headers of any binding (binary mode)
//! or from the body (structured mode), and its data, ready for the registry.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use percent_encoding::percent_decode_str;
use serde_json::value::RawValue;

use crate::cloudevents::{SPEC_VERSION, STRUCTURED_CONTENT_TYPE};
use crate::envelope::TraceContext;
use crate::event::DynEvent;
use crate::registry::{Registry, RegistryError};

/// The attribute prefixes of the binary bindings, with whether their values are percent-encoded: Kafka and Redis
/// `ce_`, AMQP `cloudEvents_` (or `cloudEvents:`, the AMQP binding's own), NATS and HTTP `ce-`.
const PREFIXES: [(&str, bool); 4] = [
    ("ce_", false),
    ("cloudEvents_", false),
    ("cloudEvents:", false),
    ("ce-", true),
];

/// One received event: the CloudEvents attributes a consumer needs, and the data.
///
/// ```
/// use outbox::consumer::Delivery;
///
/// let headers = [
///     ("ce-specversion", "1.0"),
///     ("ce-id", "0190f5a2-7a55-7c3e-9f55-7a1b0c9d8e01"),
///     ("ce-source", "/users"),
///     ("ce-type", "com.example.user.created"),
///     ("ce-correlationid", "req%2042"),
///     ("content-type", "application/json"),
/// ];
/// let delivery = Delivery::from_binary(headers, br#"{"user_id":7}"#)?;
/// assert_eq!(delivery.event_type, "com.example.user.created");
/// assert_eq!(delivery.data_version, "1.0");
/// assert_eq!(delivery.correlation_id.as_deref(), Some("req 42"));
/// # Ok::<(), outbox::consumer::DeliveryError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Delivery {
    /// CloudEvents `id`: the same on every redelivery, the inbox's key.
    pub id: String,
    /// CloudEvents `type`.
    pub event_type: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `time`, when given.
    pub time: Option<DateTime<Utc>>,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// `dataversion`; `1.0` when absent, as the derive's default.
    pub data_version: String,
    /// `aggregatetype`.
    pub aggregate_type: Option<String>,
    /// The aggregate: `partitionkey`, or the broker's key (Kafka's record key) given with
    /// [`with_key`](Self::with_key).
    pub aggregate_id: Option<String>,
    /// `correlationid`.
    pub correlation_id: Option<String>,
    /// `causationid`.
    pub causation_id: Option<String>,
    /// `traceparent` and `tracestate`, when the producer sent a valid one.
    pub trace_context: Option<TraceContext>,
    /// The event data, as JSON.
    pub data: Box<RawValue>,
}

impl Delivery {
    /// A binary-mode message of any binding: the attributes from `headers` (`ce_`, `ce-` percent-decoded,
    /// `cloudEvents_`, `cloudEvents:`), the data from `body`, which must be JSON.
    pub fn from_binary<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: &[u8],
    ) -> Result<Self, DeliveryError> {
        let mut attributes = Attributes::default();
        for (name, value) in headers {
            // FastStream's own headers, for a message that is no CloudEvent (see `DeliveryError::NotACloudEvent`).
            if name.eq_ignore_ascii_case("message_id") {
                attributes.plain_id = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("correlation_id") {
                attributes.plain_correlation = Some(value.to_owned());
            }
            let Some((attribute, encoded)) = PREFIXES.iter().find_map(|(prefix, encoded)| {
                strip_prefix_ignore_case(name, prefix).map(|attribute| (attribute, *encoded))
            }) else {
                continue;
            };
            let value = if encoded {
                percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|_| DeliveryError::Attribute {
                        attribute: attribute.to_ascii_lowercase(),
                        reason: "its percent-encoding is not UTF-8".to_owned(),
                    })?
            } else {
                Cow::Borrowed(value)
            };
            attributes.set(&attribute.to_ascii_lowercase(), value.into_owned());
        }
        let data = json(body)?;
        attributes.into_delivery(data)
    }

    /// A structured-mode message (`application/cloudevents+json`): attributes and `data` from the body.
    pub fn from_structured(body: &[u8]) -> Result<Self, DeliveryError> {
        #[derive(serde::Deserialize)]
        struct Structured {
            #[serde(flatten)]
            attributes: std::collections::BTreeMap<String, serde_json::Value>,
            data: Option<Box<RawValue>>,
        }
        let structured: Structured = serde_json::from_slice(body)
            .map_err(|e| DeliveryError::Body(format!("not a structured CloudEvent: {e}")))?;
        let mut attributes = Attributes::default();
        for (name, value) in structured.attributes {
            let value = match value {
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            };
            attributes.set(&name, value);
        }
        let data = structured.data.ok_or_else(|| DeliveryError::Attribute {
            attribute: "data".to_owned(),
            reason: "it is missing (data_base64 is not read)".to_owned(),
        })?;
        attributes.into_delivery(data)
    }

    /// Structured mode when `content_type` says `application/cloudevents+json`, binary mode otherwise.
    pub fn parse<'a>(
        content_type: Option<&str>,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: &[u8],
    ) -> Result<Self, DeliveryError> {
        let structured = content_type.is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE))
        });
        if structured {
            Self::from_structured(body)
        } else {
            Self::from_binary(headers, body)
        }
    }

    /// [`parse`](Self::parse) with the content type taken from the `content-type` header among `headers`, as
    /// every binding but AMQP carries it (the AMQP subscriber adds its property to the list).
    pub fn from_headers(headers: &[(String, String)], body: &[u8]) -> Result<Self, DeliveryError> {
        let content_type = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.as_str());
        Self::parse(
            content_type,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            body,
        )
    }

    /// The aggregate id from the broker's own key (Kafka's record key) when no `partitionkey` attribute gave one.
    pub fn with_key(mut self, key: Option<&str>) -> Self {
        if self.aggregate_id.is_none() {
            self.aggregate_id = key.map(str::to_owned);
        }
        self
    }

    /// The delivery as one structured-mode CloudEvent (JSON), what a consumer's dead letter keeps;
    /// [`from_structured`](Self::from_structured) reads it back.
    pub fn to_structured(&self) -> String {
        let mut event = serde_json::Map::new();
        let mut put = |name: &str, value: Option<&str>| {
            if let Some(value) = value {
                event.insert(name.to_owned(), value.into());
            }
        };
        put("specversion", Some(SPEC_VERSION));
        put("id", Some(&self.id));
        put("source", Some(&self.source));
        put("type", Some(&self.event_type));
        let time = self
            .time
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
        put("time", time.as_deref());
        put("subject", self.subject.as_deref());
        put("dataversion", Some(&self.data_version));
        put("aggregatetype", self.aggregate_type.as_deref());
        put("partitionkey", self.aggregate_id.as_deref());
        put("correlationid", self.correlation_id.as_deref());
        put("causationid", self.causation_id.as_deref());
        let trace = self.trace_context.as_ref();
        put("traceparent", trace.map(TraceContext::traceparent));
        put("tracestate", trace.and_then(TraceContext::tracestate));
        put(
            "datacontenttype",
            Some(crate::cloudevents::JSON_CONTENT_TYPE),
        );
        let data: serde_json::Value =
            serde_json::from_str(self.data.get()).unwrap_or(serde_json::Value::Null);
        event.insert("data".to_owned(), data);
        serde_json::Value::Object(event).to_string()
    }

    /// The data decoded into the Rust type registered for its type and version.
    pub fn decode(&self, registry: &Registry) -> Result<Box<dyn DynEvent>, RegistryError> {
        registry.decode(&self.event_type, &self.data_version, self.data.get())
    }
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

fn json(body: &[u8]) -> Result<Box<RawValue>, DeliveryError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| DeliveryError::Body("the body is not UTF-8 JSON".to_owned()))?;
    RawValue::from_string(text.to_owned())
        .map_err(|e| DeliveryError::Body(format!("the body is not JSON: {e}")))
}

#[derive(Default)]
struct Attributes {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    event_type: Option<String>,
    time: Option<String>,
    subject: Option<String>,
    data_version: Option<String>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    plain_id: Option<String>,
    plain_correlation: Option<String>,
}

impl Attributes {
    fn set(&mut self, attribute: &str, value: String) {
        let slot = match attribute {
            "specversion" => &mut self.specversion,
            "id" => &mut self.id,
            "source" => &mut self.source,
            "type" => &mut self.event_type,
            "time" => &mut self.time,
            "subject" => &mut self.subject,
            "dataversion" => &mut self.data_version,
            "aggregatetype" => &mut self.aggregate_type,
            "partitionkey" => &mut self.aggregate_id,
            "correlationid" => &mut self.correlation_id,
            "causationid" => &mut self.causation_id,
            "traceparent" => &mut self.traceparent,
            "tracestate" => &mut self.tracestate,
            // `datacontenttype`, `dataschema` and the types' own extensions are not needed to decode.
            _ => return,
        };
        *slot = Some(value);
    }

    fn into_delivery(self, data: Box<RawValue>) -> Result<Delivery, DeliveryError> {
        if self.specversion.is_none() && self.id.is_none() && self.event_type.is_none() {
            return Err(DeliveryError::NotACloudEvent(Box::new(PlainMessage {
                message_id: self.plain_id,
                correlation_id: self.plain_correlation,
                data,
            })));
        }
        let required = |value: Option<String>, attribute: &str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| DeliveryError::Attribute {
                    attribute: attribute.to_owned(),
                    reason: "it is missing".to_owned(),
                })
        };
        let specversion = required(self.specversion, "specversion")?;
        if specversion != SPEC_VERSION {
            return Err(DeliveryError::Attribute {
                attribute: "specversion".to_owned(),
                reason: format!("it is {specversion:?}, and only {SPEC_VERSION} is read"),
            });
        }
        let time = self
            .time
            .map(|time| {
                DateTime::parse_from_rfc3339(&time)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| DeliveryError::Attribute {
                        attribute: "time".to_owned(),
                        reason: format!("{time:?} is not RFC 3339: {e}"),
                    })
            })
            .transpose()?;
        // A broken trace context is the producer's tracing problem, not a reason to refuse the event.
        let trace_context = self
            .traceparent
            .and_then(|traceparent| TraceContext::new(&traceparent, self.tracestate).ok());
        Ok(Delivery {
            id: required(self.id, "id")?,
            event_type: required(self.event_type, "type")?,
            source: required(self.source, "source")?,
            time,
            subject: self.subject,
            data_version: self.data_version.unwrap_or_else(|| "1.0".to_owned()),
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            trace_context,
            data,
        })
    }
}

/// A JSON message without CloudEvents attributes, as a plain FastStream producer publishes it: what it carries
/// besides its body is FastStream's `message_id` and `correlation_id` headers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PlainMessage {
    /// FastStream's `message_id` header.
    pub message_id: Option<String>,
    /// FastStream's `correlation_id` header.
    pub correlation_id: Option<String>,
    /// The body.
    pub data: Box<RawValue>,
}

impl PlainMessage {
    /// The message read as an event of `event_type` at `data_version` from `source`, keyed by its `message_id`
    /// (without one, there is nothing to deduplicate on, and it is refused).
    pub fn into_delivery(
        self,
        event_type: &str,
        data_version: &str,
        source: &str,
    ) -> Result<Delivery, DeliveryError> {
        let id = self
            .message_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| DeliveryError::Attribute {
                attribute: "message_id".to_owned(),
                reason: "a message without CloudEvents attributes needs FastStream's message_id header, \
                         the key it is applied once by"
                    .to_owned(),
            })?;
        Ok(Delivery {
            id,
            event_type: event_type.to_owned(),
            source: source.to_owned(),
            time: None,
            subject: None,
            data_version: data_version.to_owned(),
            aggregate_type: None,
            aggregate_id: None,
            correlation_id: self.correlation_id,
            causation_id: None,
            trace_context: None,
            data: self.data,
        })
    }
}

/// Why a received message is not an event this consumer can read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// A CloudEvents attribute is missing or unusable.
    #[error("not a readable CloudEvent: attribute `{attribute}`: {reason}")]
    Attribute {
        /// The attribute.
        attribute: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The body is not what the mode requires.
    #[error("not a readable CloudEvent: {0}")]
    Body(String),
    /// A JSON message with no CloudEvents attributes at all (a plain FastStream producer's): readable as one
    /// event type with [`PlainMessage::into_delivery`], which `ConsumerBuilder::plain_json_as` does.
    #[error(
        "not a CloudEvent: the message has no specversion, id or type (a plain JSON message; a consumer reads \
         such messages as one event type with `plain_json_as`)"
    )]
    NotACloudEvent(Box<PlainMessage>),
}
