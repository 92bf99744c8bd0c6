//! Logs, and traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: every request is a server span continuing the
//! caller's `traceparent`, the events it stores record it, and the relay's publishes are producer spans in the
//! same trace, exported over OTLP/HTTP (protobuf) to `$OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces`, under
//! `OTEL_SERVICE_NAME` (default `outbox-example-service`). The SDK reads the other `OTEL_*` variables
//! (`OTEL_BSP_SCHEDULE_DELAY`, ...) itself.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// What to shut down at exit: the tracer provider, which exports the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the subscriber: logs (JSON lines or text) filtered by `RUST_LOG`, and the OpenTelemetry layer
    /// when an OTLP endpoint is configured.
    pub async fn init(json_logs: bool) -> Result<Self, Box<dyn std::error::Error>> {
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        let logs = if json_logs {
            tracing_subscriber::fmt::layer().json().boxed()
        } else {
            tracing_subscriber::fmt::layer().boxed()
        };
        let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            // The exporter's blocking HTTP client must be built off the async runtime.
            Ok(_) => Some(tokio::task::spawn_blocking(provider).await??),
            Err(_) => None,
        };
        // The filter applies to the logs only: spans reach the OpenTelemetry layer whatever RUST_LOG says.
        let traces = provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-example-service"))
        });
        tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .with(traces)
            .try_init()?;
        Ok(Self { provider })
    }

    /// Exports what is still buffered.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(error) = provider.shutdown() {
                    eprintln!("error: exporting the last spans: {error}");
                }
            })
            .await;
        }
    }
}

fn provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let name =
        std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "outbox-example-service".to_owned());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .build())
}

/// A server span per request, the child of the caller's span when the request carries a `traceparent`: the events
/// the handler stores record it (see `outbox::otel`).
pub async fn trace_request(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
    );
    let caller = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<outbox::TraceContext>().ok());
    if let Some(caller) = &caller {
        outbox::otel::set_parent(&span, caller);
    }
    next.run(request).instrument(span).await
}
