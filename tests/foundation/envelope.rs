use chrono::{SubsecRound, Utc};
use outbox::{EventEnvelope, InvalidTraceparent, OutboxEvent, TraceContext};
use uuid::Uuid;

use crate::events::{UserCreated, UserDeleted};

fn user() -> UserCreated {
    UserCreated {
        user_id: Uuid::now_v7(),
        email: "ada@example.com".into(),
    }
}

#[test]
fn a_new_envelope_has_a_time_ordered_id_and_the_current_time() {
    let before = Utc::now();
    let first = EventEnvelope::new(user());
    let second = EventEnvelope::new(user());
    assert_eq!(first.event_id().get_version_num(), 7);
    assert!(
        first.event_id() < second.event_id(),
        "v7 ids sort by creation"
    );
    assert!(first.occurred_at() >= before.trunc_subsecs(6) && first.occurred_at() <= Utc::now());
    assert_eq!(
        first.occurred_at().timestamp_subsec_nanos() % 1000,
        0,
        "kept to the microsecond"
    );
    assert_eq!(first.correlation_id(), None);
    assert_eq!(first.causation_id(), None);
}

#[test]
fn the_envelope_exposes_every_role_of_python_outbox_cores_event() {
    let event = user();
    let aggregate = event.user_id.to_string();
    let envelope: EventEnvelope<UserCreated> = event.into();
    assert_eq!(envelope.event_type(), "com.example.user.created");
    assert_eq!(envelope.source(), "/user-service");
    assert_eq!(envelope.data_version(), "1.0");
    assert_eq!(envelope.aggregate_id(), aggregate);
}

#[test]
fn caused_by_links_causation_and_inherits_correlation() {
    let root = EventEnvelope::new(user());
    let child = EventEnvelope::new(UserDeleted {
        user_id: Uuid::now_v7(),
    })
    .caused_by(&root);
    // The root started the flow: its id is the correlation id.
    assert_eq!(
        child.correlation_id(),
        Some(root.event_id().to_string().as_str())
    );
    assert_eq!(
        child.causation_id(),
        Some(root.event_id().to_string().as_str())
    );

    let correlated = EventEnvelope::new(user()).with_correlation_id("req-1");
    let grandchild = EventEnvelope::new(user()).caused_by(&correlated);
    assert_eq!(grandchild.correlation_id(), Some("req-1"));
}

#[test]
fn to_message_carries_ids_key_destination_and_data() {
    let event = user();
    let id = Uuid::now_v7();
    let envelope = EventEnvelope::new(event.clone())
        .with_event_id(id)
        .with_correlation_id("req-9");
    let message = envelope.to_message().unwrap();
    assert_eq!(message.id, id);
    assert_eq!(message.key, event.user_id.to_string());
    assert_eq!(message.subject.as_deref(), Some(message.key.as_str()));
    assert_eq!(message.destination, UserCreated::DESTINATION);
    assert_eq!(message.time, envelope.occurred_at());
    assert_eq!(message.effective_correlation_id(), "req-9");
    let data: UserCreated = serde_json::from_str(message.data.get()).unwrap();
    assert_eq!(data, event);

    let uncorrelated = EventEnvelope::new(user()).to_message().unwrap();
    assert_eq!(
        uncorrelated.effective_correlation_id(),
        uncorrelated.id.to_string()
    );
}

#[test]
fn trace_context_is_validated() {
    let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert!(ok.parse::<TraceContext>().is_ok());
    for bad in [
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nX: y",
    ] {
        let err: InvalidTraceparent = bad.parse::<TraceContext>().unwrap_err();
        assert!(err.to_string().contains("W3C trace context"), "{err}");
    }
    let message = EventEnvelope::new(user())
        .with_trace_context(TraceContext::new(ok, Some(String::new())).unwrap())
        .to_message()
        .unwrap();
    assert_eq!(message.traceparent.as_deref(), Some(ok));
    assert_eq!(message.tracestate, None, "an empty tracestate is dropped");
}
