//! The HTTP API: users, and the endpoints an orchestrator scrapes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use outbox::EventEnvelope;
use outbox::health::HealthCheck;
use outbox::relay::RelayHandle;
use outbox::repository::OutboxRepository;
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
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

/// The request's correlation id: `x-request-id` if the caller sent one.
fn correlation(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Creates a user and its `UserCreated` event in one transaction.
pub async fn create_user(
    State(app): State<App>,
    headers: HeaderMap,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<serde_json::Value>), Failure> {
    let user_id = Uuid::now_v7();
    let txn = app.db.begin().await.map_err(internal)?;
    let insert = Statement::from_sql_and_values(
        txn.get_database_backend(),
        placeholders(
            txn.get_database_backend(),
            "INSERT INTO users (id, email) VALUES (?, ?)",
        ),
        [user_id.to_string().into(), body.email.clone().into()],
    );
    txn.execute_raw(insert).await.map_err(internal)?;
    let mut event = EventEnvelope::new(UserCreated {
        user_id,
        email: body.email,
    });
    if let Some(id) = correlation(&headers) {
        event = event.with_correlation_id(id);
    }
    app.outbox.add_event(&txn, event).await.map_err(internal)?;
    txn.commit().await.map_err(internal)?;
    wake(&app);
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
    let delete = Statement::from_sql_and_values(
        txn.get_database_backend(),
        placeholders(txn.get_database_backend(), "DELETE FROM users WHERE id = ?"),
        [user_id.to_string().into()],
    );
    if txn
        .execute_raw(delete)
        .await
        .map_err(internal)?
        .rows_affected()
        == 0
    {
        return Err(Failure(StatusCode::NOT_FOUND, format!("no user {user_id}")));
    }
    let mut event = EventEnvelope::new(UserDeleted { user_id });
    if let Some(id) = correlation(&headers) {
        event = event.with_correlation_id(id);
    }
    app.outbox.add_event(&txn, event).await.map_err(internal)?;
    txn.commit().await.map_err(internal)?;
    wake(&app);
    Ok(StatusCode::NO_CONTENT)
}

/// The relay in this process hears of the commit at once (on PostgreSQL, LISTEN/NOTIFY also reaches relays in
/// other processes).
fn wake(app: &App) {
    if let Some(relay) = &app.relay {
        relay.wake();
    }
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

/// The SQL here is written with `?`; PostgreSQL numbers its placeholders.
fn placeholders(backend: outbox::sea_orm::DbBackend, sql: &str) -> String {
    if backend != outbox::sea_orm::DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut n = 0;
    sql.chars()
        .map(|c| {
            if c == '?' {
                n += 1;
                format!("${n}")
            } else {
                c.to_string()
            }
        })
        .collect()
}
