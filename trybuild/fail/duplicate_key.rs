use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created")]
#[outbox(type = "com.example.user.registered", source = "/a", source = "/b")]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: u64,
}

fn main() {}
