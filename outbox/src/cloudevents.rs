//! CloudEvents 1.0 rendering of a [`Message`]: structured mode and the binary mode of each protocol binding.
//!
//! - **Binary mode** (the default on every broker): the body is the event data as JSON with content type
//!   `application/json`, and the context attributes travel as headers. FastStream decodes such a body into its
//!   handler's model, which it would not do for `application/cloudevents+json`.
//! - **Structured mode**: the whole event is one JSON object (`application/cloudevents+json`) with `data` as JSON.
//!
//! The bindings differ in header prefix and value encoding: Kafka `ce_` (raw UTF-8), AMQP `cloudEvents_`
//! (raw; `ce-` is what Knative and Python's RabbitMQ binding use, select it with [`BinaryMode::with_prefix`]),
//! NATS and HTTP `ce-` with percent-encoding of space, `"`, `%` and anything outside printable ASCII, so no value
//! can break a header line.
//!
//! Per-instance metadata goes in extension attributes: `dataversion`, `aggregatetype`, `partitionkey` (the
//! aggregate id; Kafka carries it as the record key instead), `correlationid`, `causationid`, `traceparent`,
//! `tracestate`, then the type's own extensions.
//!
//! ```
//! # use outbox::{EventEnvelope, OutboxEvent, cloudevents::BinaryMode};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize, OutboxEvent)]
//! # #[outbox(type = "com.example.user.created", source = "/users")]
//! # struct UserCreated { #[outbox(aggregate_id)] user_id: u64 }
//! let message = EventEnvelope::new(UserCreated { user_id: 7 }).to_message()?;
//! let headers = BinaryMode::KAFKA.headers(&message);
//! assert!(headers.contains(&("ce_type".into(), "com.example.user.created".into())));
//! assert!(headers.contains(&("content-type".into(), "application/json".into())));
//! assert_eq!(message.data.get(), r#"{"user_id":7}"#);
//! # Ok::<(), outbox::EncodeError>(())
//! ```

use std::borrow::Cow;

use chrono::SecondsFormat;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::message::Message;

/// The CloudEvents specification version this crate writes.
pub const SPEC_VERSION: &str = "1.0";
/// Content type of the body in binary mode.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Content type of a structured-mode JSON CloudEvent.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// What the HTTP binding (§3.1.3.2), reused by NATS, requires percent-encoded: space, `"`, `%`, and anything
/// outside printable ASCII (`percent-encoding` always encodes non-ASCII bytes).
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// The context attributes of `message`, in spec order, without `datacontenttype` (each binding places that one
/// itself) and without `data`.
pub fn attributes(message: &Message) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    let mut attrs = Vec::with_capacity(12 + message.extensions.len());
    let mut push = |name: &'static str, value| attrs.push((Cow::Borrowed(name), value));
    push("specversion", Cow::Borrowed(SPEC_VERSION));
    push("id", Cow::Owned(message.id.to_string()));
    push("source", Cow::Borrowed(&message.source));
    push("type", Cow::Borrowed(&message.event_type));
    push(
        "time",
        Cow::Owned(message.time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    if let Some(subject) = &message.subject {
        push("subject", Cow::Borrowed(subject));
    }
    if let Some(schema) = &message.dataschema {
        push("dataschema", Cow::Borrowed(schema));
    }
    push("dataversion", Cow::Borrowed(&message.data_version));
    push("aggregatetype", Cow::Borrowed(&message.aggregate_type));
    push("partitionkey", Cow::Borrowed(&message.key));
    let optional = [
        ("correlationid", &message.correlation_id),
        ("causationid", &message.causation_id),
        ("traceparent", &message.traceparent),
        ("tracestate", &message.tracestate),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            push(name, Cow::Borrowed(value));
        }
    }
    attrs.extend(
        message
            .extensions
            .iter()
            .map(|(name, value)| (Cow::Borrowed(name.as_str()), Cow::Borrowed(value.as_str()))),
    );
    attrs
}

/// How one protocol binding maps attributes to headers in binary mode.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct BinaryMode {
    prefix: Cow<'static, str>,
    percent_encode: bool,
    content_type_header: Option<&'static str>,
    datacontenttype_attribute: bool,
    key_is_partitionkey: bool,
}

