//! The quickstart: declare events, store them with a domain change in one SQLite transaction, see that a
//! rolled-back transaction leaves nothing behind, then run the relay until the outbox is empty, publishing each
//! event as a CloudEvent on stdout. Runs in about a second, no server needed.
//!
//! ```text
//! cargo run -p outbox-quickstart
//! ```

use outbox::publisher::StdoutPublisher;
use outbox::relay::Relay;
use outbox::repository::{OutboxRepository, connect};
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use outbox::{EventEnvelope, OutboxEvent, Registry};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A plain domain struct; the derive checks the declaration at compile time and registers the type.
#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox(
    type = "com.example.user.created",
    source = "/user-service",
    version = "1.0"
)]
pub struct UserCreated {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
    pub email: String,
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.deleted", source = "/user-service")]
pub struct UserDeleted {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What a relay checks and logs at start: every event type this program can decode.
    let registry = Registry::global();
    registry.validate()?;
    println!("registered event types:");
    for info in registry.entries() {
        println!(
            "  {} v{} -> {} (destination {})",
            info.meta.event_type, info.meta.data_version, info.rust_type, info.meta.destination
        );
    }

    // An in-memory SQLite database, the outbox table (idempotent; a service with sea-orm-migration runs
    // `outbox::migration::OutboxMigrator` instead), and an application table.
    let db = connect("sqlite::memory:").await?;
    outbox::migration::create_table(&db, "outbox_events").await?;
    db.execute_unprepared("CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL)")
        .await?;
    let outbox = OutboxRepository::new();

    // A user and its event, in one transaction; then its deletion, caused by the creation.
    let user_id = Uuid::now_v7();
    let created = EventEnvelope::new(UserCreated {
        user_id,
        email: "ada@example.com".into(),
    })
    .with_correlation_id("signup-request-1");
    let txn = db.begin().await?;
    txn.execute_unprepared(&format!(
        "INSERT INTO users VALUES ('{user_id}', 'ada@example.com')"
    ))
    .await?;
    outbox.add_event(&txn, created.clone()).await?;
    txn.commit().await?;

    let txn = db.begin().await?;
    txn.execute_unprepared(&format!("DELETE FROM users WHERE id = '{user_id}'"))
        .await?;
    outbox
        .add_event(
            &txn,
            EventEnvelope::new(UserDeleted { user_id }).caused_by(&created),
        )
        .await?;
    txn.commit().await?;

    // A transaction that rolls back leaves no event behind.
    let txn = db.begin().await?;
    let ghost = Uuid::now_v7();
    txn.execute_unprepared(&format!(
        "INSERT INTO users VALUES ('{ghost}', 'ghost@example.com')"
    ))
    .await?;
    outbox
        .add_event(
            &txn,
            UserCreated {
                user_id: ghost,
                email: "ghost@example.com".into(),
            },
        )
        .await?;
    txn.rollback().await?;
    println!(
        "\nafter one rolled-back signup: {} users, {} pending events",
        count(&db, "SELECT COUNT(*) FROM users").await?,
        outbox.count_unpublished(&db).await?
    );

    // The relay, publishing to stdout (one structured CloudEvent per line) until the outbox is empty. A service
    // would run `relay.run(shutdown)` as a background task instead.
    println!("\npublished CloudEvents, in order:");
    let relay = Relay::builder(db.clone(), outbox.clone(), StdoutPublisher).build();
    let mut published = 0;
    loop {
        let report = relay.publish_batch(100).await?;
        published += report.published;
        if report.claimed == 0 {
            break;
        }
    }

    let stats = outbox.stats(&db).await?;
    println!(
        "\nsummary: {} published, {} pending, {} dead letters",
        published, stats.pending, stats.dead_letters
    );
    Ok(())
}

async fn count(db: &DatabaseConnection, sql: &str) -> Result<i64, Box<dyn std::error::Error>> {
    let row = db
        .query_one_raw(outbox::sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ))
        .await?
        .ok_or("no row")?;
    Ok(row.try_get_by_index::<i64>(0)?)
}
