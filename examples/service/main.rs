//! An axum service backed by sea-orm, the way a user would build one: `POST /users` stores a user and its
//! `UserCreated` event in one transaction, `DELETE /users/{id}` records `UserDeleted`, and the relay publishes
//! them, inside this process (the default, like python-outbox-core's FastAPI lifespan) or in processes of their own.
//!
//! ```text
//! cargo run --example service                                  # SQLite file, events printed to stdout
//! DATABASE_URL=postgres://postgres@127.0.0.1/test OUTBOX_BROKER=nats://127.0.0.1:4222?stream=USERS&subjects=com.example.user \
//!   cargo run --example service -- --mode api                  # API only; run relays with --mode relay
//! curl -XPOST localhost:8080/users -H 'content-type: application/json' -d '{"email":"ada@example.com"}'
//! curl localhost:8080/health; curl localhost:8080/metrics
//! ```
//!
//! Every mode serves `GET /health` (unless `OUTBOX_ENABLE_HEALTH_CHECK=false`) and `GET /metrics`, so an
//! orchestrator can probe a relay-only process too; a relay that stops on an error or a panic stops the process,
//! which exits 1.
//!
//! Environment: `DATABASE_URL` (default `sqlite://service.db?mode=rwc`; `postgres://` and `mysql://` work),
//! `OUTBOX_BROKER` (default `stdout://`; any URL `outbox::publisher::from_url` takes), `BIND_ADDR` (default
//! `127.0.0.1:8080`), `SERVICE_MODE` or `--mode` (`all`, `api`, `relay`), `OUTBOX_TABLE`, every `OUTBOX_*`
//! setting, `RUST_LOG`, `LOG_FORMAT=json` for one JSON line per log event, `OTEL_EXPORTER_OTLP_ENDPOINT` to
//! export traces (a request's span, the events it stores, their publishes: see `telemetry.rs`). Ctrl+C or
//! SIGTERM: the HTTP server drains, the relay finishes its batch, the process exits 0.
//!
//! The contract, in every mode: `GET /asyncapi.json` (AsyncAPI 3.0 for the broker of `OUTBOX_BROKER`),
//! `GET /schemas` (the payload schemas), `GET /schemas/{type}/{version}` (one schema: the relay sets each message's
//! `dataschema` to it, under `PUBLIC_URL`, default `http://` + `BIND_ADDR`).

mod contract;
mod events;
mod http;
mod settings;
mod telemetry;

use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post};
use metrics_exporter_prometheus::PrometheusBuilder;
use outbox::health::HealthCheck;
use outbox::ops::Dashboard;
use outbox::publisher::{Publisher, from_url};
use outbox::relay::Relay;
use outbox::repository::{OutboxRepository, connect};
use outbox::sea_orm::ConnectionTrait;
use tokio::sync::watch;

use settings::{Mode, Settings};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env()?;
    let telemetry = telemetry::Telemetry::init(settings.json_logs).await?;
    let result = serve(settings).await;
    telemetry.shutdown().await;
    result
}

async fn serve(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = PrometheusBuilder::new().install_recorder()?;

    // One shutdown signal for the HTTP server and the relay, listened for before the slow start (connect,
    // migrations), so that an orchestrator's SIGTERM during start is a clean stop rather than a kill.
    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let on_signal = stop.clone();
    let signal = shutdown_signal()?;
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down");
        let _ = on_signal.send(true);
    });
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let db = connect(&settings.database_url).await?;
    // Migrations at start: the outbox table (idempotent) and the application's own table.
    outbox::migration::create_table(&db, &settings.table).await?;
    db.execute_unprepared("CREATE TABLE IF NOT EXISTS users (id VARCHAR(36) PRIMARY KEY, email VARCHAR(255) NOT NULL)")
        .await?;
    let outbox = OutboxRepository::builder()
        .table(&settings.table)
        .config(settings.outbox.clone())
        .build()?;
    let publisher: Arc<dyn Publisher> = Arc::from(from_url(&settings.broker_url).await?);

    let mut health = HealthCheck::new(db.clone(), outbox.clone(), publisher.clone());
    let mut relay_handle = None;
    // A relay that stops on its own (an error, a panic) stops the process, which exits non-zero so that an
    // orchestrator restarts it; `/health` reports it stopped meanwhile.
    let relay = if settings.mode != Mode::Api {
        let relay = Relay::builder(db.clone(), outbox.clone(), publisher.clone())
            .dataschema_base(format!("{}/schemas", settings.public_url))
            .build();
        relay_handle = Some(relay.handle());
        health = health.with_relay(relay.handle());
        let task = tokio::spawn(relay.run(until_stopped(stopped.clone())));
        let stop = stop.clone();
        Some(tokio::spawn(async move {
            let outcome = match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(format!("the relay stopped: {error}")),
                Err(join) => Err(format!("the relay task failed: {join}")),
            };
            if let Err(error) = &outcome {
                tracing::error!(%error, "shutting down");
                let _ = stop.send(true);
            }
            outcome
        }))
    } else {
        None
    };

    // The ops dashboard, in every mode: read-only unless OUTBOX_OPS_TOKEN is set.
    let ops = Dashboard::new(db.clone(), outbox.clone())
        .token(settings.ops_token.clone())
        .health(health.clone())
        .router();
    // Every mode serves the endpoints an orchestrator probes; the relay-only mode serves nothing else.
    let app = http::App {
        db,
        outbox,
        health,
        relay: relay_handle,
        metrics,
    };
    let contract = Router::new()
        .route("/asyncapi.json", get(contract::asyncapi))
        .route("/schemas", get(contract::schemas))
        .route("/schemas/{event_type}/{version}", get(contract::schema))
        .with_state(contract::Contract::new(&settings.broker_url));
    let mut router = Router::new()
        .route("/metrics", get(http::metrics))
        .nest("/ops", ops)
        .merge(contract);
    if settings.outbox.enable_health_check {
        router = router.route("/health", get(http::health));
    }
    if settings.mode != Mode::Relay {
        router = router
            .route("/users", post(http::create_user))
            .route("/users/{id}", delete(http::delete_user));
    }
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .map_err(|e| format!("BIND_ADDR={}: {e}", settings.bind))?;
    tracing::info!(addr = %settings.bind, mode = ?settings.mode, "listening");
    let router = router.layer(axum::middleware::from_fn(telemetry::trace_request));
    axum::serve(listener, router.with_state(app))
        .with_graceful_shutdown(until_stopped(stopped.clone()))
        .await?;
    if let Some(relay) = relay {
        relay.await??;
    }
    Ok(())
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, not when the future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
