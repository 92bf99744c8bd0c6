//! The event type of the crate's own tests that store events.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, crate::OutboxEvent)]
#[outbox(crate = "crate", type = "com.example.tested", source = "/tests")]
pub(crate) struct Tested {
    #[outbox(aggregate_id)]
    pub(crate) id: u32,
}
