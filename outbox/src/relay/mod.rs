//! The relay (the seed's `OutboxPublisherBase`): a tokio worker that claims stored events, publishes them and
//! marks the outcome.
//!
//! ```no_run
//! # use outbox::publisher::StdoutPublisher;
//! # use outbox::relay::Relay;
//! # use outbox::repository::{OutboxRepository, connect};
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let db = connect("postgres://postgres@127.0.0.1/app").await?;
//! let relay = Relay::builder(db, OutboxRepository::new(), StdoutPublisher).build();
//! let handle = relay.handle(); // wake it, or watch it from a health check
//! let task = tokio::spawn(relay.run(async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }));
//! // ... serve requests; on Ctrl+C the relay stops claiming, finishes its batch, and returns.
//! task.await??;
//! # Ok(())
//! # }
//! ```
//!
//! - **Batches**: one claim and one mark statement per batch; the batch's messages are published with up to
//!   `max_in_flight` aggregates at once, and one after the other within an aggregate (each waits for the
//!   previous one's acknowledgement). On PostgreSQL `run` keeps two batches in flight: it claims the next one
//!   while the current one publishes (the claim hands it the events queued behind its own leases, see
//!   [`LeaseOwner`](crate::repository::LeaseOwner)), and an aggregate's events in the next batch wait for its
//!   events in the current one, or are given back if one of those failed.
//! - **Wake-up**: on PostgreSQL a LISTEN on the table's channel (a trigger NOTIFYs on insert, delivered at
//!   commit) wakes the relay within milliseconds; [`RelayHandle::wake`] does the same in-process; otherwise it
//!   polls every `poll_interval`. A full batch is followed by another at once.
//! - **Failures**: a broker that is unreachable stops the batch, gives its events back without counting an
//!   attempt, and backs the whole relay off (exponentially, with jitter); a rejected event is retried with
//!   backoff or made a dead letter as the [`ErrorHandler`] decides, and the later events of its aggregate wait
//!   for it while other aggregates flow.
//! - **Shutdown**: when the shutdown future completes, the relay stops claiming, lets the publishes in flight
//!   finish within `shutdown_timeout`, gives back what it did not publish, marks what it did, and returns.

mod handler;
mod heartbeat;
mod hold;
mod listen;
mod observe;
mod order;

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use sea_orm::{DatabaseConnection, DbBackend};

pub use handler::{DefaultErrorHandler, ErrorHandler};
pub use heartbeat::RelayHandle;
pub use hold::HeldDestination;

use crate::config::OutboxConfig;
use crate::publisher::{Acknowledgement, PublishError, Publisher, Reason};
use crate::registry::{Registry, RegistryError};
use crate::repository::{
    ClaimedEvent, Failure, LeaseOwner, Leased, LeasedRow, OutboxRepository, RepositoryError,
};
use order::{Link, Order};

/// Publishes stored events; see the [module docs](self).
#[must_use = "a relay does nothing until `run` or `publish_batch` is called"]
pub struct Relay {
    db: DatabaseConnection,
    repository: OutboxRepository,
    publisher: Arc<dyn Publisher>,
    handler: Arc<dyn ErrorHandler>,
    registry: &'static Registry,
    max_in_flight: usize,
    unacknowledged_per_aggregate: usize,
    /// `None`: per backend (see the builder).
    max_batches_in_flight: Option<usize>,
    shutdown_timeout: Duration,
    publish_timeout: Option<Duration>,
    listen: bool,
    handle: RelayHandle,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("table", &self.repository.table())
            .field("publisher", &self.publisher.name())
            .field("max_in_flight", &self.max_in_flight)
            .field("max_batches_in_flight", &self.max_batches_in_flight)
            .finish_non_exhaustive()
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
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.relay.publish_timeout = Some(timeout);
        self
    }

    /// Whether to LISTEN for inserts on PostgreSQL (default true; ignored on other backends).
    pub fn listen(mut self, listen: bool) -> Self {
        self.relay.listen = listen;
        self
    }

    /// The registry to validate at start (default: the one the repository decodes with, usually the global one).
    pub fn registry(mut self, registry: &'static Registry) -> Self {
        self.relay.registry = registry;
        self
    }

    /// The relay.
    pub fn build(self) -> Relay {
        self.relay
    }
}

