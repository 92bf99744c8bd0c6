//! Write overhead: single-row transactions with and without `add_event`, and 100-event transactions, on the
//! database of `BENCH_DATABASE_URL` (PostgreSQL, MySQL/MariaDB or SQLite).

use std::time::Instant;

use outbox::OutboxConfig;
use outbox::sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value,
};
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
    let backend = db.get_database_backend();
    let (id_type, insert_user) = match backend {
        DbBackend::Postgres => ("UUID", "INSERT INTO {t}_users (id, email) VALUES ($1, $2)"),
        DbBackend::MySql => ("CHAR(36)", "INSERT INTO {t}_users (id, email) VALUES (?, ?)"),
        _ => ("TEXT", "INSERT INTO {t}_users (id, email) VALUES (?, ?)"),
    };
    // Only PostgreSQL has a wake-up trigger to drop.
    let designs: &[(bool, bool)] = if backend == DbBackend::Postgres {
        &[(false, true), (true, true), (true, false)]
    } else {
        &[(false, true), (true, true)]
    };
    for _ in 0..runs {
        let outbox = fresh(db, OutboxConfig::default()).await?;
        let table = outbox.table().to_owned();
        db.execute_unprepared(&format!(
            "CREATE TABLE {table}_users (id {id_type} PRIMARY KEY, email TEXT NOT NULL)"
        ))
        .await?;
        let insert_user = insert_user.replace("{t}", &table);
        for &(use_outbox, notify) in designs {
            let row = match (use_outbox, notify) {
                (false, _) => &mut plain,
                (true, true) => &mut with,
                (true, false) => &mut quiet,
            };
            if !notify {
                // How much of the overhead is the wake-up signal (relays then poll).
                db.execute_unprepared(&format!("DROP TRIGGER {table}_notify ON {table}"))
                    .await?;
            }
            let start = Instant::now();
            for i in 0..n {
                let txn = db.begin().await?;
                let id = Uuid::now_v7();
                let id: Value = if backend == DbBackend::Postgres {
                    id.into()
                } else {
                    id.to_string().into()
                };
                txn.execute_raw(Statement::from_sql_and_values(
                    backend,
                    insert_user.as_str(),
                    [id, format!("u{i}@example.com").into()],
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
    let rows = if backend == DbBackend::Postgres {
        vec![plain, with, quiet, batch]
    } else {
        vec![plain, with, batch]
    };
    Ok(rows)
}
