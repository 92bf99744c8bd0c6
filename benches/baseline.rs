//! python-outbox-core's own design, on the same database and publisher: select 100 unpublished, then for each event
//! publish, `UPDATE ... SET published = true`, commit.

use std::time::Instant;

use outbox::publisher::{InMemoryPublisher, Publisher};
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use outbox::{EventEnvelope, OutboxConfig};

use crate::Result;
use crate::report::Row;
use crate::workload::{drop_tables, event, fresh, prefill};

pub async fn run(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let n = 20_000;
    let mut row = Row::new("python-outbox-core design, 20k, in-memory", "events/s");
    for _ in 0..runs {
        let outbox = fresh(db, OutboxConfig::default()).await?;
        let table = outbox.table();
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
        drop_tables(db, &outbox).await?;
    }
    Ok(vec![row])
}
