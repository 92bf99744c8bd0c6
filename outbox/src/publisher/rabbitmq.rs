//! RabbitMQ publisher (AMQP 0-9-1), with publisher confirms.

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::Duration;

use tokio::sync::Mutex;

use super::{Acknowledgement, ConnectError, Encoding, PublishError, Publisher, Reason};
use crate::cloudevents::{self, BinaryMode};
use crate::message::Message;

/// Publishes to a RabbitMQ exchange with publisher confirms and waits for each confirm.
///
/// - Exchange: `""` (the default exchange, which routes to the queue named by the routing key) unless set with
///   [`exchange`](Self::exchange). Routing key: the message's destination (one per aggregate type by default, so
///   one queue keeps an aggregate's events in order).
/// - `mandatory`: a message no queue is bound for comes back, and is a permanent failure (a dead letter with the
///   reason), never a silent drop. Persistent delivery mode.
/// - Properties FastStream reads: `content_type`, `message_id` (event id), `correlation_id`. CloudEvents
///   attributes in the headers table with the `cloudEvents_` prefix, or `ce-` with [`prefix`](Self::prefix).
/// - A lost connection is re-opened on the next publish.
pub struct RabbitMqPublisher {
    uri: String,
    channel: Mutex<Option<Channel>>,
    exchange: String,
    mode: BinaryMode,
    encoding: Encoding,
}

impl std::fmt::Debug for RabbitMqPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqPublisher")
            .field("exchange", &self.exchange)
            .field("prefix", &self.mode.prefix())
            .finish_non_exhaustive()
    }
}

impl RabbitMqPublisher {
    /// Connects to `uri` (`amqp://guest:guest@host:5672/%2f`); fails at once with the cause if the broker cannot
    /// be reached.
    pub async fn connect(uri: &str) -> Result<Self, ConnectError> {
        let channel = open(uri)
            .await
            .map_err(|e| ConnectError::new("rabbitmq", uri, e))?;
        Ok(Self {
            uri: uri.to_owned(),
            channel: Mutex::new(Some(channel)),
            exchange: String::new(),
            mode: BinaryMode::AMQP,
            encoding: Encoding::Binary,
        })
    }

    /// Publishes to `exchange` instead of the default exchange.
    #[must_use]
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// The CloudEvents header prefix: `cloudEvents_` (AMQP binding, the default) or `ce-` (Knative, Python's
    /// RabbitMQ binding).
    #[must_use]
    pub fn prefix(mut self, prefix: &'static str) -> Self {
        self.mode = BinaryMode::AMQP.with_prefix(prefix);
        self
    }

    /// Sends structured-mode CloudEvents instead of binary mode.
    #[must_use]
    pub fn structured(mut self) -> Self {
        self.encoding = Encoding::Structured;
        self
    }

    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = open(&self.uri).await?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    fn properties(&self, message: &Message) -> BasicProperties {
        let mut table = FieldTable::default();
        let headers = match self.encoding {
            Encoding::Binary => self.mode.headers(message),
            Encoding::Structured => message.headers.clone(),
        };
        for (name, value) in headers {
            table.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
        }
        let content_type = match self.encoding {
            Encoding::Binary => cloudevents::JSON_CONTENT_TYPE,
            Encoding::Structured => cloudevents::STRUCTURED_CONTENT_TYPE,
        };
        BasicProperties::default()
            .with_content_type(content_type.into())
            .with_message_id(message.id.to_string().into())
            .with_correlation_id(message.effective_correlation_id().into())
            .with_type(message.event_type.clone().into())
            .with_delivery_mode(2)
            .with_headers(table)
    }
}

/// How long opening a connection and channel may take. A broker that accepts the TCP connection and then stops
/// (seen with `rabbitmqctl stop_app` mid-handshake) would otherwise leave the handshake, and every publish
/// queued behind it, waiting forever.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

async fn open(uri: &str) -> Result<Channel, PublishError> {
    let open = async {
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, lapin::Error>(channel)
    };
    match tokio::time::timeout(OPEN_TIMEOUT, open).await {
        Ok(opened) => opened.map_err(PublishError::unavailable),
        Err(_) => Err(PublishError::unavailable(Reason(format!(
            "no AMQP handshake within {OPEN_TIMEOUT:?}"
        )))),
    }
}

#[async_trait::async_trait]
impl Publisher for RabbitMqPublisher {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        self.send(message).await?.await
    }

    /// One channel delivers messages to a queue in the order it sent them, so an aggregate's events may be sent
    /// before the previous one's confirm.
    async fn send(&self, message: &Message) -> Result<Acknowledgement, PublishError> {
        let channel = self.channel().await?;
        let body = self.encoding.body(message);
        let confirm = channel
            .basic_publish(
                self.exchange.as_str().into(),
                message.destination.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                self.properties(message),
            )
            .await
            .map_err(PublishError::unavailable)?;
        let (routing_key, exchange) = (message.destination.clone(), self.exchange.clone());
        Ok(Box::pin(async move {
            match confirm.await.map_err(PublishError::unavailable)? {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                    Err(PublishError::permanent(Reason(format!(
                        "unroutable: no queue is bound for routing key `{routing_key}` on exchange `{exchange}` \
                         ({} {})",
                        returned.reply_code, returned.reply_text
                    ))))
                }
                Confirmation::Nack(None) => Err(PublishError::transient(Reason(
                    "the broker nacked the message".into(),
                ))),
                Confirmation::NotRequested => Err(PublishError::unavailable(Reason(
                    "publisher confirms are off on this channel".into(),
                ))),
            }
        }))
    }

    async fn check(&self) -> Result<(), PublishError> {
        self.channel().await.map(drop)
    }

    fn name(&self) -> &str {
        "rabbitmq"
    }
}
