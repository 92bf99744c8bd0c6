//! A straggler: a transaction that stored an event, stayed open while later events were claimed and published,
//! and committed long after. Its event has an older id than events already gone; the claim must still find it,
//! and before any later event of its own aggregate. (PostgreSQL starts its claims past ids that every
//! transaction which could still write them has finished with, see `repository/scan.rs`.)

use std::time::Duration;

use outbox::EventEnvelope;
use outbox::sea_orm::TransactionTrait;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;
use uuid::Uuid;

async fn a_late_commit_with_an_old_id_is_still_claimed(backend: Backend) {
    let t = TestDb::new(backend).await;
    let txn = t.db.begin().await.unwrap();
    let late = t
        .outbox
        .add_event(&txn, EventEnvelope::new(opened("late", 1)))
        .await
        .unwrap();
    // Later events go out for longer than the claim's guard (5 s), so the claim's start moves past `late`.
    let mut seq = 0;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        seq += 1;
        busy_round(&t, seq).await;
    }
    txn.commit().await.unwrap();

    // Newer events keep coming, so no claim comes back empty (an empty claim also tries the full statement).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        seq += 1;
        if busy_round(&t, seq).await.contains(&late) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the straggler was never claimed"
        );
    }
    t.drop_tables().await;
}

/// The slow-transaction case: a transaction holds an aggregate for longer than any wall-clock guard while other
/// writers commit; the next transaction of that aggregate (serialized behind it) commits right after it. The
/// claims must hand the slow transaction's event out first.
async fn a_slow_transaction_is_not_overtaken_by_its_aggregates_next_event(backend: Backend) {
    let t = TestDb::new(backend).await;
    // The first claim reads from the head; the next full read is 10 s away.
    busy_round(&t, 0).await;
    let slow = t.db.begin().await.unwrap();
    let first = t
        .outbox
        .add_event(&slow, EventEnvelope::new(opened("slow", 1)))
        .await
        .unwrap();
    let mut seq = 0;
    let started = tokio::time::Instant::now();
    // Longer than the 5 s a claim used to wait before reading past a transaction it could not see, shorter than
    // the 10 s to the next read from the head.
    while started.elapsed() < Duration::from_secs(6) {
        seq += 1;
        busy_round(&t, seq).await;
    }
    slow.commit().await.unwrap();
    let second = t
        .outbox
        .add_event(&t.db, EventEnvelope::new(opened("slow", 2)))
        .await
        .unwrap();

    let mut order = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while order.len() < 2 {
        seq += 1;
        order.extend(
            busy_round(&t, seq)
                .await
                .into_iter()
                .filter(|id| [first, second].contains(id)),
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow aggregate's events were not both claimed: {order:?}"
        );
    }
    assert_eq!(
        order,
        [first, second],
        "the slow transaction's event went out after its aggregate's next one"
    );
    t.drop_tables().await;
}

/// One newer event written, a claim published, 200 ms of pause: what a busy outbox does. Returns what was claimed.
async fn busy_round(t: &TestDb, seq: u32) -> Vec<Uuid> {
    t.outbox
        .add_event(&t.db, EventEnvelope::new(opened("busy", seq)))
        .await
        .unwrap();
    let claim = t.outbox.claim(&t.db, 10).await.unwrap();
    let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
    t.outbox
        .mark_published(&t.db, claim.token, &ids)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    claim.events.iter().map(|e| e.envelope.event_id()).collect()
}

// SQLite has one writer: a transaction left open blocks every other writer, so it has no stragglers.
mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_commit() {
        a_late_commit_with_an_old_id_is_still_claimed(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_transaction() {
        a_slow_transaction_is_not_overtaken_by_its_aggregates_next_event(Backend::Postgres).await;
    }
}

mod mariadb {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_commit() {
        a_late_commit_with_an_old_id_is_still_claimed(Backend::MariaDb).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_transaction() {
        a_slow_transaction_is_not_overtaken_by_its_aggregates_next_event(Backend::MariaDb).await;
    }
}
