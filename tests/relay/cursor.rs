//! The commit-order cursor (`OUTBOX_DELIVERY=cursor`) on PostgreSQL, MariaDB and SQLite: several relays sharing
//! the partitions under failures and rollbacks, a slow transaction, a poison event, a relay that lost its
//! partition, a clean handover, a table upgraded in place with events pending from before, and MariaDB's writer-kept
//! commit order.

use std::collections::HashSet;
use std::time::Duration;

use outbox::publisher::InMemoryPublisher;
use outbox::relay::Relay;
use outbox::repository::OutboxRepository;
use outbox::sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use outbox::{Delivery, OutboxConfig};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;
use outbox_tests::running::Running;

use crate::accounting::{account, drained, fast_config, write, write_rolling_back_every_third};

/// Runs each scenario on PostgreSQL, MariaDB and an SQLite file.
macro_rules! on_cursor_backends {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(outbox_tests::backend::Backend::Postgres).await;
            })*
        }
        mod mariadb {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(outbox_tests::backend::Backend::MariaDb).await;
            })*
        }
        mod sqlite {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(outbox_tests::backend::Backend::SqliteFile).await;
            })*
        }
    };
}

on_cursor_backends!(
    four_relays_share_the_partitions_nothing_lost_order_kept,
    a_poison_event_holds_only_its_aggregate_and_becomes_a_dead_letter,
    a_relay_that_lost_its_partition_cannot_move_the_cursor,
    events_pending_from_before_the_upgrade_are_delivered_first_in_order,
    a_dead_letter_from_before_the_upgrade_replayed_before_any_cursor_goes_out_once,
    the_rows_designs_claim_and_marks_are_refused,
    a_rows_relay_refuses_a_table_the_cursor_delivers,
    a_table_returned_to_rows_delivers_what_the_cursor_had_not,
    a_failed_event_is_retried_after_its_backoff_with_nothing_behind_it,
    a_held_aggregate_goes_out_a_batch_at_a_time_once_its_head_does,
    a_replayed_dead_letter_goes_out_again,
    retention_deletes_what_every_cursor_passed_and_nothing_else,
    lag_is_counted_behind_each_cursor,
    the_oldest_pending_event_is_dated_wherever_it_waits,
    a_dead_owners_partitions_are_taken_over_within_the_lease,
);

/// Stores one event in a transaction of its own (MySQL numbers an event's place in commit order in the writer's
/// transaction, so it takes no event outside one).
async fn add(t: &TestDb, event: outbox_tests::events::AccountOpened) -> uuid::Uuid {
    let txn = t.db.begin().await.unwrap();
    let id = t.outbox.add_event(&txn, event).await.unwrap();
    txn.commit().await.unwrap();
    id
}

fn cursor_config(partitions: u16) -> OutboxConfig {
    let mut config = fast_config();
    config.delivery = Delivery::Cursor;
    config.partitions = partitions;
    config
}

async fn four_relays_share_the_partitions_nothing_lost_order_kept(backend: Backend) {
    let t = TestDb::with_config(backend, cursor_config(8)).await;
    let broker = InMemoryPublisher::new();
    broker.fail_fraction(0.10);
    broker.lose_acks(0.02);
    let relays: Vec<Running> = (0..4)
        .map(|_| {
            Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build())
        })
        .collect();
    let (committed, rolled_back) = write_rolling_back_every_third(&t).await;
    drained(&t, &broker, committed.len()).await;
    // The relays signed on one after the other: the first ones took every partition and gave some back as the
    // others showed up, until each held its share.
    let shared = async {
        loop {
            let owners = t
                .scalar("SELECT COUNT(DISTINCT owner) FROM {t}_cursors WHERE owner IS NOT NULL")
                .await;
            let most = t
                .scalar(
                    "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM {t}_cursors \
                     WHERE owner IS NOT NULL GROUP BY owner) o",
                )
                .await;
            if owners == 4 && most == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), shared)
        .await
        .expect("four relays hold two partitions each");
    for relay in relays {
        relay.stop().await;
    }
    let totals = account(&broker, &committed);
    assert!(
        broker
            .messages()
            .iter()
            .all(|m| !rolled_back.contains(&m.message.id)),
        "an event of a rolled-back transaction was published"
    );
    assert_eq!(totals.unique, committed.len());
    assert_eq!(
        totals.duplicates as u64,
        broker.lost_acks(),
        "every duplicate must come from a lost acknowledgement"
    );
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);
    assert_eq!(
        t.scalar("SELECT COUNT(*) FROM {t}_cursors WHERE owner IS NOT NULL")
            .await,
        0,
        "relays that stop give their partitions back"
    );
    assert_eq!(
        t.scalar("SELECT COUNT(*) FROM {t} WHERE status <> 0").await,
        0,
        "no event row is written on the way out"
    );
    t.drop_tables().await;
}

#[tokio::test]
async fn a_slow_transaction_is_neither_skipped_nor_waited_for() {
    let t = TestDb::with_config(Backend::Postgres, cursor_config(1)).await;
    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();

    // The slow transaction takes its id and transaction id first, and commits last.
    let slow = t.db.begin().await.unwrap();
    let slow_id = t.outbox.add_event(&slow, opened("slow", 1)).await.unwrap();
    let fast = write(&t, 10, 50).await;
    let report = relay.publish_batch(100).await.unwrap();
    assert_eq!(report.published, 50, "the others are not held back");
    let seen: HashSet<_> = broker.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(seen, fast);

    slow.commit().await.unwrap();
    let report = relay.publish_batch(100).await.unwrap();
    assert_eq!(
        report.published, 1,
        "committed late, delivered all the same"
    );
    assert_eq!(broker.messages().last().unwrap().message.id, slow_id);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    assert_eq!(relay.publish_batch(100).await.unwrap().claimed, 0);
    t.drop_tables().await;
}

