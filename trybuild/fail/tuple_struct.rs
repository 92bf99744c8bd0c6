use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created")]
struct UserCreated(u64, String);

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.clock.ticked")]
struct Ticked;

fn main() {}
