//! NATS JetStream publisher.

use std::borrow::Cow;
use std::num::NonZeroU16;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{HeaderMap, HeaderName, HeaderValue};

use super::{Acknowledgement, ConnectError, Encoding, PublishError, Publisher, Reason};
use crate::cloudevents::{self, BinaryMode};
use crate::message::Message;
use crate::partition::partition_of;

/// Publishes to NATS JetStream and waits for the stream's acknowledgement.
///
/// - Subject: the message's destination (one subject per aggregate type by default, so one stream keeps an
///   aggregate's events in order).
/// - Headers: `content-type` (FastStream reads it) and `ce-*` attributes, percent-encoded; `Nats-Msg-Id` = event
///   id, so JetStream drops a republish after a crash within the stream's duplicate window; `message_id` and
///   `correlation_id`, which FastStream shows its handlers.
/// - A stream must capture the subjects: create one with [`ensure_stream`](Self::ensure_stream) or your own
///   tooling. A subject no stream captures is that destination being unavailable (a setup problem no retry of
///   the event can fix): the relay holds that subject's events, with no attempt counted, and the rest flows.
/// - A header name NATS cannot carry (from [`OutboxEvent::headers`](crate::OutboxEvent::headers)) is a
///   permanent failure with the reason.
/// - One connection carries a limited rate of acknowledged publishes (its client's single task writes every
///   message and reads every acknowledgement): [`connect_many`](Self::connect_many) (URL option
///   `connections=N`) spreads messages over several, an aggregate's always on the same one, so its events are
///   still stored in the order sent.
#[derive(Clone, Debug)]
pub struct NatsPublisher {
    /// One per connection; a message takes the one its aggregate hashes to.
    connections: Arc<[jetstream::Context]>,
    encoding: Encoding,
}

