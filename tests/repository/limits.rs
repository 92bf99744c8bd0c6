//! Values no broker could carry are refused when the event is added, naming the value and the limit, and leave
//! nothing stored: the caller's transaction decides what happens next.

use outbox::OutboxConfig;
use outbox::limits::InvalidEvent;
use outbox::repository::RepositoryError;
use outbox::sea_orm::TransactionTrait;
use outbox::{DynEvent, EventEnvelope};

use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::{AccountTagged, opened, tagged};
use outbox_tests::on_every_backend;

on_every_backend!(
    values_no_broker_can_carry_are_refused_by_name,
    a_payload_over_the_limit_is_refused,
    one_bad_event_stores_none_of_its_batch,
);

/// The refusal, which must be an `InvalidEvent` naming the event type.
fn refusal(result: Result<uuid::Uuid, RepositoryError>) -> InvalidEvent {
    match result {
        Err(RepositoryError::InvalidEvent(invalid)) => {
            assert_eq!(invalid.event_type, "com.example.account.tagged");
            invalid
        }
        other => panic!("expected an invalid event, got {other:?}"),
    }
}

async fn values_no_broker_can_carry_are_refused_by_name(backend: Backend) {
    let t = TestDb::new(backend).await;
    let long = "r".repeat(300);
    let cases: Vec<(EventEnvelope<AccountTagged>, &str, &str)> = vec![
        (
            EventEnvelope::new(tagged("a")).with_correlation_id(long.clone()),
            "correlation id",
            "is 300 bytes long; at most 255",
        ),
        (
            EventEnvelope::new(tagged("a")).with_causation_id("line\nbreak"),
            "causation id",
            "control character '\\n'",
        ),
        (
            EventEnvelope::new(AccountTagged {
                header: "x tenant".into(),
                ..tagged("a")
            }),
            "header name \"x tenant\"",
            "holds ' '",
        ),
        (
            EventEnvelope::new(AccountTagged {
                header: "x:tenant".into(),
                ..tagged("a")
            }),
            "header name \"x:tenant\"",
            "holds ':'",
        ),
        (
            EventEnvelope::new(AccountTagged {
                header: "x-ténant".into(),
                ..tagged("a")
            }),
            "header name \"x-ténant\"",
            "non-ASCII byte 0xC3",
        ),
        (
            EventEnvelope::new(AccountTagged {
                value: "v".repeat(70_000),
                ..tagged("a")
            }),
            "header `x-tenant`'s value",
            "is 70000 bytes long; at most 65535",
        ),
        (
            EventEnvelope::new(AccountTagged {
                account: "a".repeat(256),
                ..tagged("a")
            }),
            "aggregate id",
            "is 256 characters long; at most 255",
        ),
    ];
    for (envelope, field, problem) in cases {
        let txn = t.db.begin().await.unwrap();
        let invalid = refusal(t.outbox.add_event(&txn, envelope).await);
        assert_eq!(invalid.field, field);
        assert!(invalid.problem.contains(problem), "{field}: {invalid}");
        let text = invalid.to_string();
        assert!(
            text.starts_with("event `com.example.account.tagged` cannot be stored: its "),
            "{text}"
        );
        // The caller's transaction is still usable: the refusal happened before any statement.
        t.outbox.add_event(&txn, opened("ok", 1)).await.unwrap();
        txn.commit().await.unwrap();
    }
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 7);
    let stored = t.outbox.get_unpublished(&t.db, 100, 0).await.unwrap();
    assert!(
        stored
            .iter()
            .all(|e| e.event_type == "com.example.account.opened")
    );
    t.drop_tables().await;
}

async fn a_payload_over_the_limit_is_refused(backend: Backend) {
    let mut config = OutboxConfig::default();
    config.max_payload_bytes = 2048;
    let t = TestDb::with_config(backend, config).await;
    let fits = AccountTagged {
        note: "n".repeat(1900),
        ..tagged("a")
    };
    t.outbox.add_event(&t.db, fits).await.unwrap();
    let too_big = AccountTagged {
        note: "n".repeat(2100),
        ..tagged("a")
    };
    let invalid = refusal(t.outbox.add_event(&t.db, too_big).await);
    assert_eq!(invalid.field, "payload");
    assert!(
        invalid
            .problem
            .contains("bytes of JSON; at most 2048 are allowed (OUTBOX_MAX_PAYLOAD_BYTES)"),
        "{invalid}"
    );
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 1);
    t.drop_tables().await;
}

async fn one_bad_event_stores_none_of_its_batch(backend: Backend) {
    let t = TestDb::new(backend).await;
    // 600 good events (two INSERTs' worth) and a bad one last, on a plain connection, where each INSERT would
    // commit on its own.
    let mut batch: Vec<EventEnvelope<Box<dyn DynEvent>>> = (1..=600)
        .map(|seq| EventEnvelope::new(Box::new(opened("a", seq)) as Box<dyn DynEvent>))
        .collect();
    batch.push(
        EventEnvelope::new(Box::new(tagged("a")) as Box<dyn DynEvent>)
            .with_correlation_id("c".repeat(256)),
    );
    let err = t.outbox.add_events(&t.db, batch).await.unwrap_err();
    assert!(
        matches!(&err, RepositoryError::InvalidEvent(i) if i.field == "correlation id"),
        "{err:?}"
    );
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    t.drop_tables().await;
}
