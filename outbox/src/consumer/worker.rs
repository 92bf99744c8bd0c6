//! The consumer: reads a subscription, applies each event once through its typed handler in a transaction that
//! also records it in the inbox, retries a failing handler, keeps what it cannot apply as a dead letter, and acks
//! only what is committed or kept.
//!
//! | metric (label `consumer`) | kind | meaning |
//! |---|---|---|
//! | `outbox_consumer_applied_total` | counter | messages applied and committed |
//! | `outbox_consumer_duplicates_total` | counter | messages found in the inbox, acked without running the handler |
//! | `outbox_consumer_retries_total` | counter | handler runs tried again after a failure |
//! | `outbox_consumer_dead_lettered_total` | counter | messages kept as dead letters |
//! | `outbox_consumer_handler_seconds` | histogram | inbox record, handler and commit of an applied message |
//! | `outbox_consumer_lag_seconds` | histogram | event time to its commit here |

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::delivery::{Delivery, DeliveryError};
use super::handler::{Context, ErasedHandler, Handler, erase};
use super::health::{ConsumerHealth, ConsumerThresholds, Liveness, lag_status};
use super::subscriber::{Received, Settle, Subscriber};
use crate::event::OutboxEvent;
use crate::registry::Registry;
use crate::repository::{Inbox, NewDeadLetter, Recorded, RepositoryError};

/// Applies received events once each; see the [module](super).
#[must_use = "a consumer does nothing until `run` is called"]
pub struct Consumer {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    inbox: Inbox,
    registry: &'static Registry,
    /// By event type and data version; a few entries, so a list beats a map keyed by `'static` strings (which a
    /// received message's borrowed strings could not look up without allocating).
    handlers: Vec<((&'static str, &'static str), ErasedHandler)>,
    max_attempts: u32,
    backoff: Duration,
    max_in_flight: usize,
    /// Most messages (of distinct aggregates) applied in one transaction.
    batch: usize,
    /// How a message without CloudEvents attributes is read: (type, version, source) of `plain_json_as`.
    plain: Option<(&'static str, &'static str, &'static str)>,
    counts: ConsumerCounts,
    liveness: Liveness,
    thresholds: ConsumerThresholds,
}

/// Builds a [`Consumer`].
#[must_use]
pub struct ConsumerBuilder {
    inner: Inner,
}

impl Consumer {
    /// A consumer applying events on `db`, recording them in `inbox` (whose consumer name is this consumer's).
    pub fn builder(db: DatabaseConnection, inbox: Inbox) -> ConsumerBuilder {
        ConsumerBuilder {
            inner: Inner {
                db,
                inbox,
                registry: Registry::global(),
                handlers: Vec::new(),
                max_attempts: 5,
                backoff: Duration::from_millis(100),
                max_in_flight: 64,
                batch: 1,
                plain: None,
                counts: ConsumerCounts::default(),
                liveness: Liveness::default(),
                thresholds: ConsumerThresholds::default(),
            },
        }
    }
}

impl ConsumerBuilder {
    /// Handles events of type `E` (its CloudEvents type and data version) with `handler`, which applies the event
    /// with [`Context::txn`] and returns `Ok` to have it committed.
    ///
    /// ```no_run
    /// # use outbox::{OutboxEvent, consumer::{Consumer, Context, HandlerError}, repository::Inbox};
    /// # use outbox::sea_orm::{ConnectionTrait, DatabaseConnection};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize, OutboxEvent)]
    /// # #[outbox(type = "com.example.user.created", source = "/users")]
    /// # struct UserCreated { #[outbox(aggregate_id)] user_id: u64, email: String }
    /// # fn example(db: DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
    /// let consumer = Consumer::builder(db, Inbox::new("mailer")?)
    ///     .handle(|event: UserCreated, ctx: Context| async move {
    ///         ctx.txn()
    ///             .execute_unprepared(&format!("INSERT INTO welcome_mails (user_id) VALUES ({})", event.user_id))
    ///             .await?;
    ///         Ok::<_, HandlerError>(())
    ///     })
    ///     .build();
    /// # Ok(())
    /// # }
    /// ```
    pub fn handle<E: OutboxEvent>(mut self, handler: impl Handler<E>) -> Self {
        let key = (E::EVENT_TYPE, E::DATA_VERSION);
        // A second handler for one type replaces the first, as a map would.
        self.inner.handlers.retain(|(existing, _)| *existing != key);
        self.inner.handlers.push((key, erase(handler)));
        self
    }

