use outbox::OutboxEvent;
use outbox::consumer::{Consumer, Context};
use outbox::repository::Inbox;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created")]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: u64,
}

// A handler that forgets the result type: one error, on the handler, naming the shape expected.
fn build(db: outbox::sea_orm::DatabaseConnection) -> Consumer {
    Consumer::builder(db, Inbox::new("mailer").unwrap())
        .handle(|event: UserCreated, _: Context| async move { let _ = event.user_id; })
        .build()
}

fn main() {}
