//! Bad input: each gets a clear error naming what is wrong, and nothing else is lost.

use std::time::Duration;

use async_nats::jetstream;
use outbox::publisher::{InMemoryPublisher, NatsPublisher, from_url};
use outbox::relay::Relay;
use outbox::repository::{OutboxRepository, connect};
use outbox::sea_orm::{ConnectionTrait, Statement};
use outbox::{DynEvent, EventEnvelope, OutboxConfig, OutboxEvent};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;
use outbox_tests::prefixed::Prefixed;
use outbox_tests::running::Running;
use serde::{Deserialize, Serialize};

use crate::brokers::key;
use crate::ledger::{Ledger, committed, record, serial};

/// An event that can be made too large for a broker.
#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.account.noted", source = "/accounts")]
struct AccountNoted {
    #[outbox(aggregate_id)]
    account: String,
    note: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_dead_lettered_with_their_reason_and_the_rest_flows() {
    let _serial = serial().await;
    let t = TestDb::new(Backend::Postgres).await;
    let (mut ledger, events) = committed(&t, 5, 10).await;
    let id_of = |a: &str, s: u32| {
        events
            .iter()
            .find(|(k, _)| k.0 == a && k.1 == s)
            .map(|(_, id)| *id)
            .unwrap()
    };
    // (aggregate, seq, column, stored value, what the dead letter must say)
    let damage = [
        (
            "agg-1",
            3,
            "payload",
            r#"{"account": "agg-1", "seq": "#,
            "does not decode",
        ),
        (
            "agg-2",
            5,
            "event_type",
            "com.example.account.renamed",
            "unknown event type",
        ),
        (
            "agg-3",
            7,
            "payload",
            r#"{"account": "agg-3"}"#,
            "missing field `seq`",
        ),
        (
            "agg-4",
            2,
            "event_type",
            "com.example.account.opened\r\nce-type: evil",
            r"opened\r\nce-type: evil",
        ),
    ];
    for (aggregate, seq, column, value, _) in &damage {
        let id = id_of(aggregate, *seq);
        t.db.execute_raw(Statement::from_sql_and_values(
            t.db.get_database_backend(),
            format!(
                "UPDATE {} SET {column} = $1 WHERE event_id = $2",
                t.outbox.table()
            ),
            [(*value).into(), id.into()],
        ))
        .await
        .unwrap();
        ledger.committed.remove(&(aggregate.to_string(), *seq));
    }
    let broker = InMemoryPublisher::new();
    let relay =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    assert!(
        broker
            .wait_for(ledger.committed.len(), Duration::from_secs(30))
            .await
    );
    relay.stop().await;

    let dead = t.outbox.dead_letters(&t.db, 10, 0).await.unwrap();
    assert_eq!(dead.len(), damage.len(), "{dead:#?}");
    for (aggregate, seq, _, _, reason) in &damage {
        let row = dead
            .iter()
            .find(|d| d.event_id == id_of(aggregate, *seq))
            .expect("the damaged row is a dead letter");
        let error = row.last_error.as_deref().unwrap_or_default();
        assert!(error.contains(reason), "{aggregate}/{seq}: {error}");
        assert!(
            !error.contains(['\r', '\n']),
            "control characters are escaped in the error: {error:?}"
        );
    }
    let arrivals = broker
        .messages()
        .iter()
        .map(|m| key(m.message.data.get().as_bytes()))
        .collect::<Vec<_>>();
    ledger.tally(arrivals).check(
        "6a. bad rows",
        "4 stored rows damaged by hand: corrupt JSON, unknown `event_type`, a missing field, a type with CR/LF \
         and a header line; each dead-lettered with its reason (CR/LF escaped), the rest of each aggregate delivered",
        0,
    );
    t.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_dead_lettered_with_the_brokers_reason() {
    let _serial = serial().await;
    const URL: &str = "nats://127.0.0.1:4222";
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (stream, prefix) = (format!("REL{suffix}"), format!("rel{suffix}."));
    let nats = NatsPublisher::connect(URL)
        .await
        .expect("NATS on 127.0.0.1:4222 (.ci/run starts it)");
    nats.ensure_stream(&stream, vec![format!("{prefix}>")])
        .await
        .unwrap();
    // The outbox takes 4 MiB, the broker 1 MiB: what reaches the broker is its to refuse.
    let mut config = OutboxConfig::default();
    config.max_payload_bytes = 4 << 20;
    let t = TestDb::with_config(Backend::Postgres, config).await;
    // agg-0: opened 1, a 2 MiB note (NATS takes at most 1 MiB), opened 2, 3; agg-1: opened 1..3.
    let mut envelopes: Vec<EventEnvelope<Box<dyn DynEvent>>> = Vec::new();
    let mut ledger = Ledger::default();
    for seq in 1..=3 {
        for account in ["agg-0", "agg-1"] {
            envelopes.push(EventEnvelope::new(Box::new(opened(account, seq))));
            ledger.committed.insert((account.to_owned(), seq));
        }
        if seq == 1 {
            let note = AccountNoted {
                account: "agg-0".into(),
                note: "x".repeat(2 << 20),
            };
            envelopes.push(EventEnvelope::new(Box::new(note)));
        }
    }
    t.outbox.add_events(&t.db, envelopes).await.unwrap();
    let relay = Relay::builder(
        t.db.clone(),
        t.outbox.clone(),
        Prefixed {
            inner: nats,
            prefix,
        },
    )
    .build();
    for _ in 0..3 {
        relay.publish_batch(100).await.unwrap();
    }
    let dead = t.outbox.dead_letters(&t.db, 10, 0).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let error = dead[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("max payload size exceeded"), "{error}");

    let js = jetstream::new(async_nats::connect(URL).await.unwrap());
    let mut info = js.get_stream(&stream).await.unwrap();
    let last = info.info().await.unwrap().state.last_sequence;
    let mut arrivals = Vec::new();
    for seq in 1..=last {
        arrivals.push(key(&info.get_raw_message(seq).await.unwrap().payload));
    }
    js.delete_stream(&stream).await.unwrap();
    ledger.tally(arrivals).check(
        "6b. oversized message",
        &format!("a 2 MiB event to NATS (1 MiB limit): dead-lettered with \"{error}\"; its aggregate's later events delivered"),
        0,
    );
    t.drop_tables().await;
}

/// Records a row for a refusal: what was given, and the error it got.
fn refused(scenario: &str, given: &str, error: &str) {
    record(&format!(
        "| {scenario} | {given} | – | – | – | – | – | pass: {} |",
        error.replace('|', "\\|").replace('\n', " ")
    ));
}

#[tokio::test]
async fn wrong_urls_missing_tables_and_bad_settings_are_refused_by_name() {
    let _serial = serial().await;
    let error = from_url("nats://127.0.0.1:1")
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("cannot connect to nats at `nats://127.0.0.1:1`"),
        "{error}"
    );
    refused(
        "6c. wrong broker URL",
        "`nats://127.0.0.1:1` (nothing listens)",
        &error,
    );

    let error = from_url("kafak://127.0.0.1:9092")
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("kafak"), "{error}");
    refused(
        "6d. unknown broker scheme",
        "`kafak://127.0.0.1:9092`",
        &error,
    );

