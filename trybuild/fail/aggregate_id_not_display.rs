use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.blob.stored")]
struct BlobStored {
    #[outbox(aggregate_id)]
    digest: Vec<u8>,
}

fn main() {}
