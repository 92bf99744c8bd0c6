//! Bad input and broker states: a value a broker cannot carry, a message over its size limit, a destination it
//! cannot take messages for, a server that takes no writes. Per-message faults are that message's dead letter with
//! the broker's reason; per-destination faults hold that destination only; broker-wide states back the relay off
//! without counting an attempt against any event. Each scenario accounts for every event.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use outbox::health::{HealthCheck, HealthStatus};
use outbox::publisher::{NatsPublisher, RabbitMqPublisher, RedisPublisher};
use outbox::relay::Relay;
use outbox::sea_orm::{ConnectionTrait, Statement};
use outbox::{DynEvent, EventEnvelope, OutboxConfig, OutboxEvent};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::{AccountTagged, opened, tagged};
use outbox_tests::prefixed::Prefixed;
use outbox_tests::running::Running;
use outbox_tests::servers::Server;
use serde::{Deserialize, Serialize};

use crate::brokers::{key, redis_arrivals};
use crate::ledger::{Key, Ledger, committed, serial};

const RABBIT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A retry budget small enough that a broker state mistaken for the events' failures dead-letters them quickly.
fn tight_config() -> OutboxConfig {
    let mut config = OutboxConfig::default();
    config.poll_interval = Duration::from_millis(20);
    config.max_retry_count = 2;
    config.retry_initial_delay = Duration::from_millis(50);
    config.retry_max_delay = Duration::from_millis(200);
    config.max_payload_bytes = 4 << 20;
    config
}

/// A queue of the test's own for the accounts' events, and a publisher whose messages it receives.
struct RabbitQueue {
    _connection: Connection,
    channel: Channel,
    name: String,
}

impl RabbitQueue {
    async fn declare() -> (Self, Prefixed<RabbitMqPublisher>) {
        let prefix = format!("states-{}.", uuid::Uuid::new_v4().simple());
        let name = format!("{prefix}com.example.account");
        let connection = Connection::connect(RABBIT, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672 (.ci/run starts it)");
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let publisher = Prefixed {
            inner: RabbitMqPublisher::connect(RABBIT).await.unwrap(),
            prefix,
        };
        let queue = Self {
            _connection: connection,
            channel,
            name,
        };
        (queue, publisher)
    }

    /// Everything in the queue, as keys, in arrival order; deletes the queue.
    async fn drain(self) -> Vec<Key> {
        let mut arrivals = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            arrivals.push(key(&message.delivery.data));
        }
        self.channel
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        arrivals
    }
}

/// The one dead letter, of `event_type`, whose reason says `reason`; the whole reason.
async fn the_dead_letter(t: &TestDb, event_type: &str, reason: &str) -> String {
    let dead = t.outbox.dead_letters(&t.db, 10, 0).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0].event_type, event_type);
    let error = dead[0].last_error.clone().unwrap_or_default();
    assert!(error.contains(reason), "{error}");
    error
}

/// Waits until nothing is pending (dead letters aside), at most `within`.
async fn settled(t: &TestDb, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while t.outbox.count_unpublished(&t.db).await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events still pending after {within:?}: {:#?}",
            t.outbox.get_unpublished(&t.db, 3, 0).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the issue reported: one `x-request-id` of 300 characters, stored as a correlation id, made lapin panic at
/// every publish, and the relay died on it over and over while every aggregate waited. The row is written by hand
/// here, as by a version that did not check the value yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_amqp_cannot_carry_is_a_dead_letter_and_the_rest_flows() {
    let _serial = serial().await;
    let t = TestDb::with_config(Backend::Postgres, tight_config()).await;
    let (mut ledger, events) = committed(&t, 3, 4).await;
    let (bad_key, bad_id) = events[4].clone();
    t.db.execute_raw(Statement::from_sql_and_values(
        t.db.get_database_backend(),
        format!(
            "UPDATE {} SET correlation_id = $1 WHERE event_id = $2",
            t.outbox.table()
        ),
        // 300 bytes in 150 characters: it fits the column (characters), not an AMQP short string (bytes).
        ["é".repeat(150).into(), bad_id.into()],
    ))
    .await
    .unwrap();
    ledger.committed.remove(&bad_key);
    let (queue, publisher) = RabbitQueue::declare().await;
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), publisher).build();
    let handle = relay.handle();
    let running = Running::start(relay);
    settled(&t, Duration::from_secs(30)).await;
    assert!(handle.is_running(), "the relay is still running");
    running.stop().await;
    let reason = the_dead_letter(
        &t,
        "com.example.account.opened",
        "AMQP cannot carry the correlation_id",
    )
    .await;
    ledger.tally(queue.drain().await).check(
        "6h. a value AMQP cannot carry",
        &format!(
            "a stored correlation id of 300 bytes (150 characters), RabbitMQ: dead-lettered with \"{}\"; \
             the relay kept running, the rest of its aggregate and the others delivered",
            reason
                .split("permanent rejection: ")
                .nth(1)
                .and_then(|r| r.split('`').next())
                .unwrap_or_default()
                .trim()
        ),
        0,
    );
    t.drop_tables().await;
}