impl BinaryMode {
    /// Kafka: `ce_` headers with raw UTF-8 values, `content-type` header; the aggregate id is the record key, so
    /// no `ce_partitionkey` header (the Kafka binding maps the key to `partitionkey`).
    pub const KAFKA: Self = Self {
        prefix: Cow::Borrowed("ce_"),
        percent_encode: false,
        content_type_header: Some("content-type"),
        datacontenttype_attribute: false,
        key_is_partitionkey: true,
    };

    /// AMQP: `cloudEvents_` application properties; the content type is the message's `content_type` property,
    /// which the publisher sets, so it is not among the headers.
    pub const AMQP: Self = Self {
        prefix: Cow::Borrowed("cloudEvents_"),
        percent_encode: false,
        content_type_header: None,
        datacontenttype_attribute: false,
        key_is_partitionkey: false,
    };

    /// NATS: `ce-` headers, percent-encoded values, `content-type` (read by FastStream) and
    /// `ce-datacontenttype` (read by the CloudEvents NATS binding).
    pub const NATS: Self = Self {
        prefix: Cow::Borrowed("ce-"),
        percent_encode: true,
        content_type_header: Some("content-type"),
        datacontenttype_attribute: true,
        key_is_partitionkey: false,
    };

    /// Redis Streams (inside FastStream's binary envelope): `ce_` headers with raw UTF-8 values and
    /// `content-type`, as Kafka, but with `ce_partitionkey` since a stream entry has no key.
    pub const REDIS: Self = Self {
        prefix: Cow::Borrowed("ce_"),
        percent_encode: false,
        content_type_header: Some("content-type"),
        datacontenttype_attribute: false,
        key_is_partitionkey: false,
    };

    /// HTTP: `ce-` headers, percent-encoded values, `content-type`.
    pub const HTTP: Self = Self {
        prefix: Cow::Borrowed("ce-"),
        percent_encode: true,
        content_type_header: Some("content-type"),
        datacontenttype_attribute: false,
        key_is_partitionkey: false,
    };

    /// Replaces the attribute prefix, e.g. `BinaryMode::AMQP.with_prefix("ce-")` for consumers that use the
    /// Knative/Python RabbitMQ convention.
    pub fn with_prefix(mut self, prefix: impl Into<Cow<'static, str>>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The attribute prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The headers of `message` in this binding: the CloudEvents attributes, the content type where the binding
    /// carries it as a header, then the message's own extra headers.
    pub fn headers(&self, message: &Message) -> Vec<(String, String)> {
        let mut headers = self.attribute_headers(message);
        headers.extend(message.headers.iter().cloned());
        headers
    }

    /// The CloudEvents headers alone (attributes and content type), already encoded as the binding requires; a
    /// transport that must also make the message's extra headers safe adds them itself.
    pub fn attribute_headers(&self, message: &Message) -> Vec<(String, String)> {
        let mut headers = Vec::with_capacity(16 + message.headers.len());
        self.each_attribute_header(message, |name, value| {
            headers.push((name.into_owned(), value.into_owned()));
        });
        headers
    }

    /// Calls `header` with each header [`attribute_headers`](Self::attribute_headers) lists, in its order, without
    /// copying: a name is `'static` where the prefix is one of the bindings' own and the attribute one this crate
    /// writes, a value is borrowed from `message` unless it had to be rendered or encoded. A publisher that builds
    /// its client's header map from these saves two allocations per header (`docs/design.md`, "Performance
    /// decisions").
    pub(crate) fn each_attribute_header<'m>(
        &self,
        message: &'m Message,
        mut header: impl FnMut(Cow<'static, str>, Cow<'m, str>),
    ) {
        if let Some(name) = self.content_type_header {
            header(Cow::Borrowed(name), Cow::Borrowed(JSON_CONTENT_TYPE));
        }
        if self.datacontenttype_attribute {
            header(
                self.name("datacontenttype"),
                Cow::Borrowed(JSON_CONTENT_TYPE),
            );
        }
        for (name, value) in attributes(message) {
            if self.key_is_partitionkey && name == "partitionkey" {
                continue;
            }
            header(self.name(&name), self.value(value));
        }
    }