    /// How many times a handler runs for one message before it becomes a dead letter (default 5, at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.inner.max_attempts = attempts.max(1);
        self
    }

    /// The wait before the second attempt (default 100 ms); each later one waits twice as long, up to 30 s.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.inner.backoff = backoff;
        self
    }

    /// How many messages are handled at once, across aggregates (default 64); one aggregate's messages are always
    /// handled one after the other, in the order received.
    pub fn max_in_flight(mut self, messages: usize) -> Self {
        self.inner.max_in_flight = messages.max(1);
        self
    }

    /// Applies up to `messages` messages of distinct aggregates in one transaction, with one commit (default 1:
    /// a transaction per message). The messages already received when a batch starts join it; each handler runs
    /// in turn in the shared transaction (so [`Context::txn`] holds the others' changes too), then the inbox
    /// records and changes of all of them commit together and the messages are acknowledged. If any handler
    /// fails (or the commit does), the whole batch rolls back and its messages are handled again one by one,
    /// with the usual retries: a batch changes how often the consumer commits, never what it applies. Worth it
    /// when the commit is the cost (PostgreSQL's fsync per commit caps one-message transactions at a few
    /// thousand per second); keep handlers whose effects are all in the transaction.
    pub fn batch(mut self, messages: usize) -> Self {
        self.inner.batch = messages.max(1);
        self
    }

    /// Reads JSON messages that carry no CloudEvents attributes (a plain FastStream producer's) as events of type
    /// `E`, keyed by FastStream's `message_id` header. Without it they are kept as dead letters.
    pub fn plain_json_as<E: OutboxEvent>(mut self) -> Self {
        self.inner.plain = Some((E::EVENT_TYPE, E::DATA_VERSION, E::SOURCE));
        self
    }

    /// When [`Consumer::check_health`] turns degraded or unhealthy.
    pub fn health_thresholds(mut self, thresholds: ConsumerThresholds) -> Self {
        self.inner.thresholds = thresholds;
        self
    }

    /// The registry events are decoded with (default: [`Registry::global`]).
    pub fn registry(mut self, registry: &'static Registry) -> Self {
        self.inner.registry = registry;
        self
    }

    /// The consumer.
    pub fn build(self) -> Consumer {
        Consumer {
            inner: Arc::new(self.inner),
        }
    }
}

/// What a consumer has done since it was built.
#[derive(Debug, Default)]
pub struct ConsumerCounts {
    applied: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    commits: AtomicU64,
}

impl ConsumerCounts {
    /// Messages applied (handler returned `Ok`, transaction committed).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Messages found in the inbox, acknowledged without running the handler.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Handler runs that failed and were tried again.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Messages kept as dead letters.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Transactions committed with messages applied in them: as many as applied messages, or fewer with
    /// [`batch`](ConsumerBuilder::batch).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// How one message ended.
enum Outcome {
    /// Committed, a duplicate, or kept as a dead letter: acknowledge it.
    Done,
    /// Neither applied nor kept (the database is unreachable): give it back for redelivery.
    GiveBack,
}

impl Consumer {
    /// What the consumer has done so far.
    pub fn counts(&self) -> &ConsumerCounts {
        &self.inner.counts
    }

