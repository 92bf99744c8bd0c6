//! Kafka publisher (rdkafka), idempotent, `acks=all`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{Acknowledgement, ConnectError, Encoding, PublishError, Publisher, Reason};
use crate::cloudevents::BinaryMode;
use crate::message::Message;

/// Publishes to Kafka with an idempotent producer (`enable.idempotence`, `acks=all`) and reports each delivery
/// report; the relay keeps many in flight, so librdkafka batches them.
///
/// - Topic: the message's destination (one per aggregate type by default); record key: the aggregate id, so an
///   aggregate's events land in one partition, in order.
/// - Headers: `content-type`, the `ce_*` attributes (Kafka binding, raw UTF-8), `correlation_id` (FastStream reads
///   it; its message id comes from offset and time).
/// - Topics are created on first use when missing (`partitions`, replication 1 by default: set both for
///   production, or create topics yourself and turn it off with [`create_topics`](Self::create_topics)). A topic
///   that is missing and not to be created, that cannot be created, or that this producer may not write holds
///   that destination only; the rest flows.
pub struct KafkaPublisher {
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    known_topics: Mutex<HashSet<String>>,
    create_topics: bool,
    partitions: i32,
    replication: i32,
    encoding: Encoding,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("create_topics", &self.create_topics)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// A producer for the comma-separated `bootstrap_servers` (`host:9092`). Checks that a broker answers.
    pub async fn connect(bootstrap_servers: &str) -> Result<Self, ConnectError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000");
        Self::from_config(&config, bootstrap_servers).await
    }

    /// A producer from a full librdkafka configuration (security settings, tuning). Idempotence and
    /// `acks=all` are what the outbox's guarantees assume: keep them.
    pub async fn from_config(config: &ClientConfig, shown_as: &str) -> Result<Self, ConnectError> {
        let producer: FutureProducer = config
            .create()
            .map_err(|e| ConnectError::new("kafka", shown_as, e))?;
        let admin: AdminClient<DefaultClientContext> = config
            .create()
            .map_err(|e| ConnectError::new("kafka", shown_as, e))?;
        let publisher = Self {
            producer,
            admin,
            known_topics: Mutex::default(),
            create_topics: true,
            partitions: 3,
            replication: 1,
            encoding: Encoding::Binary,
            timeout: Duration::from_secs(30),
        };
        publisher
            .check()
            .await
            .map_err(|e| ConnectError::new("kafka", shown_as, e))?;
        Ok(publisher)
    }

    /// Whether to create missing topics (default true), and with how many partitions and replicas.
    #[must_use]
    pub fn create_topics(mut self, create: bool, partitions: i32, replication: i32) -> Self {
        self.create_topics = create;
        self.partitions = partitions.max(1);
        self.replication = replication.max(1);
        self
    }

    /// Sends structured-mode CloudEvents instead of binary mode.
    #[must_use]
    pub fn structured(mut self) -> Self {
        self.encoding = Encoding::Structured;
        self
    }

    async fn ensure_topic(&self, topic: &str) -> Result<(), PublishError> {
        if !self.create_topics || self.known().contains(topic) {
            return Ok(());
        }
        let new = NewTopic::new(
            topic,
            self.partitions,
            TopicReplication::Fixed(self.replication),
        );
        let results = self
            .admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(PublishError::unavailable)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                // The broker answered, about this topic: an invalid name, a policy, a missing right.
                Err((name, code)) => {
                    return Err(PublishError::destination_unavailable(
                        topic,
                        Reason(format!("cannot create topic `{name}`: {code}")),
                    ));
                }
            }
        }
        self.known().insert(topic.to_owned());
        Ok(())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known_topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        self.send(message).await?.await
    }

    /// The idempotent producer keeps a partition's records in the order sent, through its own retries, and an
    /// aggregate's records share a partition (the key is the aggregate id): an aggregate's next event may be
    /// sent before the previous one's delivery report.
    async fn send(&self, message: &Message) -> Result<Acknowledgement, PublishError> {
        self.ensure_topic(&message.destination).await?;
        let mut pairs = self.encoding.headers(message, &BinaryMode::KAFKA);
        pairs.push((
            "correlation_id".to_owned(),
            message.effective_correlation_id(),
        ));
        let mut headers = OwnedHeaders::new_with_capacity(pairs.len());
        for (key, value) in &pairs {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let body = self.encoding.body(message);
        let mut record = FutureRecord::to(&message.destination)
            .key(message.key.as_bytes())
            .payload(&body)
            .headers(headers);
        // A full local queue drains as librdkafka delivers: wait for room, as `FutureProducer::send` does.
        let deadline = Instant::now() + self.timeout;
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((error, _)) => return Err(classify(&message.destination, error)),
            }
        };
        let topic = message.destination.clone();
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(classify(&topic, error)),
                Err(_) => Err(PublishError::unavailable(Reason(
                    "the Kafka producer was dropped before the delivery report".into(),
                ))),
            }
        }))
    }

    async fn check(&self) -> Result<(), PublishError> {
        let producer = self.producer.clone();
        // librdkafka's metadata call blocks: keep it off the runtime's threads.
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(5))
        })
        .await
        .map_err(PublishError::unavailable)?
        .map(drop)
        .map_err(PublishError::unavailable)
    }

    fn name(&self) -> &str {
        "kafka"
    }
}

fn classify(topic: &str, error: KafkaError) -> PublishError {
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge,
        ) => PublishError::permanent(error),
        Some(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::QueueFull
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition,
        ) => PublishError::unavailable(error),
        // This topic, not the cluster: missing (and not to be created), misnamed, or not ours to write.
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed,
        ) => PublishError::destination_unavailable(topic, error),
        _ => PublishError::transient(error),
    }
}
