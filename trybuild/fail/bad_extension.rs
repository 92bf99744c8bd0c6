use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(
    type = "com.example.user.created",
    extension(Tenant = "eu", tenant_id = "1", averyveryverylongname1 = "x", correlationid = "y", region = "eu")
)]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: u64,
}

fn main() {}
