//! What the relay tells the world: structured `tracing` events named as in python-outbox-core (`outbox.batch_started`,
//! `outbox.event_published`, `outbox.batch_complete`, `outbox.no_events`, plus failures and dead letters) and
//! metrics through the `metrics` crate, ready for any exporter (e.g. Prometheus).
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `outbox_events_published_total{event_type}` | counter | events the broker acknowledged |
//! | `outbox_events_failed_total{event_type}` | counter | failed publishes scheduled for a retry |
//! | `outbox_events_dead_lettered_total{event_type}` | counter | events given up on, and rows that no longer decode |
//! | `outbox_publisher_unavailable_total` | counter | batches stopped because the broker was unreachable |
//! | `outbox_batch_size` | histogram | events claimed per batch |
//! | `outbox_batch_duration_seconds` | histogram | claim to mark, per batch |
//! | `outbox_publish_latency_seconds` | histogram | event time (its commit, give or take) to broker acknowledgement |
//! | `outbox_pending_events` | gauge | events not yet published |
//! | `outbox_oldest_pending_age_seconds` | gauge | age of the oldest of them |
//! | `outbox_dead_letters` | gauge | dead letters waiting |
//! | `outbox_partition_pending_events{partition}` | gauge | under the cursor: events waiting behind a partition's cursor |
//! | `outbox_partition_oldest_pending_age_seconds{partition}` | gauge | under the cursor: age of the oldest of them |
//! | `outbox_relay_wakeup_switches_total{to}` | counter | PostgreSQL: a relay's switches between sleeping until woken (`asleep`), polling under load (`polling`) and waiting out older transactions before it sleeps (`settling`) |

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;

use super::BatchReport;
use crate::repository::{ClaimedEvent, DeadLettered, OutboxStats, PartitionLag};

/// Per-batch bookkeeping for metrics, so labels are allocated per type and batch, not per event.
#[derive(Default)]
pub(crate) struct Tally {
    published: HashMap<&'static str, u64>,
    failed: HashMap<&'static str, u64>,
    dead: HashMap<&'static str, u64>,
}

pub(crate) fn batch_started(limit: u32) {
    tracing::debug!(name: "outbox.batch_started", target: "outbox", limit, "outbox.batch_started");
}

pub(crate) fn no_events() {
    tracing::debug!(name: "outbox.no_events", target: "outbox", "outbox.no_events");
}

pub(crate) fn event_published(tally: &mut Tally, event: &ClaimedEvent, metrics: bool) {
    let event_type = event.envelope.event_type();
    tracing::debug!(
        name: "outbox.event_published",
        target: "outbox",
        event_id = %event.envelope.event_id(),
        event_type,
        aggregate_id = %event.aggregate_id,
        "outbox.event_published"
    );
    if metrics {
        *tally.published.entry(event_type).or_default() += 1;
        let latency = (Utc::now() - event.envelope.occurred_at())
            .to_std()
            .unwrap_or_default();
        metrics::histogram!("outbox_publish_latency_seconds").record(latency.as_secs_f64());
    }
}

pub(crate) fn event_failed(tally: &mut Tally, event: &ClaimedEvent, error: &str, retry: bool) {
    let event_type = event.envelope.event_type();
    // `tracing` fixes an event's level and name at compile time, hence one macro call per outcome.
    macro_rules! failed {
        ($level:ident, $name:literal) => {
            tracing::$level!(
                name: $name,
                target: "outbox",
                event_id = %event.envelope.event_id(),
                event_type,
                aggregate_id = %event.aggregate_id,
                attempt = event.attempts + 1,
                error,
                $name
            )
        };
    }
    if retry {
        failed!(warn, "outbox.event_failed");
        *tally.failed.entry(event_type).or_default() += 1;
    } else {
        failed!(error, "outbox.event_dead_lettered");
        *tally.dead.entry(event_type).or_default() += 1;
    }
}

/// Rows of a batch that no longer decode, which become dead letters.
pub(crate) fn undecodable(dead: &[DeadLettered], metrics: bool) {
    crate::repository::log_undecodable(dead);
    if metrics {
        for row in dead {
            metrics::counter!("outbox_events_dead_lettered_total", "event_type" => row.event_type.clone())
                .increment(1);
        }
    }
}

pub(crate) fn publisher_unavailable(publisher: &str, error: &str, metrics: bool) {
    tracing::error!(
        name: "outbox.publisher_unavailable",
        target: "outbox",
        publisher,
        error,
        "outbox.publisher_unavailable"
    );
    if metrics {
        metrics::counter!("outbox_publisher_unavailable_total").increment(1);
    }
}

pub(crate) fn batch_complete(report: &BatchReport, tally: Tally, metrics: bool) {
    let total = report.claimed;
    let success_rate = if total == 0 {
        1.0
    } else {
        report.published as f64 / total as f64
    };
    tracing::info!(
        name: "outbox.batch_complete",
        target: "outbox",
        published = report.published,
        total,
        success_rate,
        failed = report.failed,
        dead_lettered = report.dead_lettered,
        released = report.released,
        fenced_out = report.fenced_out,
        duration_ms = report.duration.as_secs_f64() * 1000.0,
        "outbox.batch_complete"
    );
    if metrics {
        for (event_type, n) in tally.published {
            metrics::counter!("outbox_events_published_total", "event_type" => event_type)
                .increment(n);
        }
        for (event_type, n) in tally.failed {
            metrics::counter!("outbox_events_failed_total", "event_type" => event_type)
                .increment(n);
        }
        for (event_type, n) in tally.dead {
            metrics::counter!("outbox_events_dead_lettered_total", "event_type" => event_type)
                .increment(n);
        }
        metrics::histogram!("outbox_batch_size").record(total as f64);
        metrics::histogram!("outbox_batch_duration_seconds").record(report.duration.as_secs_f64());
    }
}

pub(crate) fn lag(stats: &OutboxStats) {
    metrics::gauge!("outbox_pending_events").set(stats.pending as f64);
    metrics::gauge!("outbox_dead_letters").set(stats.dead_letters as f64);
    let age = stats.oldest_pending_age().unwrap_or(Duration::ZERO);
    metrics::gauge!("outbox_oldest_pending_age_seconds").set(age.as_secs_f64());
}

/// Every partition's lag, whichever relay holds it (each relay reports them all, so the figures do not depend on
/// which relay a scrape reaches).
pub(crate) fn partition_lag(partitions: &[PartitionLag]) {
    for lag in partitions {
        let partition = lag.partition.to_string();
        metrics::gauge!("outbox_partition_pending_events", "partition" => partition.clone())
            .set(lag.pending as f64);
        let age = lag.oldest_pending_age().unwrap_or(Duration::ZERO);
        metrics::gauge!("outbox_partition_oldest_pending_age_seconds", "partition" => partition)
            .set(age.as_secs_f64());
    }
}

/// One publish, from send to the broker's answer: a producer span with the messaging attributes of
/// OpenTelemetry's semantic conventions (with feature `otel`, in the trace stored with the event, see
/// `outbox::otel`).
pub(crate) fn publish_span(message: &crate::Message, system: &str) -> tracing::Span {
    tracing::info_span!(
        target: "outbox",
        "publish",
        otel.name = %format_args!("publish {}", message.destination),
        otel.kind = "producer",
        messaging.system = system,
        messaging.destination.name = %message.destination,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.message.id = %message.id,
    )
}
