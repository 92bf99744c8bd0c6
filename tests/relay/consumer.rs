//! The consumer side against real databases: each event applied once under redelivery, in order per aggregate;
//! a failing handler retried, then kept as a dead letter and replayed; what cannot be read kept, never dropped;
//! a shutdown that finishes what it started and gives back the rest.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::EventEnvelope;
use outbox::consumer::{Consumer, Context, HandlerError, InMemorySubscription};
use outbox::repository::Inbox;
use outbox::sea_orm::ConnectionTrait;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::{AccountClosed, AccountOpened, opened};
use outbox_tests::on_every_backend;

on_every_backend!(
    each_event_is_applied_once_and_in_order_under_redelivery,
    batches_apply_each_event_once_and_in_order_under_redelivery,
    a_failure_in_a_batch_rolls_it_back_and_its_messages_go_one_by_one,
    a_failing_handler_is_retried_then_kept_and_replayed,
    what_cannot_be_handled_is_kept_with_its_reason,
    a_shutdown_finishes_what_it_started_and_gives_back_the_rest,
    a_task_that_panics_after_its_commit_does_not_stall_its_aggregate,
);

/// What the handler applied, in the order it applied it: (account, seq).
type Applied = Arc<Mutex<Vec<(String, u32)>>>;

async fn inbox(t: &TestDb) -> Inbox {
    let inbox = Inbox::new("ledger")
        .unwrap()
        .table(&format!("{}_inbox", t.outbox.table()))
        .unwrap();
    inbox.create_table(&t.db).await.unwrap();
    inbox
}

async fn cleanup(t: &TestDb, inbox: &Inbox) {
    for table in [
        format!("{}_dead_letters", inbox.table_name()),
        inbox.table_name().to_owned(),
    ] {
        t.db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
            .await
            .unwrap();
    }
    t.drop_tables().await;
}

/// A handler that stores each opened account as a row of the test's `users` table (id = account * 1000 + seq),
/// in the consumer's transaction, and notes the order it applied them in.
fn ledger(t: &TestDb, inbox: Inbox, applied: &Applied) -> outbox::consumer::ConsumerBuilder {
    let (users, applied) = (t.users.clone(), applied.clone());
    Consumer::builder(t.db.clone(), inbox)
        .backoff(Duration::from_millis(5))
        .handle(move |event: AccountOpened, ctx: Context| {
            let (users, applied) = (users.clone(), applied.clone());
            async move {
                let id = event.account.parse::<i64>()? * 1000 + i64::from(event.seq);
                ctx.txn()
                    .execute_unprepared(&format!(
                        "INSERT INTO {users} (id, email) VALUES ({id}, 'x')"
                    ))
                    .await?;
                applied.lock().unwrap().push((event.account, event.seq));
                Ok::<_, HandlerError>(())
            }
        })
}

fn message(account: u32, seq: u32) -> outbox::Message {
    EventEnvelope::new(opened(&account.to_string(), seq))
        .to_message()
        .unwrap()
}

async fn each_event_is_applied_once_and_in_order_under_redelivery(backend: Backend) {
    let consumer = applied_once_and_in_order(backend, 1).await;
    assert_eq!(consumer.counts().commits(), 100, "one transaction each");
}

/// The same in batches: fewer commits, the same result.
async fn batches_apply_each_event_once_and_in_order_under_redelivery(backend: Backend) {
    let consumer = applied_once_and_in_order(backend, 16).await;
    let commits = consumer.counts().commits();
    assert!(
        commits < 50,
        "{backend:?}: 100 messages in {commits} transactions"
    );
}

async fn applied_once_and_in_order(backend: Backend, batch: usize) -> Consumer {
    let t = TestDb::new(backend).await;
    let inbox = inbox(&t).await;
    let applied = Applied::default();
    let consumer = ledger(&t, inbox.clone(), &applied).batch(batch).build();
    let subscription = InMemorySubscription::new();
    // 20 accounts x 5 events, every message delivered twice: right after itself, or again at the very end.
    let messages: Vec<outbox::Message> = (1..=5)
        .flat_map(|seq| (1..=20).map(move |account| message(account, seq)))
        .collect();
    for (i, m) in messages.iter().enumerate() {
        subscription.send(m);
        if i % 2 == 0 {
            subscription.send(m);
        }
    }
    for m in messages.iter().step_by(2).skip(1) {
        subscription.send(m);
    }
    subscription.close();
    consumer
        .run(subscription.subscriber(), std::future::pending())
        .await;

    assert_eq!(
        t.scalar(&format!("SELECT COUNT(*) FROM {}", t.users)).await,
        100,
        "{backend:?}"
    );
    let counts = consumer.counts();
    assert_eq!(
        (counts.applied(), counts.duplicates()),
        (100, 99),
        "{backend:?}"
    );
    assert_eq!(
        subscription.acknowledged(),
        200 - 1,
        "100 messages, 50 sent twice, 49 of those a third time"
    );
    let applied = applied.lock().unwrap().clone();
    for account in 1..=20 {
        let seqs: Vec<u32> = applied
            .iter()
            .filter(|(a, _)| *a == account.to_string())
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            seqs,
            [1, 2, 3, 4, 5],
            "{backend:?}: account {account} out of order"
        );
    }
    cleanup(&t, &inbox).await;
    consumer
}

