//! Write overhead: single-row transactions with and without `add_event`, and 100-event transactions.

use std::time::Instant;

use outbox::OutboxConfig;
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use uuid::Uuid;

use crate::Result;
use crate::report::Row;
use crate::workload::{drop_tables, event, fresh};

pub async fn run(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let n = 2000;
    let mut plain = Row::new("1-row txn, no outbox", "txn/s");
    let mut with = Row::new("1-row txn + add_event", "txn/s");
    let mut quiet = Row::new("1-row txn + add_event, NOTIFY trigger dropped", "txn/s");
    let mut batch = Row::new("add_events, 100 per txn", "events/s");
    for _ in 0..runs {
        let outbox = fresh(db, OutboxConfig::default()).await?;
        let table = outbox.table().to_owned();
        db.execute_unprepared(&format!(
            "CREATE TABLE {table}_users (id UUID PRIMARY KEY, email TEXT NOT NULL)"
        ))
        .await?;
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
        drop_tables(db, &outbox).await?;
    }
    Ok(vec![plain, with, quiet, batch])
}
