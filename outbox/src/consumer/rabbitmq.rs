//! RabbitMQ: a queue consumed with manual acknowledgements and a prefetch limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};

use super::delivery::Delivery;
use super::subscriber::{Received, Settle, SubscribeError, Subscriber};
use crate::publisher::rabbitmq::OPEN_TIMEOUT;

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
/// A lost connection (a broker restarted, a network cut) is opened again by the next `receive`, and a consumer
/// the broker ended is started again: until that succeeds, each `receive` fails with the cause, which the
/// consumer reports and retries. The subscription never ends by itself.
///
/// A RabbitMQ stream is not read: it cannot take a message back (`basic.nack` closes the connection) and a new
/// consumer starts after what was published while it was away. Its first delivery is refused with an error
/// that names the queue, and so is every `receive` after it; read a stream with a stream client or FastStream,
/// or bind a classic or quorum queue beside it.
pub struct RabbitMqSubscriber {
    uri: String,
    connection: Connection,
    queue: String,
    prefetch: u16,
    channel: Channel,
    consumer: lapin::Consumer,
    reopen: Arc<Reopen>,
    // Set once a delivery showed the queue is a stream.
    refused: Option<SubscribeError>,
}

/// Shared by the subscriber and its deliveries. `due` says the channel is gone or going: a delivery given back
/// closes it (under `closing`), or the subscriber found its consumer ended or its connection lost; the next
/// `receive` consumes on a new channel, once any close is done.
#[derive(Default)]
struct Reopen {
    due: AtomicBool,
    closing: tokio::sync::Mutex<()>,
}

impl RabbitMqSubscriber {
    /// Connects to `uri` and consumes `queue` with at most `prefetch` messages unacknowledged (the consumer's
    /// `max_in_flight` is a good value).
    pub async fn connect(uri: &str, queue: &str, prefetch: u16) -> Result<Self, SubscribeError> {
        let connection = open(uri).await?;
        let prefetch = prefetch.max(1);
        let (channel, consumer) = consume(&connection, queue, prefetch).await?;
        Ok(Self {
            uri: uri.to_owned(),
            connection,
            queue: queue.to_owned(),
            prefetch,
            channel,
            consumer,
            reopen: Arc::default(),
            refused: None,
        })
    }
}

fn failed(doing: &str, e: lapin::Error) -> SubscribeError {
    SubscribeError(format!("{doing}: {e}"))
}

/// How long an ack or a channel's close may take. One sent as the connection drops can otherwise wait forever
/// for a socket that is gone, and hold its aggregate and a place in the consumer with it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

async fn open(uri: &str) -> Result<Connection, SubscribeError> {
    match tokio::time::timeout(
        OPEN_TIMEOUT,
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    {
        Ok(connection) => connection.map_err(|e| failed("cannot connect to RabbitMQ", e)),
        Err(_) => Err(SubscribeError(format!(
            "cannot connect to RabbitMQ: no AMQP handshake within {OPEN_TIMEOUT:?}"
        ))),
    }
}

/// A channel with the prefetch set, consuming `queue`.
async fn consume(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> Result<(Channel, lapin::Consumer), SubscribeError> {
    tokio::time::timeout(OPEN_TIMEOUT, consume_now(connection, queue, prefetch))
        .await
        .unwrap_or_else(|_| {
            Err(SubscribeError(format!(
                "cannot consume queue `{queue}`: no answer within {OPEN_TIMEOUT:?}"
            )))
        })
}

async fn consume_now(
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
            // The broker has taken back what the lost connection left unacknowledged, for the new one.
            if !self.connection.status().connected() {
                self.connection = open(&self.uri).await?;
                self.reopen.due.store(true, Ordering::Release);
            }
            // Cancellation-safe: `due` is cleared only once the new channel is in place, with no await
            // between.
            if self.reopen.due.load(Ordering::Acquire) {
                let _closed = self.reopen.closing.lock().await;
                let (channel, consumer) =
                    consume(&self.connection, &self.queue, self.prefetch).await?;
                (self.channel, self.consumer) = (channel, consumer);
                self.reopen.due.store(false, Ordering::Release);
            }
            let next = self.consumer.next().await;
            // What a channel being closed to give messages back delivered goes back to the broker with them.
            if self.reopen.due.load(Ordering::Acquire) {
                continue;
            }
            let ended = match next {
                Some(Ok(delivery)) => break delivery,
                Some(Err(e)) => format!("consuming from RabbitMQ: {e}"),
                None => format!("RabbitMQ ended the consumer of queue `{}`", self.queue),
            };
            // A queue has no end: a consumer that stops (its connection lost, its channel closed, the broker
            // cancelling it while it restarts) consumes again on a new channel, and a new connection if need
            // be, at the next receive, after the consumer's pause.
            self.reopen.due.store(true, Ordering::Release);
            return Err(SubscribeError(format!("{ended}; consuming again")));
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
                reopen: self.reopen.clone(),
            }),
        }))
    }
}

struct RabbitMqSettle {
    delivery: AmqpDelivery,
    // The channel the message came on.
    channel: Channel,
    reopen: Arc<Reopen>,
}

#[async_trait::async_trait]
impl Settle for RabbitMqSettle {
    /// An ack that cannot be sent leaves the message to the broker, which delivers it again (to this consumer's
    /// next channel), and the inbox makes that a duplicate.
    async fn ack(self: Box<Self>) -> Result<(), SubscribeError> {
        let not_sent = |why: &str| SubscribeError(format!("ack not sent: {why}"));
        if !self.channel.status().connected() {
            return Err(not_sent("the channel is closed"));
        }
        let ack = self.delivery.acker.ack(BasicAckOptions::default());
        match tokio::time::timeout(SETTLE_TIMEOUT, ack).await {
            Ok(Ok(true)) => Ok(()),
            // lapin answers `false` when the acker was already used or its channel is gone.
            Ok(Ok(false)) => Err(not_sent(
                "the channel is closed or the message was already settled",
            )),
            Ok(Err(e)) => Err(SubscribeError(format!("ack failed: {e}"))),
            Err(_) => Err(not_sent(&format!(
                "the connection did not take it within {SETTLE_TIMEOUT:?}"
            ))),
        }
    }

    async fn give_back(self: Box<Self>) -> Result<(), SubscribeError> {
        let _closing = self.reopen.closing.lock().await;
        // A channel closed already gave its messages back.
        if !self.channel.status().connected() {
            return Ok(());
        }
        self.reopen.due.store(true, Ordering::Release);
        let close = self
            .channel
            .close(200, "giving messages back in their order".into());
        match tokio::time::timeout(SETTLE_TIMEOUT, close).await {
            Ok(closed) => {
                closed.map_err(|e| failed("closing the channel to give messages back", e))
            }
            // The connection is going: it gives the messages back as it goes.
            Err(_) => Ok(()),
        }
    }
}
