//! Write overhead: single-row transactions with and without `add_event`, and 100-event transactions, on the
//! database of `BENCH_DATABASE_URL` (PostgreSQL, MySQL/MariaDB or SQLite).

use std::time::{Duration, Instant};

use outbox::OutboxConfig;
use outbox::repository::OutboxRepository;
use outbox::sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value,
};
use uuid::Uuid;

use crate::Result;
use crate::report::Row;
use crate::workload::{drop_tables, event, fresh};

/// Transactions per design and run, written in rounds that take turns, so that a machine whose disk or CPU
/// drifts during the run (commits here vary twofold from minute to minute) weighs on every design alike.
const PER_DESIGN: usize = 2000;
const ROUNDS: usize = 20;

pub async fn run(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let backend = db.get_database_backend();
    let mut plain = Row::new("1-row txn, no outbox", "txn/s");
    let mut with = Row::new("1-row txn + add_event", "txn/s");
    // On PostgreSQL, what the schema's parts cost: the same table without its wake-up trigger (relays then
    // poll), and without anything but its primary key, the floor of any outbox table written in the caller's
    // transaction.
    let mut variants = [
        (
            "NOTIFY trigger dropped",
            "DROP TRIGGER {t}_notify ON {t}",
        ),
        (
            "trigger and every index but the primary key dropped",
            "DROP TRIGGER {t}_notify ON {t}; ALTER TABLE {t} DROP CONSTRAINT {t}_event_id_key; \
             DO $$ DECLARE i TEXT; BEGIN FOR i IN SELECT indexname FROM pg_indexes WHERE tablename = '{t}' \
             AND indexname <> '{t}_pkey' LOOP EXECUTE 'DROP INDEX ' || i; END LOOP; END $$",
        ),
    ]
    .map(|(what, strip)| {
        (
            Row::new(format!("1-row txn + add_event, {what}"), "txn/s"),
            Row::new(format!("add_event's overhead, {what}"), "%"),
            strip,
        )
    });
    let mut overhead = Row::new("add_event's overhead on a 1-row txn", "%");
    // The change and its event through `add_event_with`: one statement on PostgreSQL and MariaDB.
    let mut in_statement = Row::new(
        "1-row txn, the row and its event in one call (add_event_with)",
        "txn/s",
    );
    let mut in_statement_overhead = Row::new("add_event_with's overhead on a 1-row txn", "%");
    let mut batch = Row::new("add_events, 100 per txn", "events/s");
    let (id_type, insert_user) = match backend {
        DbBackend::Postgres => ("UUID", "INSERT INTO {t}_users (id, email) VALUES ($1, $2)"),
        DbBackend::MySql => (
            "CHAR(36)",
            "INSERT INTO {t}_users (id, email) VALUES (?, ?)",
        ),
        _ => ("TEXT", "INSERT INTO {t}_users (id, email) VALUES (?, ?)"),
    };
    for _ in 0..runs {
        let outbox = fresh(db, OutboxConfig::default()).await?;
        let table = outbox.table().to_owned();
        db.execute_unprepared(&format!(
            "CREATE TABLE {table}_users (id {id_type} PRIMARY KEY, email TEXT NOT NULL)"
        ))
        .await?;
        let insert_user = insert_user.replace("{t}", &table);
        let mut stripped = Vec::new();
        if backend == DbBackend::Postgres {
            for (_, _, strip) in &variants {
                let repository = fresh(db, outbox.config().clone()).await?;
                db.execute_unprepared(&strip.replace("{t}", repository.table()))
                    .await?;
                stripped.push(repository);
            }
        }
        let designs: Vec<Write> = [
            Write::Plain,
            Write::AddEvent(&outbox),
            Write::InStatement(&outbox),
        ]
        .into_iter()
        .chain(stripped.iter().map(Write::AddEvent))
        .collect();
        let mut elapsed = vec![Duration::ZERO; designs.len()];
        let mut i = 0;
        for _ in 0..ROUNDS {
            for (design, took) in designs.iter().zip(&mut elapsed) {
                let start = Instant::now();
                for _ in 0..PER_DESIGN / ROUNDS {
                    one_row_txn(db, &insert_user, *design, i).await?;
                    i += 1;
                }
                *took += start.elapsed();
            }
        }
        let rate = |took: Duration| PER_DESIGN as f64 / took.as_secs_f64();
        plain.values.push(rate(elapsed[0]));
        with.values.push(rate(elapsed[1]));
        overhead
            .values
            .push((elapsed[1].as_secs_f64() / elapsed[0].as_secs_f64() - 1.0) * 100.0);
        in_statement.values.push(rate(elapsed[2]));
        in_statement_overhead
            .values
            .push((elapsed[2].as_secs_f64() / elapsed[0].as_secs_f64() - 1.0) * 100.0);
        for ((rate_row, overhead_row, _), &took) in variants.iter_mut().zip(&elapsed[3..]) {
            rate_row.values.push(rate(took));
            overhead_row
                .values
                .push((took.as_secs_f64() / elapsed[0].as_secs_f64() - 1.0) * 100.0);
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
        for repository in &stripped {
            drop_tables(db, repository).await?;
        }
    }
    let mut rows = vec![plain, with, overhead, in_statement, in_statement_overhead];
    rows.extend(
        variants
            .into_iter()
            .flat_map(|(rate, overhead, _)| [rate, overhead])
            .filter(|row| !row.values.is_empty()),
    );
    rows.push(batch);
    Ok(rows)
}

/// How a transaction of `write` stores its event.
#[derive(Clone, Copy)]
enum Write<'a> {
    /// It stores none: the transaction without the outbox.
    Plain,
    /// `add_event`, a statement of its own.
    AddEvent(&'a OutboxRepository),
    /// `add_event_with`, in the row's statement where the database allows it.
    InStatement(&'a OutboxRepository),
}

/// One transaction: a `users` row and its event, stored as `write` says.
async fn one_row_txn(
    db: &DatabaseConnection,
    insert_user: &str,
    write: Write<'_>,
    i: usize,
) -> Result<()> {
    let backend = db.get_database_backend();
    let txn = db.begin().await?;
    let id = Uuid::now_v7();
    let id: Value = if backend == DbBackend::Postgres {
        id.into()
    } else {
        id.to_string().into()
    };
    let insert = Statement::from_sql_and_values(
        backend,
        insert_user,
        [id, format!("u{i}@example.com").into()],
    );
    match write {
        Write::Plain => {
            txn.execute_raw(insert).await?;
        }
        Write::AddEvent(outbox) => {
            txn.execute_raw(insert).await?;
            outbox.add_event(&txn, event(i)).await?;
        }
        Write::InStatement(outbox) => {
            outbox.add_event_with(&txn, insert, event(i)).await?;
        }
    }
    txn.commit().await?;
    Ok(())
}
