//! RabbitMQ: a queue consumed with manual acknowledgements and a prefetch limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};

use super::delivery::Delivery;
use super::subscriber::{Received, Settle, SubscribeError, Subscriber};

/// Consumes a RabbitMQ queue (which must exist: declaring it is the topology's business) with manual
/// acknowledgements and at most `prefetch` unacknowledged messages. Messages are CloudEvents in binary mode
/// (`cloudEvents_` or `ce-` application properties, the `content_type` property, as
/// [`RabbitMqPublisher`](crate::publisher::RabbitMqPublisher) sends them) or structured mode.
///
/// A message is given back by closing its channel, which returns every message not yet acknowledged on it to
/// its place in the queue, and the next `receive` consumes on a new channel. `basic.nack` would not keep the
/// order: a quorum queue puts what it takes back that way behind every other message. Messages of other
/// aggregates then in the handlers are delivered again, and the inbox makes them duplicates. One left
/// unacknowledged when the connection drops is redelivered by the broker the same way.
///
/// A RabbitMQ stream is not read: it cannot take a message back (`basic.nack` closes the connection) and a new
/// consumer starts after what was published while it was away. Its first delivery is refused with an error
/// that names the queue, and so is every `receive` after it; read a stream with a stream client or FastStream,
/// or bind a classic or quorum queue beside it.
pub struct RabbitMqSubscriber {
    connection: Connection,
    queue: String,
    prefetch: u16,
    channel: Channel,
    consumer: lapin::Consumer,
    give_back: Arc<GiveBack>,
    // Set once a delivery showed the queue is a stream.
    refused: Option<SubscribeError>,
}

/// Shared by the subscriber and its deliveries: a delivery given back closes the channel under `closing` and
/// sets `reopen`, and the subscriber opens a new channel once the close is done.
#[derive(Default)]
struct GiveBack {
    reopen: AtomicBool,
    closing: tokio::sync::Mutex<()>,
}

impl RabbitMqSubscriber {
    /// Connects to `uri` and consumes `queue` with at most `prefetch` messages unacknowledged (the consumer's
    /// `max_in_flight` is a good value).
    pub async fn connect(uri: &str, queue: &str, prefetch: u16) -> Result<Self, SubscribeError> {
        let connection = Connection::connect(uri, ConnectionProperties::default())
            .await
            .map_err(|e| failed("cannot connect to RabbitMQ", e))?;
        let prefetch = prefetch.max(1);
        let (channel, consumer) = consume(&connection, queue, prefetch).await?;
        Ok(Self {
            connection,
            queue: queue.to_owned(),
            prefetch,
            channel,
            consumer,
            give_back: Arc::default(),
            refused: None,
        })
    }
}

fn failed(doing: &str, e: lapin::Error) -> SubscribeError {
    SubscribeError(format!("{doing}: {e}"))
}

/// A channel with the prefetch set, consuming `queue`.
async fn consume(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> Result<(Channel, lapin::Consumer), SubscribeError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| failed("cannot open a channel", e))?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| failed("cannot set the prefetch", e))?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| failed(&format!("cannot consume queue `{queue}`"), e))?;
    Ok((channel, consumer))
}

#[async_trait::async_trait]
impl Subscriber for RabbitMqSubscriber {
    async fn receive(&mut self) -> Result<Option<Received>, SubscribeError> {
        let delivery = loop {
            if let Some(refused) = &self.refused {
                return Err(refused.clone());
            }
            // Cancellation-safe: `reopen` is cleared only once the new channel is in place, with no await
            // between.
            if self.give_back.reopen.load(Ordering::Acquire) {
                let _closed = self.give_back.closing.lock().await;
                let (channel, consumer) =
                    consume(&self.connection, &self.queue, self.prefetch).await?;
                (self.channel, self.consumer) = (channel, consumer);
                self.give_back.reopen.store(false, Ordering::Release);
            }
            let next = self.consumer.next().await;
            // What a channel being closed to give messages back delivered goes back to the broker with them.
            if self.give_back.reopen.load(Ordering::Acquire) {
                continue;
            }
            let Some(delivery) = next else {
                return Ok(None);
            };
            break delivery.map_err(|e| SubscribeError(format!("consuming from RabbitMQ: {e}")))?;
        };
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
            settle: Box::new(RabbitMqSettle {
                delivery,
                channel: self.channel.clone(),
                give_back: self.give_back.clone(),
            }),
        }))
    }
}

struct RabbitMqSettle {
    delivery: AmqpDelivery,
    // The channel the message came on.
    channel: Channel,
    give_back: Arc<GiveBack>,
}

#[async_trait::async_trait]
impl Settle for RabbitMqSettle {
    async fn ack(self: Box<Self>) -> Result<(), SubscribeError> {
        self.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| SubscribeError(format!("ack failed: {e}")))
            .and_then(|sent| sent_or_refused(sent, "ack"))
    }

    async fn give_back(self: Box<Self>) -> Result<(), SubscribeError> {
        let _closing = self.give_back.closing.lock().await;
        // A channel closed already gave its messages back.
        if !self.channel.status().connected() {
            return Ok(());
        }
        self.give_back.reopen.store(true, Ordering::Release);
        self.channel
            .close(200, "giving messages back in their order".into())
            .await
            .map_err(|e| failed("closing the channel to give messages back", e))
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
