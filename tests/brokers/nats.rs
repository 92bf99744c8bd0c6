use async_nats::jetstream;
use outbox::EventEnvelope;
use outbox::publisher::{NatsPublisher, Publisher};
use outbox_tests::events::opened;

use crate::common::{
    Prefixed, assert_arrived_in_order, assert_faststream_reads_everything, header, suffix,
    write_and_relay,
};

const URL: &str = "nats://127.0.0.1:4222";

/// A stream of the test's own (`<LETTER><suffix>`, capturing `<letter><suffix>.>`) holding the 12 events of
/// `write_and_relay`: its name, the subject prefix, and what was written.
async fn relay_to_a_fresh_stream(
    letter: char,
    s: &str,
) -> (String, String, crate::common::Written) {
    let (stream_name, prefix) = (
        format!("{}{s}", letter.to_ascii_uppercase()),
        format!("{letter}{s}."),
    );
    let nats = NatsPublisher::connect(URL)
        .await
        .expect("NATS with JetStream on 127.0.0.1:4222 (.ci/run starts it)");
    nats.ensure_stream(&stream_name, vec![format!("{prefix}>")])
        .await
        .unwrap();
    let written = write_and_relay(
        Prefixed {
            inner: nats,
            prefix: prefix.clone(),
        },
        12,
    )
    .await;
    (stream_name, prefix, written)
}

#[tokio::test]
async fn relay_to_jetstream_then_read_back_with_async_nats_and_faststream() {
    let s = suffix();
    let (stream_name, prefix, written) = relay_to_a_fresh_stream('t', &s).await;

    let client = async_nats::connect(URL).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream(&stream_name).await.unwrap();
    let mut received = Vec::new();
    for seq in 1..=written.ids.len() as u64 {
        let message = stream.get_raw_message(seq).await.unwrap();
        let headers: Vec<(String, String)> = message
            .headers
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
            .collect();
        // One subject per aggregate type, in one stream: order holds across event types.
        assert_eq!(
            message.subject.as_str(),
            format!("{prefix}com.example.account")
        );
        let id = header(&headers, "ce-id").unwrap().to_owned();
        assert_eq!(header(&headers, "Nats-Msg-Id"), Some(id.as_str()));
        assert_eq!(header(&headers, "message_id"), Some(id.as_str()));
        assert_eq!(
            header(&headers, "correlation_id"),
            Some(written.correlation.as_str())
        );
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        assert_eq!(
            header(&headers, "ce-datacontenttype"),
            Some("application/json")
        );
        assert_eq!(header(&headers, "ce-specversion"), Some("1.0"));
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let aggregate = body["account"].as_str().unwrap().to_owned();
        assert_eq!(
            header(&headers, "ce-partitionkey"),
            Some(aggregate.as_str())
        );
        received.push((uuid::Uuid::parse_str(&id).unwrap(), aggregate));
    }
    assert_arrived_in_order(&written, &received);

    assert_faststream_reads_everything(
        &written,
        "nats",
        URL,
        &format!("{prefix}com.example.account"),
        Some(&stream_name),
    );
    js.delete_stream(&stream_name).await.unwrap();
}

#[tokio::test]
async fn a_republished_event_is_dropped_by_jetstream_deduplication() {
    let s = suffix();
    let (stream_name, prefix) = (format!("D{s}"), format!("d{s}."));
    let nats = NatsPublisher::connect(URL).await.unwrap();
    nats.ensure_stream(&stream_name, vec![format!("{prefix}>")])
        .await
        .unwrap();
    let publisher = Prefixed {
        inner: nats,
        prefix,
    };
    let message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    publisher.publish(&message).await.unwrap();
    // A relay that crashed after the ack republishes the same event id.
    publisher.publish(&message).await.unwrap();
    let js = jetstream::new(async_nats::connect(URL).await.unwrap());
    let mut stream = js.get_stream(&stream_name).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        1,
        "Nats-Msg-Id de-duplicated the republish"
    );
    js.delete_stream(&stream_name).await.unwrap();
}

