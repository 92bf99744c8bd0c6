//! The service's events: two types of one aggregate, so they share a destination and arrive in order.

use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created", source = "/user-service")]
pub struct UserCreated {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
    pub email: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.deleted", source = "/user-service")]
pub struct UserDeleted {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
}