    /// The consumer's health: its database answers, [`run`](Self::run) is running and its subscription
    /// delivers (a subscription failing for longer than the threshold is unhealthy), and the lag of the last
    /// applied message is within the thresholds ([`ConsumerBuilder::health_thresholds`]).
    ///
    /// ```no_run
    /// # async fn example(consumer: outbox::consumer::Consumer) {
    /// let health = consumer.check_health().await;
    /// let body = serde_json::to_string(&health).unwrap();
    /// let http_status = health.http_status(); // 200 for healthy and degraded, 503 for unhealthy
    /// # let _ = (body, http_status);
    /// # }
    /// ```
    pub async fn check_health(&self) -> ConsumerHealth {
        let inner = &self.inner;
        let started = Instant::now();
        let database =
            crate::health::component(started, inner.db.ping().await.map_err(|e| e.to_string()));
        let (subscription, lag) = inner.liveness.report(&inner.thresholds);
        let status = database
            .status
            .max(subscription.status)
            .max(lag_status(lag, &inner.thresholds));
        ConsumerHealth {
            status,
            database,
            subscription,
            last_lag_seconds: lag.map(|lag| lag.as_secs_f64()),
            applied: inner.counts.applied(),
            duplicates: inner.counts.duplicates(),
            dead_lettered: inner.counts.dead_lettered(),
            checked_at: chrono::Utc::now(),
        }
    }

    /// Reads `subscriber` until it ends or `shutdown` completes. On shutdown it stops receiving, lets the
    /// messages being handled finish (commit, then ack), and gives back the ones that were waiting.
    pub async fn run<S: Subscriber>(&self, mut subscriber: S, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut state = Dispatch::default();
        let _running = Running::new(&self.inner.liveness);
        // `receiving` ends with the subscription or a shutdown; `stopping` only with a shutdown, which also stops
        // starting the messages that wait behind their aggregate's.
        let mut receiving = true;
        let mut stopping = false;
        loop {
            let room = state.handling + state.queued < self.inner.max_in_flight;
            tokio::select! {
                biased;
                () = &mut shutdown, if !stopping => {
                    receiving = false;
                    stopping = true;
                }
                Some(done) = state.running.join_next_with_id() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(error) => {
                            // Its messages were neither acked nor given back: the broker redelivers them.
                            tracing::error!(target: "outbox.consumer", %error, "a message task failed");
                            error.id()
                        }
                    };
                    let Some(keys) = state.tasks.remove(&id) else {
                        continue;
                    };
                    state.handling -= keys.len();
                    // The next message of each aggregate just freed, as one batch. Stopping: what waits stays
                    // waiting, to be given back below.
                    let mut next = Vec::new();
                    for key in keys {
                        match state.waiting.get_mut(&key).filter(|_| !stopping).and_then(VecDeque::pop_front) {
                            Some(message) => {
                                state.queued -= 1;
                                next.push((key, message));
                            }
                            None => {
                                state.busy.remove(&key);
                            }
                        }
                    }
                    self.spawn(&mut state, next);
                }
                received = subscriber.receive(), if receiving && room => match received {
                    Ok(Some(received)) => {
                        self.inner.liveness.received();
                        let mut batch = Vec::new();
                        state.admit(self.inner.prepare(received), &mut batch);
                        // What has already arrived joins the batch; `receive` is cancellation-safe, so a read that
                        // is not ready is dropped at no loss.
                        while self.inner.batch > 1
                            && batch.len() < self.inner.batch
                            && state.handling + state.queued + batch.len() < self.inner.max_in_flight
                        {
                            match subscriber.receive().now_or_never() {
                                Some(Ok(Some(received))) => {
                                    state.admit(self.inner.prepare(received), &mut batch);
                                }
                                Some(Ok(None)) => {
                                    receiving = false;
                                    break;
                                }
                                // An error shows again at the next receive.
                                Some(Err(_)) | None => break,
                            }
                        }
                        self.spawn(&mut state, batch);
                    }
                    Ok(None) => receiving = false,
                    Err(error) => {
                        self.inner.liveness.receive_failed(&error.to_string());
                        tracing::warn!(target: "outbox.consumer", %error, "receiving failed; trying again in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                else => break,
            }
            self.inner.liveness.load(state.handling, state.queued);
            if !receiving && state.running.is_empty() {
                break;
            }
        }
        // Stopped: what was waiting behind a message of its aggregate goes back to the broker, last first, so a
        // queue that puts what it gets back in front keeps the order.
        for (_, messages) in state.waiting {
            for received in messages.into_iter().rev() {
                if let Err(error) = received.settle.give_back().await {
                    tracing::warn!(target: "outbox.consumer", %error, "could not give a message back");
                }
            }
        }
    }

    /// Starts handling `batch` (messages of distinct aggregates) in one task.
    fn spawn(&self, state: &mut Dispatch, batch: Vec<(String, Received)>) {
        if batch.is_empty() {
            return;
        }
        let (keys, messages): (Vec<String>, Vec<Received>) = batch.into_iter().unzip();
        let inner = self.inner.clone();
        let task = state.running.spawn(async move {
            if messages.len() == 1 {
                for received in messages {
                    inner.handle(received).await;
                }
            } else {
                inner.handle_batch(messages).await;
            }
        });
        state.handling += keys.len();
        state.tasks.insert(task.id(), keys);
    }
}

/// Marks the consumer running for as long as `run` is, including when its future is dropped.
struct Running<'a>(&'a Liveness);

impl<'a> Running<'a> {
    fn new(liveness: &'a Liveness) -> Self {
        liveness.running(true);
        Self(liveness)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running(false);
        self.0.load(0, 0);
    }
}

/// The run loop's bookkeeping: which aggregates have a message being handled, what waits behind them.
#[derive(Default)]
struct Dispatch {
    running: JoinSet<()>,
    /// The aggregates each task handles, by task: also known for a task that ends in a panic (outside the
    /// handler, whose panics are caught), whose aggregates must not stay busy forever.
    tasks: HashMap<tokio::task::Id, Vec<String>>,
    busy: HashSet<String>,
    waiting: HashMap<String, VecDeque<Received>>,
    /// Messages in running tasks.
    handling: usize,
    /// Messages in `waiting`.
    queued: usize,
}

impl Dispatch {
    /// Puts a received message in `batch` if its aggregate is free, behind its aggregate's messages otherwise.
    fn admit(&mut self, received: Received, batch: &mut Vec<(String, Received)>) {
        let key = order_key(&received);
        if self.busy.insert(key.clone()) {
            batch.push((key, received));
        } else {
            self.waiting.entry(key).or_default().push_back(received);
            self.queued += 1;
        }
    }
}

/// The span of one message's handling: an OpenTelemetry consumer span (messaging semantic conventions), the child
/// of the producer's span whose context the message carries (feature `otel`).
fn process_span(delivery: &Delivery, consumer: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {}", delivery.event_type),
        otel.kind = "consumer",
        messaging.operation.type = "process",
        messaging.message.id = %delivery.id,
        messaging.consumer.group.name = consumer,
        cloudevents.event_type = %delivery.event_type,
    );
    #[cfg(feature = "otel")]
    if let Some(parent) = &delivery.trace_context {
        crate::otel::set_parent(&span, parent);
    }
    span
}

