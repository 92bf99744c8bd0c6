//! The consumer side under crashes, on every broker: a consumer process (`consumer_child`, subscribed by URL) is
//! killed with SIGKILL twice under load and started again, or keeps running while the broker is stopped and
//! started; every event is applied exactly once, in order per aggregate, and a final SIGTERM leaves
//! nothing unacknowledged at the broker.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use outbox::EventEnvelope;
use outbox::publisher::from_url;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;

use crate::child::postgres_url;
use crate::ledger::serial;

const EVENTS: u32 = 3000;
const AGGREGATES: u32 = 30;

const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Clone, Copy, Debug)]
enum Broker {
    Redis,
    Nats,
    RabbitMq,
    Kafka,
}

/// Where one test's events go: the broker, and a name of its own (stream, subject, queue or topic), which is also
/// the consumer's name (its group or durable consumer), so no test's group sees another's members.
struct Route {
    broker: Broker,
    name: String,
    /// A private server, so it can be restarted: Redis with an append-only file, `nats-server -js` for NATS, and
    /// tansu on SQLite storage for Kafka, since the shared one (memory storage) answers a fetch from the middle
    /// of a multi-record batch with a later batch, skipping records (seen here as events never delivered after a
    /// restart). RabbitMQ is the machine's.
    server: Option<outbox_tests::servers::Server>,
}

impl Route {
    /// Creates what the broker needs before the first message (a JetStream stream, a queue).
    async fn prepare(broker: Broker, table: &str) -> Self {
        let name = match broker {
            Broker::Nats => format!("CRASH_{table}"),
            _ => format!("crash-{table}"),
        };
        if let Broker::RabbitMq = broker {
            let channel = rabbitmq_channel().await;
            channel
                .queue_declare(
                    name.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("declare the queue");
        }
        let server = match broker {
            Broker::Redis => Some(outbox_tests::servers::Server::redis_persistent().await),
            Broker::Nats => Some(outbox_tests::servers::Server::nats().await),
            Broker::Kafka => Some(outbox_tests::servers::Server::tansu().await),
            _ => None,
        };
        Self {
            broker,
            name,
            server,
        }
    }

    /// Stops the broker for 3 s and starts it again: RabbitMQ's application, or the private Redis, NATS or tansu
    /// killed.
    async fn restart_broker(&mut self) {
        use crate::brokers::{StartRabbitOnDrop, rabbitmqctl};
        match (self.broker, self.server.as_mut()) {
            (Broker::RabbitMq, _) => {
                let _restart_guard = StartRabbitOnDrop;
                tokio::task::spawn_blocking(|| rabbitmqctl("stop_app"))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            (Broker::Redis | Broker::Nats | Broker::Kafka, Some(server)) => {
                server.stop();
                tokio::time::sleep(Duration::from_secs(3)).await;
                server.restart().await;
            }
            (broker, _) => panic!("a restart of {broker:?} under a consumer is not written"),
        }
    }

    /// The private server's `127.0.0.1:<port>`.
    fn address(&self) -> String {
        self.server
            .as_ref()
            .expect("Redis, NATS and Kafka run a private server")
            .address()
    }

    fn private_url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.address())
    }

    fn publish_url(&self) -> String {
        match self.broker {
            Broker::Redis => self.private_url("redis"),
            Broker::Nats => format!(
                "{}?stream={1}&subjects={1}",
                self.private_url("nats"),
                self.name
            ),
            Broker::RabbitMq => RABBITMQ.to_owned(),
            Broker::Kafka => format!("kafka://{}?partitions=3", self.address()),
        }
    }

    fn subscribe_url(&self) -> String {
        match self.broker {
            Broker::Redis => format!("{}?streams={}", self.private_url("redis"), self.name),
            Broker::Nats => format!("{}?stream={}", self.private_url("nats"), self.name),
            Broker::RabbitMq => format!("{RABBITMQ}?queue={}&prefetch=64", self.name),
            // A member name, as on Redis: the restarted process takes its partitions back at once.
            Broker::Kafka => format!(
                "kafka://{}?topics={}&member=crash-member",
                self.address(),
                self.name
            ),
        }
    }

