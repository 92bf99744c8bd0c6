//! The benchmark harness. `cargo run --release -p outbox-bench -- [write|drain|baseline|latency|all] [runs]`
//!
//! Workload (fixed so results compare across projects): ~200-byte JSON events
//! (`{"user_id": <uuid>, "email": ..., "name": ...}`), type `com.example.user.created`, 100 aggregates, the
//! machine's PostgreSQL (`BENCH_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`). Each scenario
//! runs `runs` times (default 3) on fresh tables and prints min / median / max as a markdown table.

use std::time::Instant;

use outbox::migration::create_table;
use outbox::publisher::InMemoryPublisher;
use outbox::publisher::Publisher;
use outbox::relay::Relay;
use outbox::repository::{OutboxRepository, connect};
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use outbox::{EventEnvelope, OutboxConfig, OutboxEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created", source = "/bench")]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: Uuid,
    email: String,
    name: String,
}

fn event(i: usize) -> UserCreated {
    // 100 aggregates: the user ids cycle through 100 fixed values.
    UserCreated {
        user_id: Uuid::from_u128(0x1000 + (i % 100) as u128),
        email: format!("user{i:08}@example.com"),
        name: format!("Benchmark User Number {i:08} With A Long Name"),
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Row {
    scenario: String,
    unit: &'static str,
    values: Vec<f64>,
}

impl Row {
    fn print(&self) {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        // Latencies in milliseconds need their decimals; rates do not.
        let digits = if self.unit == "ms" { 2 } else { 0 };
        println!(
            "| {} | {:.digits$} | {:.digits$} | {:.digits$} | {} |",
            self.scenario,
            v[0],
            v[v.len() / 2],
            v[v.len() - 1],
            self.unit
        );
    }
}

async fn fresh(
    db: &DatabaseConnection,
    config: OutboxConfig,
) -> Result<(OutboxRepository, String)> {
    let table = format!("bench_{}", Uuid::new_v4().simple());
    create_table(db, &table).await?;
    db.execute_unprepared(&format!(
        "CREATE TABLE {table}_users (id UUID PRIMARY KEY, email TEXT NOT NULL)"
    ))
    .await?;
    Ok((
        OutboxRepository::builder()
            .table(&table)
            .config(config)
            .build()?,
        table,
    ))
}

async fn drop_tables(db: &DatabaseConnection, table: &str) -> Result<()> {
    for t in [
        format!("{table}_users"),
        format!("{table}_lock"),
        table.to_owned(),
    ] {
        db.execute_unprepared(&format!("DROP TABLE IF EXISTS {t}"))
            .await?;
    }
    Ok(())
}

/// Single-row transactions with and without `add_event`, and 100-event transactions.
async fn write(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let n = 2000;
    let mut plain = Row {
        scenario: "1-row txn, no outbox".into(),
        unit: "txn/s",
        values: vec![],
    };
    let mut with = Row {
        scenario: "1-row txn + add_event".into(),
        unit: "txn/s",
        values: vec![],
    };
    let mut quiet = Row {
        scenario: "1-row txn + add_event, NOTIFY trigger dropped".into(),
        unit: "txn/s",
        values: vec![],
    };
    let mut batch = Row {
        scenario: "add_events, 100 per txn".into(),
        unit: "events/s",
        values: vec![],
    };
    for _ in 0..runs {
        let (outbox, table) = fresh(db, OutboxConfig::default()).await?;
        for (row, use_outbox, notify) in [
            (&mut plain, false, true),
            (&mut with, true, true),
            (&mut quiet, true, false),
        ] {
            if !notify {
                // How much of the overhead is the wake-up signal (relays then poll).
                db.execute_unprepared(&format!("DROP TRIGGER {table}_notify ON {table}"))
                    .await?;
            }
            let start = Instant::now();
            for i in 0..n {
                let txn = db.begin().await?;
                let id = Uuid::now_v7();
                txn.execute_raw(Statement::from_sql_and_values(
                    txn.get_database_backend(),
                    format!("INSERT INTO {table}_users (id, email) VALUES ($1, $2)"),
                    [id.into(), format!("u{i}@example.com").into()],
                ))
                .await?;
                if use_outbox {
                    outbox.add_event(&txn, event(i)).await?;
                }
                txn.commit().await?;
            }
            row.values.push(n as f64 / start.elapsed().as_secs_f64());
        }
        let start = Instant::now();
        for chunk in 0..200 {
            let txn = db.begin().await?;
            outbox
                .add_events(&txn, (0..100).map(|i| event(chunk * 100 + i)))
                .await?;
            txn.commit().await?;
        }
        batch.values.push(20_000.0 / start.elapsed().as_secs_f64());
        drop_tables(db, &table).await?;
    }
    Ok(vec![plain, with, quiet, batch])
}

async fn prefill(
    db: &DatabaseConnection,
    outbox: &OutboxRepository,
    n: usize,
    analyze: bool,
) -> Result<()> {
    for chunk in 0..n / 1000 {
        outbox
            .add_events(
                db,
                (0..1000).map(|i| EventEnvelope::new(event(chunk * 1000 + i))),
            )
            .await?;
    }
    if analyze {
        // What autovacuum does to a table in service soon after its first inserts; without statistics the
        // planner believes the fresh table empty and reads every pending row per claim.
        db.execute_unprepared(&format!("ANALYZE {}", outbox.table()))
            .await?;
    }
    Ok(())
}

/// 100,000 pre-filled events drained to the in-memory publisher by 1 and by 4 relays.
async fn drain(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let n = 100_000;
    let mut rows = Vec::new();
    for (relays, batch, analyze) in [
        (1, 1000, false),
        (1, 1000, true),
        (4, 1000, true),
        (1, 100, true),
    ] {
        let stats = if analyze {
            "analyzed"
        } else {
            "fresh table, no statistics"
        };
        let mut row = Row {
            scenario: format!("drain 100k, {relays} relay(s), batch {batch}, in-memory, {stats}"),
            unit: "events/s",
            values: vec![],
        };
        for _ in 0..runs {
            let mut config = OutboxConfig::default();
            config.batch_size = batch;
            let (outbox, table) = fresh(db, config).await?;
            prefill(db, &outbox, n, analyze).await?;
            let broker = InMemoryPublisher::new();
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..relays {
                let relay = Relay::builder(db.clone(), outbox.clone(), broker.clone())
                    .listen(false)
                    .build();
                tasks.push(tokio::spawn(async move {
                    loop {
                        let report = relay.publish_batch(batch).await.expect("batch");
                        if report.claimed == 0 {
                            return;
                        }
                    }
                }));
            }
            for task in tasks {
                task.await?;
            }
            let elapsed = start.elapsed();
            assert!(broker.len() >= n, "drained {} of {n}", broker.len());
            row.values.push(n as f64 / elapsed.as_secs_f64());
            drop_tables(db, &table).await?;
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The seed's own design, on the same database and publisher: select 100 unpublished, then for each event
/// publish, `UPDATE ... SET published = true`, commit.
async fn baseline(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let n = 20_000;
    let mut row = Row {
        scenario: "seed design, 20k, in-memory".into(),
        unit: "events/s",
        values: vec![],
    };
    for _ in 0..runs {
        let (outbox, table) = fresh(db, OutboxConfig::default()).await?;
        prefill(db, &outbox, n, true).await?;
        let broker = InMemoryPublisher::new();
        let backend = db.get_database_backend();
        let start = Instant::now();
        loop {
            let rows = db
                .query_all_raw(Statement::from_string(
                    backend,
                    format!(
                        "SELECT id, payload FROM {table} WHERE status = 0 ORDER BY id LIMIT 100"
                    ),
                ))
                .await?;
            if rows.is_empty() {
                break;
            }
            for r in rows {
                let id: i64 = r.try_get_by_index(0)?;
                let message = EventEnvelope::new(event(id as usize)).to_message()?;
                broker.publish(&message).await?;
                let txn = db.begin().await?;
                txn.execute_raw(Statement::from_sql_and_values(
                    backend,
                    format!("UPDATE {table} SET status = 1 WHERE id = $1"),
                    [id.into()],
                ))
                .await?;
                txn.commit().await?;
            }
        }
        row.values.push(n as f64 / start.elapsed().as_secs_f64());
        drop_tables(db, &table).await?;
    }
    Ok(vec![row])
}

/// 100,000 pre-filled events drained by one relay to each real broker (with acknowledgements / confirms /
/// delivery reports), batch 1000, analyzed table. The destination is `com.example.user` on every broker.
async fn brokers(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let n = 100_000;
    let mut rows = Vec::new();
    for (name, url) in [
        (
            "NATS JetStream",
            "nats://127.0.0.1:4222?stream=OUTBOXBENCH&subjects=com.example.user",
        ),
        (
            "RabbitMQ (confirms)",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ),
        ("Redis Streams", "redis://127.0.0.1:6379"),
        ("Kafka (tansu)", "kafka://127.0.0.1:9092?partitions=1"),
    ] {
        let mut row = Row {
            scenario: format!("drain 100k to {name}, 1 relay, batch 1000"),
            unit: "events/s",
            values: vec![],
        };
        for _ in 0..runs {
            prepare_broker(url).await?;
            let mut config = OutboxConfig::default();
            config.batch_size = 1000;
            let (outbox, table) = fresh(db, config).await?;
            prefill(db, &outbox, n, true).await?;
            let publisher = outbox::publisher::from_url(url).await?;
            let relay = Relay::builder(db.clone(), outbox.clone(), publisher)
                .listen(false)
                .build();
            let start = Instant::now();
            let mut published = 0;
            loop {
                let report = relay.publish_batch(1000).await?;
                published += report.published;
                if report.claimed == 0 {
                    break;
                }
            }
            assert_eq!(published as usize, n, "{name}: published {published}");
            row.values.push(n as f64 / start.elapsed().as_secs_f64());
            drop_tables(db, &table).await?;
        }
        prepare_broker(url).await?;
        rows.push(row);
    }
    Ok(rows)
}

/// An empty destination `com.example.user` on the broker of `url`.
async fn prepare_broker(url: &str) -> Result<()> {
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

/// Commit-to-publish latency at a light, steady 200 events/s: single-event transactions committed every 5 ms
/// for 10 s while a relay runs with LISTEN/NOTIFY (its fallback poll at 1 s, far above what is measured).
async fn latency(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let n = 2000;
    let mut p50 = Row {
        scenario: "commit-to-publish p50, 200 events/s, LISTEN/NOTIFY".into(),
        unit: "ms",
        values: vec![],
    };
    let mut p99 = Row {
        scenario: "commit-to-publish p99, 200 events/s, LISTEN/NOTIFY".into(),
        unit: "ms",
        values: vec![],
    };
    for _ in 0..runs {
        let mut config = OutboxConfig::default();
        config.poll_interval = std::time::Duration::from_secs(1);
        config.enable_metrics = false;
        let (outbox, table) = fresh(db, config).await?;
        let broker = InMemoryPublisher::new();
        let relay = Relay::builder(db.clone(), outbox.clone(), broker.clone()).build();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let mut committed = std::collections::HashMap::with_capacity(n);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
        for i in 0..n {
            tick.tick().await;
            let id = outbox.add_event(db, event(i)).await?; // on the pool: its own transaction
            committed.insert(id, Instant::now());
        }
        while broker.len() < n {
            broker.wait_for(n, std::time::Duration::from_secs(5)).await;
        }
        let _ = stop.send(());
        task.await??;
        let mut latencies: Vec<f64> = broker
            .messages()
            .iter()
            .filter_map(|m| {
                committed
                    .get(&m.message.id)
                    .map(|c| m.at.duration_since(*c).as_secs_f64() * 1000.0)
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        p50.values.push(latencies[latencies.len() / 2]);
        p99.values.push(latencies[latencies.len() * 99 / 100]);
        drop_tables(db, &table).await?;
    }
    Ok(vec![p50, p99])
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| "all".into());
    let runs: usize = args
        .next()
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(3)
        .max(1);
    let url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let db = connect(&url).await?;
    let started = Instant::now();
    let mut rows = Vec::new();
    if matches!(scenario.as_str(), "write" | "all") {
        rows.extend(write(&db, runs).await?);
    }
    if matches!(scenario.as_str(), "drain" | "all") {
        rows.extend(drain(&db, runs).await?);
    }
    if matches!(scenario.as_str(), "baseline" | "all") {
        rows.extend(baseline(&db, runs).await?);
    }
    if matches!(scenario.as_str(), "brokers" | "all") {
        rows.extend(brokers(&db, runs).await?);
    }
    if matches!(scenario.as_str(), "latency" | "all") {
        rows.extend(latency(&db, runs).await?);
    }
    println!("| scenario | min | median | max | unit |");
    println!("|---|---|---|---|---|");
    for row in &rows {
        row.print();
    }
    eprintln!("{runs} run(s) each, {:.0?} in all", started.elapsed());
    Ok(())
}