    let error = outbox::consumer::from_url("amqp://guest:secret@127.0.0.1:1/%2f", "mailer")
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("queue") && !error.contains("secret"),
        "{error}"
    );
    refused(
        "6l. subscriber URL without its queue",
        "`amqp://guest:secret@127.0.0.1:1/%2f` (no `?queue=`)",
        &error,
    );
    let error = outbox::consumer::from_url("redis://127.0.0.1:1?streams=s", "mailer")
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("`redis://127.0.0.1:1?streams=s`")
            && error.contains("cannot connect to Redis"),
        "{error}"
    );
    refused(
        "6m. wrong subscriber URL",
        "`redis://127.0.0.1:1?streams=s` (nothing listens)",
        &error,
    );

    let error = connect("postgres://postgres:secret@127.0.0.1:1/test")
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("127.0.0.1:1") && !error.contains("secret"),
        "{error}"
    );
    refused(
        "6e. wrong database URL",
        "`postgres://postgres:secret@127.0.0.1:1/test`",
        &error,
    );

    let t = TestDb::new(Backend::Postgres).await;
    let missing = OutboxRepository::builder()
        .table("outbox_not_created")
        .build()
        .unwrap();
    let relay = Relay::builder(t.db.clone(), missing, InMemoryPublisher::new()).build();
    let error = relay
        .run(std::future::pending())
        .await
        .expect_err("a relay on a missing table does not start")
        .to_string();
    assert!(error.contains("outbox_not_created"), "{error}");
    refused(
        "6f. missing outbox table",
        "a relay started on `outbox_not_created`",
        &error,
    );
    t.drop_tables().await;

    let error = OutboxConfig::from_vars([
        ("OUTBOX_BATCH_SIZE", "lots"),
        ("OUTBOX_POLL_INTERVAL", "-1s"),
        ("OUTBOX_BATCHSIZE", "10"),
    ])
    .expect_err("refused")
    .to_string();
    for name in [
        "OUTBOX_BATCH_SIZE",
        "OUTBOX_POLL_INTERVAL",
        "OUTBOX_BATCHSIZE",
    ] {
        assert!(error.contains(name), "{name} is named: {error}");
    }
    refused(
        "6g. invalid `OUTBOX_*` values",
        "`OUTBOX_BATCH_SIZE=lots`, `OUTBOX_POLL_INTERVAL=-1s`, `OUTBOX_BATCHSIZE=10` (misspelt)",
        &error,
    );
}
