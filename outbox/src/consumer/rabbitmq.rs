//! RabbitMQ: a queue consumed with manual acknowledgements and a prefetch limit.

use futures_util::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};

use super::delivery::Delivery;
use super::subscriber::{Received, Settle, SubscribeError, Subscriber};

/// Consumes a RabbitMQ queue (which must exist: declaring it is the topology's business) with manual
/// acknowledgements and at most `prefetch` unacknowledged messages. Messages are CloudEvents in binary mode
/// (`cloudEvents_` or `ce-` application properties, the `content_type` property, as
/// [`RabbitMqPublisher`](crate::publisher::RabbitMqPublisher) sends them) or structured mode.
///
/// A message given back is requeued; one left unacknowledged when the connection drops is redelivered by the
/// broker, and the inbox makes that a duplicate.
///
/// A RabbitMQ stream is not read: it cannot take a message back (`basic.nack` closes the connection) and a new
/// consumer starts after what was published while it was away. Its first delivery is refused with an error
/// that names the queue, and so is every `receive` after it; read a stream with a stream client or FastStream,
/// or bind a classic or quorum queue beside it.
pub struct RabbitMqSubscriber {
    consumer: lapin::Consumer,
    queue: String,
    // Set once a delivery showed the queue is a stream.
    refused: Option<SubscribeError>,
    // Held so the channel stays open as long as the subscriber.
    _channel: Channel,
}

impl RabbitMqSubscriber {
    /// Connects to `uri` and consumes `queue` with at most `prefetch` messages unacknowledged (the consumer's
    /// `max_in_flight` is a good value).
    pub async fn connect(uri: &str, queue: &str, prefetch: u16) -> Result<Self, SubscribeError> {
        let error = |doing: &str, e: lapin::Error| SubscribeError(format!("{doing}: {e}"));
        let connection = Connection::connect(uri, ConnectionProperties::default())
            .await
            .map_err(|e| error("cannot connect to RabbitMQ", e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| error("cannot open a channel", e))?;
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(|e| error("cannot set the prefetch", e))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| error(&format!("cannot consume queue `{queue}`"), e))?;
        Ok(Self {
            consumer,
            queue: queue.to_owned(),
            refused: None,
            _channel: channel,
        })
    }
}

#[async_trait::async_trait]
impl Subscriber for RabbitMqSubscriber {
    async fn receive(&mut self) -> Result<Option<Received>, SubscribeError> {
        if let Some(refused) = &self.refused {
            return Err(refused.clone());
        }
        let Some(delivery) = self.consumer.next().await else {
            return Ok(None);
        };
        let delivery =
            delivery.map_err(|e| SubscribeError(format!("consuming from RabbitMQ: {e}")))?;
        let properties = &delivery.properties;
        // Every delivery from a stream carries its offset; no other queue type sets this header.
        let from_stream = properties
            .headers()
            .as_ref()
            .is_some_and(|table| table.inner().contains_key("x-stream-offset"));
        if from_stream {
            let refused = SubscribeError(format!(
                "queue `{}` is a RabbitMQ stream, which RabbitMqSubscriber does not read (a stream cannot take a \
                 message back): bind a classic or quorum queue for this consumer, or read the stream with a stream \
                 client",
                self.queue
            ));
            self.refused = Some(refused.clone());
            return Err(refused);
        }
        let mut headers: Vec<(String, String)> = properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .filter_map(|(name, value)| {
                        let text = match value {
                            AMQPValue::LongString(s) => s.to_string(),
                            AMQPValue::ShortString(s) => s.to_string(),
                            _ => return None,
                        };
                        Some((name.to_string(), text))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(content_type) = properties.content_type() {
            headers.push(("content-type".to_owned(), content_type.to_string()));
        }
        let parsed = Delivery::from_headers(&headers, &delivery.data);
        Ok(Some(Received {
            delivery: parsed,
            raw: String::from_utf8_lossy(&delivery.data).into_owned(),
            settle: Box::new(RabbitMqSettle(delivery)),
        }))
    }
}

struct RabbitMqSettle(AmqpDelivery);

#[async_trait::async_trait]
impl Settle for RabbitMqSettle {
    async fn ack(self: Box<Self>) -> Result<(), SubscribeError> {
        self.0
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| SubscribeError(format!("ack failed: {e}")))
            .and_then(|sent| sent_or_refused(sent, "ack"))
    }

    async fn give_back(self: Box<Self>) -> Result<(), SubscribeError> {
        self.0
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .map_err(|e| SubscribeError(format!("nack failed: {e}")))
            .and_then(|sent| sent_or_refused(sent, "nack"))
    }
}

/// lapin answers `false` when the delivery's acker was already used or its channel is gone: the message is then
/// the broker's to redeliver, which the caller should know.
fn sent_or_refused(sent: bool, what: &str) -> Result<(), SubscribeError> {
    if sent {
        Ok(())
    } else {
        Err(SubscribeError(format!(
            "{what} not sent: the channel is closed or the message was already settled"
        )))
    }
}
