use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox::EventEnvelope;
use outbox::publisher::{Publisher, RabbitMqPublisher};
use outbox_tests::events::opened;

use crate::common::{
    Prefixed, Written, assert_arrived_in_order, assert_faststream_reads_everything, suffix,
    write_and_relay,
};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

async fn channel() -> Channel {
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (.ci/run starts it)");
    connection.create_channel().await.unwrap()
}

#[tokio::test]
async fn relay_to_rabbitmq_then_read_back_with_lapin_and_faststream() {
    let s = suffix();
    let (exchange, prefix) = (format!("x{s}"), format!("r{s}."));
    let routing_key = format!("{prefix}com.example.account");
    let (mine, theirs) = (
        format!("{routing_key}.lapin"),
        format!("{routing_key}.faststream"),
    );
    let ch = channel().await;
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Two queues on one routing key: one read here, one by FastStream.
    for queue in [&mine, &theirs] {
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let rabbit = RabbitMqPublisher::connect(URL)
        .await
        .unwrap()
        .exchange(exchange.clone());
    let written = write_and_relay(
        Prefixed {
            inner: rabbit,
            prefix,
        },
        12,
    )
    .await;

    let mut received = Vec::new();
    while let Some(message) = ch
        .basic_get(mine.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let delivery = message.delivery;
        let props = &delivery.properties;
        let id = props
            .message_id()
            .as_ref()
            .expect("message_id property")
            .to_string();
        assert_eq!(
            props.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(
            props.correlation_id().as_ref().map(|c| c.to_string()),
            Some(written.correlation.clone())
        );
        assert_eq!(*props.delivery_mode(), Some(2), "persistent");
        let headers = props.headers().as_ref().expect("headers");
        let text = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            _ => None,
        };
        assert_eq!(text("cloudEvents_id"), Some(id.clone()));
        assert_eq!(text("cloudEvents_specversion").as_deref(), Some("1.0"));
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        let aggregate = body["account"].as_str().unwrap().to_owned();
        assert_eq!(text("cloudEvents_partitionkey"), Some(aggregate.clone()));
        received.push((uuid::Uuid::parse_str(&id).unwrap(), aggregate));
    }
    assert_arrived_in_order(&written, &received);
    assert_faststream_reads_everything(&written, "rabbit", URL, &theirs, None);

    for queue in [&mine, &theirs] {
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

/// A RabbitMQ stream (a durable, replicated, append-only queue: RabbitMQ's fastest destination for confirmed
/// publishes) takes the relay's messages unchanged: they are read back from its first offset in order per
/// aggregate, and FastStream reads them as CloudEvents.
#[tokio::test]
async fn relay_to_a_rabbitmq_stream_then_read_it_from_the_first_offset() {
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};

    let ch = channel().await;
    let (stream, written) =
        relayed_to_a_queue(&ch, &format!("s{}.", suffix()), Some("stream")).await;

    // A stream is consumed with acknowledgements, a prefetch, and the offset to start from.
    ch.basic_qos(64, BasicQosOptions::default()).await.unwrap();
    let mut from_first = FieldTable::default();
    from_first.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(
            stream.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            from_first,
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    while received.len() < written.ids.len() {
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
            .await
            .expect("the stream delivers every written event")
            .expect("the consumer is open")
            .unwrap();
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .expect("message_id property")
            .to_string();
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        let aggregate = body["account"].as_str().unwrap().to_owned();
        received.push((uuid::Uuid::parse_str(&id).unwrap(), aggregate));
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_arrived_in_order(&written, &received);
    assert_faststream_reads_everything(&written, "rabbit", URL, &stream, Some("stream"));

    ch.queue_delete(stream.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// The consumer does not read a stream (it could neither give a message back nor resume where it stopped): it
/// says so, naming the queue, at the first delivery and at every receive after it, and acknowledges nothing.
#[tokio::test]
async fn a_queue_consumer_refuses_a_stream_by_name() {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;
    use outbox::consumer::{RabbitMqSubscriber, Subscriber};

    let stream = format!("refused{}", suffix());
    let ch = channel().await;
    declare(&ch, &stream, Some("stream")).await;
    let mut subscriber = RabbitMqSubscriber::connect(URL, &stream, 16).await.unwrap();
    ch.basic_publish(
        "".into(),
        stream.as_str().into(),
        BasicPublishOptions::default(),
        b"{}",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    for attempt in ["first", "second"] {
        let error = tokio::time::timeout(std::time::Duration::from_secs(10), subscriber.receive())
            .await
            .unwrap_or_else(|_| panic!("the {attempt} receive answers"))
            .err()
            .unwrap_or_else(|| panic!("the {attempt} receive refuses the stream"));
        let text = error.to_string();
        assert!(
            text.contains(&format!("queue `{stream}` is a RabbitMQ stream")),
            "{text}"
        );
    }
    ch.queue_delete(stream.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unroutable_message_is_a_permanent_failure_not_a_silent_drop() {
    let rabbit = RabbitMqPublisher::connect(URL).await.unwrap();
    let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    message.destination = format!("nobody-listens-{}", suffix());
    let err = rabbit.publish(&message).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("unroutable"), "{err}");
}

#[tokio::test]
async fn the_ce_prefix_is_selectable() {
    let s = suffix();
    let queue = format!("p{s}");
    let ch = channel().await;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let rabbit = RabbitMqPublisher::connect(URL).await.unwrap().prefix("ce-");
    let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    message.destination = queue.clone();
    rabbit.publish(&message).await.unwrap();
    let got = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    let headers = got.delivery.properties.headers().clone().unwrap();
    assert!(headers.inner().contains_key("ce-type"), "{headers:?}");
    assert!(!headers.inner().contains_key("cloudEvents_type"));
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_refused_connection_is_a_clear_error_without_the_password() {
    let err = RabbitMqPublisher::connect("amqp://guest:secret@127.0.0.1:1/%2f")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("cannot connect to rabbitmq at `amqp://guest:***@127.0.0.1:1/%2f`"),
        "{text}"
    );
}

/// Values AMQP cannot carry (a short string holds 255 bytes; lapin panics beyond) are this message's permanent
/// failure, never a panic: a long correlation id, event type, header name or routing key.
#[tokio::test]
async fn values_amqp_cannot_carry_are_refused_not_a_panic() {
    let rabbit = RabbitMqPublisher::connect(URL).await.unwrap();
    let long = "x".repeat(300);
    let base = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    let mut cases = Vec::new();
    let mut m = base.clone();
    m.correlation_id = Some(long.clone());
    cases.push(("correlation_id", m));
    let mut m = base.clone();
    m.event_type = long.clone();
    cases.push(("type", m));
    let mut m = base.clone();
    m.headers = vec![(long.clone(), "v".to_owned())];
    cases.push(("header name", m));
    let mut m = base.clone();
    m.destination = long.clone();
    cases.push(("routing key", m));
    for (what, message) in cases {
        let err = rabbit.publish(&message).await.unwrap_err();
        assert!(err.is_permanent(), "{what}: {err}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
}

/// The consumer side on RabbitMQ: a queue consumed with manual acks applies every event once (a copy published
/// behind the original is acked as a duplicate), in order per aggregate, and leaves the queue empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_consumer_applies_each_event_once_in_order() {
    consume_once_in_order(None).await;
}

/// The same on a quorum queue, the replicated queue type: a message given back keeps its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_consumer_applies_each_event_once_in_order() {
    consume_once_in_order(Some("quorum")).await;
}

/// Declares `queue`: of `queue_type` (`quorum`, `stream`), durable, or a transient classic queue.
async fn declare(ch: &Channel, queue: &str, queue_type: Option<&str>) {
    let (mut options, mut arguments) = (QueueDeclareOptions::default(), FieldTable::default());
    if let Some(kind) = queue_type {
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        options.durable = true;
    }
    ch.queue_declare(queue.into(), options, arguments)
        .await
        .unwrap();
}

/// Declares `queue` of `queue_type` and relays 12 events of two aggregates to it.
async fn relayed_to_a_queue(
    ch: &Channel,
    prefix: &str,
    queue_type: Option<&str>,
) -> (String, Written) {
    let queue = format!("{prefix}com.example.account");
    declare(ch, &queue, queue_type).await;
    let rabbit = RabbitMqPublisher::connect(URL).await.unwrap();
    let written = write_and_relay(
        Prefixed {
            inner: rabbit,
            prefix: prefix.to_owned(),
        },
        12,
    )
    .await;
    (queue, written)
}

/// Asserts `queue` holds no message.
async fn assert_empty(ch: &Channel, queue: &str) {
    let left = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(left.message_count(), 0, "everything acknowledged");
}

async fn consume_once_in_order(queue_type: Option<&str>) {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;
    use outbox::consumer::RabbitMqSubscriber;

    use crate::common::Ledger;

    let s = suffix();
    let ch = channel().await;
    let (queue, written) = relayed_to_a_queue(&ch, &format!("c{s}."), queue_type).await;

    // A copy of the first message at the end of the queue, as a producer that retried would leave it. The
    // original goes back to its place when the channel that took it closes (a quorum queue would put one taken
    // back with `basic.nack` behind the others).
    let taker = channel().await;
    let first = taker
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the queue holds the relay's messages")
        .delivery;
    let copy = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(first.properties.headers().clone().unwrap_or_default());
    ch.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        &first.data,
        copy,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    taker.close(200, "OK".into()).await.unwrap();

    let ledger = Ledger::new(&s).await;
    let subscriber = RabbitMqSubscriber::connect(URL, &queue, 16).await.unwrap();
    let consumer = ledger.run(subscriber, written.ids.len() as u64 + 1).await;
    assert_eq!(consumer.counts().duplicates(), 1);
    assert_arrived_in_order(&written, &ledger.applied());
    assert_empty(&ch, &queue).await;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ledger.clean().await;
}

/// A message given back while the subscriber runs goes back to its place with every message not yet
/// acknowledged, and the subscriber reads on from there in the queue's order, on a classic queue and on a
/// quorum queue alike.
#[tokio::test]
async fn a_message_given_back_is_read_again_in_its_place() {
    use outbox::consumer::RabbitMqSubscriber;

    for queue_type in [None, Some("quorum")] {
        let s = suffix();
        let ch = channel().await;
        let (queue, written) = relayed_to_a_queue(&ch, &format!("b{s}."), queue_type).await;
        let mut subscriber = RabbitMqSubscriber::connect(URL, &queue, 16).await.unwrap();
        let n = written.ids.len();
        let mut first = read(&mut subscriber, n).await;
        let order: Vec<String> = first
            .iter()
            .map(|r| r.delivery.as_ref().unwrap().id.clone())
            .collect();
        first.remove(1).settle.give_back().await.unwrap();
        drop(first);
        let again: Vec<String> = read(&mut subscriber, n)
            .await
            .iter()
            .map(|r| r.delivery.as_ref().unwrap().id.clone())
            .collect();
        assert_eq!(again, order, "{queue_type:?}");
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
}

/// The next `n` messages of `subscriber`, each within 5 s.
async fn read(
    subscriber: &mut impl outbox::consumer::Subscriber,
    n: usize,
) -> Vec<outbox::consumer::Received> {
    let mut received = Vec::new();
    for _ in 0..n {
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), subscriber.receive())
            .await
            .expect("every message is delivered")
            .unwrap()
            .expect("the subscription is open");
        received.push(message);
    }
    received
}

/// A consumer stopped while messages wait behind one of their aggregate gives them back in their order, and the
/// next consumer applies the rest once each, in order per aggregate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_queue_consumer_gives_back_in_order() {
    stop_then_resume(None).await;
}

/// The same on a quorum queue, which puts a message taken back with `basic.nack` behind all the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_quorum_queue_consumer_gives_back_in_order() {
    stop_then_resume(Some("quorum")).await;
}

async fn stop_then_resume(queue_type: Option<&str>) {
    use outbox::consumer::RabbitMqSubscriber;

    use crate::common::Ledger;

    let s = suffix();
    let ch = channel().await;
    let (queue, written) = relayed_to_a_queue(&ch, &format!("g{s}."), queue_type).await;
    let ledger = Ledger::new(&s).await;
    let subscriber = RabbitMqSubscriber::connect(URL, &queue, 16).await.unwrap();
    let stopped = ledger
        .run_and_stop_at_once(subscriber, std::time::Duration::from_millis(200))
        .await;
    let done = stopped.counts().applied();
    let total = written.ids.len() as u64;
    assert!(
        (1..total).contains(&done),
        "stopped with messages waiting: {:?}",
        stopped.counts()
    );
    let subscriber = RabbitMqSubscriber::connect(URL, &queue, 16).await.unwrap();
    let next = ledger.run(subscriber, total - done).await;
    assert_eq!(next.counts().duplicates(), 0, "{:?}", next.counts());
    assert_arrived_in_order(&written, &ledger.applied());
    assert_empty(&ch, &queue).await;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ledger.clean().await;
}
