use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created")]
struct UserCreated {
    user_id: u64,
    email: String,
}

fn main() {}