/// What one batch did (the seed's `publish_batch` returned the published count).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchReport {
    /// Events claimed, including rows dead-lettered because they could not be decoded.
    pub claimed: u64,
    /// Events the broker acknowledged and that were marked published.
    pub published: u64,
    /// Failed publishes scheduled for another attempt.
    pub failed: u64,
    /// Events made dead letters (given up on, or undecodable).
    pub dead_lettered: u64,
    /// Events held back, with no attempt counted, because their destination cannot take messages now (see
    /// [`HeldDestination`]).
    pub held: u64,
    /// Events given back unpublished: after an earlier failure of their aggregate, a broker outage, or shutdown.
    pub released: u64,
    /// Events this relay published but could not mark because its lease had expired and another relay claimed
    /// them: they will be published again (a duplicate, never a loss).
    pub fenced_out: u64,
    /// Set when the broker was unreachable: the relay backs off before the next batch.
    pub publisher_unavailable: Option<String>,
    /// Claim to mark.
    pub duration: Duration,
}

/// Why the relay could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The event registry is inconsistent (two Rust types claim one type and version).
    #[error("the relay cannot start: {0}")]
    Registry(#[from] RegistryError),
    /// The database or the outbox table is not usable.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The configuration is invalid.
    #[error("invalid outbox configuration:\n{0}")]
    Config(#[from] crate::ConfigError),
}

/// The outcome of one aggregate's run of events within a batch.
#[derive(Default)]
struct ChainOutcome {
    published: Vec<usize>,
    failed: Option<(usize, PublishError)>,
    /// The event whose destination is held: why, and for how long.
    held: Option<(usize, String, Duration)>,
    released: Vec<usize>,
    unavailable: Option<String>,
    /// The rest was given back because the lease would have expired during its publishes.
    lease_ran_out: bool,
}

/// When one publish must be answered by, and whether that bound is the lease's (see `Relay::publish_deadline`).
#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    lease: bool,
}

/// A permanent failure for the event whose publish panicked, with the panic's message.
fn panicked(doing: &str, panic: &(dyn std::any::Any + Send)) -> PublishError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    PublishError::permanent(Reason(format!("panicked while {doing}: {message}")))
}

/// A publish cut at the lease's margin: no relay may still be publishing an event once another may claim it.
#[derive(Debug)]
struct LeaseRanOut;

impl std::fmt::Display for LeaseRanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the lease ran out before the broker answered")
    }
}

impl std::error::Error for LeaseRanOut {}

impl Relay {
    /// A relay publishing the events of `repository` (on `db`) to `publisher`, configured by the repository's
    /// [`OutboxConfig`].
    pub fn builder(
        db: DatabaseConnection,
        repository: OutboxRepository,
        publisher: impl Publisher,
    ) -> RelayBuilder {
        let handler = DefaultErrorHandler::new(repository.config().max_retry_count);
        RelayBuilder {
            relay: Relay {
                db,
                repository,
                publisher: Arc::new(publisher),
                handler: Arc::new(handler),
                registry: Registry::global(),
                max_in_flight: 256,
                unacknowledged_per_aggregate: 1,
                max_batches_in_flight: None,
                shutdown_timeout: Duration::from_secs(10),
                publish_timeout: None,
                listen: true,
                handle: RelayHandle::default(),
            },
        }
    }

    /// A handle to wake the relay and to check it is alive (for [`HealthCheck`](crate::health::HealthCheck)).
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    fn config(&self) -> &OutboxConfig {
        self.repository.config()
    }

    /// What `run` checks before its first batch: the registry has no conflicting types, the outbox table
    /// exists, and the broker answers (an unreachable broker is logged, not fatal: the relay waits for it).
    pub async fn check(&self) -> Result<(), RelayError> {
        self.config().validate()?;
        self.registry.validate()?;
        let entries = self.registry.entries();
        if entries.is_empty() {
            tracing::warn!(
                target: "outbox",
                "no event types are registered: every claimed event will become a dead letter; is the crate that \
                 defines them linked (see outbox::registry)?"
            );
        }
        let types: Vec<String> = entries
            .iter()
            .map(|e| format!("{}@{}", e.meta.event_type, e.meta.data_version))
            .collect();
        tracing::info!(target: "outbox", registered = entries.len(), types = %types.join(", "), "event types registered");
        self.repository.check(&self.db).await?;
        if let Err(error) = self.publisher.check().await {
            tracing::error!(
                target: "outbox",
                publisher = self.publisher.name(),
                %error,
                "broker unreachable at start; the relay will keep trying"
            );
        }
        Ok(())
    }

