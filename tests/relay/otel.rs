//! OpenTelemetry end to end (feature `otel`): the trace of an HTTP request runs through `add_event`, the relay's
//! publish and a consumer, each span the child of the one before.

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outbox::TraceContext;
use outbox::consumer::{Consumer, Context, HandlerError, InMemorySubscription};
use outbox::publisher::InMemoryPublisher;
use outbox::relay::Relay;
use outbox::repository::Inbox;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::AccountOpened;
use outbox_tests::events::opened;
use tower::ServiceExt;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// The caller's trace, as its `traceparent` header names it.
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// An HTTP handler as a service writes it: its server span continues the caller's trace, and it stores an event.
async fn open_account(
    State(t): State<std::sync::Arc<TestDb>>,
    request: Request<Body>,
) -> StatusCode {
    let span = tracing::info_span!("POST /accounts", otel.kind = "server");
    let caller: Option<TraceContext> = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(caller) = &caller {
        outbox::otel::set_parent(&span, caller);
    }
    async { t.outbox.add_event(&t.db, opened("a", 1)).await }
        .instrument(span)
        .await
        .map_or(StatusCode::INTERNAL_SERVER_ERROR, |_| StatusCode::CREATED)
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

// On one thread: the subscriber below is this thread's default, and the relay's tasks run here too.
#[tokio::test]
async fn one_trace_runs_from_the_http_request_through_the_publish_to_the_consumer() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-tests")));
    let _default = tracing::subscriber::set_default(subscriber);

    let t = std::sync::Arc::new(TestDb::new(Backend::SqliteMemory).await);
    let app = axum::Router::new()
        .route("/accounts", axum::routing::post(open_account))
        .with_state(t.clone());
    let request = Request::post("/accounts")
        .header("traceparent", CALLER)
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.oneshot(request).await.unwrap().status(),
        StatusCode::CREATED
    );
    let stored = t.outbox.get_unpublished(&t.db, 10, 0).await.unwrap();
    let stored = stored[0]
        .traceparent
        .clone()
        .expect("add_event recorded the trace");

    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    assert_eq!(relay.publish_batch(10).await.unwrap().published, 1);
    let message = broker.messages()[0].message.clone();
    let carried: TraceContext = message.traceparent.as_deref().unwrap().parse().unwrap();
    // The other side: `outbox::consumer` continues the trace the message carries.
    let subscription = InMemorySubscription::new();
    subscription.send(&message);
    subscription.close();
    // The consuming service on PostgreSQL: on SQLite, sqlx's worker thread keeps a clone of the span current at
    // each statement, so the consumer's span would end only when that connection is used again.
    let other_side = TestDb::new(Backend::Postgres).await;
    let inbox = Inbox::new("otel")
        .unwrap()
        .table(&format!("{}_inbox", other_side.outbox.table()))
        .unwrap();
    inbox.create_table(&other_side.db).await.unwrap();
    let consumer = Consumer::builder(other_side.db.clone(), inbox.clone())
        .handle(|_: AccountOpened, _: Context| async { Ok::<_, HandlerError>(()) })
        .build();
    consumer
        .run(subscription.subscriber(), std::future::pending())
        .await;
    assert_eq!(consumer.counts().applied(), 1);
    for table in [
        format!("{}_dead_letters", inbox.table_name()),
        inbox.table_name().to_owned(),
    ] {
        other_side
            .sql(&format!("DROP TABLE IF EXISTS {table}"))
            .await;
    }
    other_side.drop_tables().await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let find = |kind: SpanKind| {
        spans
            .iter()
            .find(|s| s.span_kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} span among {spans:#?}"))
    };
    let (server, producer, consumer) = (
        find(SpanKind::Server),
        find(SpanKind::Producer),
        find(SpanKind::Consumer),
    );
    for span in [server, producer, consumer] {
        assert_eq!(
            span.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "{span:#?}"
        );
    }
    assert_eq!(server.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(
        stored,
        format!(
            "00-{}-{}-01",
            server.span_context.trace_id(),
            server.span_context.span_id()
        ),
        "the event records the request's span"
    );
    assert_eq!(producer.parent_span_id, server.span_context.span_id());
    assert_eq!(consumer.parent_span_id, producer.span_context.span_id());
    assert_eq!(consumer.name, "process com.example.account.opened");
    assert_eq!(
        attribute(consumer, "messaging.message.id"),
        Some(message.id.to_string())
    );
    assert_eq!(
        carried.traceparent(),
        format!(
            "00-{}-{}-01",
            producer.span_context.trace_id(),
            producer.span_context.span_id()
        ),
        "the message carries the publish's span"
    );
    assert_eq!(producer.name, format!("publish {}", message.destination));
    assert_eq!(
        attribute(producer, "messaging.system").as_deref(),
        Some(broker_name(&broker))
    );
    assert_eq!(
        attribute(producer, "messaging.destination.name"),
        Some(message.destination.clone())
    );
    assert_eq!(
        attribute(producer, "messaging.message.id"),
        Some(message.id.to_string())
    );
    assert_eq!(
        attribute(producer, "messaging.operation.type").as_deref(),
        Some("send")
    );
}

fn broker_name(broker: &InMemoryPublisher) -> &str {
    outbox::publisher::Publisher::name(broker)
}
