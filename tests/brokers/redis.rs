use outbox::EventEnvelope;
use outbox::publisher::{Publisher, RedisPublisher, faststream_envelope};
use outbox_tests::events::opened;
use outbox_tests::redis::{Entries, parse_envelope};

use crate::common::{
    Prefixed, assert_arrived_in_order, assert_faststream_reads_everything, header, suffix,
    write_and_relay,
};

const URL: &str = "redis://127.0.0.1:6379";

/// `XPENDING <stream> <group>`: the count, the lowest and highest pending ids, and the count per consumer.
type PendingSummary = (
    u64,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

#[test]
fn the_envelope_layout_is_faststreams() {
    let bytes = faststream_envelope(
        &[
            ("content-type".into(), "application/json".into()),
            ("é".into(), "ü".into()),
        ],
        b"{}",
    );
    let (headers, body) = parse_envelope(&bytes);
    assert_eq!(
        headers,
        [
            ("content-type".to_owned(), "application/json".to_owned()),
            ("é".to_owned(), "ü".to_owned())
        ]
    );
    assert_eq!(body, b"{}");
}

#[tokio::test]
async fn relay_to_a_redis_stream_then_read_back_with_redis_and_faststream() {
    let prefix = format!("s{}.", suffix());
    let stream = format!("{prefix}com.example.account");
    let redis_publisher = RedisPublisher::connect(URL)
        .await
        .expect("Redis on 127.0.0.1:6379 (.ci/run starts it)");
    let written = write_and_relay(
        Prefixed {
            inner: redis_publisher,
            prefix,
        },
        12,
    )
    .await;

    let client = redis::Client::open(URL).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Entries = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut received = Vec::new();
    for (_, fields) in entries {
        assert_eq!(
            fields.len(),
            1,
            "only __data__: FastStream drops other fields"
        );
        assert_eq!(fields[0].0, "__data__");
        let (headers, body) = parse_envelope(&fields[0].1);
        let id = header(&headers, "ce_id").unwrap().to_owned();
        assert_eq!(header(&headers, "message_id"), Some(id.as_str()));
        assert_eq!(
            header(&headers, "correlation_id"),
            Some(written.correlation.as_str())
        );
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let aggregate = body["account"].as_str().unwrap().to_owned();
        assert_eq!(
            header(&headers, "ce_partitionkey"),
            Some(aggregate.as_str())
        );
        received.push((uuid::Uuid::parse_str(&id).unwrap(), aggregate));
    }
    assert_arrived_in_order(&written, &received);
    assert_faststream_reads_everything(&written, "redis", URL, &stream, None);
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .unwrap();
}

#[tokio::test]
async fn maxlen_trims_the_stream() {
    let stream = format!("m{}", suffix());
    let publisher = RedisPublisher::connect(URL).await.unwrap().max_len(10);
    let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    message.destination = stream.clone();
    for _ in 0..500 {
        publisher.publish(&message).await.unwrap();
    }
    let mut connection = redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let len: i64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(len < 500, "MAXLEN ~ 10 left {len} entries");
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_refused_connection_is_a_clear_error() {
    let err = RedisPublisher::connect("redis://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot connect to redis at `redis://127.0.0.1:1`"),
        "{err}"
    );
}

#[tokio::test]
async fn a_republished_event_carries_the_same_id() {
    let stream = format!("r{}", suffix());
    let publisher = RedisPublisher::connect(URL).await.unwrap();
    let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    message.destination = stream.clone();
    publisher.publish(&message).await.unwrap();
    publisher.publish(&message).await.unwrap();
    let mut connection = redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let entries: Entries = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(entries.len(), 2, "Redis cannot de-duplicate...");
    let ids: Vec<String> = entries
        .iter()
        .map(|(_, fields)| {
            header(&parse_envelope(&fields[0].1).0, "message_id")
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        ids[0], ids[1],
        "...so both copies carry the event id to de-duplicate by"
    );
    assert_eq!(ids[0], message.id.to_string());
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .unwrap();
}

/// The consumer side on Redis Streams: entries a crashed member of the group left unacknowledged are claimed,
/// a copy of an entry is acked as a duplicate, every event is applied once in order, and nothing stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_applies_each_event_once_and_claims_what_a_crashed_member_left() {
    use outbox::consumer::RedisSubscriber;

    use crate::common::Ledger;

    let s = suffix();
    let prefix = format!("c{s}.");
    let stream = format!("{prefix}com.example.account");
    let publisher = RedisPublisher::connect(URL)
        .await
        .expect("Redis on 127.0.0.1:6379");
    let written = write_and_relay(
        Prefixed {
            inner: publisher,
            prefix,
        },
        12,
    )
    .await;
    let client = redis::Client::open(URL).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();

    // A copy of the first entry, as a producer that retried would leave it.
    let first: Entries = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let data = &first[0]
        .1
        .iter()
        .find(|(field, _)| field == "__data__")
        .unwrap()
        .1;
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("__data__")
        .arg(data.as_slice())
        .query_async(&mut redis)
        .await
        .unwrap();

    // A member of the group takes the first three entries and dies without acknowledging them.
    let group = format!("ledger{s}");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&group)
        .arg("0")
        .query_async(&mut redis)
        .await
        .unwrap();
    let taken: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("crashed")
        .arg("COUNT")
        .arg(3)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(taken.keys[0].ids.len(), 3);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let ledger = Ledger::new(&s).await;
    let subscriber = RedisSubscriber::connect(URL, &[stream.as_str()], &group, "ledger")
        .await
        .unwrap()
        .claim_after(std::time::Duration::from_millis(100));
    let consumer = ledger.run(subscriber, written.ids.len() as u64 + 1).await;
    assert_eq!(consumer.counts().duplicates(), 1);
    assert_arrived_in_order(&written, &ledger.applied());
    let pending: PendingSummary = redis::cmd("XPENDING")
        .arg(&stream)
        .arg(&group)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(pending.0, 0, "everything acknowledged: {pending:?}");
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .unwrap();
    ledger.clean().await;
}