    /// Claims up to `limit` events, publishes them and marks the outcome (the seed's `publish_batch`).
    ///
    /// Use it to write a schedule of your own; [`run`](Self::run) is the ready one.
    pub async fn publish_batch(&self, limit: u32) -> Result<BatchReport, RelayError> {
        let started = Instant::now();
        let leased = self.claim(&LeaseOwner::new(), limit).await?;
        let runs = runs(&mut Order::default(), 1, &leased.rows);
        self.finish(started, leased, runs, &AtomicBool::new(false))
            .await
    }

    /// Decodes a leased batch and publishes it, each aggregate's run after its run in the batch before (see
    /// [`runs`]), and marks the outcome.
    async fn finish(
        &self,
        started: Instant,
        leased: Leased,
        runs: Vec<(Vec<usize>, Link)>,
        stop: &AtomicBool,
    ) -> Result<BatchReport, RelayError> {
        if leased.rows.is_empty() {
            observe::no_events();
            return Ok(BatchReport {
                duration: started.elapsed(),
                ..BatchReport::default()
            });
        }
        let ids: Vec<i64> = leased.rows.iter().map(|row| row.id).collect();
        let claim = self.repository.decode_leased(&self.db, leased).await?;
        // The runs index leased rows; the decoded events are the same rows in the same (id) order, less the dead
        // letters. A run left empty still waits for its turn and reports, so the aggregate's next run goes on.
        let position: Vec<Option<usize>> = {
            let mut decoded = claim.events.iter().enumerate().peekable();
            ids.iter()
                .map(|&id| decoded.next_if(|(_, event)| event.id == id).map(|(i, _)| i))
                .collect()
        };
        let runs: Vec<(Vec<usize>, Link)> = runs
            .into_iter()
            .map(|(chain, link)| {
                (
                    chain.into_iter().filter_map(|row| position[row]).collect(),
                    link,
                )
            })
            .collect();
        let metrics = self.config().enable_metrics;
        let mut report = BatchReport {
            claimed: ids.len() as u64,
            dead_lettered: claim.dead_lettered.len() as u64,
            ..BatchReport::default()
        };
        if metrics {
            observe::undecodable(&claim.dead_lettered);
        }
        let mut tally = observe::Tally::default();

        // Set by the first chain that finds the broker unreachable, so the others stop too; unlike `stop`
        // (shutdown), it lasts one batch.
        let halt = AtomicBool::new(false);
        // The lease as this relay counts it: from before the claim, so it ends a little before the database's.
        let lease_end = started + self.config().lease_duration;
        let outcomes: Vec<ChainOutcome> = futures_util::stream::iter(runs)
            .map(|(chain, link)| {
                self.publish_chain(&claim.events, chain, link, lease_end, stop, &halt)
            })
            .buffer_unordered(self.max_in_flight)
            .collect()
            .await;

        let (mut published, mut failures, mut released) = (Vec::new(), Vec::new(), Vec::new());
        let mut lease_ran_out = 0;
        for outcome in outcomes {
            if outcome.lease_ran_out {
                lease_ran_out += outcome.released.len();
            }
            for i in outcome.published {
                observe::event_published(&mut tally, &claim.events[i], metrics);
                published.push(claim.events[i].id);
            }
            if let Some((i, reason, retry_in)) = outcome.held {
                failures.push(Failure::held(&claim.events[i], reason, retry_in));
            }
            if let Some((i, error)) = outcome.failed {
                let event = &claim.events[i];
                self.handler.handle(event, &error);
                let retry = self.handler.should_retry(event, &error, event.attempts + 1);
                let text = error.to_string();
                observe::event_failed(&mut tally, event, &text, retry);
                let failure = Failure::new(event, text);
                failures.push(if retry { failure } else { failure.permanent() });
            }
            released.extend(outcome.released.iter().map(|&i| claim.events[i].id));
            if let Some(error) = outcome.unavailable {
                report.publisher_unavailable.get_or_insert(error);
            }
        }

        let token = claim.token;
        let (marked, fenced_out) = self
            .mark_published(&published, || {
                self.repository.mark_published(&self.db, token, &published)
            })
            .await?;
        report.published = marked;
        report.fenced_out = fenced_out;
        if !failures.is_empty() {
            let outcome = self
                .persist(|| self.repository.mark_failed(&self.db, token, &failures))
                .await?;
            report.failed = outcome.retrying;
            report.dead_lettered += outcome.dead_lettered;
            report.held = outcome.held;
            report.fenced_out += outcome.fenced_out;
        }
        if !released.is_empty() {
            report.released = self
                .persist(|| self.repository.release(&self.db, token, &released))
                .await?;
        }
        if report.fenced_out > 0 {
            tracing::warn!(
                target: "outbox",
                fenced_out = report.fenced_out,
                "lease expired before the batch was marked: another relay owns these events and will publish them \
                 again (raise OUTBOX_LEASE_DURATION if batches take this long)"
            );
        }
        if lease_ran_out > 0 {
            tracing::warn!(
                target: "outbox",
                given_back = lease_ran_out,
                "the batch's lease would have run out before these events were published: given back unpublished \
                 (raise OUTBOX_LEASE_DURATION if batches take this long)"
            );
        }
        if let Some(error) = &report.publisher_unavailable {
            observe::publisher_unavailable(self.publisher.name(), error, metrics);
        }
        report.duration = started.elapsed();
        observe::batch_complete(&report, tally, metrics);
        Ok(report)
    }