/// Sets RabbitMQ's `max_message_size` for new channels; put back to the default when dropped.
struct MaxMessageSize;

impl MaxMessageSize {
    fn set(bytes: u64) -> Self {
        rabbitmq_eval(&format!(
            "application:set_env(rabbit, max_message_size, {bytes})."
        ));
        Self
    }
}

impl Drop for MaxMessageSize {
    fn drop(&mut self) {
        rabbitmq_eval("application:set_env(rabbit, max_message_size, 134217728).");
    }
}

fn rabbitmq_eval(expression: &str) {
    outbox_tests::run_command("rabbitmqctl", &["-q", "eval", expression]);
}

/// A message over RabbitMQ's size limit gets its channel closed (406). That is the message's permanent failure,
/// not the broker going away: before, the relay took it for an outage and backed off for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_rabbitmqs_size_limit_is_a_dead_letter_and_the_rest_flows() {
    let _serial = serial().await;
    let _limit = MaxMessageSize::set(1 << 20);
    let t = TestDb::with_config(Backend::Postgres, tight_config()).await;
    let mut ledger = Ledger::default();
    let mut envelopes: Vec<EventEnvelope<Box<dyn DynEvent>>> = Vec::new();
    for seq in 1..=5 {
        for account in ["agg-0", "agg-1", "agg-2"] {
            envelopes.push(EventEnvelope::new(Box::new(opened(account, seq))));
            ledger.committed.insert((account.to_owned(), seq));
        }
        if seq == 2 {
            let note = AccountTagged {
                note: "x".repeat(2 << 20),
                ..tagged("agg-0")
            };
            envelopes.push(EventEnvelope::new(Box::new(note)));
        }
    }
    t.outbox.add_events(&t.db, envelopes).await.unwrap();
    let (queue, publisher) = RabbitQueue::declare().await;
    let running = Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), publisher).build());
    settled(&t, Duration::from_secs(30)).await;
    running.stop().await;
    the_dead_letter(
        &t,
        "com.example.account.tagged",
        "larger than configured max size",
    )
    .await;
    ledger.tally(queue.drain().await).check(
        "6i. a message over RabbitMQ's size limit",
        "a 2 MiB event to RabbitMQ with `max_message_size` 1 MiB (the broker closes the channel, 406): dead-lettered \
         with the broker's reason; its aggregate's later events and the others delivered, no backoff",
        0,
    );
    t.drop_tables().await;
}

