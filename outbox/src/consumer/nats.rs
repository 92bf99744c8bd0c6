//! NATS JetStream: a durable pull consumer, acknowledged explicitly once a message is committed or kept.

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;

use super::delivery::Delivery;
use super::subscriber::{Received, Settle, SubscribeError, Subscriber};

/// Reads a JetStream stream through a durable pull consumer of the given name, created if it does not exist
/// (explicit acks; the stream's messages from its start). Messages are CloudEvents in binary mode (`ce-`
/// headers, as [`NatsPublisher`](crate::publisher::NatsPublisher) sends them) or structured mode.
///
/// A message not acknowledged (the process died between commit and ack) comes again after the consumer's
/// `ack_wait` (30 s by default); the inbox makes that a duplicate.
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
        let consumer = stream_handle
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_owned()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                SubscribeError(format!(
                    "cannot create consumer `{durable}` on `{stream}`: {e}"
                ))
            })?;
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