    /// Claims, running the claim again when the database aborted it for a conflict with another transaction
    /// (a deadlock victim claimed nothing, so this is safe).
    async fn claim(&self, owner: &LeaseOwner, limit: u32) -> Result<Leased, RepositoryError> {
        observe::batch_started(limit);
        let mut attempt = 0;
        loop {
            match self.repository.lease_as(&self.db, owner, limit).await {
                Err(error) if error.is_conflict() && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=10 * attempt)))
                        .await;
                }
                other => return other,
            }
        }
    }

    /// Runs a bookkeeping write until it succeeds or cannot: giving up on a mark turns events that were
    /// published into duplicates once their lease expires, so a database hiccup (a deadlock, a dropped
    /// connection) is worth waiting out, for up to half the lease.
    async fn persist<T, F, Fut>(&self, write: F) -> Result<T, RepositoryError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, RepositoryError>>,
    {
        let deadline = Instant::now() + self.config().lease_duration / 2;
        let mut delay = Duration::from_millis(5);
        loop {
            match write().await {
                Err(error) if error.is_retryable() && Instant::now() + delay < deadline => {
                    tracing::warn!(target: "outbox", %error, retry_in = ?delay, "retrying outbox bookkeeping");
                    tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// Marks the published events `ids` with `write` (the repository's mark, run again through database hiccups
    /// by [`persist`](Self::persist)); returns how many are marked and how many another relay owns now (fenced
    /// out: it will publish them again).
    ///
    /// A mark whose commit went through but whose answer was lost is run again and then matches nothing: that
    /// alone cannot tell this relay's own lost commit from a takeover. So after a retry, the events that are still
    /// pending are the ones another relay took over, and the others are marked (by this relay's first attempt,
    /// or by the relay that took them over and published them too).
    async fn mark_published<F, Fut>(
        &self,
        ids: &[i64],
        write: F,
    ) -> Result<(u64, u64), RepositoryError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<u64, RepositoryError>>,
    {
        let runs = std::sync::atomic::AtomicU32::new(0);
        let marked = self
            .persist(|| {
                runs.fetch_add(1, Ordering::Relaxed);
                write()
            })
            .await?;
        let given = ids.len() as u64;
        if marked == given || runs.load(Ordering::Relaxed) == 1 {
            return Ok((marked, given - marked));
        }
        let pending = self
            .persist(|| self.repository.count_pending_ids(&self.db, ids))
            .await?;
        Ok((given - pending, pending))
    }

    /// How long one publish may take: past the lease another relay takes the event over anyway, so waiting
    /// longer only stalls this one.
    fn publish_timeout(&self) -> Duration {
        self.publish_timeout
            .unwrap_or(self.config().lease_duration / 2)
    }

    /// When a publish that starts now must be answered by: within the publish timeout, and before the lease's
    /// margin (a fifth of the lease), which leaves the batch time to be marked before another relay may claim its
    /// events. Past the margin the publish is abandoned and its event given back: a duplicate if the broker took
    /// it after all, never two relays publishing one event at once.
    fn publish_deadline(&self, lease_end: Instant) -> Deadline {
        let margin = self.config().lease_duration / 5;
        let by_lease = lease_end.checked_sub(margin).unwrap_or(lease_end);
        let by_timeout = Instant::now() + self.publish_timeout();
        Deadline {
            at: by_lease.min(by_timeout),
            lease: by_lease <= by_timeout,
        }
    }

    /// One step of a publish (sending, or waiting for the acknowledgement), bounded by the publish's deadline; a
    /// panic in it is this event's permanent failure, never the relay's.
    async fn timed<T>(
        &self,
        deadline: Deadline,
        step: impl Future<Output = Result<T, PublishError>>,
    ) -> Result<T, PublishError> {
        let step = AssertUnwindSafe(step).catch_unwind();
        match tokio::time::timeout_at(deadline.at.into(), step).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(panic)) => Err(panicked("publishing", &*panic)),
            Err(_) if deadline.lease => Err(PublishError::unavailable(LeaseRanOut)),
            Err(_) => Err(PublishError::unavailable(Reason(format!(
                "{} did not answer within {:?}",
                self.publisher.name(),
                self.publish_timeout()
            )))),
        }
    }

    /// Publishes one aggregate's events in order, once its run in the batch before published everything, and
    /// stops at the first failure: the rest wait for it.
    async fn publish_chain(
        &self,
        events: &[ClaimedEvent],
        chain: Vec<usize>,
        link: Link,
        lease_end: Instant,
        stop: &AtomicBool,
        halt: &AtomicBool,
    ) -> ChainOutcome {
        let mut outcome = ChainOutcome::default();
        if let Some(after) = link.after
            && !after.published_all().await
        {
            outcome.released = chain;
            let _ = link.report.send(false);
            return outcome;
        }
        let holds = &self.handle.shared.holds;
        // Up to `unacknowledged_per_aggregate` events are sent ahead of the oldest unanswered one. Trouble (a
        // refusal, an outage, a held destination, shutdown, the lease running out) stops the sending; what was sent
        // is still waited for, since it may have arrived, and the events not sent are given back.
        let window = self.unacknowledged_per_aggregate;
        let mut waiting: VecDeque<(usize, Deadline, Acknowledgement)> = VecDeque::new();
        let (mut next, mut sending) = (0, true);
        loop {
            if sending && next < chain.len() && waiting.len() < window {
                let deadline = self.publish_deadline(lease_end);
                outcome.lease_ran_out = deadline.at <= Instant::now();
                if stop.load(Ordering::Relaxed)
                    || halt.load(Ordering::Relaxed)
                    || outcome.lease_ran_out
                {
                    sending = false;
                    continue;
                }
                let i = chain[next];
                next += 1;
                if let Some((left, reason)) = holds.remaining(destination(&events[i])) {
                    outcome.held = Some((i, reason, left));
                    sending = false;
                    continue;
                }
                // A publisher that answers at once (in memory, stdout) never makes this loop wait; counting each
                // send against tokio's budget lets the claim and the service's own tasks run in between.
                tokio::task::consume_budget().await;
                let rendered =
                    std::panic::catch_unwind(AssertUnwindSafe(|| events[i].envelope.to_message()));
                let sent = match rendered {
                    Ok(Ok(message)) => self.timed(deadline, self.publisher.send(&message)).await,
                    Ok(Err(error)) => Err(PublishError::permanent(error)),
                    Err(panic) => Err(panicked("rendering the message", &*panic)),
                };
                match sent {
                    Ok(ack) => waiting.push_back((i, deadline, ack)),
                    Err(error) => sending = self.settle(&mut outcome, events, i, Err(error), halt),
                }
                continue;
            }
            let Some((i, deadline, ack)) = waiting.pop_front() else {
                break;
            };
            let answer = self.timed(deadline, ack).await;
            sending &= self.settle(&mut outcome, events, i, answer, halt);
        }
        outcome.released.extend_from_slice(&chain[next..]);
        // The next batch's run of this aggregate may go as soon as this one is published, before it is marked:
        // a mark that fails later makes this run's events duplicates, never late.
        let _ = link.report.send(outcome.published.len() == chain.len());
        outcome
    }

    /// Records the broker's answer for event `i` of a chain; whether the chain may go on sending. The first
    /// trouble of the event's own (a refusal, a held destination) is the chain's, retried or held; a later one,
    /// of an event sent before the first was answered, is given back with the rest.
    fn settle(
        &self,
        outcome: &mut ChainOutcome,
        events: &[ClaimedEvent],
        i: usize,
        answer: Result<(), PublishError>,
        halt: &AtomicBool,
    ) -> bool {
        let holds = &self.handle.shared.holds;
        let first_trouble = outcome.failed.is_none() && outcome.held.is_none();
        match answer {
            Ok(()) => {
                outcome.published.push(i);
                holds.lift(destination(&events[i]));
                true
            }
            Err(PublishError::Unavailable(cause)) if cause.is::<LeaseRanOut>() => {
                outcome.lease_ran_out = true;
                outcome.released.push(i);
                false
            }
            Err(PublishError::Unavailable(cause)) => {
                // Nothing is wrong with the event: give it back with the rest, and stop the whole batch.
                halt.store(true, Ordering::Relaxed);
                outcome.unavailable.get_or_insert(cause.to_string());
                outcome.released.push(i);
                false
            }
            Err(error @ PublishError::DestinationUnavailable { .. }) => {
                // Keyed by the destination the event names: a publisher that renames destinations reports
                // its own name, which no later event could be matched with.
                let reason = error.to_string();
                let left = holds.hold(destination(&events[i]), reason.clone(), self.config());
                if first_trouble {
                    outcome.held = Some((i, reason, left));
                } else {
                    outcome.released.push(i);
                }
                false
            }
            Err(error) => {
                if first_trouble {
                    outcome.failed = Some((i, error));
                } else {
                    outcome.released.push(i);
                }
                false
            }
        }
    }

    /// Runs until `shutdown` completes (the seed's `schedule_publishing`): checks, then batches, woken by
    /// notifications or the poll interval, backing off while the broker or database is unavailable.
    ///
    /// Cancellation-safe in the sense that matters: dropping the future loses nothing (leases expire and another
    /// relay takes over), but completing `shutdown` is the clean way, which finishes or gives back the batch in
    /// hand within `shutdown_timeout`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), RelayError> {
        let mut stopped = self.handle.stopped_guard();
        let result = match self.check().await {
            Ok(()) => {
                let _listener = self.start_listener();
                self.handle.set_running();
                let relay = Arc::new(self);
                let stopping = Arc::new(tokio::sync::Notify::new());
                // The shutdown deadline bounds all of the shutdown (a claim waiting on the database, the batches
                // in flight), from the moment it is requested: past it the loop is dropped, which aborts its
                // tasks; what they held returns to another relay when the lease expires.
                let deadline = async {
                    stopping.notified().await;
                    tokio::time::sleep(relay.shutdown_timeout).await;
                };
                tokio::select! {
                    result = relay.run_loop(shutdown, &stopping) => result,
                    () = deadline => {
                        tracing::warn!(
                            target: "outbox",
                            timeout = ?relay.shutdown_timeout,
                            "shutdown deadline passed with work in flight; its events return to another relay when \
                             the lease expires"
                        );
                        Ok(())
                    }
                }
            }
            Err(error) => Err(error),
        };
        match &result {
            Ok(()) => tracing::info!(target: "outbox", "relay stopped"),
            Err(error) => tracing::error!(target: "outbox", %error, "relay stopped on an error"),
        }
        stopped.returned(result.as_ref().err().map(ToString::to_string));
        result
    }

    async fn run_loop(
        self: &Arc<Self>,
        shutdown: impl Future<Output = ()> + Send,
        stopping_now: &tokio::sync::Notify,
    ) -> Result<(), RelayError> {
        let config = self.config().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let mut shutdown = std::pin::pin!(shutdown);
        let mut owner = LeaseOwner::new();
        let mut order = Order::default();
        // Each batch decodes, publishes and marks on a task of its own, so that on a multi-threaded runtime this
        // work runs beside the next claim rather than between its polls (+17% drained with rows marked, +27%
        // with rows deleted, measured). Dropping the set aborts them, as dropping `run` always did.
        let mut in_flight = tokio::task::JoinSet::new();
        let mut batches: u64 = 0;
        // When the next claim may start (None: as soon as a batch slot is free), and whether a wake-up may cut
        // the wait short: an idle poll may, a backoff may not.
        let mut pause: Option<(Instant, bool)> = None;
        let mut trouble_streak: u32 = 0;
        let mut last_stats: Option<Instant> = None;
        let mut stopping = false;
        // Set when a batch gave events back (after a failure, an outage): the next claim waits until no batch is
        // in flight. Otherwise it would queue the same aggregate's events behind runs that are being given back,
        // and be given back in turn, over and over; once everything in flight is settled, the database says
        // which events wait for a retry.
        let mut settle_first = false;
        let depth =
            self.max_batches_in_flight
                .unwrap_or_else(|| match self.db.get_database_backend() {
                    DbBackend::Postgres => 2,
                    _ => 1,
                });
        while !stopping {
            self.handle.beat();
            if config.enable_metrics
                && last_stats.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                match self.repository.stats(&self.db).await {
                    Ok(stats) => observe::lag(&stats),
                    Err(error) => {
                        tracing::warn!(target: "outbox", %error, "cannot read outbox lag")
                    }
                }
                last_stats = Some(Instant::now());
            }

            settle_first &= !in_flight.is_empty();
            let room = if settle_first {
                in_flight.is_empty()
            } else {
                in_flight.len() < depth
            };
            let mut finished = Vec::new();
            if room && pause.is_none_or(|(at, _)| Instant::now() >= at) {
                // Claim while the batches in flight go on publishing; their outcomes wait until the claim is in,
                // so `order` still knows every run the claim may have queued events behind.
                let started = Instant::now();
                let claimed = {
                    let mut claim = std::pin::pin!(self.claim(&owner, config.batch_size));
                    loop {
                        tokio::select! {
                            result = &mut claim => break result,
                            Some(done) = in_flight.join_next() => finished.extend(joined(done)),
                            () = &mut shutdown, if !stopping => {
                                stopping = self.stopping(&stop, stopping_now);
                            }
                        }
                    }
                };
                match claimed {
                    Ok(leased) => {
                        let full = leased.rows.len() >= config.batch_size as usize;
                        // A full batch: there is probably more, claim again as soon as there is room.
                        pause = (!full).then(|| (Instant::now() + config.poll_interval, true));
                        batches += 1;
                        let (batch, stop, relay) = (batches, stop.clone(), self.clone());
                        let runs = runs(&mut order, batch, &leased.rows);
                        in_flight.spawn(async move {
                            (batch, relay.finish(started, leased, runs, &stop).await)
                        });
                    }
                    Err(error) if error.is_timeout() => {
                        // Nothing was leased: the claim lock or a statement took longer than the claim timeout (a
                        // relay frozen inside its claim holds the lock until the database ends its session).
                        tracing::warn!(target: "outbox", %error, "claim timed out; trying again");
                        pause = Some((
                            Instant::now() + Duration::from_millis(fastrand::u64(10..100)),
                            false,
                        ));
                    }
                    Err(error) => {
                        // A claim whose commit was cut may have leased events all the same.
                        pause = Some(recover(&config, &mut owner, &mut trouble_streak, &error));
                    }
                }
            } else {
                let resume = pause.map_or_else(Instant::now, |(at, _)| at);
                let wakeable = pause.is_some_and(|(_, wakeable)| wakeable);
                // A wake-up (NOTIFY or RelayHandle::wake) cuts an idle wait short, not a backoff.
                let woken = self.handle.shared.wake.notified();
                tokio::select! {
                    Some(done) = in_flight.join_next() => finished.extend(joined(done)),
                    () = tokio::time::sleep_until(resume.into()), if room => pause = None,
                    () = woken, if room && wakeable => pause = None,
                    () = &mut shutdown, if !stopping => stopping = self.stopping(&stop, stopping_now),
                    else => {}
                }
            }

            for (batch, result) in finished {
                if let Ok(report) = &result {
                    settle_first |=
                        report.released + report.failed + report.dead_lettered + report.held > 0;
                }
                match result {
                    Ok(report) if report.publisher_unavailable.is_some() => {
                        trouble_streak += 1;
                        pause = Some((Instant::now() + backoff(&config, trouble_streak), false));
                    }
                    Ok(_) => trouble_streak = 0,
                    Err(error) => {
                        // The batch's outcome may not be in the database, its leases still standing.
                        pause = Some(recover(&config, &mut owner, &mut trouble_streak, &error));
                    }
                }
                order.settled(batch);
            }
        }

        // Bounded by the shutdown deadline, which `run` keeps.
        while let Some(done) = in_flight.join_next().await {
            if let Some((_, Err(error))) = joined(done) {
                tracing::error!(target: "outbox", %error, "last batch before shutdown failed");
            }
        }
        Ok(())
    }

    /// Shutdown was requested: no more claims, and the batches in flight give back what they have not published.
    fn stopping(&self, stop: &AtomicBool, deadline: &tokio::sync::Notify) -> bool {
        tracing::info!(target: "outbox", "shutdown requested: finishing the batches in hand");
        stop.store(true, Ordering::Relaxed);
        deadline.notify_one();
        true
    }

    fn start_listener(&self) -> Option<listen::Listener> {
        if !self.listen {
            return None;
        }
        listen::Listener::start(&self.db, self.repository.table(), self.handle.clone())
    }
}