async fn a_poison_event_holds_only_its_aggregate_and_becomes_a_dead_letter(backend: Backend) {
    let t = TestDb::with_config(backend, cursor_config(1)).await;
    let broker = InMemoryPublisher::new();
    // Besides, one publish in three fails for a while: the parked events are retried in order.
    broker.fail_next(4);
    broker.reject_when(|message| {
        (message.key == "poisoned" && message.data.get().contains("\"seq\":3"))
            .then(|| "schema mismatch".to_owned())
    });
    let mut ids = Vec::new();
    for seq in 1..=6 {
        ids.push(add(&t, opened("poisoned", seq)).await);
        ids.push(add(&t, opened("healthy", seq)).await);
    }
    let relay =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    let done = async {
        while t.outbox.count_unpublished(&t.db).await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), done)
        .await
        .expect("drained");
    relay.stop().await;
    let order = |key: &str| -> Vec<u32> {
        broker
            .messages()
            .iter()
            .filter(|m| m.message.key == key)
            .map(|m| {
                serde_json::from_str::<outbox_tests::events::AccountOpened>(m.message.data.get())
                    .unwrap()
                    .seq
            })
            .collect()
    };
    assert_eq!(order("healthy"), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        order("poisoned"),
        vec![1, 2, 4, 5, 6],
        "seq 3 is a dead letter, the rest follow in order"
    );
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 1);
    assert_eq!(t.scalar("SELECT COUNT(*) FROM {t}_parked").await, 0);
    t.drop_tables().await;
}

async fn a_relay_that_lost_its_partition_cannot_move_the_cursor(backend: Backend) {
    let t = TestDb::with_config(backend, cursor_config(1)).await;
    let written = write(&t, 5, 20).await;
    let slow_broker = InMemoryPublisher::new();
    slow_broker.set_delay(Duration::from_millis(20));
    let stale = Relay::builder(t.db.clone(), t.outbox.clone(), slow_broker.clone())
        .max_in_flight(1)
        .build();
    let broker = InMemoryPublisher::new();
    let successor = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();

    // While the first relay publishes its batch, its partition is taken over (as after a freeze longer than the
    // lease), and the new owner's lease has run out too.
    let first = tokio::spawn(async move { stale.publish_batch(100).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cursor_before = t
        .scalar("SELECT after_id FROM {t}_cursors WHERE partition_no = 0")
        .await;
    t.sql("UPDATE {t}_cursors SET owner = 'another', epoch = epoch + 1, lease_until = 0")
        .await;
    let stale = first.await.unwrap().unwrap();
    assert_eq!(stale.published, 0, "{stale:?}");
    assert_eq!(stale.fenced_out, 20, "{stale:?}");
    assert_eq!(
        t.scalar("SELECT after_id FROM {t}_cursors WHERE partition_no = 0")
            .await,
        cursor_before,
        "the stale relay did not move the cursor"
    );
    assert_eq!(t.scalar("SELECT COUNT(*) FROM {t}_parked").await, 0);

    let report = successor.publish_batch(100).await.unwrap();
    assert_eq!(
        report.published, 20,
        "the successor publishes from the cursor"
    );
    let seen: HashSet<_> = broker.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(seen, written);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    t.drop_tables().await;
}

async fn events_pending_from_before_the_upgrade_are_delivered_first_in_order(backend: Backend) {
    let t = TestDb::with_design(backend, OutboxConfig::default()).await;
    // Under the row design: 30 events, the first 10 published; then the rows lose what the cursor adds, as rows
    // stored before the upgrade have none of it.
    let written = write(&t, 3, 30).await;
    let before = InMemoryPublisher::new();
    let rows = Relay::builder(t.db.clone(), t.outbox.clone(), before.clone()).build();
    assert_eq!(rows.publish_batch(10).await.unwrap().published, 10);
    let published_before: HashSet<_> = before.messages().iter().map(|m| m.message.id).collect();
    let stored_before = match backend {
        Backend::Postgres => "UPDATE {t} SET partition_no = NULL, txid = NULL",
        Backend::MariaDb => "UPDATE {t} SET partition_no = NULL, seq = NULL",
        _ => "UPDATE {t} SET partition_no = NULL",
    };
    t.sql(stored_before).await;
    t.sql("DELETE FROM {t}_cursors").await;

    let upgraded = OutboxRepository::builder()
        .table(t.outbox.table())
        .config(cursor_config(4))
        .build()
        .unwrap();
    // A writer on the new version stores events after the upgrade, before the first cursor relay starts.
    let mut after = HashSet::new();
    for seq in 31..=36 {
        let txn = t.db.begin().await.unwrap();
        after.insert(
            upgraded
                .add_event(&txn, opened(&format!("agg-{}", seq % 3), seq))
                .await
                .unwrap(),
        );
        txn.commit().await.unwrap();
    }
    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), upgraded.clone(), broker.clone()).build();
    while relay.publish_batch(100).await.unwrap().claimed > 0 {}
    let pending_before: HashSet<_> = written.difference(&published_before).copied().collect();
    let delivered: Vec<_> = broker.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(
        delivered.len(),
        26,
        "20 pending from before, 6 after, none twice"
    );
    let all: HashSet<_> = pending_before.union(&after).copied().collect();
    assert_eq!(delivered.iter().copied().collect::<HashSet<_>>(), all);
    let totals = account(&broker, &all);
    assert_eq!(totals.unique, 26, "in order per aggregate");
    assert_eq!(upgraded.count_unpublished(&t.db).await.unwrap(), 0);
    t.drop_tables().await;
}

