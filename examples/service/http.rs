//! The HTTP API: users, and the endpoints an orchestrator scrapes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use outbox::health::HealthCheck;
use outbox::relay::RelayHandle;
use outbox::repository::{OutboxRepository, RepositoryError};
use outbox::sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait};
use outbox::{EventEnvelope, OutboxEvent};
use serde::Deserialize;
use uuid::Uuid;

use crate::events::{UserCreated, UserDeleted};

#[derive(Clone)]
pub struct App {
    pub db: DatabaseConnection,
    pub outbox: OutboxRepository,
    pub health: HealthCheck,
    pub relay: Option<RelayHandle>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

#[derive(Deserialize)]
pub struct NewUser {
    email: String,
}

/// Errors as HTTP responses: the cause is logged, the client gets a status and a short reason.
pub struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn internal(error: impl std::fmt::Display) -> Failure {
    tracing::error!(%error, "request failed");
    Failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
}

/// The longest `x-request-id` taken: it becomes the events' correlation id, which brokers carry in at most 255
/// bytes (an AMQP short string).
const MAX_REQUEST_ID: usize = outbox::limits::MAX_SHORT;

/// The request's correlation id: `x-request-id` if the caller sent one. One that no broker could carry (over 255
/// bytes, or not visible ASCII) is refused with 400 rather than stored.
fn correlation(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    let Some(value) = headers.get("x-request-id") else {
        return Ok(None);
    };
    let bad = || {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("x-request-id must be 1 to {MAX_REQUEST_ID} visible ASCII characters"),
        )
    };
    let id = value.to_str().map_err(|_| bad())?;
    let visible = !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic());
    if !visible || id.len() > MAX_REQUEST_ID {
        return Err(bad());
    }
    Ok(Some(id.to_owned()))
}

/// The event could not be stored: 400 when it holds a value no broker could carry (the caller's input, see
/// `outbox::limits`), 500 otherwise.
fn not_stored(error: RepositoryError) -> Failure {
    match error {
        RepositoryError::InvalidEvent(invalid) => {
            Failure(StatusCode::BAD_REQUEST, invalid.to_string())
        }
        other => internal(other),
    }
}

/// Creates a user and its `UserCreated` event in one transaction.
pub async fn create_user(
    State(app): State<App>,
    headers: HeaderMap,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<serde_json::Value>), Failure> {
    let user_id = Uuid::now_v7();
    let txn = app.db.begin().await.map_err(internal)?;
    let insert = Query::insert()
        .into_table(Alias::new("users"))
        .columns([Alias::new("id"), Alias::new("email")])
        .values_panic([user_id.to_string().into(), body.email.clone().into()])
        .to_owned();
    txn.execute(&insert).await.map_err(internal)?;
    let event = UserCreated {
        user_id,
        email: body.email,
    };
    commit_with_event(&app, txn, &headers, event).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": user_id })),
    ))
}

/// Deletes a user and records `UserDeleted`, in one transaction.
pub async fn delete_user(
    State(app): State<App>,
    headers: HeaderMap,
    Path(user_id): Path<Uuid>,
) -> Result<StatusCode, Failure> {
    let txn = app.db.begin().await.map_err(internal)?;
    let delete = Query::delete()
        .from_table(Alias::new("users"))
        .and_where(ExprTrait::eq(
            Expr::col(Alias::new("id")),
            user_id.to_string(),
        ))
        .to_owned();
    if txn
        .execute(&delete)
        .await
        .map_err(internal)?
        .rows_affected()
        == 0
    {
        return Err(Failure(StatusCode::NOT_FOUND, format!("no user {user_id}")));
    }
    commit_with_event(&app, txn, &headers, UserDeleted { user_id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds `event` to the transaction that made the change (with the request's correlation id), commits both
/// together, and wakes the relay in this process, which hears of the commit at once (on PostgreSQL,
/// LISTEN/NOTIFY also reaches relays in other processes).
async fn commit_with_event<E: OutboxEvent>(
    app: &App,
    txn: DatabaseTransaction,
    headers: &HeaderMap,
    event: E,
) -> Result<(), Failure> {
    let mut event = EventEnvelope::new(event);
    if let Some(id) = correlation(headers)? {
        event = event.with_correlation_id(id);
    }
    app.outbox
        .add_event(&txn, event)
        .await
        .map_err(not_stored)?;
    txn.commit().await.map_err(internal)?;
    if let Some(relay) = &app.relay {
        relay.wake();
    }
    Ok(())
}

/// 200 when healthy or degraded, 503 when unhealthy; the report as JSON.
pub async fn health(State(app): State<App>) -> Response {
    let report = app.health.check_health().await;
    let status =
        StatusCode::from_u16(report.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (status, Json(report)).into_response()
}

/// Prometheus text format.
pub async fn metrics(State(app): State<App>) -> String {
    app.metrics.render()
}