/// Messages of one aggregate share a key, so they are handled one at a time, in order; a message without an
/// aggregate is its own key.
fn order_key(received: &Received) -> String {
    match &received.delivery {
        Ok(delivery) => match &delivery.aggregate_id {
            Some(aggregate) => format!(
                "{}\u{0}{aggregate}",
                delivery.aggregate_type.as_deref().unwrap_or_default()
            ),
            None => format!("\u{1}{}", delivery.id),
        },
        Err(_) => format!("\u{2}{}", uuid::Uuid::now_v7()),
    }
}

/// Runs a handler, its panic caught as an error.
async fn run_handler(
    handler: &ErasedHandler,
    event: Box<dyn crate::DynEvent>,
    context: Context,
) -> Result<(), super::handler::HandlerError> {
    AssertUnwindSafe(handler(event, context))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err(format!("the handler panicked: {message}").into())
        })
}

async fn settle_as(settle: Box<dyn Settle>, outcome: Outcome) {
    let result = match outcome {
        Outcome::Done => settle.ack().await,
        Outcome::GiveBack => settle.give_back().await,
    };
    if let Err(error) = result {
        // Not acknowledged: the broker redelivers it, and the inbox makes that a duplicate.
        tracing::warn!(target: "outbox.consumer", %error, "could not settle a message");
    }
}