/// A subject no JetStream stream captures is that destination's trouble: its events wait with no attempt
/// counted, every other destination flows, health names the held one; once a stream captures it, its events
/// go out. Before, the relay took it for the broker being down and stopped every destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_subject_no_stream_captures_holds_only_that_subject() {
    let _serial = serial().await;
    const URL: &str = "nats://127.0.0.1:4222";
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("st{suffix}.");
    let nats = NatsPublisher::connect(URL)
        .await
        .expect("NATS on 127.0.0.1:4222 (.ci/run starts it)");
    // A stream for the accounts; none for the notes.
    let accounts = format!("A{suffix}");
    nats.ensure_stream(&accounts, vec![format!("{prefix}com.example.account")])
        .await
        .unwrap();
    let t = TestDb::with_config(Backend::Postgres, tight_config()).await;
    let (ledger, _) = committed(&t, 4, 5).await;
    let notes: Vec<EventEnvelope<Box<dyn DynEvent>>> = (1..=5)
        .map(|i| {
            EventEnvelope::new(Box::new(Misrouted {
                account: format!("note-{i}"),
            }) as Box<dyn DynEvent>)
        })
        .collect();
    t.outbox.add_events(&t.db, notes).await.unwrap();
    let publisher = Arc::new(Prefixed {
        inner: nats,
        prefix: prefix.clone(),
    });
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), publisher.clone()).build();
    let health = HealthCheck::new(t.db.clone(), t.outbox.clone(), publisher.clone())
        .with_relay(relay.handle());
    let running = Running::start(relay);
    let js = jetstream::new(async_nats::connect(URL).await.unwrap());
    let stored = async |stream: &str| -> u64 {
        match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.unwrap().state.messages,
            Err(_) => 0,
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stored(&accounts).await < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the captured subject did not flow"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Longer than the retry budget would last for events failing on their own.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = health.check_health().await;
    let relay_health = report.relay.clone().expect("a relay is attached");
    assert_eq!(relay_health.status, HealthStatus::Degraded, "{report:?}");
    let held: Vec<&str> = relay_health
        .held_destinations
        .iter()
        .map(|h| h.destination.as_str())
        .collect();
    assert_eq!(held, ["com.example.misrouted"]);
    let waiting = t.outbox.get_unpublished(&t.db, 100, 0).await.unwrap();
    assert_eq!(waiting.len(), 5);
    assert!(
        waiting.iter().all(|e| e.attempts == 0),
        "no attempt counted"
    );
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);

    let misrouted = format!("M{suffix}");
    publisher
        .inner
        .ensure_stream(&misrouted, vec![format!("{prefix}com.example.misrouted")])
        .await
        .unwrap();
    settled(&t, Duration::from_secs(30)).await;
    running.stop().await;
    assert_eq!(
        stored(&misrouted).await,
        5,
        "the held subject's events went out"
    );
    let mut stream = js.get_stream(&accounts).await.unwrap();
    let mut arrivals = Vec::new();
    for seq in 1..=stream.info().await.unwrap().state.last_sequence {
        arrivals.push(key(&stream.get_raw_message(seq).await.unwrap().payload));
    }
    for stream in [&accounts, &misrouted] {
        js.delete_stream(stream).await.unwrap();
    }
    ledger.tally(arrivals).check(
        "6j. a NATS subject no stream captures",
        "5 events to a subject without a JetStream stream beside 20 to one with: the 20 delivered while the 5 \
         waited with no attempt counted and health said `degraded` naming the subject; delivered once a stream \
         was created",
        0,
    );
    t.drop_tables().await;
}

/// An event type whose destination the test leaves without a stream.
#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.misrouted.created", source = "/accounts")]
struct Misrouted {
    #[outbox(aggregate_id)]
    account: String,
}

/// A Redis replica takes no writes (`READONLY`): the broker is unavailable as a whole, no event's retry budget
/// is spent, and once the server takes writes again everything goes out. Before, each event touched in the
/// meantime counted a failure and became a dead letter once its budget ran out, while later events flowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_server_that_takes_no_writes_backs_the_relay_off_without_spending_budgets() {
    let _serial = serial().await;
    let primary = Server::redis().await;
    let replica = Server::redis_replica(primary.port).await;
    let url = format!("redis://{}", replica.address());
    let t = TestDb::with_config(Backend::Postgres, tight_config()).await;
    let (ledger, _) = committed(&t, 4, 5).await;
    let publisher = RedisPublisher::connect(&url).await.unwrap();
    let running = Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), publisher).build());
    // Several seconds of READONLY: the retry budget (2 retries, 50-200 ms apart) would be spent many times over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        t.outbox.count_dead_letters(&t.db).await.unwrap(),
        0,
        "READONLY spent the events' budgets"
    );
    let waiting = t.outbox.get_unpublished(&t.db, 100, 0).await.unwrap();
    assert_eq!(waiting.len(), 20);
    assert!(
        waiting.iter().all(|e| e.attempts == 0),
        "no attempt counted"
    );

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async::<String>(&mut connection)
        .await
        .unwrap();
    settled(&t, Duration::from_secs(60)).await;
    running.stop().await;
    let arrivals = redis_arrivals(&mut connection).await;
    ledger.tally(arrivals).check(
        "6k. a Redis server that takes no writes",
        "the relay publishing to a Redis replica (`READONLY`) for 3 s, then `REPLICAOF NO ONE`: no attempt \
         counted, no dead letter (budget: 2 retries 50-200 ms apart); everything delivered once it took writes",
        0,
    );
    t.drop_tables().await;
}
