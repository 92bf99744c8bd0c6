use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.thing.created")]
struct ThingCreated<T> {
    #[outbox(aggregate_id)]
    id: u64,
    thing: T,
}

fn main() {}
