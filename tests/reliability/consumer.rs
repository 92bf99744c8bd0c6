//! The consumer side under crashes: a consumer process (`consumer_child`) reading a Redis stream is killed with
//! SIGKILL twice under load and started again; every event is applied exactly once, in order per aggregate, and
//! a final SIGTERM leaves nothing pending.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use outbox::EventEnvelope;
use outbox::publisher::{Publisher, RedisPublisher};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;

use crate::child::postgres_url;

const REDIS: &str = "redis://127.0.0.1:6379";
const EVENTS: u32 = 3000;
const AGGREGATES: u32 = 30;

struct ConsumerProcess(Child);

impl ConsumerProcess {
    fn spawn(stream: &str, group: &str, inbox: &str, applied: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_consumer_child"))
            .args([REDIS, stream, group, &postgres_url(), inbox, applied])
            .spawn()
            .expect("start the consumer process");
        Self(child)
    }

    fn kill(mut self) {
        self.0.kill().expect("SIGKILL the consumer");
        self.0.wait().expect("reap the consumer");
    }

    fn terminate(mut self) {
        outbox_tests::run_command("kill", &["-TERM", &self.0.id().to_string()]);
        let status = self.0.wait().expect("reap the consumer");
        assert!(
            status.success(),
            "the consumer exits cleanly on SIGTERM: {status}"
        );
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_under_load_loses_nothing_and_applies_nothing_twice() {
    let t = TestDb::new(Backend::Postgres).await;
    let (inbox, applied) = (
        format!("{}_inbox", t.outbox.table()),
        format!("{}_applied", t.outbox.table()),
    );
    t.sql(&format!(
        "CREATE TABLE {applied} (n BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, account TEXT NOT NULL, \
         seq BIGINT NOT NULL)"
    ))
    .await;
    let stream = format!("crash.{}", t.outbox.table());
    let group = "crash-test";
    let publisher = RedisPublisher::connect(REDIS)
        .await
        .expect("Redis on 127.0.0.1:6379");
    for seq in 0..EVENTS {
        let mut message = EventEnvelope::new(opened(&format!("a{}", seq % AGGREGATES), seq))
            .to_message()
            .unwrap();
        message.destination = stream.clone();
        publisher.send(&message).await.unwrap().await.unwrap();
    }
    let count = |sql: &str| {
        let sql = sql.replace("{applied}", &applied);
        let t = &t;
        async move { t.scalar(&sql).await }
    };

    // Killed twice mid-flow, each time once it has applied some more.
    for until in [EVENTS / 5, EVENTS / 2] {
        let process = ConsumerProcess::spawn(&stream, group, &inbox, &applied);
        let deadline = Instant::now() + Duration::from_secs(60);
        while count("SELECT COUNT(*) FROM {applied}").await < i64::from(until) {
            assert!(Instant::now() < deadline, "the consumer stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process.kill();
    }
    let process = ConsumerProcess::spawn(&stream, group, &inbox, &applied);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count("SELECT COUNT(DISTINCT event_id) FROM {applied}").await < i64::from(EVENTS) {
        if Instant::now() > deadline {
            let n = count("SELECT COUNT(DISTINCT event_id) FROM {applied}").await;
            panic!("not everything was applied: {n}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.terminate();

    assert_eq!(
        count("SELECT COUNT(*) FROM {applied}").await,
        i64::from(EVENTS),
        "nothing applied twice"
    );
    let out_of_order = count(
        "SELECT COUNT(*) FROM {applied} a JOIN {applied} b ON a.account = b.account AND a.n < b.n AND a.seq > b.seq",
    )
    .await;
    assert_eq!(out_of_order, 0, "per-aggregate order across the kills");
    let client = redis::Client::open(REDIS).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&stream)
        .arg(group)
        .query_async(&mut redis)
        .await
        .unwrap();
    let redis::Value::Array(summary) = pending else {
        panic!("XPENDING: {pending:?}")
    };
    assert_eq!(
        summary.first(),
        Some(&redis::Value::Int(0)),
        "nothing left pending after SIGTERM"
    );

    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .unwrap();
    for table in [
        applied.clone(),
        format!("{inbox}_dead_letters"),
        inbox.clone(),
    ] {
        t.sql(&format!("DROP TABLE IF EXISTS {table}")).await;
    }
    t.drop_tables().await;
}
