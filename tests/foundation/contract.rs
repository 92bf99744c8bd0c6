//! Contracts: payload schemas from the derive, checked by Python's `jsonschema` against real payloads; AsyncAPI
//! documents checked by the reference parser (`@asyncapi/parser`); breaking changes between two code versions.

use std::path::PathBuf;
use std::process::Command;

use chrono::{DateTime, Utc};
use outbox::contract::{self, AsyncApi, Change, Protocol};
use outbox::schemars::{self, JsonSchema};
use outbox::{EventEnvelope, OutboxEvent, Registry};
use outbox_tests::run_python;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "outbox::schemars")]
pub struct Customer {
    pub id: u64,
    pub email: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "outbox::schemars")]
pub struct Line {
    pub sku: String,
    pub quantity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "outbox::schemars")]
#[serde(rename_all = "snake_case")]
pub enum SalesChannel {
    Web,
    Store,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, OutboxEvent)]
#[schemars(crate = "outbox::schemars")]
#[outbox(type = "com.example.shop.order.placed", source = "/shop", schema)]
pub struct OrderPlaced {
    #[outbox(aggregate_id)]
    pub order_id: Uuid,
    pub customer: Customer,
    pub lines: Vec<Line>,
    pub placed_at: DateTime<Utc>,
    pub channel: SalesChannel,
    pub note: Option<String>,
}

/// Published through `data` as another shape than the struct: its schema is that shape's.
#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox(
    type = "com.example.shop.order.shipped",
    source = "/shop",
    topic = "shop.shipments",
    data = shipped_body,
    schema = ShippedBody
)]
pub struct OrderShipped {
    #[outbox(aggregate_id)]
    pub order_id: Uuid,
    pub carrier: String,
    pub internal_cost_cents: u64,
}

#[derive(Serialize, JsonSchema)]
#[schemars(crate = "outbox::schemars")]
pub struct ShippedBody {
    pub order_id: Uuid,
    pub carrier: String,
}

fn shipped_body(event: &OrderShipped) -> ShippedBody {
    ShippedBody {
        order_id: event.order_id,
        carrier: event.carrier.clone(),
    }
}

/// Registered without a schema.
#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.shop.order.cancelled", source = "/shop")]
pub struct OrderCancelled {
    #[outbox(aggregate_id)]
    pub order_id: Uuid,
}

/// A registry of the three shop events alone, so the documents do not depend on the rest of the binary.
fn shop() -> Registry {
    let registry = Registry::new();
    registry.register::<OrderPlaced>().expect("no conflict");
    registry.register::<OrderShipped>().expect("no conflict");
    registry.register::<OrderCancelled>().expect("no conflict");
    registry
}

fn placed() -> OrderPlaced {
    OrderPlaced {
        order_id: Uuid::now_v7(),
        customer: Customer {
            id: 7,
            email: "ada@example.com".into(),
        },
        lines: vec![Line {
            sku: "A-1".into(),
            quantity: 2,
        }],
        placed_at: Utc::now(),
        channel: SalesChannel::Web,
        note: None,
    }
}

/// The published body of `event`, as a consumer receives it.
fn payload<E: OutboxEvent>(event: E) -> Value {
    let message = EventEnvelope::new(event).to_message().expect("renders");
    serde_json::from_str(message.data.get()).expect("the body is JSON")
}

