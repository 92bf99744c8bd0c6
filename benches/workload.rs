//! The workload every scenario shares (fixed so results compare across projects): ~200-byte JSON
//! `UserCreated` events over 100 aggregates, stored in a fresh outbox table per run.

use outbox::migration::create_table;
use outbox::repository::OutboxRepository;
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, TransactionTrait};
use outbox::{EventEnvelope, OutboxConfig, OutboxEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Result;

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created", source = "/bench")]
pub struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: Uuid,
    email: String,
    name: String,
}

/// The `i`-th event of the workload, over its 100 aggregates.
pub fn event(i: usize) -> UserCreated {
    event_over(i, 100)
}

/// The `i`-th event with `aggregates` aggregates: the user ids cycle through that many fixed values.
pub fn event_over(i: usize, aggregates: usize) -> UserCreated {
    UserCreated {
        user_id: Uuid::from_u128(0x1000 + (i % aggregates) as u128),
        email: format!("user{i:08}@example.com"),
        name: format!("Benchmark User Number {i:08} With A Long Name"),
    }
}

/// A new outbox table with a unique name, and a repository on it. `BENCH_DELIVERY=cursor` runs every scenario
/// that does not choose for itself (latency, sustained, stability, write) under the commit-order cursor, over
/// [`PARTITIONS`](crate::drain::PARTITIONS) partitions.
pub async fn fresh(db: &DatabaseConnection, mut config: OutboxConfig) -> Result<OutboxRepository> {
    if std::env::var("BENCH_DELIVERY").as_deref() == Ok("cursor") {
        config.delivery = outbox::Delivery::Cursor;
        config.partitions = crate::env("BENCH_PARTITIONS")
            .ok()
            .flatten()
            .unwrap_or(crate::drain::PARTITIONS);
    }
    let table = format!("bench_{}", Uuid::new_v4().simple());
    create_table(db, &table).await?;
    Ok(OutboxRepository::builder()
        .table(&table)
        .config(config)
        .build()?)
}

/// Drops the outbox table of `outbox` and the tables that go with it.
pub async fn drop_tables(db: &DatabaseConnection, outbox: &OutboxRepository) -> Result<()> {
    let table = outbox.table();
    for t in [
        format!("{table}_users"),
        format!("{table}_lock"),
        format!("{table}_relays"),
        format!("{table}_cursors"),
        format!("{table}_parked"),
        format!("{table}_sequences"),
        table.to_owned(),
    ] {
        db.execute_unprepared(&format!("DROP TABLE IF EXISTS {t}"))
            .await?;
    }
    Ok(())
}

/// Stores `n` events of the workload, 1000 per statement pair, each its own transaction.
pub async fn prefill(
    db: &DatabaseConnection,
    outbox: &OutboxRepository,
    n: usize,
    analyze: bool,
) -> Result<()> {
    prefill_over(db, outbox, n, 100, analyze).await
}

/// [`prefill`] with `aggregates` aggregates instead of the workload's 100.
pub async fn prefill_over(
    db: &DatabaseConnection,
    outbox: &OutboxRepository,
    n: usize,
    aggregates: usize,
    analyze: bool,
) -> Result<()> {
    for chunk in 0..n / 1000 {
        // A transaction each: MySQL under the cursor numbers events only inside one.
        let txn = db.begin().await?;
        outbox
            .add_events(
                &txn,
                (0..1000).map(|i| EventEnvelope::new(event_over(chunk * 1000 + i, aggregates))),
            )
            .await?;
        txn.commit().await?;
    }
    if analyze {
        // What autovacuum does to a table in service soon after its first inserts; without statistics the
        // planner believes the fresh table empty and reads every pending row per claim.
        let keyword = match db.get_database_backend() {
            DbBackend::MySql => "ANALYZE TABLE",
            _ => "ANALYZE",
        };
        db.execute_unprepared(&format!("{keyword} {}", outbox.table()))
            .await?;
    }
    Ok(())
}
