use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.order.placed")]
struct OrderPlaced {
    #[outbox(aggregate_id)]
    order_id: u64,
    #[outbox(aggregate_id)]
    customer_id: u64,
}

fn main() {}
