//! The event types the foundation tests share.

use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(
    type = "com.example.user.created",
    source = "/user-service",
    version = "1.0"
)]
pub struct UserCreated {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
    pub email: String,
}

/// The same event type at a later data version: both must decode, each into its own struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(
    type = "com.example.user.created",
    source = "/user-service",
    version = "2.0"
)]
pub struct UserCreatedV2 {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(
    type = "com.example.user.deleted",
    source = "/user-service",
    extension(tenant = "eu")
)]
pub struct UserDeleted {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
}

/// Two Rust types that claim one event type and version, on purpose: the registry must report it.
pub mod conflict {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
    #[outbox(type = "com.example.conflict.made")]
    pub struct First {
        #[outbox(aggregate_id)]
        pub id: u32,
    }

    #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
    #[outbox(type = "com.example.conflict.made")]
    pub struct Second {
        #[outbox(aggregate_id)]
        pub id: u32,
    }
}
