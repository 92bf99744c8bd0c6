//! The AsyncAPI 3.0 document of a service's events.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::cloudevents::{self, BinaryMode, JSON_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE};
use crate::message::Message;
use crate::registry::{EventInfo, Registry};

/// The broker binding a document describes: its protocol, and so the CloudEvents headers messages carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// Kafka: `ce_` headers, the aggregate id as the record key.
    Kafka,
    /// RabbitMQ: `cloudEvents_` application properties, the destination as the routing key.
    Amqp,
    /// NATS JetStream: `ce-` headers, percent-encoded.
    Nats,
    /// Redis Streams, in FastStream's envelope: `ce_` headers.
    Redis,
    /// HTTP: `ce-` headers.
    Http,
}

impl Protocol {
    /// The protocol of a broker URL as [`publisher::from_url`](crate::publisher::from_url) takes it, or `None`
    /// for one that is no protocol (`memory://`, `stdout://`) or unknown.
    pub fn from_broker_url(url: &str) -> Option<Self> {
        let scheme = url.split("://").next()?.to_ascii_lowercase();
        match scheme.as_str() {
            "kafka" => Some(Self::Kafka),
            "amqp" | "amqps" => Some(Self::Amqp),
            "nats" | "tls" => Some(Self::Nats),
            "redis" | "rediss" => Some(Self::Redis),
            "http" | "https" => Some(Self::Http),
            _ => None,
        }
    }

    /// The protocol's name in AsyncAPI (`kafka`, `amqp`, `nats`, `redis`, `http`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Amqp => "amqp",
            Self::Nats => "nats",
            Self::Redis => "redis",
            Self::Http => "http",
        }
    }

    fn binary_mode(self) -> BinaryMode {
        match self {
            Self::Kafka => BinaryMode::KAFKA,
            Self::Amqp => BinaryMode::AMQP,
            Self::Nats => BinaryMode::NATS,
            Self::Redis => BinaryMode::REDIS,
            Self::Http => BinaryMode::HTTP,
        }
    }
}

/// Builds the AsyncAPI 3.0 document of the events a service publishes.
///
/// One channel per destination (its address is the topic, subject, stream or routing key), one `send` operation
/// per channel, one message per event type and version with the CloudEvents headers of the chosen binding, and
/// the payload schemas in `components.schemas`. See the [module](super) for an example.
#[derive(Clone, Debug)]
#[must_use]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    protocol: Protocol,
    binary: Option<BinaryMode>,
    structured: bool,
    server: Option<String>,
}

