//! What the service publishes, for the teams that consume it: the AsyncAPI document and the payload schemas that
//! each message's `dataschema` points at.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use outbox::Registry;
use outbox::contract::{self, AsyncApi};
use serde_json::{Value, json};

/// The documents, rendered once at start from the registry.
#[derive(Clone)]
pub struct Contract {
    asyncapi: Arc<Value>,
    schemas: Arc<Value>,
}

impl Contract {
    /// The contract of the events this program links, as published to `broker_url`.
    pub fn new(broker_url: &str) -> Self {
        let registry = Registry::global();
        let asyncapi = AsyncApi::new("user-service", env!("CARGO_PKG_VERSION"))
            .description("Users, and the events their changes publish through the outbox.")
            .broker(broker_url);
        Self {
            asyncapi: Arc::new(asyncapi.document(registry)),
            schemas: Arc::new(contract::json_schemas(registry)),
        }
    }
}

/// `GET /asyncapi.json`
pub async fn asyncapi(State(contract): State<Contract>) -> Json<Value> {
    Json(contract.asyncapi.as_ref().clone())
}

/// `GET /schemas`: every payload schema, as `outbox schema jsonschema` exports them.
pub async fn schemas(State(contract): State<Contract>) -> Json<Value> {
    Json(contract.schemas.as_ref().clone())
}

/// `GET /schemas/{type}/{version}`: one payload schema, where the messages' `dataschema` points.
pub async fn schema(
    State(contract): State<Contract>,
    Path((event_type, version)): Path<(String, String)>,
) -> Response {
    match contract.schemas["events"][&event_type].get(&version) {
        Some(schema) => Json(schema.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no schema for `{event_type}` version {version}") })),
        )
            .into_response(),
    }
}
