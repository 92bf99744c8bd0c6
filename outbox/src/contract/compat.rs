//! What a new set of payload schemas breaks for the consumers of an old one.
//!
//! Events are read long after they are written (replays, late consumers), so a change must keep working in both
//! directions within one data version: consumers built on the previous schema must read new payloads, and code
//! built on the new schema must read stored old ones. A change that needs either is a new `version`.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

use super::{ContractError, bundle_schemas};

/// One thing a schema change breaks, in one event type and version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakingChange {
    /// The event type.
    pub event_type: String,
    /// Its data version.
    pub data_version: String,
    /// Where in the payload, as a path of field names (`/address/street`; `[]` steps into an array's items).
    pub path: String,
    /// What changed.
    pub change: Change,
}

/// The kinds of breaking change [`breaking_changes`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The type and version have no schema any more (the type was removed, or lost `#[outbox(schema)]`).
    EventRemoved,
    /// A field is gone: consumers that read it break.
    FieldRemoved,
    /// The JSON types allowed for a value changed.
    TypeChanged {
        /// The types before (empty: any).
        from: Vec<String>,
        /// The types now (empty: any).
        to: Vec<String>,
    },
    /// A field became required: stored events without it no longer fit.
    RequiredAdded,
    /// A field is no longer required: consumers that count on it find it missing.
    RequiredRemoved,
    /// The allowed values of an enumeration changed.
    EnumChanged {
        /// Values no longer allowed.
        removed: Vec<Value>,
        /// Values newly allowed, which older consumers do not know.
        added: Vec<Value>,
    },
    /// The alternatives of a `oneOf`/`anyOf`/`allOf` changed (compared as a whole, not branch by branch).
    AlternativesChanged,
}

impl fmt::Display for BreakingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` version {}: ", self.event_type, self.data_version)?;
        let at = &self.path;
        match &self.change {
            Change::EventRemoved => write!(
                f,
                "no schema any more (type removed, or no longer exported)"
            ),
            Change::FieldRemoved => write!(f, "field `{at}` removed"),
            Change::TypeChanged { from, to } => {
                write!(
                    f,
                    "type of `{at}` changed from {} to {}",
                    types(from),
                    types(to)
                )
            }
            Change::RequiredAdded => write!(f, "field `{at}` is now required"),
            Change::RequiredRemoved => write!(f, "field `{at}` is no longer required"),
            Change::EnumChanged { removed, added } => write!(
                f,
                "allowed values of `{at}` changed (removed: {}; added: {})",
                values(removed),
                values(added)
            ),
            Change::AlternativesChanged => write!(f, "the alternatives of `{at}` changed"),
        }
    }
}

fn types(types: &[String]) -> String {
    if types.is_empty() {
        "any".to_owned()
    } else {
        types.join("|")
    }
}

fn values(values: &[Value]) -> String {
    if values.is_empty() {
        "none".to_owned()
    } else {
        values
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The breaking changes from the `previous` bundle to the `current` one (both as made by
/// [`json_schemas`](super::json_schemas)), type by type and version by version. Empty: compatible.
///
/// Reported: a type and version that lost its schema, a removed field, a changed JSON type, a field that became
/// required or stopped being required, changed enumeration values, and changed `oneOf`/`anyOf`/`allOf`
/// alternatives. Adding an optional field, a new event type or a new version is compatible. References
/// (`$ref` into `definitions`) are followed on both sides.
///
/// ```
/// use outbox::contract::{Change, breaking_changes};
/// use serde_json::json;
///
/// let schema = |required: serde_json::Value| json!({ "events": { "com.example.user.created": { "1.0": {
///     "type": "object",
///     "properties": { "user_id": { "type": "integer" }, "email": { "type": "string" } },
///     "required": required,
/// }}}});
/// let changes = breaking_changes(&schema(json!(["user_id"])), &schema(json!(["user_id", "email"])))?;
/// assert_eq!(changes.len(), 1);
/// assert_eq!(changes[0].change, Change::RequiredAdded);
/// assert_eq!(changes[0].to_string(), "`com.example.user.created` version 1.0: field `/email` is now required");
/// # Ok::<(), outbox::contract::ContractError>(())
/// ```
pub fn breaking_changes(
    previous: &Value,
    current: &Value,
) -> Result<Vec<BreakingChange>, ContractError> {
    let previous = bundle_schemas(previous, "previous")?;
    let current = bundle_schemas(current, "current")?;
    let mut changes = Vec::new();
    for ((event_type, data_version), old) in &previous {
        let mut report = |path: &str, change| {
            changes.push(BreakingChange {
                event_type: event_type.clone(),
                data_version: data_version.clone(),
                path: if path.is_empty() {
                    "/".to_owned()
                } else {
                    path.to_owned()
                },
                change,
            });
        };
        match current.get(&(event_type.clone(), data_version.clone())) {
            None => report("", Change::EventRemoved),
            Some(new) => Comparison {
                old_root: old,
                new_root: new,
                seen: BTreeSet::new(),
                report: &mut report,
            }
            .compare(old, new, ""),
        }
    }
    Ok(changes)
}

