//! A consumer in a process of its own, for the crash tests: the parent kills it (SIGKILL) mid-flow and starts it
//! again, or stops it (SIGTERM). It subscribes by URL (any broker, see `outbox::consumer::from_url`) as the
//! named consumer and applies each `AccountOpened` by inserting it into an `applied` table, in the
//! transaction that records it in the inbox.
//!
//! Usage: `consumer_child <broker url> <consumer name> <database url> <inbox table> <applied table>`
//! (logs at `outbox=warn` on stderr; `CHILD_LOG` takes another filter)

use std::time::Duration;

use outbox::consumer::{Consumer, Context, HandlerError, from_url};
use outbox::repository::{Inbox, connect};
use outbox::sea_orm::{ConnectionTrait, Statement};
use outbox_tests::events::AccountOpened;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(std::env::var("CHILD_LOG").unwrap_or_else(|_| "outbox=warn".into()))
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [broker, name, database, inbox_table, applied] = args.as_slice() else {
        return Err(
            "usage: consumer_child <broker url> <consumer name> <database url> <inbox table> <applied table>"
                .into(),
        );
    };
    let db = connect(database).await?;
    let inbox = Inbox::new(name)?.table(inbox_table)?;
    inbox.create_table(&db).await?;
    let applied = applied.clone();
    let consumer = Consumer::builder(db, inbox)
        .handle(move |event: AccountOpened, ctx: Context| {
            let applied = applied.clone();
            async move {
                let insert = Statement::from_sql_and_values(
                    ctx.txn().get_database_backend(),
                    format!("INSERT INTO {applied} (event_id, account, seq) VALUES ($1, $2, $3)"),
                    [
                        ctx.delivery().id.clone().into(),
                        event.account.into(),
                        i64::from(event.seq).into(),
                    ],
                );
                ctx.txn().execute_raw(insert).await?;
                // Some work, so that a kill finds messages in flight.
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, HandlerError>(())
            }
        })
        .build();
    // The same consumer name across restarts (and, on Redis, the same member): what it left unacknowledged comes
    // back to it.
    let subscriber = from_url(broker, name).await?;
    let mut terminate = signal(SignalKind::terminate())?;
    consumer
        .run(subscriber, async move {
            terminate.recv().await;
        })
        .await;
    Ok(())
}
