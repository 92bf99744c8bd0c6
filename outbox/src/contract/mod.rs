//! Contracts: what a service publishes, written down for the teams that consume it.
//!
//! Every registered event type already knows its CloudEvents type, source, version and destination. With
//! `#[outbox(schema)]` (feature `schema`, and `schemars::JsonSchema` on the type) it also carries the JSON Schema
//! of its payload. From the [registry](crate::registry) this module renders:
//!
//! - [`json_schemas`]: every payload schema in one bundle, `{"events": {type: {version: schema}}}`;
//! - [`AsyncApi`]: an AsyncAPI 3.0 document of the service (channels = destinations, messages = event types with
//!   the CloudEvents headers of the chosen broker binding, payloads = the schemas);
//! - [`breaking_changes`]: what a new bundle breaks for consumers of an old one, for a CI gate.
//!
//! Schemas are JSON Schema draft-07: AsyncAPI 3.0's default schema format is a superset of it, so the one schema
//! serves the document, the bundle and the compatibility check alike.
//!
// The example needs the `schema` feature; without it, it is shown but not run.
#![cfg_attr(feature = "schema", doc = "```standalone_crate")]
#![cfg_attr(not(feature = "schema"), doc = "```ignore")]
//! use outbox::{OutboxEvent, Registry, contract, schemars::JsonSchema};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, JsonSchema, OutboxEvent)]
//! #[schemars(crate = "outbox::schemars")]
//! #[outbox(type = "com.example.user.created", source = "/users", schema)]
//! struct UserCreated {
//!     #[outbox(aggregate_id)]
//!     user_id: u64,
//!     email: String,
//! }
//!
//! let bundle = contract::json_schemas(Registry::global());
//! let schema = &bundle["events"]["com.example.user.created"]["1.0"];
//! assert_eq!(schema["required"], serde_json::json!(["user_id", "email"]));
//!
//! let document = contract::AsyncApi::new("user service", "1.0.0")
//!     .protocol(contract::Protocol::Nats)
//!     .document(Registry::global());
//! assert_eq!(document["asyncapi"], "3.0.0");
//! assert!(document["components"]["messages"]["com.example.user.created.v1.0"].is_object());
//! ```

mod asyncapi;
mod compat;

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

pub use asyncapi::{AsyncApi, Protocol};
pub use compat::{BreakingChange, Change, breaking_changes};

use crate::registry::{EventInfo, Registry};

/// The JSON Schema (draft-07) of `T`, as `#[outbox(schema)]` registers it.
#[cfg(feature = "schema")]
pub(crate) fn schema_of<T: schemars::JsonSchema + ?Sized>() -> Value {
    schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Every registered payload schema, as one bundle: `{"events": {type: {version: schema}}}`, sorted.
///
/// Types registered without a schema are left out; [`without_schema`] names them.
pub fn json_schemas(registry: &Registry) -> Value {
    let mut events: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for (info, schema) in schemas(registry) {
        if let Some(schema) = schema {
            events
                .entry(info.meta.event_type)
                .or_default()
                .insert(info.meta.data_version.to_owned(), schema);
        }
    }
    json!({
        "$comment": "JSON Schemas (draft-07) of the event payloads, by CloudEvents type and data version",
        "events": events,
    })
}

/// The registered event types that carry no schema (they have no `#[outbox(schema)]`).
pub fn without_schema(registry: &Registry) -> Vec<EventInfo> {
    schemas(registry)
        .into_iter()
        .filter(|(_, schema)| schema.is_none())
        .map(|(info, _)| info)
        .collect()
}

/// The URL of a type's schema under `base`: `{base}/{event_type}/{data_version}`, what a relay configured with
/// [`RelayBuilder::dataschema_base`](crate::relay::RelayBuilder::dataschema_base) sets as `dataschema`, and what
/// a service that serves its bundle should answer.
pub fn dataschema_url(base: &str, event_type: &str, data_version: &str) -> String {
    format!("{}/{event_type}/{data_version}", base.trim_end_matches('/'))
}

/// Each registered type with its schema, sorted by type and version.
fn schemas(registry: &Registry) -> Vec<(EventInfo, Option<Value>)> {
    registry
        .entries()
        .into_iter()
        .map(|info| {
            // The entry came from this registry, so the lookup cannot miss; a conflict shows no schema, and
            // `Registry::validate` is where conflicts are reported.
            let schema = registry
                .schema(info.meta.event_type, info.meta.data_version)
                .ok()
                .flatten();
            (info, schema)
        })
        .collect()
}

/// The schemas of a bundle made by [`json_schemas`], by type and version.
fn bundle_schemas(bundle: &Value, which: &'static str) -> Result<Schemas, ContractError> {
    let not_a_bundle = |reason: String| ContractError::NotABundle { which, reason };
    let events = bundle
        .get("events")
        .and_then(Value::as_object)
        .ok_or_else(|| not_a_bundle("it has no `events` object".to_owned()))?;
    let mut schemas = Schemas::new();
    for (event_type, versions) in events {
        let versions = versions.as_object().ok_or_else(|| {
            not_a_bundle(format!(
                "`events.{event_type}` is not an object of versions"
            ))
        })?;
        for (version, schema) in versions {
            if !schema.is_object() && !schema.is_boolean() {
                return Err(not_a_bundle(format!(
                    "`events.{event_type}.{version}` is not a JSON Schema"
                )));
            }
            schemas.insert((event_type.clone(), version.clone()), schema.clone());
        }
    }
    Ok(schemas)
}

type Schemas = BTreeMap<(String, String), Value>;

/// Why a contract could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContractError {
    /// A document given as a schema bundle is not one.
    #[error(
        "the {which} schemas are not a bundle made by `outbox::contract::json_schemas` \
         (`{{\"events\": {{type: {{version: schema}}}}}}`): {reason}"
    )]
    NotABundle {
        /// Which side of a comparison: `previous` or `current`.
        which: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}
