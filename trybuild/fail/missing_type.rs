use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(source = "/users")]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: u64,
}

fn main() {}