impl NatsPublisher {
    /// Connects to `url` (`nats://host:4222`); fails at once with the cause if the server cannot be reached.
    /// Once connected, the client reconnects by itself.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::connect_many(url, NonZeroU16::MIN).await
    }

    /// Opens `connections` connections to `url` and spreads the messages over them by aggregate (a stable hash
    /// of its type and id), so each aggregate's events go over one connection, in order. Two connections
    /// published about 1.4x what one did on a 2-core machine (`BENCHMARKS.md`).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outbox::publisher::ConnectError> {
    /// use std::num::NonZeroU16;
    ///
    /// let two = NonZeroU16::new(2).expect("not zero");
    /// let nats = outbox::publisher::NatsPublisher::connect_many("nats://127.0.0.1:4222", two).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_many(url: &str, connections: NonZeroU16) -> Result<Self, ConnectError> {
        let mut clients = Vec::with_capacity(usize::from(connections.get()));
        for _ in 0..connections.get() {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(5))
                .connect(url)
                .await
                .map_err(|e| ConnectError::new("nats", url, e))?;
            clients.push(jetstream::new(client));
        }
        Ok(Self::on(clients))
    }

    /// A publisher on an existing client.
    pub fn from_client(client: async_nats::Client) -> Self {
        Self::on(vec![jetstream::new(client)])
    }

    fn on(connections: Vec<jetstream::Context>) -> Self {
        Self {
            connections: connections.into(),
            encoding: Encoding::Binary,
        }
    }

    /// The connection `message`'s aggregate always takes.
    fn connection(&self, message: &Message) -> &jetstream::Context {
        if let [only] = &*self.connections {
            return only;
        }
        // At most u16::MAX connections (`connect_many` takes a u16), so the count fits.
        let count = u16::try_from(self.connections.len()).unwrap_or(u16::MAX);
        let index = partition_of(&message.aggregate_type, &message.key, count);
        &self.connections[usize::from(index)]
    }

    /// Sends structured-mode CloudEvents (`application/cloudevents+json`) instead of binary mode.
    #[must_use]
    pub fn structured(mut self) -> Self {
        self.encoding = Encoding::Structured;
        self
    }

    /// Creates the stream `name` capturing `subjects` if it does not exist yet.
    pub async fn ensure_stream(
        &self,
        name: &str,
        subjects: Vec<String>,
    ) -> Result<(), PublishError> {
        self.connections[0]
            .get_or_create_stream(jetstream::stream::Config {
                name: name.to_owned(),
                subjects,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(PublishError::unavailable)
    }

    /// The message's headers, or a permanent rejection for a header name NATS cannot carry (a space, a `:`, a
    /// non-ASCII byte): async-nats panics on one, so it must never get there. Values are percent-encoded.
    fn headers(&self, message: &Message) -> Result<HeaderMap, PublishError> {
        let mut headers = HeaderMap::new();
        let id = message.id.to_string();
        // `Message::effective_correlation_id`, made safe without copying it first.
        let correlation_id = match &message.correlation_id {
            Some(correlation_id) => cloudevents::header_safe(correlation_id).into_owned(),
            None => id.clone(),
        };
        headers.insert(NATS_MESSAGE_ID, id.clone());
        headers.insert(HeaderName::from_static("message_id"), id);
        headers.insert(HeaderName::from_static("correlation_id"), correlation_id);
        match self.encoding {
            // The binding has percent-encoded the attribute values already: encoding them again would turn
            // `%20` into `%2520`. Names and values are moved into the map, not copied (the binding's names are
            // `'static`).
            Encoding::Binary => {
                BinaryMode::NATS.each_attribute_header(message, |name, value| {
                    let value = match value {
                        Cow::Borrowed(value) => HeaderValue::from(value),
                        Cow::Owned(value) => HeaderValue::from(value),
                    };
                    match name {
                        Cow::Borrowed(name) => headers.insert(HeaderName::from_static(name), value),
                        Cow::Owned(name) => headers.insert(name, value),
                    }
                });
            }
            Encoding::Structured => {
                headers.insert(
                    HeaderName::from_static("content-type"),
                    cloudevents::STRUCTURED_CONTENT_TYPE,
                );
            }
        }
        for (name, value) in &message.headers {
            let name = HeaderName::from_str(name).map_err(|_| {
                PublishError::permanent(Reason(format!(
                    "NATS cannot carry the header name {name:?}: names are visible ASCII without `:`"
                )))
            })?;
            headers.insert(name, cloudevents::header_safe(value).as_ref());
        }
        Ok(headers)
    }
}

#[async_trait::async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        self.send(message).await?.await
    }

    /// Messages published on one connection are stored in the order sent, so an aggregate's events may be sent
    /// before the previous one's acknowledgement.
    async fn send(&self, message: &Message) -> Result<Acknowledgement, PublishError> {
        let payload = self.encoding.body(message);
        let ack = self
            .connection(message)
            .publish_with_headers(
                message.destination.clone(),
                self.headers(message)?,
                payload.into(),
            )
            .await
            .map_err(|e| classify(&message.destination, e))?;
        let subject = message.destination.clone();
        Ok(Box::pin(async move {
            ack.await.map(drop).map_err(|e| classify(&subject, e))
        }))
    }

    async fn check(&self) -> Result<(), PublishError> {
        // Every connection: the aggregates of one that is down wait.
        for (i, connection) in self.connections.iter().enumerate() {
            match connection.client().connection_state() {
                async_nats::connection::State::Connected => {}
                state => {
                    let which = if self.connections.len() > 1 {
                        format!(" {} of {}", i + 1, self.connections.len())
                    } else {
                        String::new()
                    };
                    return Err(PublishError::unavailable(Reason(format!(
                        "NATS connection{which} is {state}"
                    ))));
                }
            }
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "nats"
    }
}

fn classify(subject: &str, error: jetstream::context::PublishError) -> PublishError {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => PublishError::permanent(error),
        PublishErrorKind::StreamNotFound => PublishError::destination_unavailable(
            subject,
            Reason(format!(
                "no JetStream stream captures subject `{subject}`: create one (NatsPublisher::ensure_stream) \
                 ({error})"
            )),
        ),
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => PublishError::unavailable(error),
        _ => PublishError::transient(error),
    }
}
