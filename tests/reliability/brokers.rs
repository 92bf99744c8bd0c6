//! Brokers stopped and restarted under a running relay: it backs off, keeps the retry budgets, reports the
//! outage through `/health`'s check, and resumes by itself.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use outbox::OutboxConfig;
use outbox::health::{HealthCheck, HealthStatus};
use outbox::publisher::{
    KafkaPublisher, NatsPublisher, Publisher, RabbitMqPublisher, RedisPublisher,
};
use outbox::relay::Relay;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::AccountOpened;
use outbox_tests::prefixed::Prefixed;
use outbox_tests::redis::{Entries, parse_envelope};
use outbox_tests::running::Running;
use outbox_tests::servers::Server;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;

use crate::ledger::{Key, Ledger, serial};
use crate::writers::{Plan, Writers};

/// The key of an event from a message body (binary mode: the body is the event's JSON).
pub fn key(body: &[u8]) -> Key {
    let event: AccountOpened = serde_json::from_slice(body).expect("an AccountOpened body");
    (event.account, event.seq)
}

/// The keys of the events in the Redis stream `com.example.account`, in stream order.
pub async fn redis_arrivals(connection: &mut redis::aio::MultiplexedConnection) -> Vec<Key> {
    let entries: Entries = redis::cmd("XRANGE")
        .arg("com.example.account")
        .arg("-")
        .arg("+")
        .query_async(connection)
        .await
        .unwrap();
    entries
        .iter()
        .map(|(_, fields)| {
            let (_, data) = fields
                .iter()
                .find(|(field, _)| field == "__data__")
                .expect("a __data__ field");
            key(&parse_envelope(data).1)
        })
        .collect()
}

/// What one outage did to the relay.
struct Outage {
    ledger: Ledger,
    /// Most failed attempts any event has (with a budget of 2, a third would dead-letter it).
    max_attempts: i64,
    unhealthy_seen: bool,
}

