//! RabbitMQ publisher (AMQP 0-9-1), with publisher confirms.

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::AMQPErrorKind;
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
/// - A message the broker refuses for its size (`max_message_size`), or with a value AMQP cannot carry (a
///   correlation id, type, routing key or header name over 255 bytes), is a permanent failure with the reason; a
///   lost connection or channel is the broker being unavailable.
/// - Properties FastStream reads: `content_type`, `message_id` (event id), `correlation_id`. CloudEvents
///   attributes in the headers table with the `cloudEvents_` prefix, or `ce-` with [`prefix`](Self::prefix).
/// - A lost connection is re-opened on the next publish.
/// - The queue the destination routes to is the topology's choice, and it sets the confirm rate: a durable
///   classic queue confirms about half as many messages per second as a quorum queue or a stream (BENCHMARKS.md,
///   "The brokers' own ceiling"). A stream is the fastest durable destination; FastStream reads it with an
///   `x-stream-offset`, while [`RabbitMqSubscriber`](crate::consumer::RabbitMqSubscriber) refuses one.
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

    /// Publishes to `exchange` instead of the default exchange. A name over 255 bytes, which AMQP cannot carry,
    /// makes every publish fail as the broker being unavailable, with that reason.
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

    /// The message's properties, or a permanent rejection naming the value AMQP cannot carry (a short string,
    /// a property or a header name, holds at most 255 bytes): such a value must never reach lapin, which panics.
    fn properties(&self, message: &Message) -> Result<BasicProperties, PublishError> {
        let mut table = FieldTable::default();
        let headers = match self.encoding {
            Encoding::Binary => self.mode.headers(message),
            Encoding::Structured => message.headers.clone(),
        };
        for (name, value) in headers {
            let key = short("header name", name)?;
            table.insert(key, AMQPValue::LongString(value.into()));
        }
        let content_type = match self.encoding {
            Encoding::Binary => cloudevents::JSON_CONTENT_TYPE,
            Encoding::Structured => cloudevents::STRUCTURED_CONTENT_TYPE,
        };
        Ok(BasicProperties::default()
            .with_content_type(content_type.into())
            .with_message_id(message.id.to_string().into())
            .with_correlation_id(short("correlation_id", message.effective_correlation_id())?)
            .with_type(short("type", message.event_type.clone())?)
            .with_delivery_mode(2)
            .with_headers(table))
    }
}

/// `value` as an AMQP short string, or a permanent rejection that names it.
fn short(what: &str, value: String) -> Result<ShortString, PublishError> {
    let shown: String = value.chars().take(40).collect();
    ShortString::try_new(value).map_err(|error| {
        PublishError::permanent(Reason(format!(
            "AMQP cannot carry the {what} `{shown}…`: {error}"
        )))
    })
}

/// What an error that reached one message means for that message. A channel-level `PRECONDITION_FAILED` about
/// a message's size closes the channel, and every message awaiting a confirm on it gets the same error: only
/// the one larger than the broker's limit is refused for good; the others were sent on a channel that closed
/// under them (the next publish opens another). Everything else about the connection or channel is the broker
/// being unavailable.
fn classify(error: lapin::Error, body_len: usize) -> PublishError {
    if let lapin::ErrorKind::ProtocolError(amqp) = error.kind()
        && amqp.get_id() == PRECONDITION_FAILED
        && matches!(amqp.kind(), AMQPErrorKind::Soft(_))
    {
        return match size_limit(amqp.get_message().as_str()) {
            Some(max) if body_len > max => PublishError::permanent(error),
            Some(_) => PublishError::unavailable(Reason(format!(
                "the channel closed because another message was refused ({amqp})"
            ))),
            // A precondition of this message's that no text says more about: retried, then a dead letter.
            None => PublishError::transient(error),
        };
    }
    PublishError::unavailable(error)
}

/// AMQP's `PRECONDITION_FAILED` reply code.
const PRECONDITION_FAILED: u16 = 406;

/// The limit in RabbitMQ's "message size N is larger than configured max size M".
fn size_limit(text: &str) -> Option<usize> {
    let (_, rest) = text.split_once("larger than configured max size ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// How long opening a connection and channel may take. A broker that accepts the TCP connection and then stops
/// (seen with `rabbitmqctl stop_app` mid-handshake) would otherwise leave the handshake, and every publish
/// queued behind it (or the consumer's `receive`), waiting forever.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

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
        let exchange = ShortString::try_new(self.exchange.as_str()).map_err(|e| {
            PublishError::unavailable(Reason(format!("the exchange name cannot be used: {e}")))
        })?;
        let properties = self.properties(message)?;
        let routing_key = short("routing key", message.destination.clone())?;
        let channel = self.channel().await?;
        let body = self.encoding.body(message);
        let body_len = body.len();
        let confirm = channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties,
            )
            .await
            .map_err(|e| classify(e, body_len))?;
        let (routing_key, exchange) = (message.destination.clone(), self.exchange.clone());
        Ok(Box::pin(async move {
            match confirm.await.map_err(|e| classify(e, body_len))? {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_limit_is_read_from_rabbitmqs_refusal() {
        assert_eq!(
            size_limit(
                "PRECONDITION_FAILED - message size 2097152 is larger than configured max size 1048576"
            ),
            Some(1_048_576)
        );
        assert_eq!(
            size_limit("PRECONDITION_FAILED - inequivalent arg 'durable'"),
            None
        );
    }

    #[test]
    fn values_amqp_cannot_carry_are_permanent_rejections() {
        let err = short("correlation_id", "r".repeat(300)).unwrap_err();
        assert!(err.is_permanent(), "{err}");
        assert!(err.to_string().contains("correlation_id"), "{err}");
        assert!(short("type", "t".repeat(255)).is_ok());
    }
}