/// Where the event is published: the name holds are kept by.
fn destination(event: &ClaimedEvent) -> &'static str {
    event.envelope.event().meta().destination
}

/// A batch task's outcome. A panic is passed on as the relay's own, as it was before batches ran on tasks of
/// their own. A task is cancelled only when the runtime shuts down under the relay: nothing is left to report,
/// and its leases expire for another relay.
fn joined<T>(done: Result<T, tokio::task::JoinError>) -> Option<T> {
    match done {
        Ok(outcome) => Some(outcome),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => {
            tracing::warn!(target: "outbox", %error, "batch task cancelled");
            None
        }
    }
}

/// After a claim or a batch failed, when leases this relay knows nothing of may stand: a new owner, under which
/// they count as another relay's (so no claim of ours takes events queued behind them), and a backoff, until
/// which the next claim waits (no wake-up cuts it short).
fn recover(
    config: &OutboxConfig,
    owner: &mut LeaseOwner,
    streak: &mut u32,
    error: &dyn std::fmt::Display,
) -> (Instant, bool) {
    *owner = LeaseOwner::new();
    *streak += 1;
    let delay = backoff(config, *streak);
    tracing::error!(target: "outbox", %error, retry_in = ?delay, "relay batch failed");
    (Instant::now() + delay, false)
}

