//! What every broker test shares: isolated destinations, a batch of events for two aggregates, the relay run.

use std::collections::HashMap;

use outbox::EventEnvelope;
use outbox::publisher::Publisher;
use outbox::relay::Relay;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::{AccountClosed, opened};
use uuid::Uuid;

pub use outbox_tests::prefixed::Prefixed;

pub fn suffix() -> String {
    format!("{:012x}", Uuid::new_v4().as_u128() & 0xffff_ffff_ffff)
}

/// What a test wrote: event ids in write order, per aggregate.
pub struct Written {
    pub ids: Vec<Uuid>,
    pub by_aggregate: HashMap<String, Vec<Uuid>>,
    pub correlation: String,
}

/// Writes `n` events alternating between aggregates `a` and `b` (opened ×(n-2), then one closed each), all with
/// one correlation id, then publishes them with a relay through `publisher`, up to 4 of an aggregate's events
/// unacknowledged at once.
pub async fn write_and_relay(publisher: impl Publisher, n: u32) -> Written {
    let t = TestDb::new(Backend::SqliteMemory).await;
    let correlation = format!("req-{}", suffix());
    let mut envelopes: Vec<EventEnvelope<Box<dyn outbox::DynEvent>>> = Vec::new();
    for seq in 1..=n.saturating_sub(2) {
        let account = if seq % 2 == 0 { "a" } else { "b" };
        envelopes.push(EventEnvelope::new(
            Box::new(opened(account, seq)) as Box<dyn outbox::DynEvent>
        ));
    }
    for account in ["a", "b"] {
        let closed = AccountClosed {
            account: account.into(),
            reason: "test \"done\" 100%".into(),
        };
        envelopes.push(EventEnvelope::new(
            Box::new(closed) as Box<dyn outbox::DynEvent>
        ));
    }
    let envelopes: Vec<_> = envelopes
        .into_iter()
        .map(|e| e.with_correlation_id(correlation.clone()))
        .collect();
    let mut by_aggregate: HashMap<String, Vec<Uuid>> = HashMap::new();
    for e in &envelopes {
        by_aggregate
            .entry(e.aggregate_id())
            .or_default()
            .push(e.event_id());
    }
    let ids = t.outbox.add_events(&t.db, envelopes).await.unwrap();
    // Sending ahead, so every broker test also checks that what the publisher sends before an acknowledgement
    // arrives in order (publishers that cannot promise it wait for each acknowledgement whatever this says).
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), publisher)
        .unacknowledged_per_aggregate(4)
        .build();
    let report = relay.publish_batch(1000).await.unwrap();
    assert_eq!(report.published as usize, ids.len(), "{report:?}");
    Written {
        ids,
        by_aggregate,
        correlation,
    }
}

/// Asserts the received (event id, aggregate id) sequence holds every written event once, in order per aggregate.
pub fn assert_arrived_in_order(written: &Written, received: &[(Uuid, String)]) {
    let mut got: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (id, aggregate) in received {
        got.entry(aggregate.clone()).or_default().push(*id);
    }
    assert_eq!(
        received.len(),
        written.ids.len(),
        "every event arrives exactly once"
    );
    assert_eq!(got, written.by_aggregate, "per-aggregate order");
}

/// A header's value, for headers as (name, value) pairs.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Runs the FastStream subscriber on `destination` and checks it decoded every written event into its Pydantic
/// model, saw the ids FastStream shows handlers, and that each raw message is a valid CloudEvent.
pub fn assert_faststream_reads_everything(
    written: &Written,
    kind: &str,
    url: &str,
    destination: &str,
    stream: Option<&str>,
) {
    let count = written.ids.len().to_string();
    let mut args = vec![kind, url, destination, count.as_str()];
    args.extend(stream);
    let out = outbox_tests::run_python("faststream_consume.py", &args, None);
    let received = out["received"]
        .as_array()
        .expect("a list of received messages");
    assert_eq!(
        received.len(),
        written.ids.len(),
        "FastStream ({kind}) received {received:#?}"
    );
    let mut ids = Vec::new();
    for r in received {
        let ce = &r["cloudevent"]["attributes"];
        let id = ce["id"].as_str().expect("ce id").to_owned();
        ids.push(Uuid::parse_str(&id).unwrap());
        assert_eq!(ce["specversion"], "1.0", "{r:#}");
        assert_eq!(ce["source"], "/accounts", "{r:#}");
        assert_eq!(ce["datacontenttype"], "application/json", "{r:#}");
        assert_eq!(ce["correlationid"], written.correlation.as_str(), "{r:#}");
        assert_eq!(
            r["cloudevent"]["data"], r["event"],
            "the SDK's data equals what the handler decoded: {r:#}"
        );
        let expected_class = if ce["type"] == "com.example.account.opened" {
            "AccountOpened"
        } else {
            "AccountClosed"
        };
        assert_eq!(r["event_class"], expected_class, "{r:#}");
        assert!(
            r["content_type"]
                .as_str()
                .unwrap_or_default()
                .starts_with("application/json"),
            "{r:#}"
        );
        assert_eq!(
            r["correlation_id"],
            written.correlation.as_str(),
            "FastStream's correlation_id: {r:#}"
        );
        if kind != "kafka" {
            // Kafka has no message id of its own: FastStream derives one from offset and time.
            assert_eq!(
                r["message_id"],
                id.as_str(),
                "FastStream's message_id: {r:#}"
            );
        }
    }
    ids.sort();
    let mut expected = written.ids.clone();
    expected.sort();
    assert_eq!(ids, expected, "FastStream saw exactly the written events");
}