/// Dead letters of the row design replayed after the upgrade, before the first cursor relay made the cursors:
/// replay parks them (the cursor is assumed to have passed them), but no cursor has passed them yet, so the first
/// relay also finds them pending after its new cursors.
async fn a_dead_letter_from_before_the_upgrade_replayed_before_any_cursor_goes_out_once(
    backend: Backend,
) {
    let t = TestDb::with_design(backend, OutboxConfig::default()).await;
    let written = write(&t, 3, 9).await;
    let claim = t.outbox.claim(&t.db, 100).await.unwrap();
    let (doomed, fine): (Vec<_>, Vec<_>) = claim
        .events
        .iter()
        .partition(|e| e.envelope.aggregate_id() == "agg-1");
    let failures: Vec<_> = doomed
        .iter()
        .map(|e| outbox::repository::Failure::new(e, "poison").permanent())
        .collect();
    t.outbox
        .mark_failed(&t.db, claim.token, &failures)
        .await
        .unwrap();
    let fine_ids: Vec<i64> = fine.iter().map(|e| e.id).collect();
    t.outbox
        .mark_published(&t.db, claim.token, &fine_ids)
        .await
        .unwrap();
    let doomed_ids: HashSet<_> = doomed.iter().map(|e| e.envelope.event_id()).collect();
    assert_eq!(doomed_ids.len(), 3);
    assert!(doomed_ids.is_subset(&written));

    let upgraded = OutboxRepository::builder()
        .table(t.outbox.table())
        .config(cursor_config(OutboxConfig::default().partitions))
        .build()
        .unwrap();
    let replayed = upgraded
        .replay_dead_letters(&t.db, outbox::repository::DeadLetterFilter::All)
        .await
        .unwrap();
    assert_eq!(replayed, 3);
    assert_eq!(
        upgraded.count_unpublished(&t.db).await.unwrap(),
        3,
        "each replayed event counted once"
    );
    let backlog = upgraded.backlog(&t.db).await.unwrap();
    assert_eq!(
        backlog.iter().map(|b| b.pending).sum::<u64>(),
        3,
        "{backlog:?}"
    );
    assert_eq!(
        upgraded.get_unpublished(&t.db, 100, 0).await.unwrap().len(),
        3
    );

    // A first batch of one makes the cursors, which start below the replayed events, and fails to publish the
    // first of them: they wait parked and after their cursor at once.
    let broker = InMemoryPublisher::new();
    broker.fail_next(1);
    let relay = Relay::builder(t.db.clone(), upgraded.clone(), broker.clone()).build();
    let first = relay.publish_batch(1).await.unwrap();
    assert_eq!(first.published, 0, "{first:?}");
    assert_eq!(upgraded.count_unpublished(&t.db).await.unwrap(), 3);
    let backlog = upgraded.backlog(&t.db).await.unwrap();
    assert_eq!(
        backlog.iter().map(|b| b.pending).sum::<u64>(),
        3,
        "{backlog:?}"
    );
    let lag = upgraded.partitions(&t.db).await.unwrap();
    assert_eq!(lag.iter().map(|p| p.pending).sum::<u64>(), 3, "{lag:?}");

    let relay = Running::start(relay);
    broker.wait_for(3, Duration::from_secs(10)).await;
    // Time for a second delivery of any of them, then a clean stop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lag = upgraded.partitions(&t.db).await.unwrap();
    assert_eq!(lag.iter().map(|p| p.pending).sum::<u64>(), 0, "{lag:?}");
    relay.stop().await;
    let delivered: Vec<_> = broker.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(
        delivered.iter().copied().collect::<HashSet<_>>(),
        doomed_ids,
        "the replayed events, and nothing published before"
    );
    assert_eq!(delivered.len(), 3, "none twice: {delivered:?}");
    assert_eq!(account(&broker, &doomed_ids).unique, 3, "in order");
    assert_eq!(upgraded.count_unpublished(&t.db).await.unwrap(), 0);
    assert!(
        upgraded
            .get_unpublished(&t.db, 100, 0)
            .await
            .unwrap()
            .is_empty()
    );
    t.drop_tables().await;
}

/// The repository's claim and marks are the rows design's: under the cursor, events stay pending in place once
/// published, so a claim there would hand out everything the cursors passed (published again), and a mark would
/// change what no cursor reads. They are refused by name, and change nothing.
async fn the_rows_designs_claim_and_marks_are_refused(backend: Backend) {
    let t = TestDb::with_config(backend, cursor_config(2)).await;
    let written = [add(&t, opened("a", 1)).await, add(&t, opened("a", 2)).await];
    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    while relay.publish_batch(100).await.unwrap().claimed > 0 {}
    assert_eq!(broker.messages().len(), 2);
    let pending = add(&t, opened("a", 3)).await;

    let refused = |result: Result<_, outbox::repository::RepositoryError>, operation: &str| {
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains(operation) && message.contains("OUTBOX_DELIVERY=cursor"),
            "{operation}: {message:?}"
        );
    };
    refused(t.outbox.claim(&t.db, 100).await.map(drop), "claim");
    refused(
        t.outbox
            .claim_as(&t.db, &outbox::repository::LeaseOwner::new(), 100)
            .await
            .map(drop),
        "claim",
    );
    let rows = t.outbox.get_unpublished(&t.db, 10, 0).await.unwrap();
    let row = rows
        .iter()
        .find(|r| r.event_id == pending)
        .map(|r| r.id)
        .expect("the third event is pending");
    refused(
        t.outbox.mark_event_published(&t.db, row).await.map(drop),
        "mark_event_published",
    );
    refused(
        t.outbox.mark_event_failed(&t.db, row, "no").await.map(drop),
        "mark_event_failed",
    );
    // What the relays marked published: nothing is marked under the cursor, so it would stay empty for good.
    refused(
        t.outbox
            .published_between(&t.db, None, chrono::Utc::now(), 10)
            .await
            .map(drop),
        "published_between",
    );
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 1);
    while relay.publish_batch(100).await.unwrap().claimed > 0 {}
    let delivered: Vec<_> = broker.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(
        delivered,
        [written[0], written[1], pending],
        "each once, in order"
    );
    t.drop_tables().await;
}

/// Setting `OUTBOX_DELIVERY` back to `rows` on a table the cursor has delivered: its published events are still
/// pending in place, so a rows relay would publish the table's whole history again. It refuses to start, by name.
async fn a_rows_relay_refuses_a_table_the_cursor_delivers(backend: Backend) {
    let t = TestDb::with_config(backend, cursor_config(2)).await;
    add(&t, opened("a", 1)).await;
    let broker = InMemoryPublisher::new();
    let cursor = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    while cursor.publish_batch(100).await.unwrap().claimed > 0 {}
    assert_eq!(broker.messages().len(), 1);

    let rows = OutboxRepository::builder()
        .table(t.outbox.table())
        .config(fast_config())
        .build()
        .unwrap();
    // The rows design's own calls on the table: a tool's claim would hand out the same history.
    let refused = |result: Result<(), outbox::repository::RepositoryError>| {
        assert!(
            matches!(
                result,
                Err(outbox::repository::RepositoryError::DeliveredByCursor { .. })
            ),
            "{result:?}"
        );
    };
    refused(rows.claim(&t.db, 100).await.map(drop));
    refused(
        rows.published_between(&t.db, None, chrono::Utc::now(), 10)
            .await
            .map(drop),
    );
    let relay = Relay::builder(t.db.clone(), rows, broker.clone()).build();
    let message = relay
        .publish_batch(100)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        message.contains("OUTBOX_DELIVERY=cursor") && message.contains(t.outbox.table()),
        "{message:?}"
    );
    let stopped = tokio::time::timeout(Duration::from_secs(10), relay.run(std::future::pending()))
        .await
        .expect("the relay stops at once");
    assert!(stopped.is_err(), "{stopped:?}");
    assert_eq!(broker.messages().len(), 1, "nothing published again");
    t.drop_tables().await;
}