async fn a_failing_handler_is_retried_then_kept_and_replayed(backend: Backend) {
    let t = TestDb::new(backend).await;
    let inbox = inbox(&t).await;
    let applied = Applied::default();
    // `closed` fails its first two runs (a transient fault), then succeeds while `broken` is false.
    let runs = Arc::new(Mutex::new(0u32));
    let broken = Arc::new(Mutex::new(true));
    let (users, runs_in, broken_in) = (t.users.clone(), runs.clone(), broken.clone());
    let consumer = ledger(&t, inbox.clone(), &applied)
        .max_attempts(3)
        .handle(move |event: AccountClosed, ctx: Context| {
            let (users, runs, broken) = (users.clone(), runs_in.clone(), broken_in.clone());
            async move {
                // Written first, so a failure shows that the transaction was rolled back.
                ctx.txn()
                    .execute_unprepared(&format!(
                        "INSERT INTO {users} (id, email) VALUES ({}{}, 'closed')",
                        event.account,
                        900 + ctx.attempt()
                    ))
                    .await?;
                let run = {
                    let mut runs = runs.lock().unwrap();
                    *runs += 1;
                    *runs
                };
                if event.reason == "flaky" && run <= 2 {
                    return Err("the ledger service timed out".into());
                }
                if event.reason == "broken" && *broken.lock().unwrap() {
                    return Err("account 9 is frozen".into());
                }
                Ok::<_, HandlerError>(())
            }
        })
        .build();
    let subscription = InMemorySubscription::new();
    let closed = |account: &str, reason: &str| {
        EventEnvelope::new(AccountClosed {
            account: account.into(),
            reason: reason.into(),
        })
        .to_message()
        .unwrap()
    };
    subscription.send(&closed("8", "flaky"));
    subscription.close();
    consumer
        .run(subscription.subscriber(), std::future::pending())
        .await;
    assert_eq!(
        (consumer.counts().applied(), consumer.counts().retries()),
        (1, 2),
        "{backend:?}"
    );
    assert_eq!(
        t.scalar(&format!("SELECT COUNT(*) FROM {}", t.users)).await,
        1,
        "the failed runs left nothing"
    );

    let subscription = InMemorySubscription::new();
    let broken_message = closed("9", "broken");
    subscription.send(&broken_message);
    subscription.close();
    *runs.lock().unwrap() = 10;
    consumer
        .run(subscription.subscriber(), std::future::pending())
        .await;
    assert_eq!(subscription.acknowledged(), 1, "kept, so acknowledged");
    let dead = inbox.dead_letters(&t.db).await.unwrap();
    assert_eq!(dead.len(), 1, "{backend:?}");
    assert_eq!(dead[0].message_id, broken_message.id.to_string());
    assert_eq!(dead[0].reason, "account 9 is frozen");
    assert_eq!(dead[0].attempts, 3);
    assert!(
        !inbox.contains(&t.db, &dead[0].message_id).await.unwrap(),
        "not applied, not recorded"
    );

    // Replayed while still broken: it stays, counted again. Fixed: applied once, and gone from the dead letters.
    assert_eq!(consumer.replay_dead_letters().await.unwrap(), 0);
    assert_eq!(inbox.dead_letters(&t.db).await.unwrap().len(), 1);
    *broken.lock().unwrap() = false;
    assert_eq!(
        consumer.replay_dead_letters().await.unwrap(),
        1,
        "{backend:?}"
    );
    assert!(inbox.dead_letters(&t.db).await.unwrap().is_empty());
    assert!(
        inbox
            .contains(&t.db, &broken_message.id.to_string())
            .await
            .unwrap()
    );
    assert_eq!(
        t.scalar(&format!("SELECT COUNT(*) FROM {}", t.users)).await,
        2
    );
    cleanup(&t, &inbox).await;
}