/// The consumer side of a broker test: a `Consumer` on PostgreSQL whose handlers note (event id, aggregate) of
/// every account event they apply, in an inbox of the test's own consumer name.
pub struct Ledger {
    t: TestDb,
    inbox: outbox::repository::Inbox,
    applied: std::sync::Arc<std::sync::Mutex<Vec<(Uuid, String)>>>,
}

impl Ledger {
    pub async fn new(suffix: &str) -> Self {
        let t = TestDb::new(Backend::Postgres).await;
        let inbox = outbox::repository::Inbox::new(format!("ledger-{suffix}")).unwrap();
        inbox.create_table(&t.db).await.unwrap();
        Self {
            t,
            inbox,
            applied: Default::default(),
        }
    }

    /// Runs a consumer on `subscriber` until `total` messages are applied or found duplicates; returns it, for
    /// its counts.
    pub async fn run(
        &self,
        subscriber: impl outbox::consumer::Subscriber,
        total: u64,
    ) -> outbox::consumer::Consumer {
        self.run_with(subscriber, total, |builder| builder).await
    }

    /// [`run`](Self::run), with the consumer's builder adjusted by `configure` first.
    pub async fn run_with(
        &self,
        subscriber: impl outbox::consumer::Subscriber,
        total: u64,
        configure: impl FnOnce(outbox::consumer::ConsumerBuilder) -> outbox::consumer::ConsumerBuilder,
    ) -> outbox::consumer::Consumer {
        let consumer =
            configure(self.builder(std::time::Duration::ZERO, Default::default())).build();
        let all_settled = async {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while consumer.counts().applied() + consumer.counts().duplicates() < total {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{:?}",
                    consumer.counts()
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        consumer.run(subscriber, all_settled).await;
        consumer
    }

    /// Runs a consumer whose handlers take `pause` each, and stops it as soon as the first one starts: what it
    /// started is finished, and the messages waiting behind it go back to the broker.
    pub async fn run_and_stop_at_once(
        &self,
        subscriber: impl outbox::consumer::Subscriber,
        pause: std::time::Duration,
    ) -> outbox::consumer::Consumer {
        let started = std::sync::Arc::new(tokio::sync::Notify::new());
        let consumer = self.builder(pause, started.clone()).build();
        consumer.run(subscriber, started.notified()).await;
        consumer
    }

    /// A consumer that notes what it applies, each handler first taking `pause` and telling `started`.
    fn builder(
        &self,
        pause: std::time::Duration,
        started: std::sync::Arc<tokio::sync::Notify>,
    ) -> outbox::consumer::ConsumerBuilder {
        use outbox::consumer::{Consumer, Context, HandlerError};
        use outbox_tests::events::AccountOpened;
        type Log = std::sync::Arc<std::sync::Mutex<Vec<(Uuid, String)>>>;
        let note = move |applied: Log,
                         started: std::sync::Arc<tokio::sync::Notify>,
                         ctx: &Context,
                         account: String| {
            let id = Uuid::parse_str(&ctx.delivery().id).expect("our ids are UUIDs");
            async move {
                started.notify_one();
                tokio::time::sleep(pause).await;
                applied.lock().unwrap().push((id, account));
                Ok::<_, HandlerError>(())
            }
        };
        let (opened_log, closed_log) = (self.applied.clone(), self.applied.clone());
        let opened_started = started.clone();
        Consumer::builder(self.t.db.clone(), self.inbox.clone())
            .handle(move |event: AccountOpened, ctx: Context| {
                note(
                    opened_log.clone(),
                    opened_started.clone(),
                    &ctx,
                    event.account,
                )
            })
            .handle(move |event: AccountClosed, ctx: Context| {
                note(closed_log.clone(), started.clone(), &ctx, event.account)
            })
    }

    /// What the handlers applied, in order.
    pub fn applied(&self) -> Vec<(Uuid, String)> {
        self.applied.lock().unwrap().clone()
    }

    /// Removes the test's rows (the inbox table is shared by name) and tables.
    pub async fn clean(self) {
        self.inbox
            .purge_older_than(&self.t.db, std::time::Duration::ZERO)
            .await
            .unwrap();
        self.t.drop_tables().await;
    }
}