/// `return_to_rows`: what the cursor published is marked so, and a rows relay then delivers exactly the rest (a
/// parked event, one after the cursor), in order; a dead letter stays one. Refused while a relay holds a partition.
async fn a_table_returned_to_rows_delivers_what_the_cursor_had_not(backend: Backend) {
    let t = TestDb::with_config(backend, cursor_config(2)).await;
    let broker = InMemoryPublisher::new();
    let cursor = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    let mut published = Vec::new();
    for seq in 1..=3 {
        published.push(add(&t, opened("a", seq)).await);
    }
    while cursor.publish_batch(100).await.unwrap().claimed > 0 {}
    broker.reject_when(|message| (message.key == "dead").then(|| "refused".to_owned()));
    add(&t, opened("dead", 1)).await;
    while cursor.publish_batch(100).await.unwrap().claimed > 0 {}
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 1);
    broker.reject_when(|_| None);
    broker.fail_next(1);
    let held = add(&t, opened("held", 1)).await;
    cursor.publish_batch(100).await.unwrap();
    let late = add(&t, opened("held", 2)).await;
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 2);

    let refused = t.outbox.return_to_rows(&t.db).await;
    assert!(
        matches!(
            refused,
            Err(outbox::repository::RepositoryError::CursorsInUse { partitions: 2, .. })
        ),
        "{refused:?}"
    );
    // As a relay's clean stop leaves them.
    t.sql("UPDATE {t}_cursors SET owner = NULL, lease_until = NULL")
        .await;
    assert_eq!(t.outbox.return_to_rows(&t.db).await.unwrap(), 3);

    let rows = OutboxRepository::builder()
        .table(t.outbox.table())
        .config(fast_config())
        .build()
        .unwrap();
    assert_eq!(rows.count_unpublished(&t.db).await.unwrap(), 2);
    let after = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), rows.clone(), after.clone()).build();
    while relay.publish_batch(100).await.unwrap().claimed > 0 {}
    let delivered: Vec<_> = after.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(
        delivered,
        [held, late],
        "the rest, in order, and nothing published before"
    );
    assert_eq!(rows.count_unpublished(&t.db).await.unwrap(), 0);
    assert_eq!(rows.count_dead_letters(&t.db).await.unwrap(), 1);
    let marked = rows
        .published_between(&t.db, None, chrono::Utc::now(), 10)
        .await
        .unwrap();
    let marked: HashSet<_> = marked.iter().map(|e| e.event_id).collect();
    assert!(
        published.iter().all(|id| marked.contains(id)),
        "the cursor's are marked published"
    );
    t.drop_tables().await;
}

async fn a_failed_event_is_retried_after_its_backoff_with_nothing_behind_it(backend: Backend) {
    let mut config = cursor_config(2);
    config.retry_initial_delay = Duration::from_millis(200);
    config.retry_max_delay = Duration::from_millis(200);
    let t = TestDb::with_config(backend, config).await;
    let broker = InMemoryPublisher::new();
    broker.fail_next(1);
    let id = add(&t, opened("lonely", 1)).await;
    let relay =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    assert!(
        broker.wait_for(1, Duration::from_secs(10)).await,
        "the parked event was never tried again"
    );
    relay.stop().await;
    assert_eq!(broker.messages()[0].message.id, id);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    t.drop_tables().await;
}

/// Once a held aggregate's head goes out, the events parked behind it follow in the same batch, in order: not one
/// per batch, which left an aggregate held for a while draining at a batch per event.
async fn a_held_aggregate_goes_out_a_batch_at_a_time_once_its_head_does(backend: Backend) {
    let mut config = cursor_config(2);
    config.retry_initial_delay = Duration::from_millis(100);
    config.retry_max_delay = Duration::from_millis(100);
    let t = TestDb::with_config(backend, config).await;
    let mut written = Vec::new();
    for seq in 1..=30 {
        written.push(add(&t, opened("held", seq)).await);
    }
    let broker = InMemoryPublisher::new();
    broker.fail_next(1);
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    let first = relay.publish_batch(100).await.unwrap();
    assert_eq!(
        first.published, 0,
        "the head failed, the rest wait: {first:?}"
    );
    assert_eq!(t.outbox.stats(&t.db).await.unwrap().pending, 30);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = relay.publish_batch(100).await.unwrap();
    assert_eq!(again.published, 30, "{again:?}");
    let delivered: Vec<_> = broker.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(delivered, written, "in order");
    assert_eq!(t.outbox.stats(&t.db).await.unwrap().pending, 0);
    t.drop_tables().await;
}

async fn a_replayed_dead_letter_goes_out_again(backend: Backend) {
    let t = TestDb::with_config(backend, cursor_config(2)).await;
    let broker = InMemoryPublisher::new();
    broker.reject_when(|message| (message.key == "doomed").then(|| "rejected".to_owned()));
    let id = add(&t, opened("doomed", 1)).await;
    let relay =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    let dead = async {
        while t.outbox.count_dead_letters(&t.db).await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), dead)
        .await
        .expect("a dead letter");
    broker.reject_when(|_| None);
    let replayed = t
        .outbox
        .replay_dead_letters(&t.db, outbox::repository::DeadLetterFilter::All)
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    assert!(
        broker.wait_for(1, Duration::from_secs(10)).await,
        "the replayed event was never published"
    );
    relay.stop().await;
    assert_eq!(broker.messages()[0].message.id, id);
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    t.drop_tables().await;
}

