//! A broker restart does not need a relay restart: private NATS, Redis and Kafka (tansu) servers on free ports,
//! stopped and started again between two publishes through the same publisher.

use std::time::Duration;

use outbox::EventEnvelope;
use outbox::publisher::{
    KafkaPublisher, NatsPublisher, Publisher, RabbitMqPublisher, RedisPublisher,
};
use outbox_tests::events::opened;
use outbox_tests::servers::{Server, free_port};

/// Publishes until it succeeds (the client reconnecting in the background), failing the test after 20 s.
async fn publish_eventually(publisher: &dyn Publisher, message: &outbox::Message) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match publisher.publish(message).await {
            Ok(()) => return,
            Err(error) if tokio::time::Instant::now() < deadline => {
                assert!(error.is_unavailable() || !error.is_permanent(), "{error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("no reconnect after the restart: {error}"),
        }
    }
}

#[tokio::test]
async fn nats_publisher_survives_a_server_restart() {
    let mut server = Server::nats().await;
    let nats = NatsPublisher::connect(&format!("nats://{}", server.address()))
        .await
        .unwrap();
    nats.ensure_stream("RESTART", vec!["restart.>".into()])
        .await
        .unwrap();
    let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    message.destination = "restart.a".into();
    nats.publish(&message).await.unwrap();

    server.stop();
    let down = nats.publish(&message).await.unwrap_err();
    assert!(
        down.is_unavailable(),
        "while the server is down the broker is unavailable: {down}"
    );
    assert!(
        nats.check().await.is_err(),
        "the health probe sees the outage"
    );
    server.restart().await;
    let mut second = EventEnvelope::new(opened("a", 2)).to_message().unwrap();
    second.destination = "restart.a".into();
    publish_eventually(&nats, &second).await;
    nats.check().await.unwrap();
}

#[tokio::test]
async fn redis_publisher_survives_a_server_restart() {
    let mut server = Server::redis().await;
    let redis = RedisPublisher::connect(&format!("redis://{}", server.address()))
        .await
        .unwrap();
    let message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    redis.publish(&message).await.unwrap();

    server.stop();
    let down = redis.publish(&message).await.unwrap_err();
    assert!(
        down.is_unavailable(),
        "while the server is down the broker is unavailable: {down}"
    );
    server.restart().await;
    publish_eventually(&redis, &message).await;
    redis.check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publisher_survives_a_broker_restart() {
    let mut server = Server::tansu().await;
    let kafka = KafkaPublisher::connect(&server.address())
        .await
        .unwrap()
        .create_topics(true, 1, 1);
    let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    message.destination = "restart".into();
    kafka.publish(&message).await.unwrap();

    server.restart().await;
    publish_eventually(&kafka, &message).await;
    kafka.check().await.unwrap();
}

/// A TCP proxy to the shared RabbitMQ: dropping it cuts every connection through it, as a broker restart does,
/// without disturbing the other tests that use the broker.
struct Proxy(tokio::task::JoinHandle<()>);

impl Proxy {
    async fn start(listen: u16, upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen))
            .await
            .unwrap();
        Self(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops the JoinSet, which aborts every proxied connection.
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_publisher_reconnects_after_its_connection_is_cut() {
    let port = free_port();
    let proxy = Proxy::start(port, 5672).await;
    let queue = format!("reconnect-{port}");
    let rabbit = RabbitMqPublisher::connect(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .await
        .unwrap();
    // The default exchange routes to a queue named by the routing key: declare it through a direct connection.
    let direct =
        lapin::Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f", Default::default())
            .await
            .unwrap();
    let channel = direct.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    message.destination = queue.clone();
    rabbit.publish(&message).await.unwrap();

    drop(proxy);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let down = rabbit.publish(&message).await.unwrap_err();
    assert!(
        down.is_unavailable(),
        "a cut connection is the broker unavailable: {down}"
    );
    let _proxy = Proxy::start(port, 5672).await;
    publish_eventually(&rabbit, &message).await;
    rabbit.check().await.unwrap();
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
}