/// Each payload's errors, as `path: message`, from Python's `jsonschema`.
fn validate(schema: &Value, payloads: &[Value]) -> Vec<Vec<String>> {
    let result = run_python(
        "jsonschema_check.py",
        &[],
        Some(&json!({ "schema": schema, "payloads": payloads })),
    );
    assert_eq!(result["schema_error"], Value::Null, "{result}");
    result["payloads"]
        .as_array()
        .expect("one result per payload")
        .iter()
        .map(|p| {
            p["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["path"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .collect()
}

#[test]
fn the_bundle_holds_each_exported_schema_and_names_the_types_without_one() {
    let registry = shop();
    let bundle = contract::json_schemas(&registry);
    let events = bundle["events"].as_object().expect("events");
    assert_eq!(
        events.keys().collect::<Vec<_>>(),
        [
            "com.example.shop.order.placed",
            "com.example.shop.order.shipped"
        ]
    );
    let placed = &events["com.example.shop.order.placed"]["1.0"];
    assert_eq!(placed["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(
        placed["required"],
        json!(["order_id", "customer", "lines", "placed_at", "channel"])
    );
    // `data` renders another shape: the schema is that shape's, without the struct's private field.
    let shipped = &events["com.example.shop.order.shipped"]["1.0"];
    assert!(
        shipped["properties"]["internal_cost_cents"].is_null(),
        "{shipped}"
    );
    assert_eq!(shipped["title"], "ShippedBody");

    let missing: Vec<&str> = contract::without_schema(&registry)
        .iter()
        .map(|info| info.meta.event_type)
        .collect();
    assert_eq!(missing, ["com.example.shop.order.cancelled"]);
    assert!(!registry.has_schema("com.example.shop.order.cancelled", "1.0"));
}

#[test]
fn each_schema_accepts_the_real_payload_and_rejects_broken_ones() {
    let registry = shop();
    let bundle = contract::json_schemas(&registry);
    let schema = &bundle["events"]["com.example.shop.order.placed"]["1.0"];
    let real = payload(placed());
    let mut without_customer = real.clone();
    without_customer
        .as_object_mut()
        .expect("object")
        .remove("customer");
    let mut wrong_quantity = real.clone();
    wrong_quantity["lines"][0]["quantity"] = json!("two");
    let mut unknown_channel = real.clone();
    unknown_channel["channel"] = json!("phone");
    let mut bad_time = real.clone();
    bad_time["placed_at"] = json!("yesterday");

    let errors = validate(
        schema,
        &[
            real,
            without_customer,
            wrong_quantity,
            unknown_channel,
            bad_time,
        ],
    );
    assert_eq!(errors[0], Vec::<String>::new(), "the real payload is valid");
    assert_eq!(errors[1], ["/: 'customer' is a required property"]);
    assert_eq!(errors[2].len(), 1, "{:?}", errors[2]);
    assert!(
        errors[2][0].starts_with("/lines/0/quantity: 'two' is not of type"),
        "{:?}",
        errors[2]
    );
    assert_eq!(errors[3].len(), 1, "{:?}", errors[3]);
    assert!(
        errors[3][0].starts_with("/channel: 'phone' is not one of"),
        "{:?}",
        errors[3]
    );
    assert_eq!(errors[4], ["/placed_at: 'yesterday' is not a 'date-time'"]);

    let shipped = payload(OrderShipped {
        order_id: Uuid::now_v7(),
        carrier: "DHL".into(),
        internal_cost_cents: 990,
    });
    let schema = &bundle["events"]["com.example.shop.order.shipped"]["1.0"];
    assert_eq!(validate(schema, &[shipped]), [Vec::<String>::new()]);
}

/// Runs the reference AsyncAPI parser on `document`: its exit status and what it printed.
fn parse_asyncapi(document: &Value, name: &str) -> (bool, String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("asyncapi");
    assert!(
        dir.join("node_modules/@asyncapi/parser").is_dir(),
        "the AsyncAPI parser is not installed: run `npm ci --prefix tests/asyncapi` (`.ci/run` does)"
    );
    let path = std::env::temp_dir().join(format!(
        "outbox-asyncapi-{}-{name}.json",
        std::process::id()
    ));
    std::fs::write(&path, serde_json::to_vec_pretty(document).expect("JSON")).expect("write");
    let output = Command::new("node")
        .arg(dir.join("validate.mjs"))
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (`.ci/run` installs it): {e}"));
    let _ = std::fs::remove_file(&path);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

#[test]
fn asyncapi_documents_of_every_binding_pass_the_reference_parser() {
    let registry = shop();
    let documents = [
        (
            "kafka",
            AsyncApi::new("shop", "1.2.0")
                .protocol(Protocol::Kafka)
                .server("127.0.0.1:9092"),
        ),
        (
            "amqp",
            AsyncApi::new("shop", "1.2.0")
                .protocol(Protocol::Amqp)
                .server("127.0.0.1:5672"),
        ),
        (
            "nats",
            AsyncApi::new("shop", "1.2.0")
                .protocol(Protocol::Nats)
                .server("127.0.0.1:4222"),
        ),
        (
            "redis",
            AsyncApi::new("shop", "1.2.0")
                .protocol(Protocol::Redis)
                .server("127.0.0.1:6379"),
        ),
        (
            "nats-structured",
            AsyncApi::new("shop", "1.2.0")
                .protocol(Protocol::Nats)
                .structured(true)
                .description("Structured-mode CloudEvents."),
        ),
    ];
    for (name, builder) in documents {
        let document = builder.document(&registry);
        let (valid, printed) = parse_asyncapi(&document, name);
        assert!(
            valid,
            "{name}: the parser refused the document:\n{printed}\n{document:#}"
        );
        assert!(
            !printed.contains(r#""severity":"warning""#),
            "{name}: {printed}"
        );
        assert!(
            printed.contains(r#""valid":true,"channels":2,"messages":3"#),
            "{name}: {printed}"
        );
    }

    let kafka = AsyncApi::new("shop", "1.2.0")
        .protocol(Protocol::Kafka)
        .document(&registry);
    assert_eq!(
        kafka["channels"]["shop.shipments"]["address"],
        "shop.shipments"
    );
    assert_eq!(
        kafka["channels"]["com.example.shop.order"]["address"],
        "com.example.shop.order"
    );
    let placed = &kafka["components"]["messages"]["com.example.shop.order.placed.v1.0"];
    assert_eq!(
        placed["headers"]["properties"]["ce_type"]["const"],
        "com.example.shop.order.placed"
    );
    assert_eq!(
        placed["headers"]["properties"]["ce_source"]["const"],
        "/shop"
    );
    assert!(
        placed["headers"]["properties"]["ce_partitionkey"].is_null(),
        "Kafka carries the key as the record key"
    );
    assert_eq!(
        placed["correlationId"]["location"],
        "$message.header#/ce_correlationid"
    );
    assert_eq!(
        placed["payload"]["$ref"],
        "#/components/schemas/com.example.shop.order.placed.v1.0"
    );
    let cancelled = &kafka["components"]["messages"]["com.example.shop.order.cancelled.v1.0"];
    assert!(
        cancelled["payload"].is_null(),
        "no schema, no payload: {cancelled}"
    );

    let nats = AsyncApi::new("shop", "1.2.0")
        .protocol(Protocol::Nats)
        .document(&registry);
    let headers = &nats["components"]["messages"]["com.example.shop.order.placed.v1.0"]["headers"];
    assert_eq!(
        headers["properties"]["ce-datacontenttype"]["const"],
        "application/json"
    );
    assert!(
        headers["required"]
            .as_array()
            .expect("required")
            .contains(&json!("ce-partitionkey"))
    );
}

#[test]
fn the_parser_refuses_a_broken_document() {
    let mut document = AsyncApi::new("shop", "1.2.0").document(&shop());
    document["operations"]["send.shop.shipments"]["action"] = json!("publish");
    let (valid, printed) = parse_asyncapi(&document, "broken");
    assert!(
        !valid,
        "an AsyncAPI 2 action in a 3.0 document must be refused:\n{printed}"
    );
    assert!(printed.contains("action"), "{printed}");
}

/// `OrderPlaced` as an earlier version of the code had it: a `coupon` field since dropped, `note` required,
/// `quantity` a string, and no `channel`.
#[derive(JsonSchema)]
#[schemars(crate = "outbox::schemars")]
#[allow(dead_code)]
struct OrderPlacedBefore {
    order_id: Uuid,
    customer: Customer,
    lines: Vec<LineBefore>,
    placed_at: DateTime<Utc>,
    note: String,
    coupon: Option<String>,
}

#[derive(JsonSchema)]
#[schemars(crate = "outbox::schemars")]
#[schemars(rename = "Line")]
#[allow(dead_code)]
struct LineBefore {
    sku: String,
    quantity: String,
}

#[test]
fn breaking_changes_between_two_versions_of_the_code_are_named() {
    let before = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<OrderPlacedBefore>()
        .to_value();
    let previous = json!({ "events": {
        "com.example.shop.order.placed": { "1.0": before },
        "com.example.shop.order.refunded": { "1.0": { "type": "object" } },
    }});
    let current = contract::json_schemas(&shop());
    let changes = contract::breaking_changes(&previous, &current).expect("two bundles");
    let rendered: Vec<String> = changes.iter().map(ToString::to_string).collect();
    let placed = "`com.example.shop.order.placed` version 1.0";
    assert_eq!(
        rendered,
        [
            format!("{placed}: field `/channel` is now required"),
            format!("{placed}: field `/note` is no longer required"),
            format!("{placed}: field `/coupon` removed"),
            format!("{placed}: type of `/lines/[]/quantity` changed from string to integer"),
            format!("{placed}: type of `/note` changed from string to null|string"),
            "`com.example.shop.order.refunded` version 1.0: no schema any more (type removed, or no longer exported)"
                .to_owned(),
        ]
    );
    assert_eq!(changes[2].change, Change::FieldRemoved);

    // The same bundle against itself: nothing to report.
    assert_eq!(
        contract::breaking_changes(&current, &current).expect("bundles"),
        []
    );
}