    /// Asserts that the consumer left nothing unacknowledged: no pending entry, unacked message or uncommitted
    /// offset.
    async fn assert_nothing_pending(&self) {
        match self.broker {
            Broker::Redis => {
                let mut redis = redis_connection(&self.private_url("redis")).await;
                let pending: redis::Value = redis::cmd("XPENDING")
                    .arg(&self.name)
                    .arg(&self.name)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                let redis::Value::Array(summary) = pending else {
                    panic!("XPENDING: {pending:?}")
                };
                assert_eq!(
                    summary.first(),
                    Some(&redis::Value::Int(0)),
                    "nothing left pending"
                );
            }
            Broker::Nats => {
                let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                    jetstream(&self.private_url("nats"))
                        .await
                        .get_consumer_from_stream(&self.name, &self.name)
                        .await
                        .expect("the durable consumer");
                let info = consumer.info().await.expect("consumer info");
                assert_eq!(
                    (info.num_ack_pending, info.num_pending),
                    (0, 0),
                    "nothing unacknowledged or undelivered"
                );
            }
            Broker::RabbitMq => {
                let channel = rabbitmq_channel().await;
                let queue = channel
                    .queue_declare(
                        self.name.as_str().into(),
                        lapin::options::QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        lapin::types::FieldTable::default(),
                    )
                    .await
                    .expect("the queue");
                assert_eq!(queue.message_count(), 0, "nothing left in the queue");
            }
            Broker::Kafka => {
                outbox_tests::kafka::assert_committed_to_the_end(
                    &self.address(),
                    &self.name,
                    &self.name,
                )
                .await;
            }
        }
    }

    async fn clean(&self) {
        match self.broker {
            Broker::RabbitMq => {
                let _ = rabbitmq_channel()
                    .await
                    .queue_delete(self.name.as_str().into(), Default::default())
                    .await;
            }
            // The private server goes with the route.
            Broker::Redis | Broker::Nats | Broker::Kafka => {}
        }
    }
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url}: {e}"))
}

async fn jetstream(url: &str) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(
        async_nats::connect(url)
            .await
            .unwrap_or_else(|e| panic!("NATS at {url}: {e}")),
    )
}

