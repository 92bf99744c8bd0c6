//! `consumer::Delivery`: what each binding's publisher renders reads back as the same event, attribute for
//! attribute, in binary and in structured mode; what is not a CloudEvent is refused by name.

use chrono::{TimeZone, Utc};
use outbox::cloudevents::{self, BinaryMode};
use outbox::consumer::{Delivery, DeliveryError};
use outbox::{EventEnvelope, Registry, TraceContext};
use uuid::Uuid;

use crate::events::UserCreated;

fn envelope() -> EventEnvelope<UserCreated> {
    EventEnvelope::new(UserCreated {
        user_id: Uuid::now_v7(),
        email: "ada@example.com".into(),
    })
    .with_occurred_at(Utc.with_ymd_and_hms(2026, 12, 5, 6, 30, 0).unwrap())
    // Values a text header must encode: a space, a percent sign, a quote, non-ASCII.
    .with_correlation_id("req 100% \"über\"")
    .with_causation_id("cmd-7")
    .with_trace_context(
        TraceContext::new(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("vendor=x".into()),
        )
        .unwrap(),
    )
}

fn assert_same(delivery: &Delivery, envelope: &EventEnvelope<UserCreated>, what: &str) {
    let message = envelope.to_message().unwrap();
    assert_eq!(delivery.id, message.id.to_string(), "{what}");
    assert_eq!(delivery.event_type, "com.example.user.created", "{what}");
    assert_eq!(delivery.source, "/user-service", "{what}");
    assert_eq!(delivery.time, Some(message.time), "{what}");
    assert_eq!(delivery.data_version, "1.0", "{what}");
    assert_eq!(
        delivery.aggregate_type.as_deref(),
        Some("com.example.user"),
        "{what}"
    );
    assert_eq!(
        delivery.aggregate_id.as_deref(),
        Some(message.key.as_str()),
        "{what}"
    );
    assert_eq!(delivery.correlation_id, message.correlation_id, "{what}");
    assert_eq!(delivery.causation_id.as_deref(), Some("cmd-7"), "{what}");
    assert_eq!(
        delivery.trace_context.as_ref(),
        envelope.trace_context(),
        "{what}"
    );
    let event = delivery.decode(Registry::global()).expect("registered");
    assert_eq!(
        event.downcast_ref::<UserCreated>(),
        Some(envelope.event()),
        "{what}"
    );
}

#[test]
fn every_binary_binding_reads_back_as_the_event_it_was() {
    let envelope = envelope();
    let message = envelope.to_message().unwrap();
    for (name, mode) in [
        ("kafka", BinaryMode::KAFKA),
        ("amqp", BinaryMode::AMQP),
        ("amqp ce-", BinaryMode::AMQP.with_prefix("ce-")),
        ("nats", BinaryMode::NATS),
        ("redis", BinaryMode::REDIS),
        ("http", BinaryMode::HTTP),
    ] {
        let headers = mode.headers(&message);
        let delivery = Delivery::from_binary(
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            message.data.get().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        // Kafka carries the aggregate id as the record key, not as a header.
        .with_key(Some(&message.key));
        assert_same(&delivery, &envelope, name);
    }
}

#[test]
fn a_structured_event_reads_back_as_the_event_it_was() {
    let envelope = envelope();
    let body = cloudevents::to_structured(&envelope.to_message().unwrap());
    let delivery = Delivery::parse(
        Some("application/cloudevents+json; charset=utf-8"),
        [],
        &body,
    )
    .unwrap();
    assert_same(&delivery, &envelope, "structured");
}

#[test]
fn what_is_not_a_cloud_event_is_refused_by_name() {
    let base = [
        ("ce_specversion", "1.0"),
        ("ce_id", "1"),
        ("ce_source", "/s"),
        ("ce_type", "t"),
    ];
    assert!(Delivery::from_binary(base, b"{}").is_ok());
    for missing in ["specversion", "id", "source", "type"] {
        let headers = base.iter().copied().filter(|(n, _)| !n.ends_with(missing));
        let error = Delivery::from_binary(headers, b"{}").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("not a readable CloudEvent: attribute `{missing}`: it is missing")
        );
    }
    let old = [
        ("ce_specversion", "0.3"),
        ("ce_id", "1"),
        ("ce_source", "/s"),
        ("ce_type", "t"),
    ];
    assert!(
        Delivery::from_binary(old, b"{}")
            .unwrap_err()
            .to_string()
            .contains("only 1.0 is read")
    );
    let error = Delivery::from_binary(base, b"not json").unwrap_err();
    assert!(matches!(error, DeliveryError::Body(_)), "{error}");
    let bad_time = base.iter().copied().chain([("ce_time", "yesterday")]);
    assert!(
        Delivery::from_binary(bad_time, b"{}")
            .unwrap_err()
            .to_string()
            .contains("`time`")
    );
    let error =
        Delivery::from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#)
            .unwrap_err();
    assert!(error.to_string().contains("attribute `data`"), "{error}");

    // Known attributes of a type no Rust type is registered for: a delivery, whose decoding names the type.
    let unknown = Delivery::from_binary(base, b"{}").unwrap();
    let error = unknown.decode(Registry::global()).unwrap_err();
    assert!(
        error.to_string().contains("unknown event type `t`"),
        "{error}"
    );
}