async fn what_cannot_be_handled_is_kept_with_its_reason(backend: Backend) {
    let t = TestDb::new(backend).await;
    let inbox = inbox(&t).await;
    let consumer = ledger(&t, inbox.clone(), &Applied::default()).build();
    let subscription = InMemorySubscription::new();
    // A type this consumer has no handler for, a body its type cannot decode, and no CloudEvent at all.
    let unhandled = EventEnvelope::new(AccountClosed {
        account: "1".into(),
        reason: "r".into(),
    })
    .to_message()
    .unwrap();
    subscription.send(&unhandled);
    let mut undecodable = message(2, 1);
    undecodable.data =
        serde_json::value::RawValue::from_string(r#"{"account":"2"}"#.into()).unwrap();
    subscription.send(&undecodable);
    subscription.send_raw(
        vec![("content-type".into(), "application/json".into())],
        b"{\"hello\":1}".to_vec(),
    );
    subscription.send(&message(3, 1));
    subscription.close();
    consumer
        .run(subscription.subscriber(), std::future::pending())
        .await;

    assert_eq!(
        subscription.acknowledged(),
        4,
        "{backend:?}: every message settled"
    );
    assert_eq!(consumer.counts().applied(), 1);
    let dead = inbox.dead_letters(&t.db).await.unwrap();
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(dead.len(), 3, "{reasons:?}");
    assert!(
        reasons.contains(&"no handler for event type `com.example.account.closed` version 1.0"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("does not decode into") && r.contains("missing field `seq`")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("not a CloudEvent: the message has no specversion, id or type")),
        "{reasons:?}"
    );
    let unreadable = dead
        .iter()
        .find(|d| d.event_type == "unknown")
        .expect("kept as received");
    assert_eq!(unreadable.cloudevent, "{\"hello\":1}");
    cleanup(&t, &inbox).await;
}

async fn a_shutdown_finishes_what_it_started_and_gives_back_the_rest(backend: Backend) {
    let t = TestDb::new(backend).await;
    let inbox = inbox(&t).await;
    let applied = Applied::default();
    let users = t.users.clone();
    let started = Arc::new(tokio::sync::Notify::new());
    let started_in = started.clone();
    let slow = Consumer::builder(t.db.clone(), inbox.clone())
        .handle(move |event: AccountOpened, ctx: Context| {
            let (users, started) = (users.clone(), started_in.clone());
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let id = event.account.parse::<i64>()? * 1000 + i64::from(event.seq);
                ctx.txn()
                    .execute_unprepared(&format!(
                        "INSERT INTO {users} (id, email) VALUES ({id}, 'x')"
                    ))
                    .await?;
                Ok::<_, HandlerError>(())
            }
        })
        .build();
    let subscription = InMemorySubscription::new();
    let messages: Vec<outbox::Message> = (1..=3).map(|seq| message(1, seq)).collect();
    for m in &messages {
        subscription.send(m); // one aggregate: one at a time
    }
    let stop = async {
        started.notified().await;
    };
    slow.run(subscription.subscriber(), stop).await;
    assert_eq!(
        slow.counts().applied(),
        1,
        "{backend:?}: the message in flight was finished"
    );
    assert_eq!(subscription.acknowledged(), 1);
    assert_eq!(
        subscription.len(),
        2,
        "the rest went back, or were never taken"
    );

    // The next consumer takes over where it stopped: nothing lost, nothing twice, still in order.
    let next = ledger(&t, inbox.clone(), &applied).build();
    subscription.send(&messages[0]); // a late redelivery of the first
    subscription.close();
    next.run(subscription.subscriber(), std::future::pending())
        .await;
    assert_eq!(
        *applied.lock().unwrap(),
        [("1".to_owned(), 2), ("1".to_owned(), 3)],
        "{backend:?}"
    );
    assert_eq!(next.counts().duplicates(), 1);
    assert_eq!(
        t.scalar(&format!("SELECT COUNT(*) FROM {}", t.users)).await,
        3
    );
    cleanup(&t, &inbox).await;
}

/// A subscriber whose first acknowledgement panics, as a broken `Settle` of a custom subscriber would.
struct PanickyFirstAck {
    inner: outbox::consumer::InMemorySubscriber,
    first: bool,
}

struct Panics;

