//! NATS JetStream: a durable pull consumer, acknowledged explicitly once a message is committed or kept.

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
pub struct NatsSubscriber {
    messages: pull::Stream,
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
        let cannot = |doing: &str, e: &dyn std::fmt::Display| {
            SubscribeError(format!(
                "cannot {doing} consumer `{durable}` on `{stream}`: {e}"
            ))
        };
        let mut consumer = stream_handle
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_owned()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| cannot("create", &e))?;
        let info = consumer
            .info()
            .await
            .map_err(|e| cannot("read", &e))?
            .clone();
        if info.num_ack_pending > 0 {
            // A previous run left messages unacknowledged. JetStream would redeliver them only after `ack_wait`,
            // while the messages behind them flow at once: an aggregate's event would be applied after its
            // successors. Reading again from the first unacknowledged message keeps the order; what was applied
            // since comes as duplicates, which the inbox acknowledges without running the handler.
            let mut config = <pull::Config as FromConsumer>::try_from_consumer_config(info.config)
                .map_err(|e| cannot("read the configuration of", &e))?;
            config.deliver_policy = DeliverPolicy::ByStartSequence {
                start_sequence: info.ack_floor.stream_sequence + 1,
            };
            tracing::info!(
                target: "outbox.consumer",
                durable,
                stream,
                unacknowledged = info.num_ack_pending,
                from = info.ack_floor.stream_sequence + 1,
                "reading again from the first unacknowledged message"
            );
            stream_handle
                .delete_consumer(durable)
                .await
                .map_err(|e| cannot("reset", &e))?;
            consumer = stream_handle
                .create_consumer(config)
                .await
                .map_err(|e| cannot("recreate", &e))?;
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| SubscribeError(format!("cannot read `{stream}` as `{durable}`: {e}")))?;
        Ok(Self { messages })
    }
}

#[async_trait::async_trait]
impl Subscriber for NatsSubscriber {
    async fn receive(&mut self) -> Result<Option<Received>, SubscribeError> {
        let Some(message) = self.messages.next().await else {
            return Ok(None);
        };
        let message =
            message.map_err(|e| SubscribeError(format!("reading from JetStream: {e}")))?;
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