impl AsyncApi {
    /// A document titled `title`, for version `version` of the service (the API's version, not AsyncAPI's).
    /// Kafka binding, binary mode, no server, until told otherwise.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            description: None,
            protocol: Protocol::Kafka,
            binary: None,
            structured: false,
            server: None,
        }
    }

    /// The document's description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The broker binding (default Kafka).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The binary mode the publisher uses, when it is not the protocol's default (e.g. RabbitMQ with
    /// `BinaryMode::AMQP.with_prefix("ce-")`).
    pub fn binary_mode(mut self, mode: BinaryMode) -> Self {
        self.binary = Some(mode);
        self
    }

    /// Messages are structured-mode CloudEvents (`application/cloudevents+json`, the attributes in the body)
    /// instead of binary mode.
    pub fn structured(mut self, structured: bool) -> Self {
        self.structured = structured;
        self
    }

    /// The broker's `host[:port]`, listed as the document's one server, `broker`.
    pub fn server(mut self, host: impl Into<String>) -> Self {
        self.server = Some(host.into());
        self
    }

    /// The binding, server and encoding of a broker URL as
    /// [`publisher::from_url`](crate::publisher::from_url) takes it: its scheme picks the protocol, its first
    /// `host:port` (without credentials) becomes the server, `encoding=structured` the structured mode. A URL of
    /// no protocol (`stdout://`, `memory://`) means structured mode with no server: what those publishers write.
    pub fn broker(self, url: &str) -> Self {
        let structured = url.contains("encoding=structured");
        let Some(protocol) = Protocol::from_broker_url(url) else {
            return self.structured(true);
        };
        let document = self.protocol(protocol).structured(structured);
        match broker_host(url) {
            Some(host) => document.server(host),
            None => document,
        }
    }

    /// The document for every type in `registry`.
    pub fn document(&self, registry: &Registry) -> Value {
        let mut components = Components::default();
        let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
        let mut channel_ids = Ids::default();
        for (info, schema) in super::schemas(registry) {
            let message_id = component_id(&format!(
                "{}.v{}",
                info.meta.event_type, info.meta.data_version
            ));
            let payload = schema.map(|schema| components.add_schema(&message_id, schema));
            components
                .messages
                .insert(message_id.clone(), self.message(&info, payload));
            let destination = info.meta.destination;
            channels
                .entry(destination.to_owned())
                .or_insert_with(|| Channel {
                    id: channel_ids.unique(&component_id(destination)),
                    messages: Vec::new(),
                })
                .messages
                .push(message_id);
        }

        let mut channel_objects = Map::new();
        let mut operations = Map::new();
        for (address, channel) in &channels {
            let messages: Map<String, Value> = channel
                .messages
                .iter()
                .map(|id| {
                    (
                        id.clone(),
                        json!({ "$ref": format!("#/components/messages/{id}") }),
                    )
                })
                .collect();
            let mut channel_object = json!({ "address": address, "messages": messages });
            if self.server.is_some() {
                channel_object["servers"] = json!([{ "$ref": "#/servers/broker" }]);
            }
            channel_objects.insert(channel.id.clone(), channel_object);
            operations.insert(
                format!("send.{}", channel.id),
                json!({
                    "action": "send",
                    "channel": { "$ref": format!("#/channels/{}", channel.id) },
                    "summary": format!("Events published to `{address}`"),
                    "messages": channel.messages.iter().map(|id| json!({
                        "$ref": format!("#/channels/{}/messages/{id}", channel.id)
                    })).collect::<Vec<_>>(),
                }),
            );
        }

        let mut info = json!({ "title": self.title, "version": self.version });
        if let Some(description) = &self.description {
            info["description"] = json!(description);
        }
        let mut document = json!({
            "asyncapi": "3.0.0",
            "info": info,
            "defaultContentType": if self.structured { STRUCTURED_CONTENT_TYPE } else { JSON_CONTENT_TYPE },
            "channels": channel_objects,
            "operations": operations,
            "components": {
                "messages": components.messages,
                "schemas": components.schemas,
            },
        });
        if let Some(host) = &self.server {
            document["servers"] = json!({
                "broker": { "host": host, "protocol": self.protocol.name() }
            });
        }
        document
    }

    fn message(&self, info: &EventInfo, payload: Option<Value>) -> Value {
        let meta = &info.meta;
        let sample = sample(info);
        let mut message = json!({
            "name": meta.event_type,
            "title": format!("{} (version {})", meta.event_type, meta.data_version),
            "summary": format!("CloudEvent `{}` from `{}`", meta.event_type, meta.source),
        });
        if self.structured {
            message["contentType"] = json!(STRUCTURED_CONTENT_TYPE);
            let attributes = cloudevents::attributes(&sample);
            let (mut properties, required) = attribute_schemas(
                info,
                attributes
                    .iter()
                    .map(|(name, _)| (name.as_ref(), name.as_ref())),
            );
            properties.insert(
                "datacontenttype".to_owned(),
                json!({ "const": JSON_CONTENT_TYPE }),
            );
            properties.insert("data".to_owned(), payload.unwrap_or_else(|| json!({})));
            message["payload"] = json!({
                "type": "object",
                "properties": properties,
                "required": required.into_iter().chain(["datacontenttype".into(), "data".into()]).collect::<Vec<_>>(),
            });
        } else {
            message["contentType"] = json!(JSON_CONTENT_TYPE);
            let mode = self
                .binary
                .clone()
                .unwrap_or_else(|| self.protocol.binary_mode());
            let headers = mode.attribute_headers(&sample);
            let (properties, required) = attribute_schemas(
                info,
                headers.iter().map(|(name, _)| {
                    (
                        name.as_str(),
                        name.strip_prefix(mode.prefix()).unwrap_or(name),
                    )
                }),
            );
            message["headers"] = json!({
                "type": "object",
                "properties": properties,
                "required": required,
            });
            if let Some((name, _)) = headers
                .iter()
                .find(|(name, _)| name.ends_with("correlationid"))
            {
                message["correlationId"] = json!({
                    "description": "The flow this event belongs to.",
                    "location": format!("$message.header#/{name}"),
                });
            }
            if let Some(payload) = payload {
                message["payload"] = payload;
            }
        }
        if self.protocol == Protocol::Kafka {
            message["bindings"] = json!({
                "kafka": {
                    "key": { "type": "string", "description": "The aggregate id: one aggregate's events share a partition." },
                    "bindingVersion": "0.5.0",
                }
            });
        }
        message
    }
}

