//! NATS JetStream: a durable pull consumer, acknowledged explicitly once a message is committed or kept.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::Statistics;
use async_nats::jetstream::consumer::{DeliverPolicy, FromConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;

use super::delivery::Delivery;
use super::subscriber::{Received, Settle, SubscribeError, Subscriber};

/// Reads a JetStream stream through a durable pull consumer of the given name, created if it does not exist
/// (explicit acks; the stream's messages from its start). Messages are CloudEvents in binary mode (`ce-`
/// headers, as [`NatsPublisher`](crate::publisher::NatsPublisher) sends them) or structured mode.
///
/// Per-aggregate order holds across a restart: when the durable consumer has messages a previous run left
/// unacknowledged (it died between commit and ack, or before), it is reset to read again from the first of them,
/// rather than have JetStream redeliver them after `ack_wait` behind their successors; what was applied since comes
/// again as duplicates, which the inbox acknowledges untouched. So one process reads a durable consumer at a time
/// (two would also interleave an aggregate's messages); to spread the load, give each process a durable consumer
/// of its own on a share of the subjects.
///
/// A lost connection (a server restarted, a network cut) is treated the same way once the client has connected
/// again: what was on its way when the connection dropped, and acks sent then, are lost, and JetStream would
/// redeliver those messages only after `ack_wait`. So the first `receive` after a reconnect drops what it read
/// and resets the consumer to the first unacknowledged message. Until the server answers, each `receive` fails
/// with the cause, which the consumer reports and retries; the subscription never ends by itself.
pub struct NatsSubscriber {
    stream: jetstream::stream::Stream,
    durable: String,
    statistics: Arc<Statistics>,
    /// The client's connection count when `messages` was opened: a higher one means the connection was lost in
    /// between.
    connects: u64,
    messages: Option<pull::Stream>,
    /// The configuration a reset under way recreates the consumer with. Kept here, so a `receive` cancelled
    /// between the delete and the create does not leave the next one to create the consumer afresh (from the
    /// stream's start).
    resetting: Option<pull::Config>,
}

impl NatsSubscriber {
    /// Connects to `url` and subscribes to `stream` as the durable consumer `durable`.
    pub async fn connect(url: &str, stream: &str, durable: &str) -> Result<Self, SubscribeError> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| SubscribeError(format!("cannot connect to NATS: {e}")))?;
        Self::new(jetstream::new(client), stream, durable).await
    }

    /// Subscribes to `stream` as the durable consumer `durable` on an existing JetStream context.
    pub async fn new(
        context: jetstream::Context,
        stream: &str,
        durable: &str,
    ) -> Result<Self, SubscribeError> {
        let stream_handle = context
            .get_stream(stream)
            .await
            .map_err(|e| SubscribeError(format!("no JetStream stream `{stream}`: {e}")))?;
        let mut subscriber = Self {
            stream: stream_handle,
            durable: durable.to_owned(),
            statistics: context.client().statistics(),
            connects: 0,
            messages: None,
            resetting: None,
        };
        subscriber.open().await?;
        Ok(subscriber)
    }

    fn stream_name(&self) -> &str {
        &self.stream.cached_info().config.name
    }

    fn cannot(&self, doing: &str, e: &dyn std::fmt::Display) -> SubscribeError {
        SubscribeError(format!(
            "cannot {doing} consumer `{}` on `{}`: {e}",
            self.durable,
            self.stream_name()
        ))
    }

    /// Opens the durable consumer's messages, first resetting it to its first unacknowledged message if it has
    /// any. Cancellation-safe: each step leaves a state the next call carries on from.
    async fn open(&mut self) -> Result<(), SubscribeError> {
        let connects = self.statistics.connects.load(Ordering::Acquire);
        if self.resetting.is_none() {
            let mut consumer: jetstream::consumer::PullConsumer = self
                .stream
                .get_or_create_consumer(
                    &self.durable,
                    pull::Config {
                        durable_name: Some(self.durable.clone()),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| self.cannot("create", &e))?;
            let info = consumer
                .info()
                .await
                .map_err(|e| self.cannot("read", &e))?
                .clone();
            if info.num_ack_pending == 0 {
                return self.read(consumer, connects).await;
            }
            // Messages are unacknowledged: left by a previous run, or lost on the way with a connection.
            // JetStream would redeliver them only after `ack_wait`, while the messages behind them flow at once:
            // an aggregate's event would be applied after its successors. Reading again from the first
            // unacknowledged message keeps the order; what was applied since comes as duplicates, which the
            // inbox acknowledges without running the handler.
            let mut config = <pull::Config as FromConsumer>::try_from_consumer_config(info.config)
                .map_err(|e| self.cannot("read the configuration of", &e))?;
            config.deliver_policy = DeliverPolicy::ByStartSequence {
                start_sequence: info.ack_floor.stream_sequence + 1,
            };
            tracing::info!(
                target: "outbox.consumer",
                durable = %self.durable,
                stream = %self.stream_name(),
                unacknowledged = info.num_ack_pending,
                from = info.ack_floor.stream_sequence + 1,
                "reading again from the first unacknowledged message"
            );
            self.resetting = Some(config);
        }
        let Some(config) = self.resetting.clone() else {
            return Ok(());
        };
        // A delete that fails (the consumer is already gone, after a cancelled reset) is answered by the create:
        // it fails too if the old consumer is still there.
        let _ = self.stream.delete_consumer(&self.durable).await;
        let consumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| self.cannot("reset", &e))?;
        self.resetting = None;
        self.read(consumer, connects).await
    }

    async fn read(
        &mut self,
        consumer: jetstream::consumer::PullConsumer,
        connects: u64,
    ) -> Result<(), SubscribeError> {
        let messages = consumer.messages().await.map_err(|e| {
            SubscribeError(format!(
                "cannot read `{}` as `{}`: {e}",
                self.stream_name(),
                self.durable
            ))
        })?;
        (self.messages, self.connects) = (Some(messages), connects);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Subscriber for NatsSubscriber {
    async fn receive(&mut self) -> Result<Option<Received>, SubscribeError> {
        let message = loop {
            let messages = match &mut self.messages {
                Some(messages) => messages,
                None => {
                    self.open().await?;
                    continue;
                }
            };
            let next = messages.next().await;
            if self.statistics.connects.load(Ordering::Acquire) != self.connects {
                // Connected again since these messages were asked for: what this read brought may follow
                // messages lost with the old connection, so it is left to the reset to deliver again.
                self.messages = None;
                continue;
            }
            match next {
                Some(Ok(message)) => break message,
                Some(Err(e)) => return Err(SubscribeError(format!("reading from JetStream: {e}"))),
                None => {
                    self.messages = None;
                    return Err(SubscribeError(format!(
                        "the JetStream consumer `{}` ended; reading again",
                        self.durable
                    )));
                }
            }
        };
        let headers: Vec<(String, String)> = message
            .headers
            .iter()
            .flat_map(|headers| headers.iter())
            .filter_map(|(name, values)| {
                let name: &str = name.as_ref();
                values
                    .first()
                    .map(|value| (name.to_owned(), value.as_str().to_owned()))
            })
            .collect();
        let delivery = Delivery::from_headers(&headers, &message.payload);
        Ok(Some(Received {
            delivery,
            raw: String::from_utf8_lossy(&message.payload).into_owned(),
            settle: Box::new(NatsSettle(message)),
        }))
    }
}

struct NatsSettle(jetstream::Message);

#[async_trait::async_trait]
impl Settle for NatsSettle {
    async fn ack(self: Box<Self>) -> Result<(), SubscribeError> {
        // A double ack waits for the server's confirmation: an ack lost on the way would redeliver the message.
        self.0
            .double_ack_with(AckKind::Ack)
            .await
            .map_err(|e| SubscribeError(format!("ack failed: {e}")))
    }

    async fn give_back(self: Box<Self>) -> Result<(), SubscribeError> {
        self.0
            .ack_with(AckKind::Nak(None))
            .await
            .map_err(|e| SubscribeError(format!("nak failed: {e}")))
    }
}