#[tokio::test]
async fn a_relay_refuses_a_partition_count_that_disagrees() {
    let t = TestDb::with_config(Backend::Postgres, cursor_config(8)).await;
    write(&t, 2, 4).await;
    let eight = Relay::builder(t.db.clone(), t.outbox.clone(), InMemoryPublisher::new()).build();
    // One partition per batch: as many batches as partitions hold events.
    let mut published = 0;
    loop {
        let report = eight.publish_batch(10).await.unwrap();
        if report.claimed == 0 {
            break;
        }
        published += report.published;
    }
    assert_eq!(published, 4);
    let four = OutboxRepository::builder()
        .table(t.outbox.table())
        .config(cursor_config(4))
        .build()
        .unwrap();
    let relay = Relay::builder(t.db.clone(), four.clone(), InMemoryPublisher::new()).build();
    let error = relay.publish_batch(10).await.unwrap_err().to_string();
    assert!(
        error.contains("split into 8 partitions but OUTBOX_PARTITIONS is 4"),
        "{error}"
    );
    // `run` stops at its start with the same error, rather than retrying it batch after batch.
    let relay = Relay::builder(t.db.clone(), four, InMemoryPublisher::new()).build();
    let stopped = tokio::time::timeout(Duration::from_secs(10), relay.run(std::future::pending()))
        .await
        .expect("the relay refuses at once");
    assert!(
        stopped
            .unwrap_err()
            .to_string()
            .contains("split into 8 partitions"),
    );
    t.drop_tables().await;
}

/// MariaDB keeps commit order in the writer: an event's place is taken from its partition's counter as it is
/// inserted (the table's trigger), in the writer's transaction, which holds the counter until it ends. So a
/// second writer of the partition waits for the first (and comes after it), writers of other partitions do not
/// wait, a rollback gives its places back, and an event outside a transaction is numbered in its own.
#[tokio::test]
async fn mariadb_numbers_each_partition_in_commit_order() {
    let t = TestDb::with_config(Backend::MariaDb, cursor_config(4)).await;
    let alone = t.outbox.add_event(&t.db, opened("a", 0)).await.unwrap();
    assert_eq!(
        t.scalar(&format!("SELECT seq FROM {{t}} WHERE event_id = '{alone}'"))
            .await,
        1,
        "an event stored outside a transaction is numbered in its own"
    );

    let partition = |id: &str| partition_of_account(id, 4);
    let other = (0..)
        .map(|n| format!("b-{n}"))
        .find(|id| partition(id) != partition("a"))
        .unwrap();
    let place = |id: uuid::Uuid| format!("SELECT seq FROM {{t}} WHERE event_id = '{id}'");

    let first = t.db.begin().await.unwrap();
    let first_id = t.outbox.add_event(&first, opened("a", 1)).await.unwrap();
    let second = {
        let (db, outbox) = (t.db.clone(), t.outbox.clone());
        tokio::spawn(async move {
            let txn = db.begin().await.unwrap();
            let id = outbox.add_event(&txn, opened("a", 2)).await.unwrap();
            txn.commit().await.unwrap();
            id
        })
    };
    let elsewhere = tokio::time::timeout(Duration::from_secs(5), add(&t, opened(&other, 1)))
        .await
        .expect("a writer of another partition does not wait");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second writer of the partition waits for the first"
    );
    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    while relay.publish_batch(100).await.unwrap().claimed > 0 {}
    let seen: HashSet<_> = broker.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(
        seen,
        HashSet::from([alone, elsewhere]),
        "the open transaction holds back only its partition"
    );

    first.commit().await.unwrap();
    let second_id = second.await.unwrap();
    let rolled_back = t.db.begin().await.unwrap();
    t.outbox
        .add_event(&rolled_back, opened("a", 3))
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();
    let third_id = add(&t, opened("a", 3)).await;
    let places = [
        t.scalar(&place(first_id)).await,
        t.scalar(&place(second_id)).await,
        t.scalar(&place(third_id)).await,
    ];
    assert_eq!(
        places,
        [places[0], places[0] + 1, places[0] + 2],
        "in commit order, the rolled-back place given back"
    );
    while relay.publish_batch(100).await.unwrap().claimed > 0 {}
    let seen: Vec<_> = broker
        .messages()
        .iter()
        .map(|m| m.message.id)
        .filter(|id| *id != elsewhere)
        .collect();
    assert_eq!(seen, vec![alone, first_id, second_id, third_id]);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    t.drop_tables().await;
}

/// A MariaDB writer of several partitions takes their counters in ascending order whatever the order of its events
/// (two writers of the same partitions in opposite orders would otherwise deadlock), and gets its ids back in the
/// order it gave the events.
#[tokio::test]
async fn mariadb_numbers_several_partitions_in_one_direction() {
    let t = TestDb::with_config(Backend::MariaDb, cursor_config(4)).await;
    let partition = |id: &str| partition_of_account(id, 4);
    // One account per partition, the highest partition first.
    let accounts: Vec<String> = (0..4)
        .rev()
        .map(|p| {
            (0..)
                .map(|n| format!("x-{n}"))
                .find(|id| partition(id) == p)
                .unwrap()
        })
        .collect();
    let events = |round: u32| -> Vec<_> {
        accounts
            .iter()
            .flat_map(|id| [opened(id, 2 * round), opened(id, 2 * round + 1)])
            .collect()
    };
    let writer = |events: Vec<outbox_tests::events::AccountOpened>| {
        let (db, outbox) = (t.db.clone(), t.outbox.clone());
        tokio::spawn(async move {
            let txn = db.begin().await.unwrap();
            let ids = outbox.add_events(&txn, events).await.unwrap();
            txn.commit().await.unwrap();
            ids
        })
    };
    let given = events(0);
    let ids = writer(given.clone()).await.unwrap();
    for (id, event) in ids.iter().zip(&given) {
        let stored = format!(
            "SELECT COUNT(*) FROM {{t}} WHERE event_id = '{id}' AND aggregate_id = '{}' \
             AND JSON_EXTRACT(payload, '$.seq') = {}",
            event.account, event.seq
        );
        assert_eq!(
            t.scalar(&stored).await,
            1,
            "ids come back in the caller's order"
        );
    }
    // Writers of the same partitions in opposite orders, at once, many times over: one lock order or a deadlock.
    for round in 1..=20 {
        let forward = events(round * 2);
        let mut backward = events(round * 2 + 1);
        backward.reverse();
        let (a, b) = (writer(forward), writer(backward));
        a.await.unwrap();
        b.await.unwrap();
    }
    for id in &accounts {
        let dense = format!(
            "SELECT COUNT(DISTINCT seq) = COUNT(*) AND MIN(seq) = 1 AND MAX(seq) = COUNT(*) FROM {{t}} \
             WHERE aggregate_id = '{id}'"
        );
        assert_eq!(
            t.scalar(&dense).await,
            1,
            "{id}: numbered 1..n, no gap, no repeat"
        );
    }
    t.drop_tables().await;
}

