use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

// With `data`, the published body is not the struct, so a bare `schema` would describe the wrong thing.
#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created", data = body, schema)]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: u64,
}

fn body(event: &UserCreated) -> u64 {
    event.user_id
}

fn main() {}