#[tokio::test]
async fn a_subject_no_stream_captures_is_that_destination_unavailable_not_the_event_failing() {
    let nats = NatsPublisher::connect(URL).await.unwrap();
    let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    message.destination = format!("nostream{}.x", suffix());
    let err = nats.publish(&message).await.unwrap_err();
    assert!(err.is_destination_unavailable(), "{err}");
    assert!(
        !err.is_unavailable(),
        "one subject is not the whole broker: {err}"
    );
    assert!(
        err.to_string()
            .contains("no JetStream stream captures subject"),
        "{err}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_clear_error() {
    let err = NatsPublisher::connect("nats://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot connect to nats at `nats://127.0.0.1:1`"),
        "{err}"
    );
}

#[tokio::test]
async fn structured_mode_sends_the_whole_cloudevent_as_the_body() {
    let s = suffix();
    let (stream_name, subject) = (format!("S{s}"), format!("st{s}.x"));
    let nats = NatsPublisher::connect(URL).await.unwrap().structured();
    nats.ensure_stream(&stream_name, vec![subject.clone()])
        .await
        .unwrap();
    let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    message.destination = subject;
    nats.publish(&message).await.unwrap();
    let js = jetstream::new(async_nats::connect(URL).await.unwrap());
    let raw = js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(
        raw.headers
            .get("content-type")
            .map(|v| v.to_string())
            .as_deref(),
        Some("application/cloudevents+json")
    );
    let event: serde_json::Value = serde_json::from_slice(&raw.payload).unwrap();
    assert_eq!(event["id"], message.id.to_string());
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(
        event["data"],
        serde_json::json!({"account": "a", "seq": 1}),
        "data embedded as JSON"
    );
    js.delete_stream(&stream_name).await.unwrap();
}

/// Attribute values are percent-encoded once: a consumer decoding `ce-*` headers gets the original back.
#[tokio::test]
async fn attribute_values_are_percent_encoded_exactly_once() {
    let s = suffix();
    let (stream_name, subject) = (format!("E{s}"), format!("enc{s}.x"));
    let nats = NatsPublisher::connect(URL).await.unwrap();
    nats.ensure_stream(&stream_name, vec![subject.clone()])
        .await
        .unwrap();
    let mut message = EventEnvelope::new(opened("a", 1))
        .with_correlation_id("req 7 50%")
        .to_message()
        .unwrap();
    message.destination = subject;
    message
        .headers
        .push(("x-note".into(), "two\r\nlines".into()));
    nats.publish(&message).await.unwrap();
    let js = jetstream::new(async_nats::connect(URL).await.unwrap());
    let raw = js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    let get = |name: &str| raw.headers.get(name).map(|v| v.to_string());
    assert_eq!(get("ce-correlationid").as_deref(), Some("req%207%2050%25"));
    assert_eq!(get("correlation_id").as_deref(), Some("req%207%2050%25"));
    // An extra header that would break the header block is encoded too, once.
    assert_eq!(get("x-note").as_deref(), Some("two%0D%0Alines"));
    js.delete_stream(&stream_name).await.unwrap();
}

/// A header name NATS cannot carry (async-nats panics on one) is this message's permanent failure, never a panic.
#[tokio::test]
async fn a_header_name_nats_cannot_carry_is_refused_not_a_panic() {
    let nats = NatsPublisher::connect(URL).await.unwrap();
    for name in ["x tenant", "x:tenant", "x-ténant"] {
        let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
        message.headers = vec![(name.to_owned(), "acme".to_owned())];
        let err = nats.publish(&message).await.unwrap_err();
        assert!(err.is_permanent(), "{name}: {err}");
        assert!(err.to_string().contains("header name"), "{err}");
    }
}

