//! The consumer side: 20,000 of the workload's events (100 aggregates) applied by one `outbox::consumer::Consumer`
//! with its inbox on the machine's PostgreSQL and a no-op handler (so what is measured is the consumer: the inbox
//! row, the commit, the ack), 64 messages in flight; one transaction per message, and batches of up to 64. From
//! the in-process subscription and from each broker, beside the rate at which the same messages are only
//! received and acknowledged one at a time through the same subscriber, with no database.

use std::time::{Duration, Instant};

use outbox::consumer::{
    Consumer, Context, HandlerError, InMemorySubscription, Subscriber, from_url,
};
use outbox::repository::Inbox;
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection};
use outbox::{EventEnvelope, Message};

use crate::Result;
use crate::report::Row;
use crate::workload::{UserCreated, event};

const EVENTS: usize = 20_000;
const BATCH: usize = 64;

/// A broker: its name in the table, where to publish, and how to subscribe to a destination as a group.
struct Broker {
    name: &'static str,
    publish: &'static str,
    subscribe: fn(destination: &str) -> String,
}

const BROKERS: [Broker; 4] = [
    Broker {
        name: "NATS JetStream",
        publish: "nats://127.0.0.1:4222",
        subscribe: |destination| format!("nats://127.0.0.1:4222?stream={destination}"),
    },
    Broker {
        name: "Kafka (tansu, 3 partitions)",
        publish: "kafka://127.0.0.1:9092?partitions=3",
        subscribe: |destination| format!("kafka://127.0.0.1:9092?topics={destination}"),
    },
    Broker {
        name: "RabbitMQ",
        publish: "amqp://guest:guest@127.0.0.1:5672/%2f",
        subscribe: |destination| {
            format!("amqp://guest:guest@127.0.0.1:5672/%2f?queue={destination}&prefetch=128")
        },
    },
    Broker {
        name: "Redis Streams",
        publish: "redis://127.0.0.1:6379",
        subscribe: |destination| format!("redis://127.0.0.1:6379?streams={destination}"),
    },
];

pub async fn run(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let messages: Vec<Message> = (0..EVENTS)
        .map(|i| EventEnvelope::new(event(i)).to_message())
        .collect::<std::result::Result<_, _>>()?;
    let mut rows = Vec::new();
    for batch in [1, BATCH] {
        let mut row = Row::new(
            format!("consume {EVENTS}, in-process, {}", per(batch)),
            "events/s",
        );
        for run in 0..runs {
            let subscription = InMemorySubscription::new();
            for message in &messages {
                subscription.send(message);
            }
            subscription.close();
            row.values
                .push(consume(db, subscription.subscriber(), batch, run).await?);
        }
        rows.push(row);
    }
    for broker in &BROKERS {
        if broker.name.starts_with("Kafka") && std::env::var_os("BENCH_SKIP_KAFKA").is_some() {
            continue;
        }
        let mut raw = Row::new(
            format!("receive + ack {EVENTS}, {}, no database", broker.name),
            "events/s",
        );
        let mut applied = [1, BATCH].map(|batch| {
            Row::new(
                format!("consume {EVENTS}, {}, {}", broker.name, per(batch)),
                "events/s",
            )
        });
        for run in 0..runs {
            let destination = fill(broker, &messages).await?;
            raw.values
                .push(receive_and_ack(broker, &destination).await?);
            for (row, batch) in applied.iter_mut().zip([1, BATCH]) {
                let destination = fill(broker, &messages).await?;
                let subscriber = from_url(&(broker.subscribe)(&destination), "bench").await?;
                row.values.push(consume(db, subscriber, batch, run).await?);
                clean(broker, &destination).await?;
            }
            clean(broker, &destination).await?;
        }
        rows.push(raw);
        rows.extend(applied);
    }
    Ok(rows)
}

fn per(batch: usize) -> String {
    if batch == 1 {
        "inbox on PostgreSQL, a commit per event".to_owned()
    } else {
        format!("inbox on PostgreSQL, batches of up to {batch}")
    }
}

/// Publishes `messages` to a fresh destination on `broker` (created where the broker needs it) and names it.
async fn fill(broker: &Broker, messages: &[Message]) -> Result<String> {
    let destination = format!("consumebench{}", uuid::Uuid::new_v4().simple());
    let publish = if broker.publish.starts_with("nats") {
        format!(
            "{}?stream={destination}&subjects={destination}",
            broker.publish
        )
    } else {
        broker.publish.to_owned()
    };
    if broker.publish.starts_with("amqp") {
        rabbitmq()
            .await?
            .queue_declare(
                destination.as_str().into(),
                lapin::options::QueueDeclareOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await?;
    }
    let publisher = outbox::publisher::from_url(&publish).await?;
    // Acks awaited a window at a time: JetStream's client stops sending at 5,000 acks outstanding.
    for window in messages.chunks(1000) {
        let mut acks = Vec::with_capacity(window.len());
        for message in window {
            let mut message = message.clone();
            message.destination = destination.clone();
            acks.push(publisher.send(&message).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(destination)
}

async fn clean(broker: &Broker, destination: &str) -> Result<()> {
    if broker.publish.starts_with("nats") {
        let js = async_nats::jetstream::new(async_nats::connect(broker.publish).await?);
        js.delete_stream(destination).await?;
    } else if broker.publish.starts_with("amqp") {
        rabbitmq()
            .await?
            .queue_delete(destination.into(), Default::default())
            .await?;
    } else if broker.publish.starts_with("redis") {
        let mut redis = redis::Client::open(broker.publish)?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("DEL")
            .arg(destination)
            .query_async::<()>(&mut redis)
            .await?;
    }
    // tansu keeps its topics in memory for the life of the process.
    Ok(())
}

async fn rabbitmq() -> Result<lapin::Channel> {
    let connection = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await?;
    Ok(connection.create_channel().await?)
}

/// Events per second for a consumer to apply all of `subscriber`'s messages.
async fn consume(
    db: &DatabaseConnection,
    subscriber: impl Subscriber,
    batch: usize,
    run: usize,
) -> Result<f64> {
    let inbox = Inbox::new(format!("bench-{run}"))?
        .table(&format!("bench_inbox_{}", uuid::Uuid::new_v4().simple()))?;
    inbox.create_table(db).await?;
    let consumer = Consumer::builder(db.clone(), inbox.clone())
        .handle(|_: UserCreated, _: Context| async { Ok::<_, HandlerError>(()) })
        .batch(batch)
        .build();
    let started = Instant::now();
    let done = async {
        while consumer.counts().applied() < EVENTS as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    consumer.run(subscriber, done).await;
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    for table in [
        format!("{}_dead_letters", inbox.table_name()),
        inbox.table_name().to_owned(),
    ] {
        db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
            .await?;
    }
    Ok(rate)
}

/// Events per second for one loop to receive and acknowledge `destination` through the subscriber, with nothing
/// else.
async fn receive_and_ack(broker: &Broker, destination: &str) -> Result<f64> {
    let mut subscriber = from_url(&(broker.subscribe)(destination), "raw").await?;
    let started = Instant::now();
    for _ in 0..EVENTS {
        let received = subscriber
            .receive()
            .await?
            .ok_or("the subscription ended early")?;
        received.settle.ack().await?;
    }
    Ok(EVENTS as f64 / started.elapsed().as_secs_f64())
}
