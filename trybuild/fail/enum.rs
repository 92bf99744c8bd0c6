use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.changed")]
enum UserChanged {
    Created { user_id: u64 },
    Deleted { user_id: u64 },
}

fn main() {}