/// `host:port` of a broker URL, without credentials, path or query; the first of a Kafka list.
fn broker_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    host.split(',').next().filter(|host| !host.is_empty())
}

/// A message of the type with every optional attribute set, so the binding renders every header it can carry.
fn sample(info: &EventInfo) -> Message {
    let meta = &info.meta;
    Message {
        id: Uuid::nil(),
        event_type: meta.event_type.to_owned(),
        source: meta.source.to_owned(),
        time: Utc.timestamp_opt(0, 0).single().unwrap_or_default(),
        subject: Some(String::new()),
        dataschema: Some(meta.dataschema.unwrap_or_default().to_owned()),
        data_version: meta.data_version.to_owned(),
        aggregate_type: meta.aggregate_type.to_owned(),
        key: String::new(),
        destination: meta.destination.to_owned(),
        correlation_id: Some(String::new()),
        causation_id: Some(String::new()),
        traceparent: Some(String::new()),
        tracestate: Some(String::new()),
        extensions: meta
            .extensions
            .iter()
            .map(|&(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
        headers: Vec::new(),
        data: serde_json::value::RawValue::NULL.to_owned(),
    }
}

/// The schema of each `(name, attribute)`, by name, and the names always present.
fn attribute_schemas<'a>(
    info: &EventInfo,
    attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> (Map<String, Value>, Vec<String>) {
    let meta = &info.meta;
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, attribute) in attributes {
        let constant = |value: &str| json!({ "type": "string", "const": value });
        let (schema, always) = match attribute {
            "specversion" => (constant(cloudevents::SPEC_VERSION), true),
            "id" => (
                json!({ "type": "string", "format": "uuid", "description": "The stable event id: the same on every redelivery." }),
                true,
            ),
            "source" => (constant(meta.source), true),
            "type" => (constant(meta.event_type), true),
            "time" => (json!({ "type": "string", "format": "date-time" }), true),
            "subject" => (
                json!({ "type": "string", "description": "The aggregate id, unless the type names another field." }),
                true,
            ),
            "dataschema" => match meta.dataschema {
                Some(url) => (constant(url), true),
                None => (json!({ "type": "string", "format": "uri" }), false),
            },
            "dataversion" => (constant(meta.data_version), true),
            "aggregatetype" => (constant(meta.aggregate_type), true),
            "partitionkey" => (
                json!({ "type": "string", "description": "The aggregate id." }),
                true,
            ),
            "traceparent" => (
                json!({ "type": "string", "description": "W3C trace context of the write that recorded the event." }),
                false,
            ),
            "correlationid" | "causationid" | "tracestate" => (json!({ "type": "string" }), false),
            "content-type" | "datacontenttype" => (constant(JSON_CONTENT_TYPE), true),
            extension => match meta.extensions.iter().find(|(name, _)| *name == extension) {
                Some((_, value)) => (constant(value), true),
                None => (json!({ "type": "string" }), false),
            },
        };
        if always {
            required.push(name.to_owned());
        }
        properties.insert(name.to_owned(), schema);
    }
    (properties, required)
}

struct Channel {
    id: String,
    messages: Vec<String>,
}

#[derive(Default)]
struct Components {
    messages: Map<String, Value>,
    schemas: Map<String, Value>,
    ids: Ids,
}

impl Components {
    /// Moves a payload's schema, and the definitions it refers to, into `components.schemas`; returns the
    /// reference to use as the message's payload. Definitions of the same name and content are shared; one of the
    /// same name and other content gets a suffix.
    fn add_schema(&mut self, id: &str, mut schema: Value) -> Value {
        let definitions = schema
            .as_object_mut()
            .and_then(|root| {
                root.remove("$schema");
                root.remove("definitions")
            })
            .and_then(|definitions| match definitions {
                Value::Object(map) => Some(map),
                _ => None,
            })
            .unwrap_or_default();
        let mut renamed = BTreeMap::new();
        for (name, definition) in &definitions {
            let wanted = component_id(name);
            let mut candidate = wanted.clone();
            let mut n = 2;
            while let Some(existing) = self.schemas.get(&candidate) {
                if same_after_renaming(existing, definition, &renamed) {
                    break;
                }
                candidate = format!("{wanted}_{n}");
                n += 1;
            }
            renamed.insert(name.clone(), candidate);
        }
        for (name, mut definition) in definitions {
            retarget(&mut definition, &renamed);
            let target = &renamed[&name];
            self.ids.taken.insert(target.clone());
            self.schemas.entry(target.clone()).or_insert(definition);
        }
        retarget(&mut schema, &renamed);
        let id = self.ids.unique(id);
        self.schemas.insert(id.clone(), schema);
        json!({ "$ref": format!("#/components/schemas/{id}") })
    }
}

fn same_after_renaming(
    existing: &Value,
    definition: &Value,
    renamed: &BTreeMap<String, String>,
) -> bool {
    let mut definition = definition.clone();
    retarget(&mut definition, renamed);
    *existing == definition
}

/// Points `#/definitions/X` references at `#/components/schemas/<X's new name>`.
fn retarget(schema: &mut Value, renamed: &BTreeMap<String, String>) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if key == "$ref"
                    && let Some(name) = value
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/definitions/"))
                {
                    let target = renamed.get(name).map_or(name, String::as_str);
                    *value = json!(format!("#/components/schemas/{target}"));
                } else {
                    retarget(value, renamed);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| retarget(v, renamed)),
        _ => {}
    }
}

