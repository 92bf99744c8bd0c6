//! Drain throughput: 100,000 pre-filled events published by one or more running relays to the in-memory
//! publisher, on PostgreSQL, an SQLite file and MariaDB.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox::publisher::{Acknowledgement, InMemoryPublisher, PublishError, Publisher};
use outbox::relay::Relay;
use outbox::repository::{OutboxRepository, connect};
use outbox::sea_orm::DatabaseConnection;
use outbox::{Delivery, Message, OutboxConfig};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::Result;
use crate::report::Row;
use crate::workload::{drop_tables, fresh, prefill};

const EVENTS: usize = 100_000;

/// How the relays drain: how many, their batch size and batches in flight, whether the table has statistics,
/// whether published rows are deleted rather than marked, and how many of an aggregate's events may await their
/// acknowledgement at once.
#[derive(Clone, Copy)]
pub struct Shape {
    pub relays: usize,
    pub batch: u32,
    pub batches_in_flight: usize,
    pub analyze: bool,
    pub delete_on_publish: bool,
    pub unacknowledged_per_aggregate: usize,
    /// Rows or the commit-order cursor (over [`PARTITIONS`] partitions).
    pub delivery: Delivery,
}

/// Partitions of the cursor's tables: enough for 4 relays to hold two each.
pub const PARTITIONS: u16 = 8;

impl Shape {
    /// One relay, batch `BENCH_BATCH` (default 1000), `BENCH_BATCHES_IN_FLIGHT` batches in flight (default 2,
    /// the library's), analyzed, rows marked published, one unacknowledged event per aggregate (the library's
    /// defaults).
    pub fn one() -> Result<Shape> {
        Ok(Shape {
            relays: 1,
            batch: crate::env("BENCH_BATCH")?.unwrap_or(1000),
            batches_in_flight: crate::service::batches_in_flight()?,
            analyze: true,
            delete_on_publish: false,
            unacknowledged_per_aggregate: 1,
            delivery: Delivery::Rows,
        })
    }
}

/// PostgreSQL: 1 and 4 relays, batches of 1000, 100 and 4000, with and without table statistics, one batch in
/// flight instead of two (claim, publish and mark one after another), published rows deleted instead of
/// marked, and the commit-order cursor.
/// `BENCH_DRAIN_ONLY` keeps the rows whose label contains it, for A/B runs and profiles of one shape.
pub async fn postgres(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let one = Shape::one()?;
    let only = std::env::var("BENCH_DRAIN_ONLY").ok();
    let mut rows = Vec::new();
    for (shape, note) in [
        (
            Shape {
                analyze: false,
                ..one
            },
            "fresh table, no statistics",
        ),
        (one, "analyzed"),
        (
            Shape {
                batches_in_flight: 1,
                ..one
            },
            "analyzed, 1 batch in flight",
        ),
        (
            Shape {
                delete_on_publish: true,
                ..one
            },
            "analyzed, delete on publish",
        ),
        (Shape { relays: 4, ..one }, "analyzed"),
        (
            Shape {
                delivery: Delivery::Cursor,
                ..one
            },
            "analyzed, commit-order cursor",
        ),
        (
            Shape {
                relays: 4,
                delivery: Delivery::Cursor,
                ..one
            },
            "analyzed, commit-order cursor",
        ),
        (Shape { batch: 100, ..one }, "analyzed"),
        // The claim's fixed cost spread over bigger batches, with rows marked and deleted.
        (Shape { batch: 4000, ..one }, "analyzed"),
        (
            Shape {
                batch: 4000,
                delete_on_publish: true,
                ..one
            },
            "analyzed, delete on publish",
        ),
        (
            Shape {
                batch: 4000,
                delivery: Delivery::Cursor,
                ..one
            },
            "analyzed, commit-order cursor",
        ),
    ] {
        let label = format!(
            "drain 100k, {} relay(s), batch {}, in-memory, {note}",
            shape.relays, shape.batch
        );
        if only.as_deref().is_none_or(|only| label.contains(only)) {
            rows.push(in_memory(db, runs, shape, label).await?);
        }
    }
    Ok(rows)
}

/// The same drain (1 relay, batch 1000, analyzed), rows and cursor, on an SQLite file in the temporary directory.
pub async fn sqlite(runs: usize) -> Result<Vec<Row>> {
    let path = std::env::temp_dir().join(format!("outbox-bench-{}.db", Uuid::new_v4().simple()));
    let db = connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
    let rows = both_deliveries(&db, runs, "SQLite file").await;
    db.close().await?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    rows
}