/// The consumer side on JetStream: a durable pull consumer feeds `outbox::consumer::Consumer`, which applies
/// every event once (the copies the test adds to the stream are acked as duplicates), in order per aggregate,
/// and acknowledges everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_consumer_applies_each_event_once_in_order() {
    use outbox::consumer::NatsSubscriber;

    use crate::common::Ledger;

    let s = suffix();
    let (stream_name, _, written) = relay_to_a_fresh_stream('c', &s).await;

    // Copies of four stored messages under new JetStream ids, as a producer that retried would leave them.
    let js = jetstream::new(async_nats::connect(URL).await.unwrap());
    let stream = js.get_stream(&stream_name).await.unwrap();
    for seq in [1, 2, 5, 12] {
        let stored = stream.get_raw_message(seq).await.unwrap();
        let mut headers = async_nats::HeaderMap::new();
        for (name, values) in stored.headers.iter() {
            if name.as_ref() as &str != "Nats-Msg-Id" {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        js.publish_with_headers(stored.subject.to_string(), headers, stored.payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let total = written.ids.len() as u64 + 4;

    let ledger = Ledger::new(&s).await;
    let subscriber = NatsSubscriber::connect(URL, &stream_name, &format!("ledger{s}"))
        .await
        .unwrap();
    let consumer = ledger.run(subscriber, total).await;
    assert_eq!(consumer.counts().duplicates(), 4);
    assert_eq!(consumer.counts().dead_lettered(), 0);
    assert_arrived_in_order(&written, &ledger.applied());
    let mut durable = stream
        .get_consumer::<jetstream::consumer::pull::Config>(&format!("ledger{s}"))
        .await
        .unwrap();
    let info = durable.info().await.unwrap();
    assert_eq!(
        (info.num_ack_pending, info.num_pending),
        (0, 0),
        "everything acknowledged"
    );
    let _ = js.delete_stream(&stream_name).await;
    ledger.clean().await;
}

/// The other direction of interop: a FastStream service in Python publishes a plain Pydantic model (twice, as a
/// retry would), a binary-mode and a structured-mode CloudEvent; the consumer applies each event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faststream_producer_publishes_and_the_consumer_applies_each_event_once() {
    use outbox::consumer::NatsSubscriber;
    use outbox_tests::events::AccountOpened;
    use uuid::Uuid;

    use crate::common::Ledger;

    let s = suffix();
    let (stream_name, subject) = (format!("P{s}"), format!("p{s}.accounts"));
    let nats = NatsPublisher::connect(URL)
        .await
        .expect("NATS on 127.0.0.1:4222");
    nats.ensure_stream(&stream_name, vec![subject.clone()])
        .await
        .unwrap();
    let published = outbox_tests::run_python(
        "faststream_publish.py",
        &[URL, &subject, &stream_name],
        None,
    );
    let expected: Vec<(Uuid, String)> = published["published"]
        .as_array()
        .expect("published")
        .iter()
        .map(|p| {
            (
                Uuid::parse_str(p["id"].as_str().unwrap()).unwrap(),
                "py".to_owned(),
            )
        })
        .collect();

    let ledger = Ledger::new(&s).await;
    let subscriber = NatsSubscriber::connect(URL, &stream_name, &format!("py{s}"))
        .await
        .unwrap();
    let consumer = ledger
        .run_with(subscriber, 4, |builder| {
            builder.plain_json_as::<AccountOpened>()
        })
        .await;
    assert_eq!(
        consumer.counts().duplicates(),
        1,
        "the retried plain message"
    );
    assert_eq!(consumer.counts().dead_lettered(), 0);
    assert_eq!(
        ledger.applied(),
        expected,
        "each event once, in the order published"
    );
    let js = jetstream::new(async_nats::connect(URL).await.unwrap());
    let _ = js.delete_stream(&stream_name).await;
    ledger.clean().await;
}

/// Over several connections, each aggregate's events take one of them: sent ahead of their acknowledgements,
/// they are stored in order, and every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_keep_each_aggregates_order() {
    let s = suffix();
    let (stream_name, prefix) = (format!("M{s}"), format!("m{s}."));
    let nats = NatsPublisher::connect_many(URL, std::num::NonZeroU16::new(3).unwrap())
        .await
        .unwrap();
    nats.ensure_stream(&stream_name, vec![format!("{prefix}>")])
        .await
        .unwrap();
    nats.check().await.unwrap();
    let written = write_and_relay(
        Prefixed {
            inner: nats,
            prefix,
        },
        1000,
    )
    .await;

    let js = jetstream::new(async_nats::connect(URL).await.unwrap());
    let stream = js.get_stream(&stream_name).await.unwrap();
    let mut received = Vec::new();
    for seq in 1..=written.ids.len() as u64 {
        let message = stream.get_raw_message(seq).await.unwrap();
        let id = message
            .headers
            .get("ce-id")
            .map(|id| uuid::Uuid::parse_str(id.as_str()).unwrap())
            .expect("a ce-id header");
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        received.push((id, body["account"].as_str().unwrap().to_owned()));
    }
    assert_arrived_in_order(&written, &received);
    js.delete_stream(&stream_name).await.unwrap();
}
