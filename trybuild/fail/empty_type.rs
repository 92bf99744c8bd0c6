use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "")]
struct Empty {
    #[outbox(aggregate_id)]
    id: u64,
}

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "   ")]
struct Whitespace {
    #[outbox(aggregate_id)]
    id: u64,
}

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created\r\nX-Injected: yes")]
struct HeaderBreaking {
    #[outbox(aggregate_id)]
    id: u64,
}

fn main() {}
