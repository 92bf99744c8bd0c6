//! The service's events: two types of one aggregate, so they share a destination and arrive in order. Each
//! exports its payload's JSON Schema, served at `/schemas` and named in every message's `dataschema`.

use outbox::OutboxEvent;
use outbox::schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, OutboxEvent)]
#[schemars(crate = "outbox::schemars")]
#[outbox(type = "com.example.user.created", source = "/user-service", schema)]
pub struct UserCreated {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
    pub email: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, OutboxEvent)]
#[schemars(crate = "outbox::schemars")]
#[outbox(type = "com.example.user.deleted", source = "/user-service", schema)]
pub struct UserDeleted {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
}
