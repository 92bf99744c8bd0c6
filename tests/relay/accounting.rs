//! What arrived, checked against what was written.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outbox::publisher::InMemoryPublisher;
use outbox::sea_orm::TransactionTrait;
use outbox::{EventEnvelope, OutboxConfig};
use outbox_tests::backend::TestDb;
use outbox_tests::events::{AccountOpened, opened};
use uuid::Uuid;

/// The totals of one scenario.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug in the test logs
pub struct Accounting {
    pub delivered: usize,
    pub unique: usize,
    pub duplicates: usize,
}

/// Asserts every id in `written` arrived at least once, nothing else arrived, and each aggregate's events
/// arrived in order the first time they arrived: what a consumer that de-duplicates by event id sees. (After a
/// crash, the events a relay published but had not marked arrive again, after the ones it had.)
pub fn account(broker: &InMemoryPublisher, written: &HashSet<Uuid>) -> Accounting {
    let messages = broker.messages();
    let mut seen = HashSet::new();
    let mut last_seq: HashMap<String, u32> = HashMap::new();
    for published in &messages {
        let message = &published.message;
        assert!(
            written.contains(&message.id),
            "{} arrived but was never committed",
            message.id
        );
        if !seen.insert(message.id) {
            continue; // a duplicate: the consumer drops it
        }
        let event: AccountOpened = serde_json::from_str(message.data.get()).unwrap();
        if let Some(previous) = last_seq.insert(message.key.clone(), event.seq) {
            assert!(
                event.seq > previous,
                "order violated for {}: seq {} arrived after {}",
                message.key,
                event.seq,
                previous
            );
        }
    }
    let missing: Vec<_> = written.difference(&seen).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} events never arrived, e.g. {missing:?}",
        written.len() - seen.len()
    );
    Accounting {
        delivered: messages.len(),
        unique: seen.len(),
        duplicates: messages.len() - seen.len(),
    }
}

/// A config that retries fast and never gives up, so random failures end in delivery, not dead letters.
pub fn fast_config() -> OutboxConfig {
    let mut config = OutboxConfig::default();
    config.batch_size = 50;
    config.poll_interval = Duration::from_millis(20);
    config.max_retry_count = 100;
    config.retry_initial_delay = Duration::from_millis(2);
    config.retry_max_delay = Duration::from_millis(20);
    config
}

/// `events` events over `aggregates` aggregates (`agg-<seq % aggregates>`), in one transaction; their ids.
pub async fn write(t: &TestDb, aggregates: u32, events: u32) -> HashSet<Uuid> {
    let envelopes: Vec<_> = (1..=events)
        .map(|seq| EventEnvelope::new(opened(&format!("agg-{}", seq % aggregates), seq)))
        .collect();
    let txn = t.db.begin().await.unwrap();
    let ids = t.outbox.add_events(&txn, envelopes).await.unwrap();
    txn.commit().await.unwrap();
    ids.into_iter().collect()
}

/// Writers under way: 60 transactions of 40 events each (2,400 events over 100 aggregates), every third rolled
/// back. The ids committed, and the ids rolled back.
pub async fn write_rolling_back_every_third(t: &TestDb) -> (HashSet<Uuid>, HashSet<Uuid>) {
    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    let mut seq = 0u32;
    for txn_no in 0..60 {
        let envelopes: Vec<_> = (0..40)
            .map(|_| {
                seq += 1;
                EventEnvelope::new(opened(&format!("agg-{}", seq % 100), seq))
            })
            .collect();
        let ids: Vec<_> = envelopes.iter().map(|e| e.event_id()).collect();
        let txn = t.db.begin().await.unwrap();
        t.outbox.add_events(&txn, envelopes).await.unwrap();
        if txn_no % 3 == 2 {
            txn.rollback().await.unwrap();
            rolled_back.extend(ids);
        } else {
            txn.commit().await.unwrap();
            committed.extend(ids);
        }
    }
    (committed, rolled_back)
}

/// Waits until every event is published, as the repository counts it (nothing behind a cursor, nothing parked).
pub async fn drained(t: &TestDb, broker: &InMemoryPublisher, expected: usize) {
    let done = async {
        loop {
            let unique: HashSet<_> = broker.messages().iter().map(|m| m.message.id).collect();
            if unique.len() >= expected && t.outbox.count_unpublished(&t.db).await.unwrap() == 0 {
                return;
            }
            broker
                .wait_for(broker.len() + 1, Duration::from_millis(100))
                .await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), done)
        .await
        .unwrap_or_else(|_| panic!("not everything arrived: {} of {expected}", broker.len()));
}
