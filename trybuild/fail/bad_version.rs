use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created", version = "v1")]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: u64,
}

fn main() {}
