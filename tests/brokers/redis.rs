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

/// An XACK cut with its connection leaves the entry pending at the server: the subscriber hands it out again at
/// the next read (the inbox makes it a duplicate), not after `claim_after` (60 s by default), and with nothing
/// left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_ack_was_cut_is_read_again_at_once() {
    use outbox::consumer::{RedisSubscriber, Subscriber};
    use outbox_tests::servers::Server;

    // A private server: the test cuts every client's connection.
    let server = Server::redis().await;
    let url = format!("redis://{}", server.address());
    let mut redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let add = async |redis: &mut redis::aio::MultiplexedConnection, data: &str| {
        let _: String = redis::cmd("XADD")
            .arg("s")
            .arg("*")
            .arg("__data__")
            .arg(data)
            .query_async(redis)
            .await
            .unwrap();
    };
    add(&mut redis, "first").await;
    let mut subscriber = RedisSubscriber::connect(&url, &["s"], "g", "me")
        .await
        .unwrap();
    let first = subscriber.receive().await.unwrap().unwrap();
    assert_eq!(first.raw, "first");

    // The subscriber's ack connection only, as a network cut or a timeout on that one would: its reads
    // connection (the one whose last command read the stream) stays up and knows nothing of it.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut redis)
        .await
        .unwrap();
    let acks: Vec<&str> = clients
        .lines()
        .filter(|client| !client.contains("cmd=xread") && !client.contains("cmd=client|list"))
        .filter_map(|client| {
            client
                .split(' ')
                .find_map(|field| field.strip_prefix("id="))
        })
        .collect();
    assert_eq!(acks.len(), 1, "one ack connection in {clients}");
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(acks[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    let acked = first.settle.ack().await;
    add(&mut redis, "second").await;

    let mut read = Vec::new();
    while read.len() < 2 {
        match tokio::time::timeout(std::time::Duration::from_secs(5), subscriber.receive()).await {
            Ok(Ok(Some(received))) => {
                read.push(received.raw.clone());
                received.settle.ack().await.unwrap();
            }
            Ok(Ok(None)) => panic!("the subscription ended"),
            // A read cut with the connection: the consumer tries again.
            Ok(Err(_)) => {}
            Err(_) => break,
        }
    }
    let expected = if acked.is_ok() {
        vec!["second"]
    } else {
        vec!["first", "second"]
    };
    assert_eq!(
        read,
        expected,
        "after an ack that {}",
        if acked.is_ok() {
            "went through"
        } else {
            "failed"
        }
    );
    let pending: PendingSummary = redis::cmd("XPENDING")
        .arg("s")
        .arg("g")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(pending.0, 0, "nothing left pending: {pending:?}");
}
