//! Checks on a Kafka consumer group that more than one suite makes.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Waits up to 15 s (commits are asynchronous) for `group` to have committed every partition of `topic` to its
/// end; panics with the partitions still behind.
pub async fn assert_committed_to_the_end(servers: &str, group: &str, topic: &str) {
    let check: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .create()
        .expect("a Kafka client");
    let metadata = check
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("the topic's metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let committed = check
            .committed_offsets(list.clone(), Duration::from_secs(10))
            .expect("the group's committed offsets");
        let behind: Vec<(i32, Offset, i64)> = partitions
            .iter()
            .filter_map(|p| {
                let (_, high) = check
                    .fetch_watermarks(topic, *p, Duration::from_secs(10))
                    .expect("the partition's watermarks");
                let at = committed
                    .find_partition(topic, *p)
                    .map(|e| e.offset())
                    .unwrap_or(Offset::Invalid);
                // At least the high watermark, not equal to it: tansu reported a high watermark of 5 for a
                // partition from which a consumer had read offsets 0 to 5.
                let done = matches!(at, Offset::Offset(n) if n >= high) || high == 0;
                (!done).then_some((*p, at, high))
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions not committed to their end: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