/// Runs writers and a relay on `publisher`, takes the broker away with `stop` for 3 s, brings it back with
/// `start`, and waits until the outbox is empty.
async fn through_an_outage(
    publisher: Arc<dyn Publisher>,
    stop: impl AsyncFnOnce(),
    start: impl AsyncFnOnce(),
) -> Outage {
    let mut config = OutboxConfig::default();
    config.batch_size = 50;
    config.poll_interval = Duration::from_millis(20);
    config.max_retry_count = 2;
    config.retry_initial_delay = Duration::from_millis(10);
    config.retry_max_delay = Duration::from_millis(100);
    let t = TestDb::with_config(Backend::Postgres, config).await;
    let writers = Writers::start(
        &t,
        Plan {
            writers: 1,
            aggregates: 20,
            events_per_transaction: 5,
            pause: Duration::from_millis(10),
        },
    );
    let relay =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), publisher.clone()).build());
    let health = HealthCheck::new(t.db.clone(), t.outbox.clone(), publisher);
    writers.wait_for(200).await;
    assert_eq!(health.check_broker().await.status, HealthStatus::Healthy);

    stop().await;
    let mut unhealthy_seen = false;
    for _ in 0..30 {
        let report = health.check_health().await;
        if report.broker.status == HealthStatus::Unhealthy && report.http_status() == 503 {
            unhealthy_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    start().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while health.check_broker().await.status != HealthStatus::Healthy {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker came back healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = writers.committed();
    writers.wait_for(before + 200).await;
    let ledger = writers.stop().await;
    while t.outbox.count_unpublished(&t.db).await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay resumed and drained the outbox"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await;
    assert_eq!(
        t.outbox.count_dead_letters(&t.db).await.unwrap(),
        0,
        "no retry budget was spent"
    );
    let max_attempts = t
        .scalar("SELECT CAST(COALESCE(MAX(attempts), 0) AS BIGINT) FROM {t}")
        .await;
    t.drop_tables().await;
    Outage {
        ledger,
        max_attempts,
        unhealthy_seen,
    }
}

/// [`through_an_outage`] with `server` killed and started again; the server comes back for reading what it
/// stored.
async fn through_a_kill(publisher: Arc<dyn Publisher>, server: Server) -> (Outage, Server) {
    let server = tokio::sync::Mutex::new(server);
    let outage = through_an_outage(
        publisher,
        async || server.lock().await.stop(),
        async || server.lock().await.restart().await,
    )
    .await;
    (outage, server.into_inner())
}

impl Outage {
    fn check(&self, scenario: &str, how: &str, arrivals: Vec<Key>) {
        let tally = self.ledger.tally(arrivals);
        tally.check(
            scenario,
            &format!(
                "{how} for 3 s mid-flow; /health 503 during the outage: {}; most attempts on one event: {} of 2",
                if self.unhealthy_seen { "yes" } else { "**no**" },
                self.max_attempts
            ),
            // A publish the broker stored while the connection dropped, before its ack arrived.
            50,
        );
        assert!(
            self.unhealthy_seen,
            "{scenario}: /health reported the outage"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_under_the_relay() {
    let _serial = serial().await;
    let server = Server::nats().await;
    let url = format!("nats://{}", server.address());
    let nats = NatsPublisher::connect(&url).await.unwrap();
    nats.ensure_stream("RELIABILITY", vec!["com.>".into()])
        .await
        .unwrap();
    // Kept alive until what it stored is read.
    let (outage, _server) = through_a_kill(Arc::new(nats), server).await;

    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut stream = js.get_stream("RELIABILITY").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut arrivals = Vec::new();
    for seq in 1..=last {
        let message = stream.get_raw_message(seq).await.unwrap();
        arrivals.push(key(&message.payload));
    }
    outage.check(
        "2a. NATS JetStream server killed and restarted",
        "private `nats-server -js` SIGKILLed",
        arrivals,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_under_the_relay() {
    let _serial = serial().await;
    let server = Server::redis_persistent().await;
    let url = format!("redis://{}", server.address());
    let redis = RedisPublisher::connect(&url).await.unwrap();
    // Kept alive until what it stored is read.
    let (outage, _server) = through_a_kill(Arc::new(redis), server).await;

    let mut connection = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let arrivals = redis_arrivals(&mut connection).await;
    outage.check(
        "2d. Redis killed and restarted",
        "private `redis-server --appendonly yes` SIGKILLed",
        arrivals,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_stopped_and_restarted_under_the_relay() {
    let _serial = serial().await;
    let server = Server::tansu().await;
    let address = server.address();
    let kafka = KafkaPublisher::connect(&address)
        .await
        .unwrap()
        .create_topics(true, 1, 1);
    // Kept alive until what it stored is read.
    let (outage, _server) = through_a_kill(Arc::new(kafka), server).await;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("group.id", "reliability")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["com.example.account"]).unwrap();
    let mut arrivals = Vec::new();
    // Everything is stored (the outbox is empty): read until the topic stays quiet.
    loop {
        let quiet = Duration::from_secs(if arrivals.is_empty() { 30 } else { 3 });
        match tokio::time::timeout(quiet, consumer.recv()).await {
            Ok(message) => arrivals.push(key(message.unwrap().payload().unwrap_or_default())),
            Err(_) => break,
        }
    }
    outage.check(
        "2b. Kafka (tansu, SQLite storage) killed and restarted",
        "private `tansu broker` SIGKILLed",
        arrivals,
    );
}

/// Starts the shared RabbitMQ's application again if a test stopped it and then failed.
pub struct StartRabbitOnDrop;

impl Drop for StartRabbitOnDrop {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
    }
}

pub fn rabbitmqctl(command: &str) {
    outbox_tests::run_command("rabbitmqctl", &["-q", command]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_stopped_and_restarted_under_the_relay() {
    let _serial = serial().await;
    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    // The relay publishes to the default exchange with the destination as routing key: the queue's name.
    let prefix = format!("reliability-{}.", uuid::Uuid::new_v4().simple());
    let queue = format!("{prefix}com.example.account");
    let declare = async || {
        let connection = lapin::Connection::connect(URL, Default::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable, Default::default())
            .await
            .unwrap();
        (connection, channel)
    };
    drop(declare().await);
    let rabbit = RabbitMqPublisher::connect(URL).await.unwrap();
    let _restart_guard = StartRabbitOnDrop;
    let outage = through_an_outage(
        Arc::new(Prefixed {
            inner: rabbit,
            prefix,
        }),
        async || {
            tokio::task::spawn_blocking(|| rabbitmqctl("stop_app"))
                .await
                .unwrap()
        },
        async || {
            tokio::task::spawn_blocking(|| rabbitmqctl("start_app"))
                .await
                .unwrap()
        },
    )
    .await;

    let (_connection, channel) = declare().await;
    let mut arrivals = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        arrivals.push(key(&message.delivery.data));
    }
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    outage.check(
        "2c. RabbitMQ stopped and started",
        "the machine's RabbitMQ `rabbitmqctl stop_app`",
        arrivals,
    );
}
