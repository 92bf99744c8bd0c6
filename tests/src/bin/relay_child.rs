//! A relay in a process of its own, for the crash tests: the parent kills it (SIGKILL) or stops it (SIGTERM)
//! mid-flow and starts it again. It publishes into a `deliveries` table, so what arrived survives the kill.
//!
//! Usage: `relay_child <database url> <outbox table> <deliveries table> [failure fraction] [lost-ack fraction]`,
//! with `OUTBOX_*` settings from the environment (the batch, poll, lease and retry settings are the child's own).
//!
//! A failure is a publish refused before anything is delivered; a lost ack is a delivery whose success the relay
//! never hears of (the row is written with `lost_ack = true`, then the publish reports an error). The other way,
//! besides a crash between publish and mark, that a consumer receives an event twice is a publish cut by the
//! relay's publish timeout whose INSERT still commits: each cut publish is recorded in `<deliveries>_cut`.

use std::time::Duration;

use outbox::publisher::{PublishError, Publisher};
use outbox::relay::Relay;
use outbox::repository::{OutboxRepository, connect};
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use outbox::{Message, OutboxConfig};
use tokio::signal::unix::{SignalKind, signal};

/// Publishes by inserting the event into a table: the broker of these tests.
struct TableSink {
    db: DatabaseConnection,
    table: String,
    fail: f64,
    lose_ack: f64,
}

/// Records a publish dropped before it answered (the relay's publish timeout): its INSERT may still commit.
struct CutGuard<'a> {
    sink: &'a TableSink,
    event_id: String,
    answered: bool,
}

impl Drop for CutGuard<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let db = self.sink.db.clone();
        let sql = format!(
            "INSERT INTO {}_cut (event_id) VALUES ({})",
            self.sink.table,
            self.sink.placeholders(1)
        );
        let values = vec![std::mem::take(&mut self.event_id).into()];
        tokio::spawn(async move {
            let backend = db.get_database_backend();
            let _ = db
                .execute_raw(Statement::from_sql_and_values(backend, sql, values))
                .await;
        });
    }
}

impl TableSink {
    /// `n` placeholders in the database's style.
    fn placeholders(&self, n: usize) -> String {
        let mysql = self.db.get_database_backend() == outbox::sea_orm::DbBackend::MySql;
        (1..=n)
            .map(|i| {
                if mysql {
                    "?".to_owned()
                } else {
                    format!("${i}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    async fn insert(&self, message: &Message, lost_ack: bool) -> Result<(), PublishError> {
        let mut guard = CutGuard {
            sink: self,
            event_id: message.id.to_string(),
            answered: false,
        };
        let result = self.execute_insert(message, lost_ack).await;
        guard.answered = true;
        result
    }

    async fn execute_insert(&self, message: &Message, lost_ack: bool) -> Result<(), PublishError> {
        let backend = self.db.get_database_backend();
        let sql = format!(
            "INSERT INTO {} (event_id, aggregate_id, payload, lost_ack, relay) VALUES ({})",
            self.table,
            self.placeholders(5)
        );
        let values = vec![
            message.id.to_string().into(),
            message.key.clone().into(),
            message.data.get().to_owned().into(),
            lost_ack.into(),
            std::process::id().to_string().into(),
        ];
        self.db
            .execute_raw(Statement::from_sql_and_values(backend, sql, values))
            .await
            .map(drop)
            .map_err(PublishError::unavailable)
    }
}

#[async_trait::async_trait]
impl Publisher for TableSink {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        if fastrand::f64() < self.fail {
            return Err(PublishError::transient("injected failure"));
        }
        if fastrand::f64() < self.lose_ack {
            self.insert(message, true).await?;
            return Err(PublishError::transient("injected lost acknowledgement"));
        }
        self.insert(message, false).await
    }

    fn name(&self) -> &str {
        "table-sink"
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, table, sink, faults @ ..] = args.as_slice() else {
        return Err(
            "usage: relay_child <database url> <outbox table> <deliveries table> \
                    [failure fraction] [lost-ack fraction]"
                .into(),
        );
    };
    let fraction = |i: usize| -> Result<f64, String> {
        faults.get(i).map_or(Ok(0.0), |f| {
            f.parse()
                .map_err(|_| format!("fault fraction `{f}` is not a number"))
        })
    };
    // Nothing else in this binary references the events' crate, so the linker would drop it and its registrations
    // with it: register the type explicitly (the registry's documented fallback).
    outbox::Registry::global().register::<outbox_tests::events::AccountOpened>()?;
    let (fail, lose_ack) = (fraction(0)?, fraction(1)?);
    // The relay's warnings (outages, leases running out, fenced-out marks) go to the test's output, except
    // where failures are injected: each of those is a warning too, thousands of them.
    let level = if fail + lose_ack > 0.0 {
        "error"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "outbox={level}"
        )))
        .init();
    let db = connect(url).await?;
    // The parent may set any setting (`OUTBOX_CLAIM_TIMEOUT`, ...); these are the child's own defaults.
    let mut config = OutboxConfig::from_env()?;
    config.batch_size = 50;
    config.poll_interval = Duration::from_millis(50);
    config.lease_duration = Duration::from_secs(2);
    config.max_retry_count = 100;
    config.retry_initial_delay = Duration::from_millis(5);
    config.retry_max_delay = Duration::from_millis(50);
    let repository = OutboxRepository::builder()
        .table(table)
        .config(config)
        .build()?;
    let publisher = TableSink {
        db: db.clone(),
        table: sink.clone(),
        fail,
        lose_ack,
    };
    let mut terminate = signal(SignalKind::terminate())?;
    let relay = Relay::builder(db, repository, publisher)
        .shutdown_timeout(Duration::from_secs(5))
        .build();
    relay
        .run(async move {
            terminate.recv().await;
        })
        .await?;
    Ok(())
}
