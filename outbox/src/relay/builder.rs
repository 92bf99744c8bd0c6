//! Building a relay: its error policy, concurrency, timeouts and wake-ups.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;

use super::{DefaultErrorHandler, ErrorHandler, Relay, RelayHandle};
use crate::publisher::Publisher;
use crate::repository::{OutboxRepository, Store};

impl Relay {
    /// A relay publishing the events of `repository` (on `db`) to `publisher`, configured by the repository's
    /// [`OutboxConfig`](crate::OutboxConfig).
    pub fn builder(
        db: DatabaseConnection,
        repository: OutboxRepository,
        publisher: impl Publisher,
    ) -> RelayBuilder {
        let handler = DefaultErrorHandler::new(repository.config().max_retry_count);
        RelayBuilder {
            relay: Relay {
                store: Store::new(db, repository),
                publisher: Arc::new(publisher),
                handler: Arc::new(handler),
                max_in_flight: 256,
                unacknowledged_per_aggregate: 1,
                max_batches_in_flight: None,
                shutdown_timeout: Duration::from_secs(10),
                publish_timeout: None,
                listen: true,
                name: default_name(),
                heartbeat_interval: Duration::from_secs(5),
                dataschema_base: None,
                handle: RelayHandle::default(),
            },
        }
    }
}

/// Builds a [`Relay`].
#[must_use]
pub struct RelayBuilder {
    relay: Relay,
}

impl RelayBuilder {
    /// The error policy (default: [`DefaultErrorHandler`] with the config's `max_retry_count`).
    pub fn error_handler(mut self, handler: impl ErrorHandler) -> Self {
        self.relay.handler = Arc::new(handler);
        self
    }

    /// How many aggregates are published at once (default 256). Events of one aggregate are always sequential.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.relay.max_in_flight = max_in_flight.max(1);
        self
    }

    /// How many of one aggregate's events may be sent before the first of them is acknowledged (default 1: each
    /// waits for the acknowledgement of the one before).
    ///
    /// Brokers answer in milliseconds, and with one event in flight per aggregate a relay publishes at most
    /// `aggregates in flight / acknowledgement time` events per second: 14.5k/s to RabbitMQ with confirms over
    /// 100 aggregates (measured). Sending ahead lifts that, for publishers whose broker keeps the order of what
    /// one connection sends ([`Publisher::send`]: RabbitMQ, NATS JetStream and Kafka; the others wait for each
    /// acknowledgement whatever this says).
    ///
    /// What it costs: the per-aggregate order then holds as long as the broker answers every event with an
    /// acknowledgement. If it refuses an event or does not answer it in time (a RabbitMQ nack, a JetStream
    /// error, the publish timeout) after later events of the same aggregate were sent, those later events may be
    /// delivered first, and the unanswered one follows when it is sent again. No event is lost either way.
    pub fn unacknowledged_per_aggregate(mut self, events: usize) -> Self {
        self.relay.unacknowledged_per_aggregate = events.max(1);
        self
    }

    /// How many batches `run` keeps in flight. With 2 the relay claims its next batch while the current one is
    /// publishing, and marks one while publishing the next; the claim hands it the events queued behind its own
    /// leases, and each aggregate's events still go out one after the other across batches. 1 runs claim,
    /// publish and mark strictly one after another.
    ///
    /// Default: 2 on PostgreSQL, 1 on MySQL/MariaDB and SQLite, where a claim running beside a mark slowed the
    /// drain down instead (SQLite's single writer: 12.0k -> 6.4k events/s; MariaDB 4.2k -> 3.5k; PostgreSQL
    /// 11.4k -> 19.1k, and NATS under load 6.8k -> 9.6k; see BENCHMARKS.md).
    pub fn max_batches_in_flight(mut self, batches: usize) -> Self {
        self.relay.max_batches_in_flight = Some(batches.max(1));
        self
    }

    /// How long a shutdown may wait for publishes in flight (default 10 s). Past it the relay returns, and what
    /// it still held comes back to another relay when its lease expires.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.relay.shutdown_timeout = timeout;
        self
    }

    /// How long one publish may go unanswered (default: half the lease). Past it the broker counts as
    /// unavailable: the batch is given back and the relay backs off, instead of waiting forever on a client that
    /// lost its connection without noticing. The message may still arrive: a duplicate, like a lost ack.
    ///
    /// Whatever this says, a publish is also abandoned at four fifths of its batch's lease, so that no event is
    /// ever being published by two relays at once; its event is given back.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.relay.publish_timeout = Some(timeout);
        self
    }

    /// Whether to LISTEN for inserts on PostgreSQL (default true; ignored on other backends).
    pub fn listen(mut self, listen: bool) -> Self {
        self.relay.listen = listen;
        self
    }

    /// The name operators see for this relay (`outbox status`, the ops dashboard); default `host:pid`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.relay.name = name.into();
        self
    }

    /// How often the relay refreshes its row in `<table>_relays` (default 5 s). A relay counts as alive while its
    /// last heartbeat is under [`ALIVE_WITHIN`](crate::repository::ALIVE_WITHIN) old (15 s), so an interval
    /// longer than a third of that shows a live relay as gone between heartbeats.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.relay.heartbeat_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Sets CloudEvents `dataschema` on every message whose type has a registered JSON Schema
    /// (`#[outbox(schema)]`) and declares no `dataschema` of its own, to
    /// [`dataschema_url`](crate::contract::dataschema_url)`(base, type, version)`: `{base}/{type}/{version}`.
    /// Serve the schemas there (the example service does, from [`contract::json_schemas`](crate::contract::json_schemas)).
    pub fn dataschema_base(mut self, base: impl Into<String>) -> Self {
        self.relay.dataschema_base = Some(base.into());
        self
    }

    /// The relay.
    pub fn build(self) -> Relay {
        self.relay
    }
}

/// `host:pid`: which process a relay is, for an operator.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}