struct Comparison<'a, F> {
    old_root: &'a Value,
    new_root: &'a Value,
    /// Pairs of references already compared, so a recursive type ends.
    seen: BTreeSet<(String, String)>,
    report: &'a mut F,
}

impl<'a, F: FnMut(&str, Change)> Comparison<'a, F> {
    fn compare(&mut self, old: &'a Value, new: &'a Value, path: &str) {
        let old_ref = reference(old);
        let new_ref = reference(new);
        if old_ref.is_some() || new_ref.is_some() {
            let key = (
                old_ref.unwrap_or_default().to_owned(),
                new_ref.unwrap_or_default().to_owned(),
            );
            if !self.seen.insert(key) {
                return;
            }
        }
        let old = resolve(self.old_root, old);
        let new = resolve(self.new_root, new);

        let (old_types, new_types) = (json_types(old), json_types(new));
        if old_types != new_types {
            (self.report)(
                path,
                Change::TypeChanged {
                    from: old_types.into_iter().collect(),
                    to: new_types.into_iter().collect(),
                },
            );
        }

        if let (Some(old_enum), Some(new_enum)) = (enumeration(old), enumeration(new)) {
            let removed: Vec<Value> = old_enum
                .iter()
                .filter(|v| !new_enum.contains(v))
                .cloned()
                .collect();
            let added: Vec<Value> = new_enum
                .iter()
                .filter(|v| !old_enum.contains(v))
                .cloned()
                .collect();
            if !removed.is_empty() || !added.is_empty() {
                (self.report)(path, Change::EnumChanged { removed, added });
            }
        }

        for keyword in ["oneOf", "anyOf", "allOf"] {
            if old.get(keyword) != new.get(keyword) {
                (self.report)(path, Change::AlternativesChanged);
                break;
            }
        }

        let (old_required, new_required) = (required(old), required(new));
        for field in new_required.difference(&old_required) {
            (self.report)(&format!("{path}/{field}"), Change::RequiredAdded);
        }
        for field in old_required.difference(&new_required) {
            // A removed field is reported as removed; only a field still there can be optional.
            if property(new, field).is_some() {
                (self.report)(&format!("{path}/{field}"), Change::RequiredRemoved);
            }
        }

        if let Some(old_properties) = old.get("properties").and_then(Value::as_object) {
            for (field, old_schema) in old_properties {
                let at = format!("{path}/{field}");
                match property(new, field) {
                    Some(new_schema) => self.compare(old_schema, new_schema, &at),
                    None => (self.report)(&at, Change::FieldRemoved),
                }
            }
        }

        if let (Some(old_items), Some(new_items)) = (old.get("items"), new.get("items")) {
            self.compare(old_items, new_items, &format!("{path}/[]"));
        }
    }
}

fn reference(schema: &Value) -> Option<&str> {
    schema.get("$ref").and_then(Value::as_str)
}

/// The schema a local reference (`#/definitions/X`, `#/$defs/X`) points at, or `schema` itself.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut current = schema;
    // A chain of references ends within a few steps in any real schema; the bound stops a cycle of pure refs.
    for _ in 0..16 {
        let Some(pointer) = reference(current).and_then(|r| r.strip_prefix('#')) else {
            return current;
        };
        match root.pointer(pointer) {
            Some(target) => current = target,
            None => return current,
        }
    }
    current
}

