use std::time::Duration;

use outbox::publisher::KafkaPublisher;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};

use crate::common::{
    Prefixed, assert_arrived_in_order, assert_faststream_reads_everything, header, suffix,
    write_and_relay,
};

/// The Kafka-compatible broker `tansu`, which `.ci/run` installs and starts.
const SERVERS: &str = "127.0.0.1:9092";

/// The 12 events of `write_and_relay` in a topic of the test's own, `<prefix>com.example.account`: its name
/// and what was written.
async fn relay_to_a_fresh_topic(prefix: &str) -> (String, crate::common::Written) {
    let kafka = KafkaPublisher::connect(SERVERS)
        .await
        .expect("a Kafka broker on 127.0.0.1:9092 (.ci/run starts tansu)");
    let written = write_and_relay(
        Prefixed {
            inner: kafka,
            prefix: prefix.to_owned(),
        },
        12,
    )
    .await;
    (format!("{prefix}com.example.account"), written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_kafka_then_read_back_with_rdkafka_and_faststream() {
    let (topic, written) = relay_to_a_fresh_topic(&format!("k{}.", suffix())).await;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", SERVERS)
        .set("group.id", format!("outbox-test-{}", suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut received = Vec::new();
    while received.len() < written.ids.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("messages arrive")
            .unwrap();
        let headers: Vec<(String, String)> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let id = header(&headers, "ce_id").unwrap().to_owned();
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        assert_eq!(
            header(&headers, "correlation_id"),
            Some(written.correlation.as_str())
        );
        assert_eq!(header(&headers, "ce_specversion"), Some("1.0"));
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let body: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(
            body["account"],
            key.as_str(),
            "the record key is the aggregate id"
        );
        received.push((uuid::Uuid::parse_str(&id).unwrap(), key));
    }
    // Order holds per partition, and the key puts an aggregate in one partition.
    assert_arrived_in_order(&written, &received);
    assert_faststream_reads_everything(&written, "kafka", SERVERS, &topic, None);
}

#[tokio::test]
async fn a_broker_that_does_not_answer_is_a_clear_error() {
    let err = KafkaPublisher::connect("127.0.0.1:1").await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot connect to kafka at `127.0.0.1:1`"),
        "{err}"
    );
}

/// The consumer side on Kafka: a consumer group applies every event once (a copy of a record produced behind it
/// is a duplicate), in order per aggregate, and commits every partition to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_applies_each_event_once_and_commits_to_the_end() {
    use outbox::consumer::KafkaSubscriber;
    use rdkafka::message::OwnedHeaders;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use crate::common::Ledger;

    let s = suffix();
    let (topic, written) = relay_to_a_fresh_topic(&format!("c{s}.")).await;

    // A copy of the first record, produced again as a producer that retried would.
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", SERVERS)
        .set("group.id", format!("copy-{s}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&topic]).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .unwrap()
        .unwrap();
    let mut headers = OwnedHeaders::new();
    for h in first.headers().expect("headers").iter() {
        headers = headers.insert(rdkafka::message::Header {
            key: h.key,
            value: h.value,
        });
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", SERVERS)
        .create()
        .unwrap();
    let record = FutureRecord::to(&topic)
        .key(first.key().unwrap())
        .payload(first.payload().unwrap())
        .headers(headers);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();
    drop(first);

    let group = format!("ledger-{s}");
    let ledger = Ledger::new(&s).await;
    let subscriber = KafkaSubscriber::connect(SERVERS, &group, &[topic.as_str()]).unwrap();
    let consumer = ledger.run(subscriber, written.ids.len() as u64 + 1).await;
    assert_eq!(consumer.counts().duplicates(), 1);
    assert_arrived_in_order(&written, &ledger.applied());

    outbox_tests::kafka::assert_committed_to_the_end(SERVERS, &group, &topic).await;
    ledger.clean().await;
}
