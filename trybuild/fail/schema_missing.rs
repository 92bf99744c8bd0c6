use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

// `#[outbox(schema)]` on a type with no `schemars::JsonSchema` (and, in this crate, without the `schema`
// feature): one error, on the attribute, that says what to add.
#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created", schema)]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: u64,
}

fn main() {}
