//! A broker restart does not need a relay restart: private NATS, Redis and Kafka (tansu) servers on free ports,
//! stopped and started again between two publishes through the same publisher.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outbox::EventEnvelope;
use outbox::publisher::{
    KafkaPublisher, NatsPublisher, Publisher, RabbitMqPublisher, RedisPublisher,
};
use outbox_tests::events::opened;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on port {port}");
}

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
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("outbox-nats-{port}"));
    let start = || {
        Server(
            Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server (Debian's nats-server package)"),
        )
    };
    let server = start();
    wait_for_port(port).await;
    let nats = NatsPublisher::connect(&format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    nats.ensure_stream("RESTART", vec!["restart.>".into()])
        .await
        .unwrap();
    let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    message.destination = "restart.a".into();
    nats.publish(&message).await.unwrap();

    drop(server);
    let down = nats.publish(&message).await.unwrap_err();
    assert!(
        down.is_unavailable(),
        "while the server is down the broker is unavailable: {down}"
    );
    assert!(
        nats.check().await.is_err(),
        "the health probe sees the outage"
    );
    let _server = start();
    let mut second = EventEnvelope::new(opened("a", 2)).to_message().unwrap();
    second.destination = "restart.a".into();
    publish_eventually(&nats, &second).await;
    nats.check().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn redis_publisher_survives_a_server_restart() {
    let port = free_port();
    let start = || {
        Server(
            Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server"),
        )
    };
    let server = start();
    wait_for_port(port).await;
    let redis = RedisPublisher::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap();
    let message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    redis.publish(&message).await.unwrap();

    drop(server);
    let down = redis.publish(&message).await.unwrap_err();
    assert!(
        down.is_unavailable(),
        "while the server is down the broker is unavailable: {down}"
    );
    let _server = start();
    wait_for_port(port).await;
    publish_eventually(&redis, &message).await;
    redis.check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publisher_survives_a_broker_restart() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("outbox-tansu-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let listener = format!("tcp://127.0.0.1:{port}");
    // SQLite storage, relative to its working directory, so topics survive the restart.
    let start = || {
        Server(
            Command::new("tansu")
                .current_dir(&dir)
                .args([
                    "broker",
                    "--storage-engine",
                    "sqlite://tansu.db",
                    "--listener-url",
                    &listener,
                ])
                .args(["--advertised-listener-url", &listener])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tansu (.ci/run installs it)"),
        )
    };
    let server = start();
    wait_for_port(port).await;
    let kafka = KafkaPublisher::connect(&format!("127.0.0.1:{port}"))
        .await
        .unwrap()
        .create_topics(true, 1, 1);
    let mut message = EventEnvelope::new(opened("a", 1)).to_message().unwrap();
    message.destination = "restart".into();
    kafka.publish(&message).await.unwrap();

    drop(server);
    let _server = start();
    wait_for_port(port).await;
    publish_eventually(&kafka, &message).await;
    kafka.check().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
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
