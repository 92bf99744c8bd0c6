use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created", sorce = "/users", colour = "blue")]
struct UserCreated {
    #[outbox(agregate_id)]
    user_id: u64,
}

fn main() {}
