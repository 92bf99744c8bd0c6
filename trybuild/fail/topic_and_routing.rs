use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created", topic = "users", routing = "event_type")]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: u64,
}

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.deleted", routing = "by_type")]
struct UserDeleted {
    #[outbox(aggregate_id)]
    user_id: u64,
}

fn main() {}