#[async_trait::async_trait]
impl outbox::consumer::Settle for Panics {
    async fn ack(self: Box<Self>) -> Result<(), outbox::consumer::SubscribeError> {
        panic!("a broken acknowledgement");
    }

    async fn give_back(self: Box<Self>) -> Result<(), outbox::consumer::SubscribeError> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl outbox::consumer::Subscriber for PanickyFirstAck {
    async fn receive(
        &mut self,
    ) -> Result<Option<outbox::consumer::Received>, outbox::consumer::SubscribeError> {
        let received = self.inner.receive().await?;
        Ok(received.map(|mut received| {
            if std::mem::take(&mut self.first) {
                received.settle = Box::new(Panics);
            }
            received
        }))
    }
}

async fn a_task_that_panics_after_its_commit_does_not_stall_its_aggregate(backend: Backend) {
    let t = TestDb::new(backend).await;
    let inbox = inbox(&t).await;
    let applied = Applied::default();
    let consumer = ledger(&t, inbox.clone(), &applied).build();
    let subscription = InMemorySubscription::new();
    for seq in 1..=3 {
        subscription.send(&message(1, seq));
    }
    subscription.close();
    let subscriber = PanickyFirstAck {
        inner: subscription.subscriber(),
        first: true,
    };
    consumer.run(subscriber, std::future::pending()).await;
    assert_eq!(
        consumer.counts().applied(),
        3,
        "{backend:?}: the aggregate went on after the panic"
    );
    assert_eq!(
        subscription.acknowledged(),
        2,
        "the panicking ack acknowledged nothing"
    );
    cleanup(&t, &inbox).await;
}

/// Every metric the consumer's documentation lists is emitted, with the counts of what it did.
#[test]
fn metrics_count_what_the_consumer_did() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A current-thread runtime keeps every task on this thread, where the local recorder is installed.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let t = TestDb::new(Backend::SqliteMemory).await;
            let inbox = inbox(&t).await;
            let applied = Applied::default();
            let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let consumer = ledger(&t, inbox.clone(), &applied)
                .handle(move |_: AccountClosed, _: Context| {
                    let failed_once = failed_once.clone();
                    async move {
                        if failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            Ok(())
                        } else {
                            Err(HandlerError::from("not yet"))
                        }
                    }
                })
                .build();
            let subscription = InMemorySubscription::new();
            for seq in 1..=3 {
                subscription.send(&message(1, seq));
            }
            let again = message(1, 4);
            subscription.send(&again);
            subscription.send(&again);
            subscription.send(
                &EventEnvelope::new(AccountClosed {
                    account: "2".into(),
                    reason: "moved".into(),
                })
                .to_message()
                .unwrap(),
            );
            subscription.send_raw(Vec::new(), b"not a cloudevent".to_vec());
            subscription.close();
            consumer
                .run(subscription.subscriber(), std::future::pending())
                .await;
            cleanup(&t, &inbox).await;
        })
    });

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str| -> u64 {
        snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == name)
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    };
    assert_eq!(counter("outbox_consumer_applied_total"), 5);
    assert_eq!(counter("outbox_consumer_duplicates_total"), 1);
    assert_eq!(counter("outbox_consumer_retries_total"), 1);
    assert_eq!(counter("outbox_consumer_dead_lettered_total"), 1);
    let samples = |name: &str| -> usize {
        snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == name)
            .map(|(.., value)| match value {
                DebugValue::Histogram(samples) => samples.len(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .sum()
    };
    assert_eq!(
        samples("outbox_consumer_handler_seconds"),
        5,
        "one per applied message"
    );
    assert_eq!(
        samples("outbox_consumer_lag_seconds"),
        5,
        "one per applied message"
    );
}

/// One handler failing in a batch: the batch rolls back, its messages are handled one by one; the failing one
/// ends as a dead letter, every other one is applied once.
async fn a_failure_in_a_batch_rolls_it_back_and_its_messages_go_one_by_one(backend: Backend) {
    let t = TestDb::new(backend).await;
    let inbox = inbox(&t).await;
    let users = t.users.clone();
    let consumer = Consumer::builder(t.db.clone(), inbox.clone())
        .backoff(Duration::from_millis(1))
        .max_attempts(2)
        .batch(16)
        .handle(move |event: AccountOpened, ctx: Context| {
            let users = users.clone();
            async move {
                let id = event.account.parse::<i64>()? * 1000 + i64::from(event.seq);
                ctx.txn()
                    .execute_unprepared(&format!(
                        "INSERT INTO {users} (id, email) VALUES ({id}, 'x')"
                    ))
                    .await?;
                if id == 7003 {
                    return Err("account 7 cannot take its third event".into());
                }
                Ok::<_, HandlerError>(())
            }
        })
        .build();
    let subscription = InMemorySubscription::new();
    for seq in 1..=5 {
        for account in 1..=20 {
            subscription.send(&message(account, seq));
        }
    }
    subscription.close();
    consumer
        .run(subscription.subscriber(), std::future::pending())
        .await;

    let counts = consumer.counts();
    assert_eq!(
        (counts.applied(), counts.dead_lettered()),
        (99, 1),
        "{backend:?}"
    );
    assert_eq!(
        t.scalar(&format!("SELECT COUNT(*) FROM {}", t.users)).await,
        99,
        "{backend:?}: the failing handler's row rolled back, its batch-mates' applied once"
    );
    assert_eq!(
        t.scalar(&format!("SELECT COUNT(*) FROM {} WHERE id = 7003", t.users))
            .await,
        0
    );
    assert_eq!(subscription.acknowledged(), 100);
    cleanup(&t, &inbox).await;
}

/// The health check: unhealthy before `run` and after it, healthy while it runs and receives; the last lag and
/// the counts are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_follows_the_run_loop() {
    use outbox::health::HealthStatus;

    let t = TestDb::new(Backend::SqliteMemory).await;
    let inbox = inbox(&t).await;
    let applied = Applied::default();
    let consumer = ledger(&t, inbox.clone(), &applied).build();
    let before = consumer.check_health().await;
    assert_eq!(before.status, HealthStatus::Unhealthy, "not running yet");
    assert!(!before.subscription.running);
    assert_eq!(before.http_status(), 503);

    let subscription = InMemorySubscription::new();
    subscription.send(&message(1, 1));
    let stop = tokio::sync::Notify::new();
    let running = async {
        consumer
            .run(subscription.subscriber(), stop.notified())
            .await;
    };
    let checking = async {
        while consumer.counts().applied() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let during = consumer.check_health().await;
        stop.notify_one();
        during
    };
    let ((), during) = tokio::join!(running, checking);
    assert_eq!(during.status, HealthStatus::Healthy, "{during:?}");
    assert!(during.subscription.running);
    assert_eq!(during.database.status, HealthStatus::Healthy);
    assert_eq!(during.applied, 1);
    assert!(during.last_lag_seconds.is_some_and(|lag| lag < 60.0));
    assert!(during.subscription.since_last_message_seconds.is_some());
    let json = serde_json::to_value(&during).unwrap();
    assert_eq!(json["status"], "healthy");

    let after = consumer.check_health().await;
    assert_eq!(after.status, HealthStatus::Unhealthy, "stopped");
    cleanup(&t, &inbox).await;
}

