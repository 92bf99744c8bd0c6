use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outbox::cloudevents::{self, BinaryMode};
use outbox::{EventEnvelope, Message, TraceContext};
use outbox_tests::run_python;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::events::{UserCreated, UserDeleted};

/// Values chosen to break naive header writers: space, quote, percent, CR/LF and non-ASCII.
const NASTY_CORRELATION: &str = "req 42 \"quoted\" 100% \r\nX-Injected: yes naïve";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn message() -> Message {
    let time: DateTime<Utc> = "2026-11-28T10:15:30.123456Z".parse().unwrap();
    EventEnvelope::new(UserDeleted {
        user_id: Uuid::nil(),
    })
    .with_occurred_at(time)
    .with_correlation_id(NASTY_CORRELATION)
    .with_causation_id("cause-1")
    .with_trace_context(TraceContext::new(TRACEPARENT, Some("vendor=1".into())).unwrap())
    .to_message()
    .unwrap()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The attributes every rendering must carry, as the Python SDK reports them.
fn expected_attributes(m: &Message) -> BTreeMap<String, Value> {
    let mut expected: BTreeMap<String, Value> = [
        ("specversion", "1.0".to_owned()),
        ("id", m.id.to_string()),
        ("source", m.source.clone()),
        ("type", m.event_type.clone()),
        ("subject", m.key.clone()),
        ("datacontenttype", "application/json".into()),
        ("dataversion", "1.0".into()),
        ("aggregatetype", "com.example.user".into()),
        ("partitionkey", m.key.clone()),
        ("correlationid", NASTY_CORRELATION.into()),
        ("causationid", "cause-1".into()),
        ("traceparent", TRACEPARENT.into()),
        ("tracestate", "vendor=1".into()),
        ("tenant", "eu".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Value::String(v)))
    .collect();
    expected.insert("time".into(), json!("2026-11-28T10:15:30.123456+00:00"));
    expected
}

#[test]
fn structured_mode_is_one_json_object_with_data_as_json() {
    let m = message();
    let event: Value = serde_json::from_slice(&cloudevents::to_structured(&m)).unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["id"], m.id.to_string());
    assert_eq!(event["type"], "com.example.user.deleted");
    assert_eq!(event["source"], "/user-service");
    assert_eq!(event["time"], "2026-11-28T10:15:30.123456Z");
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["correlationid"], NASTY_CORRELATION);
    assert_eq!(event["tenant"], "eu");
    // Data is embedded as a JSON object, never as a string.
    assert_eq!(event["data"], json!({ "user_id": Uuid::nil() }));
}

#[test]
fn every_attribute_name_is_a_valid_cloudevents_name() {
    for (name, _) in cloudevents::attributes(&message()) {
        assert!(
            (1..=20).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "`{name}` is not [a-z0-9]{{1,20}}"
        );
    }
}

#[test]
fn required_attributes_are_always_present() {
    let minimal = EventEnvelope::new(UserCreated {
        user_id: Uuid::now_v7(),
        email: "x".into(),
    })
    .to_message()
    .unwrap();
    let names: Vec<String> = cloudevents::attributes(&minimal)
        .into_iter()
        .map(|(n, _)| n.into_owned())
        .collect();
    for required in ["specversion", "id", "source", "type", "time"] {
        assert!(
            names.iter().any(|n| n == required),
            "{required} missing from {names:?}"
        );
    }
    // Absent optional attributes are left out, not sent empty.
    assert!(
        !names
            .iter()
            .any(|n| n == "correlationid" || n == "traceparent"),
        "{names:?}"
    );
}

#[test]
fn kafka_headers_carry_attributes_raw_and_the_key_as_record_key() {
    let m = message();
    let headers = BinaryMode::KAFKA.headers(&m);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "ce_id"), Some(m.id.to_string().as_str()));
    assert_eq!(header(&headers, "ce_specversion"), Some("1.0"));
    assert_eq!(
        header(&headers, "ce_correlationid"),
        Some(NASTY_CORRELATION)
    );
    assert_eq!(
        header(&headers, "ce_partitionkey"),
        None,
        "Kafka carries it as the record key"
    );
    assert_eq!(header(&headers, "ce_datacontenttype"), None);
}

