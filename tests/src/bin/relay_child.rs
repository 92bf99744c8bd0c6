//! A relay in a process of its own, for crash tests: the parent kills it with SIGKILL mid-flow and starts it
//! again. It publishes into a `deliveries` table, so what arrived survives the kill.
//!
//! Usage: `relay_child <database url> <outbox table> <deliveries table>`

use std::time::Duration;

use outbox::publisher::{PublishError, Publisher};
use outbox::relay::Relay;
use outbox::repository::{OutboxRepository, connect};
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use outbox::{Message, OutboxConfig};

/// Publishes by inserting (event id, aggregate id, payload) into a table: the broker of this test.
struct TableSink {
    db: DatabaseConnection,
    table: String,
}

#[async_trait::async_trait]
impl Publisher for TableSink {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        let backend = self.db.get_database_backend();
        let sql = format!(
            "INSERT INTO {} (event_id, aggregate_id, payload) VALUES ($1, $2, $3)",
            self.table
        );
        let values = vec![
            message.id.to_string().into(),
            message.key.clone().into(),
            message.data.get().to_owned().into(),
        ];
        self.db
            .execute_raw(Statement::from_sql_and_values(backend, sql, values))
            .await
            .map(drop)
            .map_err(PublishError::unavailable)
    }

    fn name(&self) -> &str {
        "table-sink"
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (url, table, sink) = match (args.next(), args.next(), args.next()) {
        (Some(url), Some(table), Some(sink)) => (url, table, sink),
        _ => {
            return Err(
                "usage: relay_child <database url> <outbox table> <deliveries table>".into(),
            );
        }
    };
    // Nothing else in this binary references the events' crate, so the linker would drop it and its registrations
    // with it: register the type explicitly (the registry's documented fallback).
    outbox::Registry::global().register::<outbox_tests::events::AccountOpened>()?;
    let db = connect(&url).await?;
    let mut config = OutboxConfig::default();
    config.batch_size = 50;
    config.poll_interval = Duration::from_millis(50);
    config.lease_duration = Duration::from_secs(2);
    let repository = OutboxRepository::builder()
        .table(table)
        .config(config)
        .build()?;
    let publisher = TableSink {
        db: db.clone(),
        table: sink,
    };
    let relay = Relay::builder(db, repository, publisher).build();
    relay.run(std::future::pending()).await?;
    Ok(())
}