async fn rabbitmq_channel() -> lapin::Channel {
    lapin::Connection::connect(RABBITMQ, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672")
        .create_channel()
        .await
        .unwrap()
}

struct ConsumerProcess(Child);

impl ConsumerProcess {
    fn spawn(route: &Route, inbox: &str, applied: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_consumer_child"))
            .args([
                &route.subscribe_url(),
                &route.name,
                &postgres_url(),
                inbox,
                applied,
            ])
            .spawn()
            .expect("start the consumer process");
        Self(child)
    }

    fn kill(mut self) {
        self.0.kill().expect("SIGKILL the consumer");
        self.0.wait().expect("reap the consumer");
    }

    fn terminate(mut self) {
        outbox_tests::run_command("kill", &["-TERM", &self.0.id().to_string()]);
        let status = self.0.wait().expect("reap the consumer");
        assert!(
            status.success(),
            "the consumer exits cleanly on SIGTERM: {status}"
        );
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What happens to the consumer mid-flow.
#[derive(Clone, Copy, Debug)]
enum Disruption {
    /// SIGKILLed twice, each time started again.
    Killed,
    /// The broker stopped for 3 s under the running consumer, then started again.
    BrokerRestarted,
}

async fn under_load(broker: Broker, disruption: Disruption) {
    // One scenario at a time, like the others: a scenario that restarts PostgreSQL would cut this one's
    // connections (it did, once two scenarios' timings overlapped).
    let _serial = serial().await;
    let t = TestDb::new(Backend::Postgres).await;
    let (inbox, applied) = (
        format!("{}_inbox", t.outbox.table()),
        format!("{}_applied", t.outbox.table()),
    );
    t.sql(&format!(
        "CREATE TABLE {applied} (n BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, account TEXT NOT NULL, \
         seq BIGINT NOT NULL)"
    ))
    .await;
    let mut route = Route::prepare(broker, t.outbox.table()).await;
    let publisher = from_url(&route.publish_url())
        .await
        .unwrap_or_else(|e| panic!("{broker:?}: {e}"));
    // Acks awaited a window at a time: JetStream's client stops sending at 5,000 acks outstanding.
    for window in (0..EVENTS).collect::<Vec<_>>().chunks(1000) {
        let mut confirmations = Vec::new();
        for &seq in window {
            let mut message = EventEnvelope::new(opened(&format!("a{}", seq % AGGREGATES), seq))
                .to_message()
                .unwrap();
            message.destination = route.name.clone();
            confirmations.push(publisher.send(&message).await.unwrap());
        }
        try_join_all(confirmations).await.unwrap();
    }
    let count = |sql: &str| {
        let sql = sql.replace("{applied}", &applied);
        let t = &t;
        async move { t.scalar(&sql).await }
    };

    let applied_at_least = async |until: u32| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while count("SELECT COUNT(*) FROM {applied}").await < i64::from(until) {
            assert!(
                Instant::now() < deadline,
                "{broker:?}: the consumer stalled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let process = match disruption {
        // Killed twice mid-flow, each time once it has applied some more.
        Disruption::Killed => {
            for until in [EVENTS / 5, EVENTS / 2] {
                let process = ConsumerProcess::spawn(&route, &inbox, &applied);
                applied_at_least(until).await;
                process.kill();
            }
            ConsumerProcess::spawn(&route, &inbox, &applied)
        }
        Disruption::BrokerRestarted => {
            let process = ConsumerProcess::spawn(&route, &inbox, &applied);
            applied_at_least(EVENTS / 5).await;
            route.restart_broker().await;
            process
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while count("SELECT COUNT(DISTINCT event_id) FROM {applied}").await < i64::from(EVENTS) {
        if Instant::now() > deadline {
            let n = count("SELECT COUNT(DISTINCT event_id) FROM {applied}").await;
            panic!("{broker:?}: not everything was applied: {n} of {EVENTS}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.terminate();

    assert_eq!(
        count("SELECT COUNT(*) FROM {applied}").await,
        i64::from(EVENTS),
        "{broker:?}: nothing applied twice"
    );
    let out_of_order = count(
        "SELECT COUNT(*) FROM {applied} a JOIN {applied} b ON a.account = b.account AND a.n < b.n AND a.seq > b.seq",
    )
    .await;
    assert_eq!(
        out_of_order, 0,
        "{broker:?}: per-aggregate order across the kills"
    );
    route.assert_nothing_pending().await;

    route.clean().await;
    for table in [
        applied.clone(),
        format!("{inbox}_dead_letters"),
        inbox.clone(),
    ] {
        t.sql(&format!("DROP TABLE IF EXISTS {table}")).await;
    }
    t.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_under_load_on_redis_loses_nothing_and_applies_nothing_twice() {
    under_load(Broker::Redis, Disruption::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_under_load_on_nats_loses_nothing_and_applies_nothing_twice() {
    under_load(Broker::Nats, Disruption::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_under_load_on_rabbitmq_loses_nothing_and_applies_nothing_twice() {
    under_load(Broker::RabbitMq, Disruption::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_under_load_on_kafka_loses_nothing_and_applies_nothing_twice() {
    under_load(Broker::Kafka, Disruption::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_out_a_rabbitmq_restart_and_loses_nothing() {
    under_load(Broker::RabbitMq, Disruption::BrokerRestarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_out_a_redis_restart_and_loses_nothing() {
    under_load(Broker::Redis, Disruption::BrokerRestarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_out_a_nats_restart_and_loses_nothing() {
    under_load(Broker::Nats, Disruption::BrokerRestarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_out_a_kafka_restart_and_loses_nothing() {
    under_load(Broker::Kafka, Disruption::BrokerRestarted).await;
}
