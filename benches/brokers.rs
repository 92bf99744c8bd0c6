//! Drains to the real brokers: 100,000 pre-filled events published by one relay to each broker (with
//! acknowledgements / confirms / delivery reports), batch 1000, analyzed table. The destination is
//! `com.example.user` on every broker.

use std::sync::Arc;

use outbox::OutboxConfig;
use outbox::publisher::{Publisher, from_url};
use outbox::sea_orm::DatabaseConnection;

use crate::Result;
use crate::drain::{Shape, timed_drain};
use crate::report::Row;
use crate::workload::{drop_tables, fresh, prefill};

/// The NATS JetStream publisher, creating the stream `OUTBOXBENCH` for the workload's subject.
pub const NATS: &str = "nats://127.0.0.1:4222?stream=OUTBOXBENCH&subjects=com.example.user";

pub async fn run(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, url) in [
        ("NATS JetStream", NATS),
        (
            "RabbitMQ (confirms)",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ),
        ("Redis Streams", "redis://127.0.0.1:6379"),
        ("Kafka (tansu)", "kafka://127.0.0.1:9092?partitions=1"),
    ] {
        if url.starts_with("kafka") && std::env::var_os("BENCH_SKIP_KAFKA").is_some() {
            eprintln!("BENCH_SKIP_KAFKA is set: no Kafka drain");
            continue;
        }
        let mut row = Row::new(
            format!("drain 100k to {name}, 1 relay, batch 1000"),
            "events/s",
        );
        for _ in 0..runs {
            prepare(url).await?;
            let mut config = OutboxConfig::default();
            config.batch_size = 1000;
            let outbox = fresh(db, config).await?;
            prefill(db, &outbox, 100_000, true).await?;
            let publisher: Arc<dyn Publisher> = Arc::from(from_url(url).await?);
            row.values
                .push(timed_drain(db, &outbox, publisher, Shape::one()?).await?);
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
        channel
            .queue_declare(
                "com.example.user".into(),
                Default::default(),
                Default::default(),
            )
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
