//! What an event must respect to be stored and then published on every broker, checked when it is added.
//!
//! A value no broker client can carry would otherwise be found only by the relay, long after the caller's
//! transaction committed: an AMQP short string over 255 bytes, a NATS header name with a space or a `:`, a
//! payload over the broker's message size. [`OutboxRepository::add_event`](crate::OutboxRepository::add_event)
//! refuses such an event with an [`InvalidEvent`] that names the field, what it holds and the limit; the caller's
//! transaction decides what happens next. Publishers stay total on their own (a row written before these checks,
//! or by hand, is refused by the publisher as a permanent failure, never a panic), so these checks are the first
//! line, not the only one.
//!
//! | what | limit | why |
//! |---|---|---|
//! | payload (the stored JSON) | [`OutboxConfig::max_payload_bytes`](crate::OutboxConfig::max_payload_bytes), 1 MiB by default | brokers refuse large messages (NATS and Kafka at 1 MiB by default) |
//! | correlation and causation ids | 255 bytes, no control characters | AMQP `correlation_id` is a short string; stored in `VARCHAR(255)` |
//! | aggregate id | 255 characters | stored in `VARCHAR(255)`; the broker key |
//! | event type, aggregate type, destination | 255 bytes | AMQP `type` and routing key are short strings |
//! | header names (`OutboxEvent::headers`) | 1 to 255 bytes of visible ASCII, no `:` | NATS header names; AMQP field names are short strings |
//! | header values | 65,535 bytes | FastStream's binary envelope (Redis) stores each length in 16 bits |
//! | `traceparent`, `tracestate` | 64 and 512 bytes | their columns |

// The checks run in the repository (feature `sea-orm`); the limits themselves are public either way.
#![cfg_attr(not(feature = "sea-orm"), allow(dead_code))]

use std::borrow::Cow;

use crate::envelope::{AsDynEvent, EventEnvelope};

/// The longest AMQP short string, and the `VARCHAR` size of the short text columns.
pub const MAX_SHORT: usize = 255;
/// The longest header value FastStream's binary envelope can hold.
pub const MAX_HEADER_VALUE: usize = u16::MAX as usize;
const MAX_TRACEPARENT: usize = 64;
const MAX_TRACESTATE: usize = 512;

/// An event that cannot be stored because one of its values could not be published; see the [module
/// docs](self) for the limits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event `{event_type}` cannot be stored: its {field} {problem}")]
#[non_exhaustive]
pub struct InvalidEvent {
    /// The event's type.
    pub event_type: &'static str,
    /// Which value, e.g. `correlation id` or ``header name `x tenant` ``.
    pub field: String,
    /// What is wrong with it and what is allowed.
    pub problem: String,
}

/// Checks `envelope`, whose stored payload is `payload_bytes` long, against the limits.
pub(crate) fn check<E: AsDynEvent>(
    envelope: &EventEnvelope<E>,
    payload_bytes: usize,
    max_payload_bytes: usize,
) -> Result<(), InvalidEvent> {
    let event = envelope.event().as_dyn();
    let meta = event.meta();
    let invalid = |field: Cow<'_, str>, problem: String| InvalidEvent {
        event_type: meta.event_type,
        field: field.into_owned(),
        problem,
    };
    if payload_bytes > max_payload_bytes {
        return Err(invalid(
            "payload".into(),
            format!(
                "is {payload_bytes} bytes of JSON; at most {max_payload_bytes} are allowed \
                 (OUTBOX_MAX_PAYLOAD_BYTES)"
            ),
        ));
    }
    let fixed = [
        ("event type", meta.event_type),
        ("aggregate type", meta.aggregate_type),
        ("destination", meta.destination),
    ];
    for (field, value) in fixed {
        bytes(value, MAX_SHORT).map_err(|p| invalid(field.into(), p))?;
    }
    for (field, value) in [
        ("correlation id", envelope.correlation_id()),
        ("causation id", envelope.causation_id()),
    ] {
        if let Some(value) = value {
            bytes(value, MAX_SHORT)
                .and_then(|()| no_controls(value))
                .map_err(|p| invalid(field.into(), p))?;
        }
    }
    let aggregate_id = event.aggregate_id();
    let chars = aggregate_id.chars().count();
    if chars > MAX_SHORT {
        return Err(invalid(
            "aggregate id".into(),
            format!("is {chars} characters long; at most {MAX_SHORT} are allowed"),
        ));
    }
    if let Some(trace) = envelope.trace_context() {
        bytes(trace.traceparent(), MAX_TRACEPARENT)
            .map_err(|p| invalid("traceparent".into(), p))?;
        if let Some(state) = trace.tracestate() {
            bytes(state, MAX_TRACESTATE).map_err(|p| invalid("tracestate".into(), p))?;
        }
    }
    for (name, value) in event.headers() {
        header_name(&name).map_err(|p| invalid(format!("header name {name:?}").into(), p))?;
        bytes(&value, MAX_HEADER_VALUE)
            .map_err(|p| invalid(format!("header `{name}`'s value").into(), p))?;
    }
    Ok(())
}

/// A header name every broker takes: 1 to 255 bytes of visible ASCII other than `:` (what NATS allows; AMQP
/// field names are short strings). The NATS publisher checks names again, for rows stored without this check.
pub(crate) fn header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    bytes(name, MAX_SHORT)?;
    match name.bytes().find(|&b| !b.is_ascii_graphic() || b == b':') {
        Some(b) if b.is_ascii() => Err(format!(
            "holds {:?}; header names are visible ASCII without `:`",
            char::from(b)
        )),
        Some(b) => Err(format!(
            "holds the non-ASCII byte 0x{b:02X}; header names are visible ASCII without `:`"
        )),
        None => Ok(()),
    }
}

fn bytes(value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        Err(format!(
            "is {} bytes long; at most {max} are allowed",
            value.len()
        ))
    } else {
        Ok(())
    }
}

fn no_controls(value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "holds the control character {c:?}; control characters are not allowed"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_visible_ascii_without_a_colon() {
        assert!(header_name("x-tenant").is_ok());
        assert!(header_name(&"x".repeat(255)).is_ok());
        for (bad, says) in [
            ("", "is empty"),
            ("x tenant", "' '"),
            ("x:tenant", "':'"),
            ("x-ténant", "non-ASCII byte 0xC3"),
            ("x\ttenant", "'\\t'"),
        ] {
            let problem = header_name(bad).unwrap_err();
            assert!(problem.contains(says), "{bad:?}: {problem}");
        }
        assert!(
            header_name(&"x".repeat(256))
                .unwrap_err()
                .contains("is 256 bytes long; at most 255")
        );
    }
}