impl Inner {
    /// Reads a plain JSON message as the `plain_json_as` type, and gives a delivery that does not name its
    /// aggregate (a foreign producer's) the one of its decoded event, so that it is ordered with the rest of its
    /// aggregate.
    fn prepare(&self, mut received: Received) -> Received {
        if let (Err(DeliveryError::NotACloudEvent(plain)), Some((event_type, version, source))) =
            (&received.delivery, self.plain)
        {
            received.delivery = plain
                .as_ref()
                .clone()
                .into_delivery(event_type, version, source);
        }
        if let Ok(delivery) = &mut received.delivery
            && (delivery.aggregate_id.is_none() || delivery.aggregate_type.is_none())
            && let Ok(event) = delivery.decode(self.registry)
        {
            delivery
                .aggregate_id
                .get_or_insert_with(|| event.aggregate_id());
            delivery
                .aggregate_type
                .get_or_insert_with(|| event.meta().aggregate_type.to_owned());
        }
        received
    }

    /// Handles one message to its end: applied or kept, then settled.
    async fn handle(&self, received: Received) {
        let Received {
            delivery,
            raw,
            settle,
        } = received;
        let outcome = match delivery {
            Ok(delivery) => {
                let span = process_span(&delivery, self.inbox.consumer());
                self.apply(Arc::new(delivery)).instrument(span).await
            }
            Err(error) => {
                let id = format!("unreadable-{}", uuid::Uuid::now_v7());
                self.keep(&id, "unknown", &raw, &error.to_string(), 0).await
            }
        };
        settle_as(settle, outcome).await;
    }

