//! Drains to the real brokers: 100,000 pre-filled events published by one relay to each broker (with
//! acknowledgements / confirms / delivery reports), batch 1000, analyzed table. The destination is
//! `com.example.user` on every broker. NATS, RabbitMQ and Kafka, whose publishers can send an aggregate's next
//! event before the previous acknowledgement, run once more with `BENCH_UNACKNOWLEDGED` (default 4) of them at
//! once, and both ways again with 20k events over 4 aggregates. NATS runs both ways once more over two
//! connections (`connections=2`).

use std::sync::Arc;

use outbox::publisher::{Publisher, from_url};
use outbox::sea_orm::DatabaseConnection;
use outbox::{Delivery, OutboxConfig};

use crate::Result;
use crate::drain::{Shape, timed_drain};
use crate::report::Row;
use crate::workload::{drop_tables, fresh, prefill_over};

/// The NATS JetStream publisher, creating the stream `OUTBOXBENCH` for the workload's subject.
pub const NATS: &str = "nats://127.0.0.1:4222?stream=OUTBOXBENCH&subjects=com.example.user";
/// The same over two connections, each aggregate on one.
pub const NATS_TWO_CONNECTIONS: (&str, &str) = (
    "NATS JetStream over 2 connections",
    "nats://127.0.0.1:4222?stream=OUTBOXBENCH&subjects=com.example.user&connections=2",
);
const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const KAFKA: &str = "kafka://127.0.0.1:9092?partitions=1";
const REDIS: &str = "redis://127.0.0.1:6379";

/// Each broker's name in the tables and its publisher's URL.
pub const BROKERS: [(&str, &str); 4] = [
    ("NATS JetStream", NATS),
    ("RabbitMQ (confirms)", RABBITMQ),
    ("Redis Streams", REDIS),
    ("Kafka (tansu)", KAFKA),
];

/// How many events and aggregates a drain has: the workload's 100k over 100, or few aggregates, where each
/// aggregate's wait for acknowledgements is what limits the relay.
const WORKLOAD: (usize, usize) = (100_000, 100);
const FEW_AGGREGATES: (usize, usize) = (20_000, 4);

pub async fn run(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let ahead: usize = crate::env("BENCH_UNACKNOWLEDGED")?.unwrap_or(4);
    let (rows_, cursor) = (Delivery::Rows, Delivery::Cursor);
    let mut drains = vec![
        ("NATS JetStream", NATS, WORKLOAD, 1, rows_),
        ("NATS JetStream", NATS, WORKLOAD, ahead, rows_),
        ("NATS JetStream", NATS, WORKLOAD, ahead, cursor),
        (
            NATS_TWO_CONNECTIONS.0,
            NATS_TWO_CONNECTIONS.1,
            WORKLOAD,
            ahead,
            rows_,
        ),
        (
            NATS_TWO_CONNECTIONS.0,
            NATS_TWO_CONNECTIONS.1,
            WORKLOAD,
            ahead,
            cursor,
        ),
        ("RabbitMQ (confirms)", RABBITMQ, WORKLOAD, 1, rows_),
        ("RabbitMQ (confirms)", RABBITMQ, WORKLOAD, ahead, rows_),
        ("RabbitMQ (confirms)", RABBITMQ, WORKLOAD, ahead, cursor),
        ("Redis Streams", REDIS, WORKLOAD, 1, rows_),
        ("Redis Streams", REDIS, WORKLOAD, 1, cursor),
        ("Kafka (tansu)", KAFKA, WORKLOAD, 1, rows_),
        ("Kafka (tansu)", KAFKA, WORKLOAD, ahead, rows_),
        ("Kafka (tansu)", KAFKA, WORKLOAD, ahead, cursor),
    ];
    // The few-aggregate drains measure sending ahead, which the Redis publisher does not do.
    for (name, url) in BROKERS
        .into_iter()
        .filter(|(_, url)| !url.starts_with("redis"))
    {
        drains.push((name, url, FEW_AGGREGATES, 1, rows_));
        drains.push((name, url, FEW_AGGREGATES, ahead, rows_));
    }
    // BENCH_BROKERS_ONLY keeps the rows whose label contains it.
    let only = std::env::var("BENCH_BROKERS_ONLY").ok();
    let mut rows = Vec::new();
    for (name, url, (events, aggregates), unacknowledged, delivery) in drains {
        if url.starts_with("kafka") && std::env::var_os("BENCH_SKIP_KAFKA").is_some() {
            eprintln!("BENCH_SKIP_KAFKA is set: no Kafka drain");
            continue;
        }
        let ahead = if unacknowledged > 1 {
            format!(", {unacknowledged} unacknowledged per aggregate")
        } else {
            String::new()
        };
        let few = if aggregates == WORKLOAD.1 {
            String::new()
        } else {
            format!(" over {aggregates} aggregates")
        };
        let shape = Shape {
            unacknowledged_per_aggregate: unacknowledged,
            delivery,
            ..Shape::one()?
        };
        let design = if delivery == Delivery::Cursor {
            ", commit-order cursor"
        } else {
            ""
        };
        let label = format!(
            "drain {}k{few} to {name}, 1 relay, batch {}{ahead}{design}",
            events / 1000,
            shape.batch
        );
        if only.as_deref().is_some_and(|only| !label.contains(only)) {
            continue;
        }
        let mut row = Row::new(label, "events/s");
        for _ in 0..runs {
            prepare(url).await?;
            let mut config = OutboxConfig::default();
            config.batch_size = shape.batch;
            config.delivery = delivery;
            config.partitions = crate::drain::PARTITIONS;
            let outbox = fresh(db, config).await?;
            prefill_over(db, &outbox, events, aggregates, true).await?;
            let publisher: Arc<dyn Publisher> = Arc::from(from_url(url).await?);
            row.values
                .push(timed_drain(db, &outbox, publisher, shape).await?);
            drop_tables(db, &outbox).await?;
        }
        prepare(url).await?;
        rows.push(row);
    }
    Ok(rows)
}

/// An empty destination `com.example.user` on the broker of `url` (the Kafka publisher creates its topic).
pub async fn prepare(url: &str) -> Result<()> {
    if url.starts_with("nats") {
        let js = async_nats::jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await?);
        let _ = js.delete_stream("OUTBOXBENCH").await;
    } else if url.starts_with("amqp") {
        let connection = lapin::Connection::connect(url, Default::default()).await?;
        let channel = connection.create_channel().await?;
        let _ = channel
            .queue_delete("com.example.user".into(), Default::default())
            .await;
        // BENCH_QUEUE_VERSION=2: a classic queue of RabbitMQ 3.10's second index and store format.
        let mut arguments = lapin::types::FieldTable::default();
        if let Some(version) = crate::env::<i64>("BENCH_QUEUE_VERSION")? {
            arguments.insert("x-queue-version".into(), version.into());
        }
        // BENCH_QUEUE_TYPE=classic, quorum or stream: that queue type, durable (quorum queues and streams must be).
        let mut options = lapin::options::QueueDeclareOptions::default();
        if let Some(kind) =
            crate::env::<String>("BENCH_QUEUE_TYPE")?.filter(|kind| !kind.is_empty())
        {
            arguments.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString(kind.into()),
            );
            options.durable = true;
        }
        channel
            .queue_declare("com.example.user".into(), options, arguments)
            .await?;
    } else if url.starts_with("redis") {
        let mut connection = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        let _: i64 = redis::cmd("DEL")
            .arg("com.example.user")
            .query_async(&mut connection)
            .await?;
    }
    Ok(())
}
