//! A straggler: a transaction that stored an event, stayed open while later events were claimed and published,
//! and committed long after. Its event has an older id than events already gone; the claim must still find it.
//! (PostgreSQL starts its claims past ids it believes settled and rescans from the head every 10 s: this is
//! what the rescan is for.)

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    a_late_commit_with_an_old_id_is_still_claimed(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb() {
    a_late_commit_with_an_old_id_is_still_claimed(Backend::MariaDb).await;
}