/// The same drain, rows and cursor, on MariaDB (`BENCH_MYSQL_URL`, default `mysql://root@127.0.0.1:3306/test`).
pub async fn mariadb(runs: usize) -> Result<Vec<Row>> {
    let url = std::env::var("BENCH_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let db = connect(&url).await?;
    both_deliveries(&db, runs, "MariaDB").await
}

/// One relay's drain under each delivery design on `db`, named after `database`.
async fn both_deliveries(db: &DatabaseConnection, runs: usize, database: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (delivery, note) in [
        (Delivery::Rows, ""),
        (Delivery::Cursor, ", commit-order cursor"),
    ] {
        let shape = Shape {
            delivery,
            ..Shape::one()?
        };
        let label = format!(
            "drain 100k, 1 relay, batch {}, in-memory, {database}{note}",
            shape.batch
        );
        rows.push(in_memory(db, runs, shape, label).await?);
    }
    Ok(rows)
}

/// `runs` drains of 100k events on fresh tables of `db` to the in-memory publisher.
async fn in_memory(
    db: &DatabaseConnection,
    runs: usize,
    shape: Shape,
    label: String,
) -> Result<Row> {
    let mut row = Row::new(label, "events/s");
    for _ in 0..runs {
        let mut config = OutboxConfig::default();
        config.batch_size = shape.batch;
        config.delete_on_publish = shape.delete_on_publish;
        config.delivery = shape.delivery;
        config.partitions = PARTITIONS;
        let outbox = fresh(db, config).await?;
        prefill(db, &outbox, EVENTS, shape.analyze).await?;
        let publisher: Arc<dyn Publisher> = Arc::new(InMemoryPublisher::new());
        row.values
            .push(timed_drain(db, &outbox, publisher, shape).await?);
        drop_tables(db, &outbox).await?;
    }
    Ok(row)
}

/// Drains the pending events of `outbox` with running relays (`Relay::run`, as a service runs them) sharing
/// `publisher`, from their start until the last one returned after the last acknowledgement (its final marks
/// included); events/s. The batch size is `outbox`'s.
pub async fn timed_drain(
    db: &DatabaseConnection,
    outbox: &OutboxRepository,
    publisher: Arc<dyn Publisher>,
    shape: Shape,
) -> Result<f64> {
    timed_drain_each(db, outbox, shape, |_| publisher.clone()).await
}

/// [`timed_drain`] with a publisher of its own for each relay, `publisher(i)` for relay `i`: relays that each
/// publish through their own connection, as relay processes do.
pub async fn timed_drain_each(
    db: &DatabaseConnection,
    outbox: &OutboxRepository,
    shape: Shape,
    publisher: impl Fn(usize) -> Arc<dyn Publisher>,
) -> Result<f64> {
    let events = outbox.count_unpublished(db).await?;
    let tally = Arc::new(Tally {
        events,
        acked: AtomicU64::new(0),
        all_acked: Notify::new(),
    });
    let name = publisher(0).name().to_owned();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let tasks: Vec<_> = (0..shape.relays)
        .map(|i| {
            let mut stopped = stopped.clone();
            let counted = Counted {
                inner: publisher(i),
                tally: tally.clone(),
            };
            let relay = Relay::builder(db.clone(), outbox.clone(), counted)
                .listen(false)
                .max_batches_in_flight(shape.batches_in_flight)
                .unacknowledged_per_aggregate(shape.unacknowledged_per_aggregate)
                .build();
            tokio::spawn(relay.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }))
        })
        .collect();
    let acked = tokio::time::timeout(Duration::from_secs(600), tally.all_acked.notified()).await;
    let _ = stop.send(true);
    for task in tasks {
        task.await??;
    }
    let elapsed = start.elapsed();
    acked.map_err(|_| format!("{name}: not drained within 600 s"))?;
    let pending = outbox.count_unpublished(db).await?;
    if pending != 0 || tally.acked.load(Ordering::Relaxed) < events {
        return Err(format!(
            "{name}: {} acknowledged, {pending} still pending",
            tally.acked.load(Ordering::Relaxed)
        )
        .into());
    }
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// Publishes batches until a claim comes back empty; how many events were published.
pub async fn until_empty(relay: &Relay, batch: u32) -> Result<u64> {
    let mut published = 0;
    loop {
        let report = relay.publish_batch(batch).await?;
        published += report.published;
        if report.claimed == 0 {
            return Ok(published);
        }
    }
}

/// Counts acknowledged publishes, to stop the relays once all `events` went out. Forwards `send` too, so
/// publishers that send ahead of acknowledgements still do.
struct Counted {
    inner: Arc<dyn Publisher>,
    tally: Arc<Tally>,
}

struct Tally {
    events: u64,
    acked: AtomicU64,
    all_acked: Notify,
}

impl Tally {
    fn acked(&self) {
        if self.acked.fetch_add(1, Ordering::Relaxed) + 1 == self.events {
            self.all_acked.notify_one();
        }
    }
}

#[async_trait::async_trait]
impl Publisher for Counted {
    async fn publish(&self, message: &Message) -> std::result::Result<(), PublishError> {
        self.inner.publish(message).await?;
        self.tally.acked();
        Ok(())
    }
    async fn send(&self, message: &Message) -> std::result::Result<Acknowledgement, PublishError> {
        let ack = self.inner.send(message).await?;
        let tally = self.tally.clone();
        Ok(Box::pin(async move {
            ack.await?;
            tally.acked();
            Ok(())
        }))
    }
    async fn check(&self) -> std::result::Result<(), PublishError> {
        self.inner.check().await
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}
