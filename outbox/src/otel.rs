//! OpenTelemetry, end to end (feature `otel`): the trace a request starts runs through its event's publish to
//! the consumer.
//!
//! - **Recording**: `add_event` stores the current `tracing` span's trace context with the event (W3C
//!   `traceparent` and `tracestate`) when the envelope carries none of its own
//!   ([`EventEnvelope::with_trace_context`](crate::EventEnvelope::with_trace_context) wins). The span must be
//!   known to OpenTelemetry, through a `tracing_opentelemetry` layer in the application's subscriber.
//! - **Publishing**: each publish is a `tracing` span (target `outbox`, named `publish <destination>`, kind
//!   producer) with the messaging attributes of OpenTelemetry's semantic conventions (`messaging.system`,
//!   `messaging.destination.name`, `messaging.operation.type` = `send`, `messaging.operation.name` = `publish`,
//!   `messaging.message.id`), a child of the context stored with the event. The message then carries the
//!   producer span's context, so the consumer's span is the publish's child, as the conventions ask.
//! - **Consuming**: [`set_parent`] makes a consumer's span continue the trace a message carries.
//!
//! Without an OpenTelemetry layer these do nothing: the event keeps what its envelope says.
//!
//! ```no_run
//! # fn handle(message: &outbox::Message) {
//! let span = tracing::info_span!("process", otel.kind = "consumer");
//! if let Some(parent) = message.traceparent.as_deref().and_then(|t| t.parse().ok()) {
//!     outbox::otel::set_parent(&span, &parent);
//! }
//! let _entered = span.enter();
//! // ... handle the event: its spans are in the producer's trace
//! # }
//! ```

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::TraceContext;
use crate::message::Message;

/// The longest `tracestate` the table stores; a longer one is dropped (W3C lets a participant drop it), the
/// `traceparent` kept.
const MAX_TRACESTATE: usize = 512;

/// `span`'s OpenTelemetry context as W3C trace context; `None` when it belongs to no trace (no OpenTelemetry
/// layer, or a span that is not recorded).
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags().to_u8()
    );
    let tracestate = Some(span_context.trace_state().header())
        .filter(|state| !state.is_empty() && state.len() <= MAX_TRACESTATE);
    TraceContext::new(&traceparent, tracestate).ok()
}

/// Makes `span` a child of the remote span `parent` names (a message's `traceparent`): call it before the span is
/// first entered. Nothing happens without an OpenTelemetry layer.
pub fn set_parent(span: &tracing::Span, parent: &TraceContext) {
    if let Some(remote) = span_context(parent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// Makes the publish `span` a child of the context the message carries, then has the message carry the publish's
/// context instead.
pub(crate) fn carry(span: &tracing::Span, message: &mut Message) {
    let stored = message
        .traceparent
        .as_deref()
        .and_then(|t| TraceContext::new(t, message.tracestate.clone()).ok());
    if let Some(stored) = &stored {
        set_parent(span, stored);
    }
    if let Some(own) = context_of(span) {
        message.traceparent = Some(own.traceparent().to_owned());
        message.tracestate = own.tracestate().map(str::to_owned);
    }
}

fn span_context(trace: &TraceContext) -> Option<SpanContext> {
    let mut parts = trace.traceparent().split('-').skip(1);
    let trace_id = TraceId::from_hex(parts.next()?).ok()?;
    let span_id = SpanId::from_hex(parts.next()?).ok()?;
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    let state = trace
        .tracestate()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        state,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_context_round_trips_through_a_span_context() {
        let trace = TraceContext::new(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            Some("vendor=abc".to_owned()),
        )
        .unwrap();
        let context = span_context(&trace).unwrap();
        assert_eq!(
            format!("{}-{}", context.trace_id(), context.span_id()),
            "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"
        );
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(context.trace_state().header(), "vendor=abc");
    }

    #[test]
    fn without_an_opentelemetry_layer_a_span_belongs_to_no_trace() {
        assert_eq!(context_of(&tracing::info_span!("no layer")), None);
    }
}