/// The JSON types a schema allows, as a set; `integer` counts as its own type. Empty: not constrained.
fn json_types(schema: &Value) -> BTreeSet<String> {
    match schema.get("type") {
        Some(Value::String(t)) => BTreeSet::from([t.clone()]),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => match schema.get("const") {
            Some(value) => BTreeSet::from([json_type_of(value).to_owned()]),
            None => BTreeSet::new(),
        },
    }
}

fn json_type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The allowed values: `enum`, or a `const` as a one-value enumeration.
fn enumeration(schema: &Value) -> Option<Vec<Value>> {
    match (schema.get("enum"), schema.get("const")) {
        (Some(Value::Array(values)), _) => Some(values.clone()),
        (_, Some(value)) => Some(vec![value.clone()]),
        _ => None,
    }
}

fn required(schema: &Value) -> BTreeSet<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|fields| fields.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn property<'a>(schema: &'a Value, field: &str) -> Option<&'a Value> {
    schema.get("properties")?.get(field)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bundle(schema: Value) -> Value {
        json!({ "events": { "t": { "1.0": schema } } })
    }

    fn changes(old: Value, new: Value) -> Vec<Change> {
        breaking_changes(&bundle(old), &bundle(new))
            .expect("both are bundles")
            .into_iter()
            .map(|c| c.change)
            .collect()
    }

    #[test]
    fn an_added_optional_field_is_compatible() {
        let old = json!({ "type": "object", "properties": { "a": { "type": "string" } }, "required": ["a"] });
        let new = json!({
            "type": "object",
            "properties": { "a": { "type": "string" }, "b": { "type": ["string", "null"] } },
            "required": ["a"],
        });
        assert_eq!(changes(old, new), vec![]);
    }

    #[test]
    fn removed_retyped_and_newly_required_fields_are_breaking() {
        let old = json!({
            "type": "object",
            "properties": { "a": { "type": "string" }, "b": { "type": "integer" }, "c": { "type": "string" } },
            "required": ["a", "b"],
        });
        let new = json!({
            "type": "object",
            "properties": { "b": { "type": "string" }, "c": { "type": "string" } },
            "required": ["b", "c"],
        });
        let found = breaking_changes(&bundle(old), &bundle(new)).expect("bundles");
        let rendered: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "`t` version 1.0: field `/c` is now required",
                "`t` version 1.0: field `/a` removed",
                "`t` version 1.0: type of `/b` changed from integer to string",
            ]
        );
    }

    #[test]
    fn references_are_followed_and_recursion_ends() {
        let node = |value_type: &str| {
            json!({
                "type": "object",
                "properties": { "root": { "$ref": "#/definitions/Node" } },
                "definitions": { "Node": {
                    "type": "object",
                    "properties": {
                        "value": { "type": value_type },
                        "children": { "type": "array", "items": { "$ref": "#/definitions/Node" } },
                    },
                }},
            })
        };
        let found =
            breaking_changes(&bundle(node("integer")), &bundle(node("string"))).expect("bundles");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "/root/value");
    }

    #[test]
    fn enum_values_and_removed_types_are_breaking() {
        let old = json!({ "type": "string", "enum": ["a", "b"] });
        let new = json!({ "type": "string", "enum": ["a", "c"] });
        assert_eq!(
            changes(old, new),
            vec![Change::EnumChanged {
                removed: vec![json!("b")],
                added: vec![json!("c")]
            }]
        );
        let gone = breaking_changes(&bundle(json!({})), &json!({ "events": {} })).expect("bundles");
        assert_eq!(gone[0].change, Change::EventRemoved);
    }

    #[test]
    fn a_document_that_is_no_bundle_is_refused_by_name() {
        let error =
            breaking_changes(&json!({ "asyncapi": "3.0.0" }), &bundle(json!({}))).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("previous schemas are not a bundle"),
            "{error}"
        );
    }
}