/// A MariaDB table migrated before the sequence trigger existed: its writers take their numbers with a statement of
/// their own, in the caller's transaction (outside one they are refused, as the number would commit apart from
/// its event). And an event stored for the trigger after it was dropped is adopted and delivered, not left behind.
#[tokio::test]
async fn mariadb_without_the_sequence_trigger_loses_nothing() {
    let t = TestDb::with_config(Backend::MariaDb, cursor_config(4)).await;
    let before = add(&t, opened("a", 1)).await;
    t.sql("DROP TRIGGER {t}_seq").await;
    // `t.outbox` saw the trigger: it stores `seq = 0` for a trigger that is gone.
    let orphan = add(&t, opened("a", 2)).await;
    assert_eq!(
        t.scalar(&format!(
            "SELECT seq FROM {{t}} WHERE event_id = '{orphan}'"
        ))
        .await,
        0
    );
    let fresh = OutboxRepository::builder()
        .table(t.outbox.table())
        .config(cursor_config(4))
        .build()
        .unwrap();
    let error = fresh.add_event(&t.db, opened("b", 1)).await.unwrap_err();
    assert!(
        matches!(
            error,
            outbox::repository::RepositoryError::CursorNeedsTransaction { .. }
        ),
        "{error}"
    );
    let txn = t.db.begin().await.unwrap();
    let numbered = fresh.add_event(&txn, opened("b", 1)).await.unwrap();
    txn.commit().await.unwrap();
    assert!(
        t.scalar(&format!(
            "SELECT seq FROM {{t}} WHERE event_id = '{numbered}'"
        ))
        .await
            > 0
    );

    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    while relay.publish_batch(100).await.unwrap().claimed > 0 {}
    let seen: HashSet<_> = broker.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(seen, HashSet::from([before, orphan, numbered]));
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    t.drop_tables().await;
}

/// Retention under the cursor deletes the events below their partitions' cursors, and keeps the parked ones, the
/// dead letters and what no relay has read; delivery goes on after it.
async fn retention_deletes_what_every_cursor_passed_and_nothing_else(backend: Backend) {
    let mut config = cursor_config(2);
    config.retry_initial_delay = Duration::from_secs(60);
    config.retry_max_delay = Duration::from_secs(60);
    config.max_retry_count = 1;
    let t = TestDb::with_config(backend, config).await;
    let broker = InMemoryPublisher::new();
    broker.reject_when(|message| (message.key == "doomed").then(|| "rejected".to_owned()));
    let delivered = write(&t, 4, 30).await;
    add(&t, opened("doomed", 1)).await;
    // On PostgreSQL an event is known delivered once its transaction is below the xmin of the snapshot its cursor
    // read to, and a transaction of another test open at that moment would hold that xmin back until more events
    // move the cursor: the relay starts once no transaction older than these events is open.
    if backend == Backend::Postgres {
        let behind =
            "SELECT COUNT(*) FROM {t} WHERE txid >= pg_snapshot_xmin(pg_current_snapshot())";
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while t.scalar(behind).await > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "a transaction stayed open for 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    // Twice over: the first batch reads the window, the next opens the one after, which moves each cursor's
    // snapshot past what was read.
    for _ in 0..3 {
        while relay.publish_batch(100).await.unwrap().claimed > 0 {}
    }
    assert_eq!(broker.messages().len(), 30);
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 1);
    // Held back: a failure parks an event with a long backoff, and its aggregate's next event behind it.
    broker.fail_next(1);
    let held = add(&t, opened("held", 1)).await;
    let behind = add(&t, opened("held", 2)).await;
    relay.publish_batch(100).await.unwrap();
    assert_eq!(t.scalar("SELECT COUNT(*) FROM {t}_parked").await, 2);
    // Not read yet.
    let waiting = add(&t, opened("waiting", 1)).await;

    let purged = t
        .outbox
        .purge_published(&t.db, Duration::ZERO, 7)
        .await
        .unwrap();
    assert_eq!(purged, 30, "the delivered events, 7 at a time");
    assert_eq!(t.scalar("SELECT COUNT(*) FROM {t}").await, 4);
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 1);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 3);
    let kept = t
        .outbox
        .purge_published(&t.db, Duration::from_secs(3600), 100)
        .await
        .unwrap();
    assert_eq!(kept, 0, "nothing younger than an hour");

    t.sql("UPDATE {t}_parked SET next_attempt_at = 0").await;
    while relay.publish_batch(100).await.unwrap().claimed > 0 {}
    let after: Vec<_> = broker.messages()[30..]
        .iter()
        .map(|m| m.message.id)
        .collect();
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.contains(&waiting));
    let held_at = after.iter().position(|id| *id == held).unwrap();
    let behind_at = after.iter().position(|id| *id == behind).unwrap();
    assert!(held_at < behind_at, "still in order after the purge");
    assert!(delivered.iter().all(|id| !after.contains(id)));
    t.drop_tables().await;
}