/// Names handed out, so no two components share one.
#[derive(Default)]
struct Ids {
    taken: std::collections::BTreeSet<String>,
}

impl Ids {
    fn unique(&mut self, wanted: &str) -> String {
        let mut candidate = wanted.to_owned();
        let mut n = 2;
        while !self.taken.insert(candidate.clone()) {
            candidate = format!("{wanted}_{n}");
            n += 1;
        }
        candidate
    }
}

/// `name` as an AsyncAPI component key (`^[a-zA-Z0-9.\-_]+$`): anything else becomes `_`.
fn component_id(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() { "_".to_owned() } else { id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_ids_keep_only_what_asyncapi_allows() {
        assert_eq!(component_id("orders.>"), "orders._");
        assert_eq!(
            component_id("com.example.user.v1.0"),
            "com.example.user.v1.0"
        );
        assert_eq!(component_id(""), "_");
    }

    #[test]
    fn definitions_of_one_name_and_two_shapes_get_two_components() {
        let mut components = Components::default();
        let first = json!({
            "type": "object",
            "properties": { "at": { "$ref": "#/definitions/Address" } },
            "definitions": { "Address": { "type": "string" } },
        });
        let second = json!({
            "type": "object",
            "properties": { "at": { "$ref": "#/definitions/Address" } },
            "definitions": { "Address": { "type": "object" } },
        });
        let same = first.clone();
        components.add_schema("a", first);
        components.add_schema("b", second);
        components.add_schema("c", same);
        assert_eq!(components.schemas["Address"], json!({ "type": "string" }));
        assert_eq!(components.schemas["Address_2"], json!({ "type": "object" }));
        assert_eq!(
            components.schemas["b"]["properties"]["at"]["$ref"],
            "#/components/schemas/Address_2"
        );
        assert_eq!(
            components.schemas["c"]["properties"]["at"]["$ref"],
            "#/components/schemas/Address"
        );
    }

    #[test]
    fn broker_urls_name_their_protocol() {
        assert_eq!(
            Protocol::from_broker_url("nats://127.0.0.1:4222"),
            Some(Protocol::Nats)
        );
        assert_eq!(
            Protocol::from_broker_url("AMQP://guest@h"),
            Some(Protocol::Amqp)
        );
        assert_eq!(Protocol::from_broker_url("memory://"), None);
        assert_eq!(broker_host("nats://127.0.0.1:4222"), Some("127.0.0.1:4222"));
        assert_eq!(
            broker_host("amqp://guest:secret@rabbit:5672/%2f"),
            Some("rabbit:5672")
        );
        assert_eq!(
            broker_host("kafka://a:9092,b:9092?partitions=3"),
            Some("a:9092")
        );
        assert_eq!(broker_host("memory://"), None);
    }
}
