//! Kafka: a consumer group whose offsets are committed only up to the lowest message not yet settled.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use super::delivery::Delivery;
use super::subscriber::{Received, Settle, SubscribeError, Subscriber};

/// Reads Kafka topics as a member of a consumer group (from the earliest offset when the group has none).
/// Messages are CloudEvents in binary mode (`ce_` headers, the aggregate id as the record key, as
/// [`KafkaPublisher`](crate::publisher::KafkaPublisher) sends them) or structured mode.
///
/// Kafka acknowledges by committing an offset per partition, which covers every message before it; the consumer
/// settles messages of different aggregates out of order, so a partition's offset is committed only up to its
/// lowest message not yet settled. After a crash or a message given back, the group reads again from there, and
/// the inbox turns what was already applied into duplicates.
///
/// The subscriber stores that offset with the client, which commits what is stored every
/// `auto.commit.interval.ms` (5 s by default) and when it closes, and commits it again after a commit that failed
/// (a broker restarting, the group's coordinator moving): a partition's last messages are committed even when
/// nothing arrives after them.
pub struct KafkaSubscriber {
    consumer: Arc<StreamConsumer>,
    offsets: Arc<Mutex<Offsets>>,
}

impl KafkaSubscriber {
    /// Joins `group` on `topics` at the comma-separated `bootstrap_servers` (`host:9092`).
    pub fn connect(
        bootstrap_servers: &str,
        group: &str,
        topics: &[&str],
    ) -> Result<Self, SubscribeError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap_servers)
            .set("group.id", group);
        Self::from_config(&config, topics)
    }

    /// Subscribes to `topics` with a client configured by `config` (which names at least `bootstrap.servers`
    /// and `group.id`; security, timeouts and `group.instance.id` are the caller's). Offsets are stored by the
    /// subscriber and committed by the client, so `enable.auto.offset.store` is turned off and
    /// `enable.auto.commit` on; `auto.offset.reset` is `earliest` unless set.
    ///
    /// A process that restarts under the same `group.instance.id` (static membership) gets its partitions back at
    /// once; without one, the group waits for the dead member's session to time out (`session.timeout.ms`, 45 s
    /// by default) before it hands them to anyone.
    pub fn from_config(config: &ClientConfig, topics: &[&str]) -> Result<Self, SubscribeError> {
        let mut config = config.clone();
        config
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false");
        if config.get("auto.offset.reset").is_none() {
            config.set("auto.offset.reset", "earliest");
        }
        let consumer: StreamConsumer = config
            .create()
            .map_err(|e| SubscribeError(format!("cannot create a Kafka consumer: {e}")))?;
        consumer
            .subscribe(topics)
            .map_err(|e| SubscribeError(format!("cannot subscribe to {topics:?}: {e}")))?;
        Ok(Self {
            consumer: Arc::new(consumer),
            offsets: Arc::default(),
        })
    }
}

/// Per partition: the offsets received and not settled, and what is stored for commit.
#[derive(Default)]
struct Offsets {
    partitions: HashMap<(String, i32), Partition>,
}

#[derive(Default)]
struct Partition {
    unsettled: BTreeSet<i64>,
    /// One past the highest offset received.
    next: i64,
    stored: i64,
}

impl Offsets {
    fn received(&mut self, topic: &str, partition: i32, offset: i64) {
        let state = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        state.unsettled.insert(offset);
        state.next = state.next.max(offset + 1);
    }

    /// Settles `offset`; returns the offset to store if the partition's watermark moved.
    fn settled(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        state.unsettled.remove(&offset);
        let watermark = state.unsettled.first().copied().unwrap_or(state.next);
        (watermark > state.stored).then(|| {
            state.stored = watermark;
            watermark
        })
    }
}

#[async_trait::async_trait]
impl Subscriber for KafkaSubscriber {
    async fn receive(&mut self) -> Result<Option<Received>, SubscribeError> {
        let message = self
            .consumer
            .recv()
            .await
            .map_err(|e| SubscribeError(format!("consuming from Kafka: {e}")))?;
        let headers: Vec<(String, String)> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .filter_map(|h| {
                        let value = std::str::from_utf8(h.value?).ok()?;
                        Some((h.key.to_owned(), value.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let body = message.payload().unwrap_or_default();
        let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
        let delivery =
            Delivery::from_headers(&headers, body).map(|delivery| delivery.with_key(key));
        let (topic, partition, offset) = (
            message.topic().to_owned(),
            message.partition(),
            message.offset(),
        );
        self.offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .received(&topic, partition, offset);
        Ok(Some(Received {
            delivery,
            raw: String::from_utf8_lossy(body).into_owned(),
            settle: Box::new(KafkaSettle {
                consumer: self.consumer.clone(),
                offsets: self.offsets.clone(),
                topic,
                partition,
                offset,
            }),
        }))
    }
}

struct KafkaSettle {
    consumer: Arc<StreamConsumer>,
    offsets: Arc<Mutex<Offsets>>,
    topic: String,
    partition: i32,
    offset: i64,
}

#[async_trait::async_trait]
impl Settle for KafkaSettle {
    async fn ack(self: Box<Self>) -> Result<(), SubscribeError> {
        let store = self
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .settled(&self.topic, self.partition, self.offset);
        let Some(offset) = store else {
            return Ok(());
        };
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset))
            .map_err(|e| SubscribeError(format!("storing offset {offset}: {e}")))?;
        // Committed by the client, and again until it is: a commit that failed is not lost with its call, as an
        // asynchronous commit of our own was (the partition's tail stayed uncommitted after a broker restart).
        self.consumer
            .store_offsets(&list)
            .map_err(|e| SubscribeError(format!("storing offset {offset}: {e}")))
    }

    async fn give_back(self: Box<Self>) -> Result<(), SubscribeError> {
        // Left unsettled: the partition's committed offset stays before it, so the group reads it again.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Offsets;

    #[test]
    fn a_partition_commits_only_up_to_its_lowest_unsettled_offset() {
        let mut offsets = Offsets::default();
        for offset in 0..4 {
            offsets.received("t", 0, offset);
        }
        assert_eq!(offsets.settled("t", 0, 2), None, "0 is still in hand");
        assert_eq!(offsets.settled("t", 0, 0), Some(1));
        assert_eq!(offsets.settled("t", 0, 1), Some(3), "2 was settled before");
        assert_eq!(
            offsets.settled("t", 0, 3),
            Some(4),
            "all settled: one past the last"
        );
        assert_eq!(
            offsets.settled("t", 1, 0),
            None,
            "a partition never received"
        );
    }
}