/// Under the cursor rows stay pending in place: the lag figures (per partition, per aggregate type) count what
/// waits behind the cursors and in the parked table, not every row ever stored.
/// The lag's age (health checks, the gauges, `outbox status`) counts every pending event: those stored before any
/// relay made the cursors (relays that never started are when the age matters most), and parked ones (an event
/// retried for hours, with nothing behind any cursor).
async fn the_oldest_pending_event_is_dated_wherever_it_waits(backend: Backend) {
    let mut config = cursor_config(2);
    config.retry_initial_delay = Duration::from_secs(60);
    config.retry_max_delay = Duration::from_secs(60);
    let t = TestDb::with_config(backend, config).await;
    add(&t, opened("early", 1)).await;
    add(&t, opened("early", 2)).await;
    let stats = t.outbox.stats(&t.db).await.unwrap();
    assert_eq!(stats.pending, 2, "{stats:?}");
    assert!(
        stats.oldest_pending.is_some(),
        "events stored before any relay ran are dated: {stats:?}"
    );
    let backlog = t.outbox.backlog(&t.db).await.unwrap();
    assert_eq!(backlog.len(), 1, "{backlog:?}");
    assert_eq!(backlog[0].pending, 2, "{backlog:?}");
    assert!(backlog[0].oldest_pending.is_some(), "{backlog:?}");

    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    while relay.publish_batch(100).await.unwrap().claimed > 0 {}
    assert_eq!(broker.messages().len(), 2);
    let stats = t.outbox.stats(&t.db).await.unwrap();
    assert_eq!(
        (stats.pending, stats.oldest_pending),
        (0, None),
        "{stats:?}"
    );

    broker.fail_next(1);
    add(&t, opened("held", 1)).await;
    add(&t, opened("held", 2)).await;
    relay.publish_batch(100).await.unwrap();
    let stats = t.outbox.stats(&t.db).await.unwrap();
    assert_eq!(stats.pending, 2, "the held events are parked: {stats:?}");
    let parked = t.outbox.get_unpublished(&t.db, 100, 0).await.unwrap();
    let first = parked.iter().map(|e| e.occurred_at).min();
    assert!(first.is_some(), "{parked:?}");
    assert_eq!(
        stats.oldest_pending, first,
        "a parked event's age is the lag's: {stats:?}"
    );
    t.drop_tables().await;
}

async fn lag_is_counted_behind_each_cursor(backend: Backend) {
    let mut config = cursor_config(2);
    config.retry_initial_delay = Duration::from_secs(60);
    config.retry_max_delay = Duration::from_secs(60);
    let t = TestDb::with_config(backend, config).await;
    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    // The first batch makes the cursors.
    relay.publish_batch(100).await.unwrap();
    write(&t, 3, 12).await;
    let partitions = t.outbox.partitions(&t.db).await.unwrap();
    assert_eq!(partitions.len(), 2);
    let expected = |p: u16| {
        (1..=12)
            .filter(|seq| partition_of_account(&format!("agg-{}", seq % 3), 2) == p)
            .count() as u64
    };
    for lag in &partitions {
        assert_eq!(lag.pending, expected(lag.partition), "{lag:?}");
        assert!(lag.owner.is_some(), "{lag:?}");
        assert_eq!(lag.oldest_pending.is_some(), lag.pending > 0, "{lag:?}");
    }
    assert_eq!(t.outbox.backlog(&t.db).await.unwrap()[0].pending, 12);
    let pending = t.outbox.get_unpublished(&t.db, 100, 0).await.unwrap();
    assert_eq!(pending.len(), 12, "every event written is pending");

    for _ in 0..2 {
        while relay.publish_batch(100).await.unwrap().claimed > 0 {}
    }
    assert_eq!(broker.messages().len(), 12);
    let partitions = t.outbox.partitions(&t.db).await.unwrap();
    assert!(
        partitions.iter().all(|lag| lag.pending == 0),
        "{partitions:?}"
    );
    assert!(t.outbox.backlog(&t.db).await.unwrap().is_empty());
    let pending = t.outbox.get_unpublished(&t.db, 100, 0).await.unwrap();
    assert!(
        pending.is_empty(),
        "published events are not pending: {}",
        pending.len()
    );

    broker.fail_next(1);
    add(&t, opened("held", 1)).await;
    add(&t, opened("held", 2)).await;
    relay.publish_batch(100).await.unwrap();
    let held = partition_of_account("held", 2);
    for lag in t.outbox.partitions(&t.db).await.unwrap() {
        let parked = if lag.partition == held { 2 } else { 0 };
        assert_eq!(lag.pending, parked, "parked events are pending: {lag:?}");
    }
    let backlog = t.outbox.backlog(&t.db).await.unwrap();
    assert_eq!(backlog.len(), 1);
    assert_eq!(backlog[0].pending, 2);
    assert_eq!(t.outbox.stats(&t.db).await.unwrap().pending, 2);
    let pending = t.outbox.get_unpublished(&t.db, 100, 0).await.unwrap();
    assert_eq!(pending.len(), 2, "the parked events are pending");
    assert!(pending.iter().all(|e| e.aggregate_id == "held"));
    t.drop_tables().await;
}

fn partition_of_account(id: &str, partitions: u16) -> u16 {
    use outbox::OutboxEvent;
    outbox::repository::partition_of(
        outbox_tests::events::AccountOpened::AGGREGATE_TYPE,
        id,
        partitions,
    )
}

/// A relay that holds every partition and stops without handing them over (killed, frozen): another relay takes
/// them over once the leases end, within a lease and a renewal, and delivers everything.
async fn a_dead_owners_partitions_are_taken_over_within_the_lease(backend: Backend) {
    let lease = Duration::from_secs(2);
    let mut config = cursor_config(4);
    config.lease_duration = lease;
    let t = TestDb::with_config(backend, config).await;
    let dead = Relay::builder(t.db.clone(), t.outbox.clone(), InMemoryPublisher::new()).build();
    dead.publish_batch(100).await.unwrap();
    assert_eq!(
        t.scalar("SELECT COUNT(DISTINCT owner) FROM {t}_cursors WHERE owner IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        t.scalar("SELECT COUNT(*) FROM {t}_cursors WHERE owner IS NOT NULL")
            .await,
        4,
        "alone, the first relay took every partition"
    );
    let written = write(&t, 20, 200).await;
    let started = std::time::Instant::now();
    let broker = InMemoryPublisher::new();
    let successor =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    assert!(
        broker.wait_for(200, lease * 3).await,
        "{} of 200 delivered",
        broker.messages().len()
    );
    let took = started.elapsed();
    successor.stop().await;
    assert!(
        took <= lease + Duration::from_millis(1500),
        "taken over in {took:?}, the lease is {lease:?}"
    );
    let totals = account(&broker, &written);
    assert_eq!(totals.unique, 200);
    assert_eq!(totals.duplicates, 0);
    t.drop_tables().await;
}

/// An event stored while its partition was out in a batch in flight goes out once that batch is settled, not at
/// the next poll: the claim its wake-up started found the partition out and nothing else to read.
#[tokio::test]
async fn an_event_behind_a_batch_in_flight_goes_out_when_it_settles() {
    let mut config = cursor_config(2);
    config.poll_interval = Duration::from_secs(10);
    let t = TestDb::with_config(Backend::Postgres, config).await;
    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone())
        .listen(false)
        .build();
    let handle = relay.handle();
    let running = Running::start(relay);
    // Two aggregates of one partition, so the second event is not held behind the first's aggregate.
    let partition = partition_of_account("first", 2);
    let second = (0..)
        .map(|i| format!("second-{i}"))
        .find(|id| partition_of_account(id, 2) == partition)
        .unwrap();
    // The relay's first claim makes the cursors; it is idle after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.set_delay(Duration::from_millis(500));
    add(&t, opened("first", 1)).await;
    handle.wake();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let id = add(&t, opened(&second, 1)).await;
    handle.wake();
    let started = tokio::time::Instant::now();
    while !broker.messages().iter().any(|m| m.message.id == id) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the event waited for the 10 s poll behind the batch in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    t.drop_tables().await;
}

