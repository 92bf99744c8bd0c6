//! What the commit-order cursor costs writers on MariaDB, where the writer keeps the order: concurrent writers of
//! one-row transactions with `add_event`, under rows and under the cursor with one partition (every writer takes
//! the same counter row, held to its commit) and with eight (the writers spread over them).

use std::time::Instant;

use outbox::repository::OutboxRepository;
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use outbox::{Delivery, OutboxConfig};
use uuid::Uuid;

use crate::Result;
use crate::report::Row;
use crate::workload::{drop_tables, event, fresh};

/// Transactions per writer and run.
const PER_WRITER: usize = 500;

/// The designs compared: none (no outbox), rows, the cursor over 1 and over 8 partitions.
const DESIGNS: [(&str, Option<(Delivery, u16)>); 4] = [
    ("no outbox", None),
    ("rows", Some((Delivery::Rows, 8))),
    (
        "commit-order cursor, 1 partition",
        Some((Delivery::Cursor, 1)),
    ),
    (
        "commit-order cursor, 8 partitions",
        Some((Delivery::Cursor, 8)),
    ),
];

pub async fn run(runs: usize) -> Result<Vec<Row>> {
    let url = std::env::var("BENCH_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let db = outbox::repository::connect(&url).await?;
    let mut rows = Vec::new();
    for writers in [1, 8] {
        for (design, setting) in DESIGNS {
            let label = match setting {
                None => format!("MariaDB, {writers} writer(s), 1-row txn, {design}"),
                Some(_) => format!("MariaDB, {writers} writer(s), 1-row txn + add_event, {design}"),
            };
            let mut row = Row::new(label, "txn/s");
            for _ in 0..runs {
                let mut config = OutboxConfig::default();
                if let Some((delivery, partitions)) = setting {
                    config.delivery = delivery;
                    config.partitions = partitions;
                }
                let outbox = fresh(&db, config).await?;
                let users = format!("{}_users", outbox.table());
                db.execute_unprepared(&format!(
                    "CREATE TABLE {users} (id CHAR(36) PRIMARY KEY, email VARCHAR(255) NOT NULL)"
                ))
                .await?;
                let start = Instant::now();
                let tasks: Vec<_> = (0..writers)
                    .map(|w| {
                        let (db, outbox, users) = (db.clone(), outbox.clone(), users.clone());
                        tokio::spawn(async move {
                            write(&db, &outbox, &users, w, setting.is_some()).await
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await??;
                }
                row.values
                    .push((writers * PER_WRITER) as f64 / start.elapsed().as_secs_f64());
                drop_tables(&db, &outbox).await?;
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Writer `w`'s transactions: a user row and, with `use_outbox`, its event (over the workload's 100 aggregates).
async fn write(
    db: &DatabaseConnection,
    outbox: &OutboxRepository,
    users: &str,
    w: usize,
    use_outbox: bool,
) -> Result<()> {
    for i in 0..PER_WRITER {
        let txn = db.begin().await?;
        txn.execute_raw(Statement::from_sql_and_values(
            txn.get_database_backend(),
            format!("INSERT INTO {users} (id, email) VALUES (?, ?)"),
            [
                Uuid::now_v7().to_string().into(),
                format!("u{w}-{i}@example.com").into(),
            ],
        ))
        .await?;
        if use_outbox {
            outbox.add_event(&txn, event(w * PER_WRITER + i)).await?;
        }
        txn.commit().await?;
    }
    Ok(())
}