/// A subscription whose every receive fails.
struct Broken;

#[async_trait::async_trait]
impl outbox::consumer::Subscriber for Broken {
    async fn receive(
        &mut self,
    ) -> Result<Option<outbox::consumer::Received>, outbox::consumer::SubscribeError> {
        Err(outbox::consumer::SubscribeError(
            "connection refused".into(),
        ))
    }
}

/// A failing subscription is degraded at once, unhealthy past the threshold, and named in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscription_turns_the_health_check_degraded_then_unhealthy() {
    use outbox::consumer::ConsumerThresholds;
    use outbox::health::HealthStatus;

    let t = TestDb::new(Backend::SqliteMemory).await;
    let inbox = inbox(&t).await;
    let mut thresholds = ConsumerThresholds::default();
    thresholds.receive_failing_unhealthy = Duration::from_millis(300);
    let consumer = ledger(&t, inbox.clone(), &Applied::default())
        .health_thresholds(thresholds)
        .build();
    let stop = tokio::sync::Notify::new();
    let checking = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let early = consumer.check_health().await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let late = consumer.check_health().await;
        stop.notify_one();
        (early, late)
    };
    let ((), (early, late)) = tokio::join!(consumer.run(Broken, stop.notified()), checking);
    assert_eq!(early.status, HealthStatus::Degraded, "{early:?}");
    assert!(
        early
            .subscription
            .error
            .as_deref()
            .is_some_and(|e| e.contains("connection refused")),
        "{early:?}"
    );
    assert_eq!(late.status, HealthStatus::Unhealthy, "{late:?}");
    assert_eq!(late.http_status(), 503);
    cleanup(&t, &inbox).await;
}
