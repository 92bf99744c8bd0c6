use outbox::OutboxEvent;
use outbox::consumer::{Consumer, HandlerError};
use outbox::repository::Inbox;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created")]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: u64,
}

async fn welcome(event: UserCreated) -> Result<(), HandlerError> {
    let _ = event.user_id;
    Ok(())
}

// A handler without the `Context` argument: one error that says which shape a handler has.
fn build(db: outbox::sea_orm::DatabaseConnection) -> Consumer {
    Consumer::builder(db, Inbox::new("mailer").unwrap())
        .handle::<UserCreated>(welcome)
        .build()
}

fn main() {}