#[test]
fn nats_and_http_percent_encode_so_no_value_breaks_a_header() {
    let m = message();
    for mode in [BinaryMode::NATS, BinaryMode::HTTP] {
        let headers = mode.headers(&m);
        let encoded = header(&headers, "ce-correlationid").unwrap();
        assert_eq!(
            encoded,
            "req%2042%20%22quoted%22%20100%25%20%0D%0AX-Injected:%20yes%20na%C3%AFve"
        );
        for (name, value) in &headers {
            assert!(
                value.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                "{name}: {value:?}"
            );
        }
    }
    let nats = BinaryMode::NATS.headers(&m);
    assert_eq!(header(&nats, "content-type"), Some("application/json"));
    assert_eq!(
        header(&nats, "ce-datacontenttype"),
        Some("application/json")
    );
    assert_eq!(
        header(&BinaryMode::HTTP.headers(&m), "ce-datacontenttype"),
        None
    );
}

#[test]
fn amqp_prefix_is_configurable() {
    let m = message();
    let default = BinaryMode::AMQP.headers(&m);
    assert_eq!(
        header(&default, "cloudEvents_type"),
        Some("com.example.user.deleted")
    );
    assert_eq!(
        header(&default, "content-type"),
        None,
        "AMQP puts it in the content_type property"
    );
    let knative = BinaryMode::AMQP.with_prefix("ce-").headers(&m);
    assert_eq!(
        header(&knative, "ce-type"),
        Some("com.example.user.deleted")
    );
}

/// Every binding's header names are its prefix and the attribute, whether the prefix is one of the bindings' own
/// (whose names are kept as `'static`) or the caller's, and each attribute appears once.
#[test]
fn every_attribute_header_is_the_prefix_and_the_attribute_once() {
    let m = message();
    let modes = [
        (BinaryMode::KAFKA, "ce_"),
        (BinaryMode::AMQP, "cloudEvents_"),
        (BinaryMode::NATS, "ce-"),
        (BinaryMode::REDIS, "ce_"),
        (BinaryMode::HTTP, "ce-"),
        (BinaryMode::AMQP.with_prefix("ce-"), "ce-"),
        (BinaryMode::NATS.with_prefix(String::from("x-ce.")), "x-ce."),
    ];
    for (mode, prefix) in modes {
        let mut attributes: Vec<String> = mode
            .attribute_headers(&m)
            .into_iter()
            .filter(|(name, _)| name != "content-type")
            .map(|(name, _)| {
                name.strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("{name:?} does not start with {prefix:?}"))
                    .to_owned()
            })
            .collect();
        attributes.sort();
        let mut expected: Vec<String> = expected_attributes(&m)
            .into_keys()
            .filter(|name| {
                name != "datacontenttype" || mode == BinaryMode::NATS.with_prefix(prefix.to_owned())
            })
            .filter(|name| name != "partitionkey" || mode != BinaryMode::KAFKA)
            .collect();
        expected.sort();
        assert_eq!(attributes, expected, "the headers under {prefix:?}");
    }
}

#[test]
fn extra_headers_follow_the_cloudevents_ones() {
    let mut m = message();
    m.headers.push(("x-tenant".into(), "eu".into()));
    let headers = BinaryMode::KAFKA.headers(&m);
    assert_eq!(
        headers.last(),
        Some(&("x-tenant".to_owned(), "eu".to_owned()))
    );
}

/// The Python CloudEvents SDK is the oracle: every rendering must parse, with the same attribute values.
#[test]
fn the_python_cloudevents_sdk_parses_every_rendering_with_the_same_attributes() {
    let m = message();
    let body = m.data.get();
    let map = |headers: Vec<(String, String)>| -> serde_json::Map<String, Value> {
        headers
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    };
    let input = json!({
        "kafka": { "headers": BinaryMode::KAFKA.headers(&m), "key": m.key, "value": body },
        "amqp": {
            "content_type": cloudevents::JSON_CONTENT_TYPE,
            "application_properties": map(BinaryMode::AMQP.headers(&m)),
            "body": body,
        },
        "rabbitmq": {
            "content_type": cloudevents::JSON_CONTENT_TYPE,
            "headers": map(BinaryMode::AMQP.with_prefix("ce-").headers(&m)),
            "body": body,
        },
        "http": { "headers": map(BinaryMode::HTTP.headers(&m)), "body": body },
        "structured": String::from_utf8(cloudevents::to_structured(&m)).unwrap(),
    });
    let parsed = run_python("cloudevents_check.py", &[], Some(&input));
    let expected = expected_attributes(&m);
    let data = json!({ "user_id": Uuid::nil() });
    for mode in ["kafka", "amqp", "rabbitmq", "http", "structured"] {
        let got: BTreeMap<String, Value> =
            serde_json::from_value(parsed[mode]["attributes"].clone())
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(got, expected, "attributes parsed from {mode}");
        assert_eq!(parsed[mode]["data"], data, "data parsed from {mode}");
    }
}