    /// Handles messages of distinct aggregates in one transaction (see [`ConsumerBuilder::batch`]); a message
    /// that cannot join (unreadable, no handler, undecodable), and all of them if the batch fails, are handled
    /// one by one.
    async fn handle_batch(&self, messages: Vec<Received>) {
        let mut batch = Vec::with_capacity(messages.len());
        for received in messages {
            let joined = match &received.delivery {
                Ok(delivery) => self.handler_for(delivery).and_then(|handler| {
                    delivery
                        .decode(self.registry)
                        .ok()
                        .map(|event| (handler, event))
                }),
                Err(_) => None,
            };
            match (joined, received) {
                (
                    Some((handler, event)),
                    Received {
                        delivery: Ok(delivery),
                        settle,
                        ..
                    },
                ) => batch.push((Arc::new(delivery), handler, event, settle)),
                (_, received) => self.handle(received).await,
            }
        }
        let started = Instant::now();
        let (items, settles): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|(delivery, handler, event, settle)| ((delivery, handler, event), settle))
            .unzip();
        let deliveries: Vec<Arc<Delivery>> = items.iter().map(|(d, ..)| d.clone()).collect();
        match self.attempt_batch(items).await {
            Ok(recorded) => {
                let took = started.elapsed();
                for (delivery, recorded) in deliveries.iter().zip(recorded) {
                    match recorded {
                        Recorded::First => self.count_applied(delivery, took),
                        Recorded::Duplicate => self.count_duplicate(),
                    }
                }
                futures_util::future::join_all(
                    settles
                        .into_iter()
                        .map(|settle| settle_as(settle, Outcome::Done)),
                )
                .await;
            }
            Err(error) => {
                tracing::debug!(
                    target: "outbox.consumer",
                    consumer = self.inbox.consumer(),
                    messages = deliveries.len(),
                    %error,
                    "a batch failed; handling its messages one by one"
                );
                for (delivery, settle) in deliveries.into_iter().zip(settles) {
                    let span = process_span(&delivery, self.inbox.consumer());
                    let outcome = self.apply(delivery).instrument(span).await;
                    settle_as(settle, outcome).await;
                }
            }
        }
    }

    /// One transaction for a batch: each message recorded in the inbox and, unless a duplicate, handled; then one
    /// commit. Any failure rolls all of it back.
    async fn attempt_batch(
        &self,
        items: Vec<(Arc<Delivery>, ErasedHandler, Box<dyn crate::DynEvent>)>,
    ) -> Result<Vec<Recorded>, String> {
        let txn = Arc::new(self.db.begin().await.map_err(|e| e.to_string())?);
        let ids: Vec<&str> = items
            .iter()
            .map(|(delivery, ..)| delivery.id.as_str())
            .collect();
        let recorded = self
            .inbox
            .record_all(&*txn, &ids)
            .await
            .map_err(|e| e.to_string())?;
        for ((delivery, handler, event), recorded) in items.into_iter().zip(&recorded) {
            let outcome = match recorded {
                Recorded::First => {
                    let context = Context {
                        txn: txn.clone(),
                        delivery: delivery.clone(),
                        attempt: 1,
                    };
                    let span = process_span(&delivery, self.inbox.consumer());
                    run_handler(&handler, event, context)
                        .instrument(span)
                        .await
                        .map_err(|e| e.to_string())
                }
                Recorded::Duplicate => Ok(()),
            };
            if let Err(error) = outcome {
                // Dropping the last reference rolls back; a handler that kept one cannot stop that either, since
                // nothing commits.
                drop(txn);
                return Err(error);
            }
        }
        let txn = Arc::try_unwrap(txn)
            .map_err(|_| "a handler kept its transaction after it returned".to_owned())?;
        txn.commit()
            .await
            .map_err(|e| format!("commit failed: {e}"))?;
        if recorded.contains(&Recorded::First) {
            self.counts.commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(recorded)
    }

    fn handler_for(&self, delivery: &Delivery) -> Option<ErasedHandler> {
        let key = (delivery.event_type.as_str(), delivery.data_version.as_str());
        self.handlers
            .iter()
            .find(|((event_type, version), _)| (*event_type, *version) == key)
            .map(|(_, handler)| handler.clone())
    }

    async fn apply(&self, delivery: Arc<Delivery>) -> Outcome {
        let Some(handler) = self.handler_for(&delivery) else {
            let reason = format!(
                "no handler for event type `{}` version {}",
                delivery.event_type.escape_debug(),
                delivery.data_version.escape_debug()
            );
            return self.keep_delivery(&delivery, &reason, 0).await;
        };
        let mut last_error = String::new();
        for attempt in 1..=self.max_attempts {
            if attempt > 1 {
                self.counts.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("outbox_consumer_retries_total", "consumer" => self.inbox.consumer().to_owned())
                    .increment(1);
                let exponent = (attempt - 2).min(16);
                let wait = self
                    .backoff
                    .saturating_mul(1 << exponent)
                    .min(Duration::from_secs(30));
                tokio::time::sleep(wait).await;
            }
            // Decoded per attempt: the handler takes the event by value.
            let event = match delivery.decode(self.registry) {
                Ok(event) => event,
                Err(error) => return self.keep_delivery(&delivery, &error.to_string(), 0).await,
            };
            let started = Instant::now();
            match self
                .attempt(&delivery, handler.clone(), event, attempt)
                .await
            {
                Ok(Recorded::First) => {
                    self.count_applied(&delivery, started.elapsed());
                    return Outcome::Done;
                }
                Ok(Recorded::Duplicate) => {
                    self.count_duplicate();
                    return Outcome::Done;
                }
                Err(error) => {
                    tracing::warn!(
                        target: "outbox.consumer",
                        consumer = self.inbox.consumer(),
                        id = %delivery.id,
                        event_type = %delivery.event_type,
                        attempt,
                        %error,
                        "handling failed"
                    );
                    last_error = error;
                }
            }
        }
        self.keep_delivery(&delivery, &last_error, self.max_attempts)
            .await
    }

    /// Counts a committed message: `took` is its inbox record, handler and commit; its lag runs from the event's
    /// time.
    fn count_applied(&self, delivery: &Delivery, took: Duration) {
        self.counts.applied.fetch_add(1, Ordering::Relaxed);
        let consumer = self.inbox.consumer().to_owned();
        metrics::counter!("outbox_consumer_applied_total", "consumer" => consumer.clone())
            .increment(1);
        metrics::histogram!("outbox_consumer_handler_seconds", "consumer" => consumer.clone())
            .record(took.as_secs_f64());
        if let Some(time) = delivery.time {
            // A clock behind the producer's would give a negative lag: none rather than a wrong one.
            if let Ok(lag) = (chrono::Utc::now() - time).to_std() {
                self.liveness.lag(lag);
                metrics::histogram!("outbox_consumer_lag_seconds", "consumer" => consumer)
                    .record(lag.as_secs_f64());
            }
        }
    }

    fn count_duplicate(&self) {
        self.counts.duplicates.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("outbox_consumer_duplicates_total", "consumer" => self.inbox.consumer().to_owned())
            .increment(1);
    }

    /// One run: record in the inbox, run the handler, commit. A duplicate is rolled back untouched.
    async fn attempt(
        &self,
        delivery: &Arc<Delivery>,
        handler: ErasedHandler,
        event: Box<dyn crate::DynEvent>,
        attempt: u32,
    ) -> Result<Recorded, String> {
        let txn = self.db.begin().await.map_err(|e| e.to_string())?;
        if self
            .inbox
            .record(&txn, &delivery.id)
            .await
            .map_err(|e| e.to_string())?
            == Recorded::Duplicate
        {
            txn.rollback().await.map_err(|e| e.to_string())?;
            return Ok(Recorded::Duplicate);
        }
        let txn = Arc::new(txn);
        let context = Context {
            txn: txn.clone(),
            delivery: delivery.clone(),
            attempt,
        };
        let result = run_handler(&handler, event, context).await;
        let txn = Arc::try_unwrap(txn)
            .map_err(|_| "the handler kept its transaction after it returned".to_owned())?;
        match result {
            Ok(()) => {
                txn.commit()
                    .await
                    .map_err(|e| format!("commit failed: {e}"))?;
                self.counts.commits.fetch_add(1, Ordering::Relaxed);
                Ok(Recorded::First)
            }
            Err(error) => {
                let _ = txn.rollback().await;
                Err(error.to_string())
            }
        }
    }

    async fn keep_delivery(&self, delivery: &Delivery, reason: &str, attempts: u32) -> Outcome {
        self.keep(
            &delivery.id,
            &delivery.event_type,
            &delivery.to_structured(),
            reason,
            attempts,
        )
        .await
    }

    /// Keeps a message as a dead letter; if even that fails, it goes back to the broker.
    async fn keep(
        &self,
        message_id: &str,
        event_type: &str,
        cloudevent: &str,
        reason: &str,
        attempts: u32,
    ) -> Outcome {
        let dead = NewDeadLetter {
            message_id,
            event_type,
            cloudevent,
            reason,
            attempts,
        };
        match self.inbox.dead_letter(&self.db, &dead).await {
            Ok(()) => {
                self.counts.dead_lettered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(
                    "outbox_consumer_dead_lettered_total",
                    "consumer" => self.inbox.consumer().to_owned()
                )
                .increment(1);
                tracing::error!(
                    target: "outbox.consumer",
                    consumer = self.inbox.consumer(),
                    id = message_id,
                    event_type,
                    reason,
                    "kept as a dead letter"
                );
                Outcome::Done
            }
            Err(error) => {
                tracing::error!(target: "outbox.consumer", %error, id = message_id, "cannot keep a dead letter; giving the message back");
                Outcome::GiveBack
            }
        }
    }
}

impl Consumer {
    /// Runs the handlers again on this consumer's dead letters (once their cause is fixed), oldest first: each one
    /// applied, or found applied before, is removed; one that fails again stays, with the new reason. Returns how
    /// many were removed.
    pub async fn replay_dead_letters(&self) -> Result<usize, RepositoryError> {
        let inner = &self.inner;
        let mut removed = 0;
        for dead in inner.inbox.dead_letters(&inner.db).await? {
            let delivery = match Delivery::from_structured(dead.cloudevent.as_bytes()) {
                Ok(delivery) => Arc::new(delivery),
                // Kept because it could not be read: it cannot be read now either.
                Err(_) => continue,
            };
            let before = inner.counts.dead_lettered();
            if let Outcome::Done = inner.apply(delivery).await
                && inner.counts.dead_lettered() == before
            {
                inner
                    .inbox
                    .remove_dead_letter(&inner.db, &dead.message_id)
                    .await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