/// A claim dropped half-way (a caller's timeout around `publish_batch`, or `run` stopped with batches in flight)
/// puts back the partitions it had taken: they are read at the next claim, not a lease later.
#[tokio::test]
async fn a_claim_dropped_half_way_gives_its_partition_back_at_once() {
    let t = TestDb::with_config(Backend::Postgres, cursor_config(1)).await;
    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    // The first claim makes the cursors and takes the partition.
    relay.publish_batch(100).await.unwrap();
    let written = write(&t, 5, 20).await;
    // Reads of the outbox table wait behind a lock, so the next claim stops inside its read, partition taken.
    let lock = t.db.begin().await.unwrap();
    lock.execute_unprepared(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        t.outbox.table()
    ))
    .await
    .unwrap();
    let dropped = tokio::time::timeout(Duration::from_millis(300), relay.publish_batch(100)).await;
    assert!(
        dropped.is_err(),
        "the claim went through the lock: {dropped:?}"
    );
    lock.rollback().await.unwrap();

    let report = relay.publish_batch(100).await.unwrap();
    assert_eq!(
        report.published, 20,
        "the partition stayed out after the claim that took it was dropped: {report:?}"
    );
    let seen: HashSet<_> = broker.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(seen, written);
    t.drop_tables().await;
}

/// Batches that run out of publishing time (a broker slower than the lease allows: a publish must end four fifths
/// into the lease) give the rest back: parked, and published by the next batches, each aggregate in order.
#[tokio::test]
async fn batches_that_run_out_of_time_give_the_rest_back_in_order() {
    let mut config = cursor_config(1);
    config.lease_duration = Duration::from_secs(1);
    let t = TestDb::with_config(Backend::Postgres, config).await;
    let broker = InMemoryPublisher::new();
    // Ten events per aggregate per batch of 50, at 100 ms each: a batch publishes about eight of each aggregate
    // before four fifths of its lease, and gives the rest back.
    broker.set_delay(Duration::from_millis(100));
    let running =
        Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build());
    // Sequence numbers run on across the aggregates' events, so they are written at once.
    let written = write(&t, 5, 150).await;
    let mut most_parked = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        most_parked = most_parked.max(t.scalar("SELECT COUNT(*) FROM {t}_parked").await);
    }
    drained(&t, &broker, written.len()).await;
    running.stop().await;
    assert!(most_parked > 0, "no batch ran out of time");
    account(&broker, &written);
    t.drop_tables().await;
}

/// A relay renewing its partitions' leases while one of its batches moves several cursors does not deadlock with
/// it. Both lock cursor rows; in different orders, PostgreSQL found the cycle only after `deadlock_timeout` (1 s),
/// a second in which the relay published nothing (p99 0.94 s at 5,000 events/s, measured), and aborted the batch's
/// settle. Leases of 1 s are renewed every 100 ms, beside batches of up to 16 partitions.
///
/// PostgreSQL only: no run on MariaDB deadlocked before the fix, and its deadlock count is the whole server's.
#[tokio::test]
async fn renewing_leases_beside_a_settling_batch_does_not_deadlock() {
    let mut config = cursor_config(32);
    config.lease_duration = Duration::from_secs(1);
    config.batch_size = 500;
    let t = TestDb::with_config(Backend::Postgres, config).await;
    // The relay's own pool, closed at the end: a backend reports the deadlocks it found when it exits.
    let relay_db = outbox::repository::connect(&t.url).await.unwrap();
    let broker = InMemoryPublisher::new();
    let running =
        Running::start(Relay::builder(relay_db.clone(), t.outbox.clone(), broker.clone()).build());
    let before = deadlocks(&t).await;
    let mut written = HashSet::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        written.extend(write(&t, 256, 32).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drained(&t, &broker, written.len()).await;
    running.stop().await;
    relay_db.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let found = deadlocks(&t).await - before;
    assert_eq!(found, 0, "deadlocks in the database while the relay ran");
    t.drop_tables().await;
}

/// The deadlocks PostgreSQL found so far in the test database.
async fn deadlocks(t: &TestDb) -> i64 {
    let row =
        t.db.query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        ))
        .await
        .unwrap()
        .expect("a deadlock count");
    row.try_get_by_index::<i64>(0).unwrap()
}

/// Under a backlog a batch is shared between the partitions it may read, rather than filled by the first one: a
/// few aggregates with long runs each went out a few messages at a time to a broker whose acknowledgements take
/// milliseconds (Kafka through the cursor drained at 28k events/s against 45k under rows).
#[tokio::test]
async fn a_batch_under_a_backlog_is_shared_between_partitions() {
    let t = TestDb::with_config(Backend::Postgres, cursor_config(4)).await;
    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build();
    write(&t, 40, 400).await;
    // Four partitions held, so a batch reads up to two of them: 20 events from each.
    let report = relay.publish_batch(40).await.unwrap();
    assert_eq!(report.published, 40);
    let mut per_partition = std::collections::BTreeMap::<u16, usize>::new();
    for m in broker.messages() {
        *per_partition
            .entry(partition_of_account(&m.message.key, 4))
            .or_default() += 1;
    }
    assert_eq!(
        per_partition.values().copied().collect::<Vec<_>>(),
        [20, 20],
        "events per partition in the batch: {per_partition:?}"
    );
    t.drop_tables().await;
}