    fn name(&self, attribute: &str) -> Cow<'static, str> {
        if let Some(name) = prefixed(&self.prefix, attribute) {
            return Cow::Borrowed(name);
        }
        let mut name = String::with_capacity(self.prefix.len() + attribute.len());
        name.push_str(&self.prefix);
        name.push_str(attribute);
        Cow::Owned(name)
    }

    fn value<'m>(&self, value: Cow<'m, str>) -> Cow<'m, str> {
        if !self.percent_encode {
            return value;
        }
        // Not `to_string()`: formatting through `Display` cost more than the rest of the headers (callgrind).
        let encoded = match header_safe(&value) {
            Cow::Owned(encoded) => Some(encoded),
            Cow::Borrowed(_) => None,
        };
        encoded.map_or(value, Cow::Owned)
    }
}

/// `prefix` followed by `attribute`, as a `'static` name, for the bindings' own prefixes and the attributes this
/// crate writes; `None` for any other pair (a custom prefix, a type's own extension).
fn prefixed(prefix: &str, attribute: &str) -> Option<&'static str> {
    macro_rules! prefixed {
        ($($attribute:literal)*) => {
            match prefix {
                "ce-" => match attribute { $($attribute => Some(concat!("ce-", $attribute)),)* _ => None },
                "ce_" => match attribute { $($attribute => Some(concat!("ce_", $attribute)),)* _ => None },
                "cloudEvents_" => match attribute {
                    $($attribute => Some(concat!("cloudEvents_", $attribute)),)*
                    _ => None,
                },
                _ => None,
            }
        };
    }
    prefixed!(
        "specversion" "id" "source" "type" "time" "subject" "dataschema" "datacontenttype" "dataversion"
        "aggregatetype" "partitionkey" "correlationid" "causationid" "traceparent" "tracestate"
    )
}

/// `value` made safe for a text header: percent-encoded as the HTTP binding does when it holds a space, `"`, `%`
/// or anything outside printable ASCII, unchanged otherwise (the common case, without allocating).
pub fn header_safe(value: &str) -> Cow<'_, str> {
    utf8_percent_encode(value, HEADER_VALUE).into()
}

/// The message as one structured-mode CloudEvent (`application/cloudevents+json`), `data` embedded as JSON.
pub fn to_structured(message: &Message) -> Vec<u8> {
    serde_json::to_vec(&Structured(message))
        .expect("string attributes and already-validated raw JSON always serialize")
}

struct Structured<'a>(&'a Message);

impl Serialize for Structured<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let attrs = attributes(self.0);
        let mut map = serializer.serialize_map(Some(attrs.len() + 2))?;
        for (name, value) in &attrs {
            map.serialize_entry(name, value)?;
        }
        map.serialize_entry("datacontenttype", JSON_CONTENT_TYPE)?;
        map.serialize_entry("data", &self.0.data)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::{EventEnvelope, TraceContext};

    #[derive(Serialize, Deserialize, crate::OutboxEvent)]
    #[outbox(
        crate = "crate",
        type = "com.example.pin.checked",
        source = "/pin",
        dataschema = "https://example.com/s"
    )]
    struct Checked {
        #[outbox(aggregate_id)]
        id: u32,
    }

    /// The derive refuses an extension that reuses an attribute the runtime writes: its list
    /// (`RESERVED_ATTRIBUTES` in outbox-derive) must name every attribute this module renders, no more, no less.
    #[test]
    fn the_derives_reserved_attributes_are_the_ones_rendered_here() {
        let envelope = EventEnvelope::new(Checked { id: 1 })
            .with_correlation_id("c")
            .with_causation_id("d")
            .with_trace_context(
                TraceContext::new(
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    Some("k=v".into()),
                )
                .unwrap(),
            );
        let message = envelope.to_message().unwrap();
        let mut rendered: BTreeSet<String> = attributes(&message)
            .into_iter()
            .map(|(name, _)| name.into_owned())
            .collect();
        // Placed by every binding and by the structured format themselves.
        rendered.extend(["datacontenttype".to_owned(), "data".to_owned()]);

        let source = include_str!("../../outbox-derive/src/check.rs");
        let list = source
            .split_once("const RESERVED_ATTRIBUTES: &[&str] = &[")
            .and_then(|(_, rest)| rest.split_once("];"))
            .map(|(list, _)| list)
            .expect("outbox-derive/src/check.rs declares RESERVED_ATTRIBUTES");
        let reserved: BTreeSet<String> = list
            .split(',')
            .map(|item| item.trim().trim_matches('"').to_owned())
            .filter(|item| !item.is_empty())
            .collect();
        assert_eq!(reserved, rendered);
    }
}
