//! Concurrent writers of one-row transactions, with and without `add_event`.
//!
//! - MariaDB, where the writer keeps the commit order under the cursor: rows, and the cursor with one partition
//!   (every writer takes the same counter row, held to its commit) and with eight (the writers spread over them).
//! - PostgreSQL, with a relay running on the table, as in service: what the table's wake-up trigger costs writers
//!   whose commits overlap (a transaction that NOTIFYs holds a database-wide lock through its commit).
//!
//! `BENCH_WRITERS_ONLY` keeps the rows whose label contains it.

use std::sync::Arc;
use std::time::Instant;

use outbox::publisher::InMemoryPublisher;
use outbox::repository::OutboxRepository;
use outbox::sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value,
};
use outbox::{Delivery, OutboxConfig};
use uuid::Uuid;

use crate::Result;
use crate::report::Row;
use crate::service::InService;
use crate::workload::{drop_tables, event, fresh};

/// Transactions per writer and run.
const PER_WRITER: usize = 500;

/// The designs compared on MariaDB: none (no outbox), rows, the cursor over 1 and over 8 partitions.
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
    let only = std::env::var("BENCH_WRITERS_ONLY").ok();
    let wanted = |label: &str| only.as_deref().is_none_or(|only| label.contains(only));
    let mut rows = mariadb(runs, &wanted).await?;
    rows.extend(postgres(runs, &wanted).await?);
    Ok(rows)
}

async fn mariadb(runs: usize, wanted: &impl Fn(&str) -> bool) -> Result<Vec<Row>> {
    let url = std::env::var("BENCH_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let mut db = None;
    let mut rows = Vec::new();
    for writers in [1, 8] {
        for (design, setting) in DESIGNS {
            let label = match setting {
                None => format!("MariaDB, {writers} writer(s), 1-row txn, {design}"),
                Some(_) => format!("MariaDB, {writers} writer(s), 1-row txn + add_event, {design}"),
            };
            if !wanted(&label) {
                continue;
            }
            let db = connected(&mut db, &url).await?;
            let mut row = Row::new(label, "txn/s");
            for _ in 0..runs {
                let mut config = OutboxConfig::default();
                if let Some((delivery, partitions)) = setting {
                    config.delivery = delivery;
                    config.partitions = partitions;
                }
                let outbox = fresh(db, config).await?;
                row.values
                    .push(rate(db, &outbox, writers, setting.is_some()).await?);
                drop_tables(db, &outbox).await?;
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// On the machine's PostgreSQL (`BENCH_DATABASE_URL`), with one relay running on the table as in service
/// (publishing to memory), so that the writers meet whatever the relay asks of them.
async fn postgres(runs: usize, wanted: &impl Fn(&str) -> bool) -> Result<Vec<Row>> {
    let url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut db = None;
    let mut rows = Vec::new();
    // What the writers do, and whether the relay listens: without the outbox; with it and a relay woken by
    // LISTEN/NOTIFY; with it and a relay that polls every 3 ms on a table without the trigger (what no
    // notification at all costs, for comparison).
    let designs = [
        ("1-row txn, no outbox", false, true),
        ("1-row txn + add_event, a relay running", true, true),
        (
            "1-row txn + add_event, a relay polling every 3 ms, trigger dropped",
            true,
            false,
        ),
    ];
    for writers in [1, 16] {
        for (design, use_outbox, listen) in designs {
            let label = format!("PostgreSQL, {writers} writer(s), {design}");
            if !wanted(&label) {
                continue;
            }
            let db = connected(&mut db, &url).await?;
            let mut row = Row::new(label, "txn/s");
            for _ in 0..runs {
                let mut config = OutboxConfig::default();
                if !listen {
                    config.poll_interval = std::time::Duration::from_millis(3);
                }
                let service =
                    InService::start(db, config, listen, Arc::new(InMemoryPublisher::new()))
                        .await?;
                if !listen {
                    let t = service.outbox.table();
                    db.execute_unprepared(&format!("DROP TRIGGER {t}_notify ON {t}"))
                        .await?;
                }
                row.values
                    .push(rate(db, &service.outbox, writers, use_outbox).await?);
                service.stop(db).await?;
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The connection to `url`, made the first time a row asks for it (so a filter that keeps none of a database's
/// rows needs no server).
async fn connected<'a>(
    db: &'a mut Option<DatabaseConnection>,
    url: &str,
) -> Result<&'a DatabaseConnection> {
    match db {
        Some(db) => Ok(db),
        None => Ok(db.insert(outbox::repository::connect(url).await?)),
    }
}

/// Transactions per second of `writers` concurrent writers, each writing [`PER_WRITER`] transactions of a
/// `users` row and, with `use_outbox`, its event.
async fn rate(
    db: &DatabaseConnection,
    outbox: &OutboxRepository,
    writers: usize,
    use_outbox: bool,
) -> Result<f64> {
    let users = format!("{}_users", outbox.table());
    let (id_type, insert) = match db.get_database_backend() {
        DbBackend::Postgres => (
            "UUID",
            format!("INSERT INTO {users} (id, email) VALUES ($1, $2)"),
        ),
        _ => (
            "CHAR(36)",
            format!("INSERT INTO {users} (id, email) VALUES (?, ?)"),
        ),
    };
    db.execute_unprepared(&format!(
        "CREATE TABLE {users} (id {id_type} PRIMARY KEY, email VARCHAR(255) NOT NULL)"
    ))
    .await?;
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (db, outbox, insert) = (db.clone(), outbox.clone(), insert.clone());
            tokio::spawn(async move { write(&db, &outbox, &insert, w, use_outbox).await })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok((writers * PER_WRITER) as f64 / start.elapsed().as_secs_f64())
}

/// Writer `w`'s transactions: a user row and, with `use_outbox`, its event (over the workload's 100 aggregates).
async fn write(
    db: &DatabaseConnection,
    outbox: &OutboxRepository,
    insert: &str,
    w: usize,
    use_outbox: bool,
) -> Result<()> {
    let backend = db.get_database_backend();
    for i in 0..PER_WRITER {
        let txn = db.begin().await?;
        let id: Value = if backend == DbBackend::Postgres {
            Uuid::now_v7().into()
        } else {
            Uuid::now_v7().to_string().into()
        };
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            insert,
            [id, format!("u{w}-{i}@example.com").into()],
        ))
        .await?;
        if use_outbox {
            outbox.add_event(&txn, event(w * PER_WRITER + i)).await?;
        }
        txn.commit().await?;
    }
    Ok(())
}