/// Back-off while the broker or database is unavailable: the retry schedule of the config, with jitter.
fn backoff(config: &OutboxConfig, streak: u32) -> Duration {
    config
        .retry_delay(streak)
        .mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// The batch's runs (see [`chains`]), each linked in `order` to its aggregate's run in the batch before.
fn runs(order: &mut Order, batch: u64, events: &[LeasedRow]) -> Vec<(Vec<usize>, Link)> {
    let chains = chains(events);
    let aggregates = chains.iter().map(|chain| {
        let first = &events[chain[0]];
        (first.aggregate_type.as_str(), first.aggregate_id.as_str())
    });
    let links = order.link(batch, aggregates);
    chains.into_iter().zip(links).collect()
}

/// The batch's events grouped by aggregate, each group in write order; groups ordered by their first event.
fn chains(events: &[LeasedRow]) -> Vec<Vec<usize>> {
    let mut index: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::new();
    let mut chains: Vec<Vec<usize>> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let key = (event.aggregate_type.as_str(), event.aggregate_id.as_str());
        match index.get(&key) {
            Some(&chain) => chains[chain].push(i),
            None => {
                index.insert(key, chains.len());
                chains.push(vec![i]);
            }
        }
    }
    chains
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::publisher::InMemoryPublisher;
    use crate::repository::connect;

    #[derive(Serialize, Deserialize, crate::OutboxEvent)]
    #[outbox(
        crate = "crate",
        type = "com.example.relay.tested",
        source = "/relay-tests"
    )]
    struct Tested {
        #[outbox(aggregate_id)]
        id: u32,
    }

    /// A mark whose commit went through but whose answer was lost is retried; the retry matches nothing, and the
    /// events must still count as marked, not as taken over by another relay.
    #[tokio::test]
    async fn a_mark_whose_answer_was_lost_counts_as_marked() {
        let db = connect("sqlite::memory:").await.unwrap();
        crate::migration::create_table(&db, "outbox_events")
            .await
            .unwrap();
        let repository = OutboxRepository::new();
        repository
            .add_events(&db, (1..=3).map(|id| Tested { id }))
            .await
            .unwrap();
        let claim = repository.claim(&db, 10).await.unwrap();
        let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
        let relay =
            Relay::builder(db.clone(), repository.clone(), InMemoryPublisher::new()).build();
        let answered = AtomicBool::new(false);
        let marked = relay
            .mark_published(&ids, || async {
                let marked = repository.mark_published(&db, claim.token, &ids).await;
                if answered.swap(true, Ordering::Relaxed) {
                    return marked;
                }
                // Committed, but the answer never came back.
                Err(RepositoryError::db(
                    "marking events published",
                    "outbox_events",
                    sea_orm::DbBackend::Sqlite,
                    sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal("connection reset".into())),
                ))
            })
            .await
            .unwrap();
        assert_eq!(marked, (3, 0));
        assert_eq!(repository.count_unpublished(&db).await.unwrap(), 0);
    }
}
