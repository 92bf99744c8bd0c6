//! A consumer for the service's events on any broker, on `outbox::consumer`: each event is decoded back into its
//! Rust type through the registry, applied by its typed handler in a transaction that also records it in the
//! inbox, and acknowledged after the commit; a redelivered event is acknowledged without being applied again.
//!
//! ```text
//! cargo run --example consumer -- 'nats://127.0.0.1:4222?stream=USERS'
//! cargo run --example consumer -- 'kafka://127.0.0.1:9092?topics=user'
//! cargo run --example consumer -- 'amqp://guest:guest@127.0.0.1:5672/%2f?queue=user'
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run --example consumer -- 'redis://127.0.0.1:6379?streams=user'
//! ```
//!
//! Subscribes by URL (`outbox::consumer::from_url`) as the consumer `welcome-mailer` (the JetStream durable
//! consumer, the Kafka or Redis group; from the start of the stream the first time), applies into the database of
//! `DATABASE_URL` (default SQLite in memory, so every run starts over), and stops after 5 idle seconds.

#[path = "../service/events.rs"]
mod events;

use std::time::Duration;

use outbox::consumer::{Consumer, Context, HandlerError, from_url};
use outbox::repository::{Inbox, connect};
use outbox::sea_orm::ConnectionTrait;
use outbox::sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};

use events::{UserCreated, UserDeleted};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222?stream=USERS".into());
    let database = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".into());

    let db = connect(&database).await?;
    let inbox = Inbox::new("welcome-mailer")?;
    inbox.create_table(&db).await?;
    // The consumer's own state: the welcome mails it has queued, written in the handler's transaction.
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS welcome_mails (user_id VARCHAR(36) PRIMARY KEY, email VARCHAR(255) NOT NULL)",
    )
    .await?;

    let consumer = Consumer::builder(db, inbox)
        .handle(|event: UserCreated, ctx: Context| async move {
            let insert = Query::insert()
                .into_table(Alias::new("welcome_mails"))
                .columns([Alias::new("user_id"), Alias::new("email")])
                .values([event.user_id.to_string().into(), event.email.clone().into()])?
                .to_owned();
            ctx.txn().execute(&insert).await?;
            println!("user {} signed up with {}", event.user_id, event.email);
            Ok::<_, HandlerError>(())
        })
        .handle(|event: UserDeleted, ctx: Context| async move {
            let delete = Query::delete()
                .from_table(Alias::new("welcome_mails"))
                .and_where(Expr::col(Alias::new("user_id")).eq(event.user_id.to_string()))
                .to_owned();
            ctx.txn().execute(&delete).await?;
            println!("user {} left", event.user_id);
            Ok::<_, HandlerError>(())
        })
        .build();

    let subscriber = from_url(&url, "welcome-mailer").await?;
    // Stops once nothing has happened for 5 seconds: a demo, not a service (a service stops on SIGTERM).
    let idle = async {
        let mut last = u64::MAX;
        loop {
            let counts = consumer.counts();
            let seen = counts.applied() + counts.duplicates() + counts.dead_lettered();
            if seen == last {
                break;
            }
            last = seen;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    };
    consumer.run(subscriber, idle).await;

    let counts = consumer.counts();
    println!(
        "{} distinct events handled, {} duplicate(s) already handled, {} dead letter(s)",
        counts.applied(),
        counts.duplicates(),
        counts.dead_lettered()
    );
    Ok(())
}
