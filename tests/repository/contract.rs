use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::repository::{DeadLetterFilter, EventStatus, Failure, LeaseOwner, OutboxRepository};
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use outbox::{EventEnvelope, OutboxConfig, OutboxEvent};

use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::{AccountClosed, AccountOpened, opened};
use outbox_tests::on_every_backend;

on_every_backend!(
    rollback_leaves_no_event,
    commit_stores_event_and_change_together,
    batches_keep_write_order_and_metadata,
    an_event_id_is_stored_once,
    claim_then_mark_published,
    the_largest_batch_is_claimed_and_marked_whole,
    concurrent_claimers_never_share_a_row_and_keep_aggregate_order,
    an_expired_lease_is_claimed_again,
    a_fenced_out_claim_cannot_mark,
    a_failing_event_holds_back_only_its_own_aggregate,
    an_owner_may_claim_behind_its_own_leases_and_nobody_else_may,
    a_lease_beyond_every_window_still_holds_its_aggregate_back,
    failures_back_off_then_dead_letter,
    dead_letters_replay_and_purge,
    dead_letter_filters_select_by_aggregate_reason_and_time,
    undecodable_rows_become_dead_letters_without_stopping_others,
    release_gives_events_back_without_an_attempt,
    python_outbox_core_single_event_forms,
    stats_report_lag,
    retention_purges_old_published_events_in_batches,
    delete_on_publish_removes_rows,
    a_missing_table_says_to_run_the_migration,
);

async fn insert_user<C: ConnectionTrait>(db: &C, t: &TestDb, id: i64) {
    db.execute_unprepared(&format!(
        "INSERT INTO {} (id, email) VALUES ({id}, 'u{id}@example.com')",
        t.users
    ))
    .await
    .unwrap();
}

async fn user_count(db: &DatabaseConnection, t: &TestDb) -> i64 {
    let row = db
        .query_one_raw(outbox::sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) FROM {}", t.users),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

async fn rollback_leaves_no_event(backend: Backend) {
    let t = TestDb::new(backend).await;
    let txn = t.db.begin().await.unwrap();
    insert_user(&txn, &t, 1).await;
    t.outbox.add_event(&txn, opened("acct-1", 1)).await.unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    assert_eq!(user_count(&t.db, &t).await, 0);
    assert!(t.outbox.claim(&t.db, 10).await.unwrap().events.is_empty());
    t.drop_tables().await;
}

async fn commit_stores_event_and_change_together(backend: Backend) {
    let t = TestDb::new(backend).await;
    let txn = t.db.begin().await.unwrap();
    insert_user(&txn, &t, 1).await;
    let trace = outbox::TraceContext::new(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        Some("vendor=1".into()),
    )
    .unwrap();
    let envelope = EventEnvelope::new(opened("acct-1", 1))
        .with_correlation_id("req-1")
        .with_causation_id("cmd-7")
        .with_trace_context(trace.clone());
    let event_id = t.outbox.add_event(&txn, envelope.clone()).await.unwrap();
    assert_eq!(event_id, envelope.event_id());
    if t.has_second_connection() {
        // Not visible to anyone else before the commit.
        assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    }
    txn.commit().await.unwrap();
    assert_eq!(user_count(&t.db, &t).await, 1);

    let rows = t.outbox.get_unpublished(&t.db, 10, 0).await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.event_id, event_id);
    assert_eq!(row.status, EventStatus::Pending);
    assert_eq!(row.aggregate_type, "com.example.account");
    assert_eq!(row.aggregate_id, "acct-1");
    let decoded = row.decode_as::<AccountOpened>().unwrap();
    assert_eq!(decoded.event(), envelope.event());
    assert_eq!(
        decoded.occurred_at(),
        envelope.occurred_at(),
        "time survives the round trip exactly"
    );
    assert_eq!(decoded.correlation_id(), Some("req-1"));
    assert_eq!(decoded.causation_id(), Some("cmd-7"));
    assert_eq!(
        decoded.trace_context(),
        Some(&trace),
        "trace context survives storage, so it reaches the broker"
    );
    // The untyped path, through the registry, gives the same event.
    let dynamic = row.decode().unwrap();
    assert_eq!(
        dynamic.event().downcast_ref::<AccountOpened>(),
        Some(envelope.event())
    );
    t.drop_tables().await;
}

async fn batches_keep_write_order_and_metadata(backend: Backend) {
    let t = TestDb::new(backend).await;
    let txn = t.db.begin().await.unwrap();
    // More than one INSERT's worth (500 rows), mixed types through `Box<dyn DynEvent>`.
    let events: Vec<EventEnvelope<Box<dyn outbox::DynEvent>>> = (0..1203)
        .map(|i| {
            let event: Box<dyn outbox::DynEvent> = if i % 3 == 0 {
                Box::new(AccountClosed {
                    account: format!("acct-{}", i % 7),
                    reason: format!("r{i}"),
                })
            } else {
                Box::new(opened(&format!("acct-{}", i % 7), i))
            };
            EventEnvelope::new(event)
        })
        .collect();
    let expected: Vec<_> = events.iter().map(|e| e.event_id()).collect();
    let ids = t.outbox.add_events(&txn, events).await.unwrap();
    assert_eq!(ids, expected);
    txn.commit().await.unwrap();
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 1203);
    let page = t.outbox.get_unpublished(&t.db, 1000, 200).await.unwrap();
    let stored: Vec<_> = page.iter().map(|r| r.event_id).collect();
    assert_eq!(
        stored,
        expected[200..1200],
        "rows come back in write order, paged by limit and offset"
    );
    assert_eq!(page[0].event_type, AccountOpened::EVENT_TYPE); // i = 200 is not a multiple of 3
    t.drop_tables().await;
}

async fn an_event_id_is_stored_once(backend: Backend) {
    let t = TestDb::new(backend).await;
    let envelope = EventEnvelope::new(opened("a", 1));
    t.outbox.add_event(&t.db, envelope.clone()).await.unwrap();
    let err = t.outbox.add_event(&t.db, envelope).await.unwrap_err();
    assert!(err.to_string().contains("storing events"), "{err}");
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 1);
    t.drop_tables().await;
}

async fn claim_then_mark_published(backend: Backend) {
    let t = TestDb::new(backend).await;
    let written = t
        .outbox
        .add_events(&t.db, (0..10).map(|i| opened(&format!("a{}", i % 3), i)))
        .await
        .unwrap();
    let claim = t.outbox.claim(&t.db, 100).await.unwrap();
    let claimed: Vec<_> = claim.events.iter().map(|e| e.envelope.event_id()).collect();
    assert_eq!(
        claimed, written,
        "everything claimable is claimed, in write order"
    );
    // A second claim finds nothing: all leased.
    assert!(t.outbox.claim(&t.db, 100).await.unwrap().events.is_empty());
    // The claimed event renders its message from the stored metadata.
    let message = claim.events[0].envelope.to_message().unwrap();
    assert_eq!(message.id, written[0]);
    assert_eq!(message.destination, "com.example.account");

    let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
    assert_eq!(
        t.outbox
            .mark_published(&t.db, claim.token, &ids)
            .await
            .unwrap(),
        10
    );
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    assert!(t.outbox.claim(&t.db, 100).await.unwrap().events.is_empty());
    t.drop_tables().await;
}

/// `OutboxConfig::MAX_BATCH_SIZE`: a claim and its mark of that many stay within every backend's limits on bound
/// parameters and statement size.
async fn the_largest_batch_is_claimed_and_marked_whole(backend: Backend) {
    const LARGEST: u32 = OutboxConfig::MAX_BATCH_SIZE;
    let t = TestDb::new(backend).await;
    let mut config = OutboxConfig::default();
    config.batch_size = LARGEST;
    config.validate().unwrap();
    let written = t
        .outbox
        .add_events(
            &t.db,
            (0..LARGEST + 5).map(|i| opened(&format!("a{}", i % 100), i)),
        )
        .await
        .unwrap();
    let claim = t.outbox.claim(&t.db, LARGEST).await.unwrap();
    let claimed: Vec<_> = claim.events.iter().map(|e| e.envelope.event_id()).collect();
    assert_eq!(
        claimed,
        written[..LARGEST as usize],
        "the oldest MAX_BATCH_SIZE, in order"
    );
    let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
    let marked = t
        .outbox
        .mark_published(&t.db, claim.token, &ids)
        .await
        .unwrap();
    assert_eq!(marked, u64::from(LARGEST));
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 5);
    t.drop_tables().await;
}

async fn concurrent_claimers_never_share_a_row_and_keep_aggregate_order(backend: Backend) {
    let t = TestDb::new(backend).await;
    let aggregates = 40;
    let total = 800u32;
    t.outbox
        .add_events(
            &t.db,
            (0..total).map(|i| opened(&format!("agg-{}", i % aggregates), i)),
        )
        .await
        .unwrap();
    // What each "publish" saw, in the order publishes happened across all claimers.
    let log: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (db, outbox, log) = (t.db.clone(), t.outbox.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut claimed_ids = Vec::new();
            let mut idle = 0;
            while idle < 3 {
                let claim = outbox.claim(&db, 25).await.unwrap();
                if claim.events.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                {
                    let mut log = log.lock().unwrap();
                    for e in &claim.events {
                        let event = e.envelope.event().downcast_ref::<AccountOpened>().unwrap();
                        log.push((event.account.clone(), event.seq));
                    }
                }
                let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
                assert_eq!(
                    outbox.mark_published(&db, claim.token, &ids).await.unwrap(),
                    ids.len() as u64
                );
                claimed_ids.extend(ids);
            }
            claimed_ids
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a row was claimed twice");
    assert_eq!(all.len(), total as usize, "every event was claimed");

    let mut last: HashMap<String, u32> = HashMap::new();
    for (aggregate, seq) in log.lock().unwrap().iter() {
        if let Some(previous) = last.insert(aggregate.clone(), *seq) {
            assert!(
                previous < *seq,
                "{aggregate}: {seq} published after {previous}"
            );
        }
    }
    t.drop_tables().await;
}

fn short_lease() -> OutboxConfig {
    let mut config = OutboxConfig::default();
    config.lease_duration = Duration::from_secs(1);
    config
}

async fn an_expired_lease_is_claimed_again(backend: Backend) {
    let t = TestDb::with_config(backend, short_lease()).await;
    t.outbox
        .add_events(&t.db, [opened("a", 1), opened("b", 1)])
        .await
        .unwrap();
    let first = t.outbox.claim(&t.db, 10).await.unwrap();
    assert_eq!(first.events.len(), 2);
    // The relay that claimed them "dies": no mark, no release.
    assert!(
        t.outbox.claim(&t.db, 10).await.unwrap().events.is_empty(),
        "leased"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = t.outbox.claim(&t.db, 10).await.unwrap();
    let ids = |c: &outbox::repository::Claim| c.events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&second),
        ids(&first),
        "the same events, claimed again after the lease expired"
    );
    assert_ne!(second.token, first.token);
    assert_eq!(
        second.events[0].attempts, 0,
        "a lost lease is not the event's failure"
    );
    t.drop_tables().await;
}

async fn a_fenced_out_claim_cannot_mark(backend: Backend) {
    let t = TestDb::with_config(backend, short_lease()).await;
    t.outbox
        .add_events(&t.db, [opened("a", 1), opened("b", 1)])
        .await
        .unwrap();
    let stale = t.outbox.claim(&t.db, 10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = t.outbox.claim(&t.db, 10).await.unwrap();
    assert_eq!(fresh.events.len(), 2);
    let ids: Vec<i64> = stale.events.iter().map(|e| e.id).collect();

    // The stale relay wakes up and tries every kind of mark: none lands.
    assert_eq!(
        t.outbox
            .mark_published(&t.db, stale.token, &ids)
            .await
            .unwrap(),
        0
    );
    let failures: Vec<Failure> = stale
        .events
        .iter()
        .map(|e| Failure::new(e, "late"))
        .collect();
    let outcome = t
        .outbox
        .mark_failed(&t.db, stale.token, &failures)
        .await
        .unwrap();
    assert_eq!(outcome.fenced_out, 2);
    assert_eq!(outcome.retrying + outcome.dead_lettered, 0);
    assert_eq!(t.outbox.release(&t.db, stale.token, &ids).await.unwrap(), 0);

    // The current owner's marks do.
    assert_eq!(
        t.outbox
            .mark_published(&t.db, fresh.token, &ids)
            .await
            .unwrap(),
        2
    );
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    t.drop_tables().await;
}

async fn a_failing_event_holds_back_only_its_own_aggregate(backend: Backend) {
    let t = TestDb::new(backend).await;
    // x1 x2 y1 x3 y2, in this write order.
    t.outbox
        .add_events(
            &t.db,
            [
                opened("x", 1),
                opened("x", 2),
                opened("y", 1),
                opened("x", 3),
                opened("y", 2),
            ],
        )
        .await
        .unwrap();
    let seqs = |c: &outbox::repository::Claim| -> Vec<(String, u32)> {
        c.events
            .iter()
            .map(|e| {
                let ev = e.envelope.event().downcast_ref::<AccountOpened>().unwrap();
                (ev.account.clone(), ev.seq)
            })
            .collect()
    };
    // Claiming one at a time: x1 first; while x1 is in flight nothing else of x is handed out.
    let first = t.outbox.claim(&t.db, 1).await.unwrap();
    assert_eq!(seqs(&first), [("x".to_owned(), 1)]);
    let second = t.outbox.claim(&t.db, 10).await.unwrap();
    assert_eq!(
        seqs(&second),
        [("y".to_owned(), 1), ("y".to_owned(), 2)],
        "y flows while x1 is in flight"
    );

    // x1 fails: it waits for its retry, and x2, x3 wait behind it.
    t.outbox
        .mark_failed(
            &t.db,
            first.token,
            &[Failure::new(&first.events[0], "broker said no")],
        )
        .await
        .unwrap();
    assert!(
        t.outbox.claim(&t.db, 10).await.unwrap().events.is_empty(),
        "x is held back by its failed head"
    );
    let y_ids: Vec<i64> = second.events.iter().map(|e| e.id).collect();
    t.outbox
        .mark_published(&t.db, second.token, &y_ids)
        .await
        .unwrap();

    // Once x1 is due again, x1, x2, x3 come in order in one claim.
    t.sql("UPDATE {t} SET next_attempt_at = 0").await;
    let retry = t.outbox.claim(&t.db, 10).await.unwrap();
    assert_eq!(
        seqs(&retry),
        [
            ("x".to_owned(), 1),
            ("x".to_owned(), 2),
            ("x".to_owned(), 3)
        ]
    );
    assert_eq!(retry.events[0].attempts, 1);
    t.drop_tables().await;
}

async fn an_owner_may_claim_behind_its_own_leases_and_nobody_else_may(backend: Backend) {
    let t = TestDb::new(backend).await;
    t.outbox
        .add_events(&t.db, (1..=6).map(|seq| opened("x", seq)))
        .await
        .unwrap();
    let seqs = |c: &outbox::repository::Claim| -> Vec<u32> {
        c.events
            .iter()
            .map(|e| {
                e.envelope
                    .event()
                    .downcast_ref::<AccountOpened>()
                    .unwrap()
                    .seq
            })
            .collect()
    };
    let relay = LeaseOwner::new();
    let first = t.outbox.claim_as(&t.db, &relay, 2).await.unwrap();
    assert_eq!(seqs(&first), [1, 2]);
    assert!(
        t.outbox.claim(&t.db, 10).await.unwrap().events.is_empty(),
        "another owner waits for x1 and x2"
    );
    let second = t.outbox.claim_as(&t.db, &relay, 2).await.unwrap();
    assert_eq!(
        seqs(&second),
        [3, 4],
        "the owner's own leases do not hold it back"
    );
    assert_ne!(first.token, second.token);

    // x3 fails: it holds the aggregate for its owner too, until its retry.
    t.outbox
        .mark_failed(
            &t.db,
            second.token,
            &[Failure::new(&second.events[0], "nacked")],
        )
        .await
        .unwrap();
    let x4 = [second.events[1].id];
    t.outbox.release(&t.db, second.token, &x4).await.unwrap();
    assert!(
        t.outbox
            .claim_as(&t.db, &relay, 10)
            .await
            .unwrap()
            .events
            .is_empty(),
        "x3 waits for its retry, and x4 behind it"
    );
    t.drop_tables().await;
}

/// PostgreSQL claims from windows of 4 and 16 times the batch size, then reads every pending row for the leased
/// ones (leases are in no index there). A claim of 2 behind 40 rows another relay leased gets past both windows:
/// it must still see those leases, and claim only the aggregate nobody holds.
async fn a_lease_beyond_every_window_still_holds_its_aggregate_back(backend: Backend) {
    let t = TestDb::new(backend).await;
    let busy = (1..=10).flat_map(|seq| (0..4).map(move |a| opened(&format!("busy-{a}"), seq)));
    t.outbox.add_events(&t.db, busy).await.unwrap();
    t.outbox
        .add_events(&t.db, [opened("free", 1), opened("busy-0", 11)])
        .await
        .unwrap();
    let other = t.outbox.claim(&t.db, 40).await.unwrap();
    assert_eq!(other.events.len(), 40);

    let claim = t.outbox.claim(&t.db, 2).await.unwrap();
    let claimed: Vec<&str> = claim
        .events
        .iter()
        .map(|e| e.aggregate_id.as_str())
        .collect();
    assert_eq!(claimed, ["free"], "busy-0's 11th event waits for its 10th");

    let ids: Vec<i64> = other.events.iter().map(|e| e.id).collect();
    t.outbox
        .mark_published(&t.db, other.token, &ids)
        .await
        .unwrap();
    let next = t.outbox.claim(&t.db, 2).await.unwrap();
    assert_eq!(next.events.len(), 1);
    assert_eq!(next.events[0].aggregate_id, "busy-0");
    t.drop_tables().await;
}

async fn failures_back_off_then_dead_letter(backend: Backend) {
    let mut config = OutboxConfig::default();
    config.max_retry_count = 2;
    let t = TestDb::with_config(backend, config).await;
    t.outbox.add_event(&t.db, opened("a", 1)).await.unwrap();
    for attempt in 1..=3u32 {
        t.sql("UPDATE {t} SET next_attempt_at = 0").await;
        let claim = t.outbox.claim(&t.db, 10).await.unwrap();
        assert_eq!(claim.events.len(), 1, "attempt {attempt}");
        assert_eq!(claim.events[0].attempts, attempt - 1);
        let outcome = t
            .outbox
            .mark_failed(
                &t.db,
                claim.token,
                &[Failure::new(&claim.events[0], format!("failure {attempt}"))],
            )
            .await
            .unwrap();
        if attempt <= 2 {
            assert_eq!(
                (outcome.retrying, outcome.dead_lettered),
                (1, 0),
                "attempt {attempt}"
            );
            let row = &t.outbox.get_unpublished(&t.db, 1, 0).await.unwrap()[0];
            assert_eq!(row.attempts, attempt);
            assert_eq!(
                row.last_error.as_deref(),
                Some(format!("failure {attempt}").as_str())
            );
            // Backed off: not claimable until its next attempt time.
            assert!(t.outbox.claim(&t.db, 10).await.unwrap().events.is_empty());
        } else {
            assert_eq!(
                (outcome.retrying, outcome.dead_lettered),
                (0, 1),
                "past max_retry_count"
            );
        }
    }
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 1);
    let dead = t.outbox.dead_letters(&t.db, 10, 0).await.unwrap();
    assert_eq!(dead[0].status, EventStatus::DeadLetter);
    assert_eq!(dead[0].last_error.as_deref(), Some("failure 3"));
    assert_eq!(dead[0].attempts, 3);

    // A permanent failure skips the retries.
    t.outbox.add_event(&t.db, opened("b", 1)).await.unwrap();
    let claim = t.outbox.claim(&t.db, 10).await.unwrap();
    let outcome = t
        .outbox
        .mark_failed(
            &t.db,
            claim.token,
            &[Failure::new(&claim.events[0], "too large").permanent()],
        )
        .await
        .unwrap();
    assert_eq!(outcome.dead_lettered, 1);
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 2);

    // Long error texts are cut, not rejected.
    t.outbox.add_event(&t.db, opened("c", 1)).await.unwrap();
    let claim = t.outbox.claim(&t.db, 10).await.unwrap();
    t.outbox
        .mark_failed(
            &t.db,
            claim.token,
            &[Failure::new(&claim.events[0], "é".repeat(5000))],
        )
        .await
        .unwrap();
    let row = &t.outbox.get_unpublished(&t.db, 1, 0).await.unwrap()[0];
    assert!(row.last_error.as_ref().unwrap().len() <= 4096 + 3);
    t.drop_tables().await;
}

/// Four dead letters: aggregates a, b (twice: a wildcard-laden reason and a plain one) and c; the event of c
/// occurred a day ago, the others now.
async fn dead_letter_filters_select_by_aggregate_reason_and_time(backend: Backend) {
    let t = TestDb::new(backend).await;
    let day_ago = chrono::Utc::now() - chrono::Duration::days(1);
    t.outbox
        .add_events(&t.db, [opened("a", 1), opened("b", 1), opened("b", 2)])
        .await
        .unwrap();
    t.outbox
        .add_event(
            &t.db,
            EventEnvelope::new(opened("c", 1)).with_occurred_at(day_ago),
        )
        .await
        .unwrap();
    let claim = t.outbox.claim(&t.db, 10).await.unwrap();
    let reasons = ["timeout", "50% of quota_used", "timeout", "rejected"];
    let failures: Vec<Failure> = claim
        .events
        .iter()
        .zip(reasons)
        .map(|(e, reason)| Failure::new(e, reason).permanent())
        .collect();
    t.outbox
        .mark_failed(&t.db, claim.token, &failures)
        .await
        .unwrap();
    let selected = |filter: DeadLetterFilter| {
        let t = &t;
        async move {
            let rows = t
                .outbox
                .dead_letters_matching(&t.db, &filter, 100, 0)
                .await
                .unwrap();
            rows.iter()
                .map(|r| {
                    format!(
                        "{}{}",
                        r.aggregate_id,
                        r.last_error.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let aggregate = |id: &str| DeadLetterFilter::Aggregate {
        aggregate_type: AccountOpened::AGGREGATE_TYPE.into(),
        aggregate_id: id.into(),
    };
    assert_eq!(
        selected(aggregate("b")).await,
        ["b50% of quota_used", "btimeout"]
    );
    assert_eq!(
        selected(DeadLetterFilter::ErrorContains("% of quota_".into())).await,
        ["b50% of quota_used"]
    );
    assert!(
        selected(DeadLetterFilter::ErrorContains("0_ of".into()))
            .await
            .is_empty(),
        "`_` and `%` are literal, not wildcards"
    );
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        selected(DeadLetterFilter::OccurredBefore(an_hour_ago)).await,
        ["crejected"]
    );
    assert_eq!(
        selected(DeadLetterFilter::OccurredSince(an_hour_ago))
            .await
            .len(),
        3
    );
    let both = DeadLetterFilter::AllOf(vec![
        DeadLetterFilter::ErrorContains("timeout".into()),
        aggregate("b"),
    ]);
    assert_eq!(selected(both.clone()).await, ["btimeout"]);
    // What a filter lists is what a replay or purge with it acts on.
    assert_eq!(t.outbox.replay_dead_letters(&t.db, both).await.unwrap(), 1);
    assert_eq!(
        t.outbox
            .purge_dead_letters(&t.db, DeadLetterFilter::OccurredBefore(an_hour_ago))
            .await
            .unwrap(),
        1
    );
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 2);
    t.drop_tables().await;
}

async fn dead_letters_replay_and_purge(backend: Backend) {
    let t = TestDb::new(backend).await;
    let ids = t
        .outbox
        .add_events(&t.db, [opened("a", 1), opened("b", 1), opened("c", 1)])
        .await
        .unwrap();
    t.outbox
        .add_event(
            &t.db,
            AccountClosed {
                account: "d".into(),
                reason: "x".into(),
            },
        )
        .await
        .unwrap();
    let claim = t.outbox.claim(&t.db, 10).await.unwrap();
    let failures: Vec<Failure> = claim
        .events
        .iter()
        .map(|e| Failure::new(e, "poison").permanent())
        .collect();
    t.outbox
        .mark_failed(&t.db, claim.token, &failures)
        .await
        .unwrap();
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 4);

    // Replay one, by event id: pending again with a fresh budget.
    assert_eq!(
        t.outbox
            .replay_dead_letters(&t.db, DeadLetterFilter::EventId(ids[0]))
            .await
            .unwrap(),
        1
    );
    let pending = t.outbox.get_unpublished(&t.db, 10, 0).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].event_id, ids[0]);
    assert_eq!(pending[0].attempts, 0);
    assert_eq!(
        t.outbox.claim(&t.db, 10).await.unwrap().events.len(),
        1,
        "claimable again"
    );

    // Replay by type, and by row id.
    let replayed = t
        .outbox
        .replay_dead_letters(
            &t.db,
            DeadLetterFilter::EventType(AccountClosed::EVENT_TYPE.into()),
        )
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    let b_row = claim.events[1].id;
    assert_eq!(
        t.outbox
            .replay_dead_letters(&t.db, DeadLetterFilter::Id(b_row))
            .await
            .unwrap(),
        1
    );
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 1);

    // Purge what is left; replaying everything then finds nothing.
    assert_eq!(
        t.outbox
            .purge_dead_letters(&t.db, DeadLetterFilter::All)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        t.outbox
            .replay_dead_letters(&t.db, DeadLetterFilter::All)
            .await
            .unwrap(),
        0
    );
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);
    assert_eq!(
        t.outbox.count_unpublished(&t.db).await.unwrap(),
        3,
        "purging never touches pending events"
    );
    t.drop_tables().await;
}

async fn undecodable_rows_become_dead_letters_without_stopping_others(backend: Backend) {
    let t = TestDb::new(backend).await;
    t.outbox.add_event(&t.db, opened("good", 1)).await.unwrap();
    // Rows another version of the program (or a hand) wrote.
    let cases = [
        (
            "com.example.nobody.knows",
            "1.0",
            r#"{"x":1}"#,
            "unknown event type",
        ),
        (
            "com.example.account.opened",
            "7.0",
            r#"{"account":"v7","seq":1}"#,
            "no registered version 7.0",
        ),
        (
            "com.example.account.opened",
            "1.0",
            r#"{"account":"corrupt""#,
            "does not decode",
        ),
        (
            "com.example.account.opened",
            "1.0",
            r#"{"account":"missing-seq"}"#,
            "missing field `seq`",
        ),
    ];
    for (i, (event_type, version, payload, _)) in cases.iter().enumerate() {
        let event_id = uuid::Uuid::new_v4();
        t.sql(&format!(
            "INSERT INTO {{t}} (event_id, event_type, data_version, aggregate_type, aggregate_id, payload, occurred_at) \
             VALUES ('{event_id}', '{event_type}', '{version}', 'com.example.account', 'bad-{i}', '{payload}', '2026-01-01 00:00:00')"
        ))
        .await;
    }
    t.outbox.add_event(&t.db, opened("good", 2)).await.unwrap();

    let claim = t.outbox.claim(&t.db, 10).await.unwrap();
    let good: Vec<u32> = claim
        .events
        .iter()
        .map(|e| {
            e.envelope
                .event()
                .downcast_ref::<AccountOpened>()
                .unwrap()
                .seq
        })
        .collect();
    assert_eq!(
        good,
        [1, 2],
        "the decodable events are claimed around the bad ones"
    );
    assert_eq!(claim.dead_lettered.len(), cases.len());
    for ((_, _, _, reason), dead) in cases.iter().zip(&claim.dead_lettered) {
        assert!(
            dead.reason.contains(reason),
            "{:?} should mention {reason}",
            dead.reason
        );
    }
    let stored = t.outbox.dead_letters(&t.db, 10, 0).await.unwrap();
    assert_eq!(stored.len(), cases.len());
    for ((_, _, _, reason), row) in cases.iter().zip(&stored) {
        assert!(
            row.last_error
                .as_deref()
                .unwrap_or_default()
                .contains(reason),
            "{row:?}"
        );
    }
    t.drop_tables().await;
}

async fn release_gives_events_back_without_an_attempt(backend: Backend) {
    let t = TestDb::new(backend).await;
    t.outbox
        .add_events(&t.db, [opened("a", 1), opened("a", 2)])
        .await
        .unwrap();
    let claim = t.outbox.claim(&t.db, 10).await.unwrap();
    let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
    assert_eq!(t.outbox.release(&t.db, claim.token, &ids).await.unwrap(), 2);
    let again = t.outbox.claim(&t.db, 10).await.unwrap();
    assert_eq!(again.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert!(again.events.iter().all(|e| e.attempts == 0));
    t.drop_tables().await;
}

async fn python_outbox_core_single_event_forms(backend: Backend) {
    let t = TestDb::new(backend).await;
    t.outbox
        .add_events(&t.db, [opened("a", 1), opened("b", 1)])
        .await
        .unwrap();
    let rows = t.outbox.get_unpublished(&t.db, 10, 0).await.unwrap();
    assert!(
        t.outbox
            .mark_event_published(&t.db, rows[0].id)
            .await
            .unwrap()
    );
    assert!(
        !t.outbox
            .mark_event_published(&t.db, rows[0].id)
            .await
            .unwrap(),
        "already published"
    );
    assert!(
        t.outbox
            .mark_event_failed(&t.db, rows[1].id, "timeout")
            .await
            .unwrap()
    );
    let row = &t.outbox.get_unpublished(&t.db, 10, 0).await.unwrap()[0];
    assert_eq!(
        (row.attempts, row.last_error.as_deref()),
        (1, Some("timeout"))
    );
    assert!(
        !t.outbox
            .mark_event_failed(&t.db, rows[0].id, "x")
            .await
            .unwrap(),
        "not pending"
    );
    t.drop_tables().await;
}

async fn stats_report_lag(backend: Backend) {
    let t = TestDb::new(backend).await;
    let empty = t.outbox.stats(&t.db).await.unwrap();
    assert_eq!(
        (empty.pending, empty.oldest_pending, empty.dead_letters),
        (0, None, 0)
    );
    let old = chrono::Utc::now() - chrono::Duration::seconds(90);
    t.outbox
        .add_events(
            &t.db,
            [
                EventEnvelope::new(opened("a", 1)).with_occurred_at(old),
                EventEnvelope::new(opened("b", 1)),
            ],
        )
        .await
        .unwrap();
    t.outbox.add_event(&t.db, opened("c", 1)).await.unwrap();
    let claim = t.outbox.claim(&t.db, 10).await.unwrap();
    let c = claim.events.iter().find(|e| e.aggregate_id == "c").unwrap();
    t.outbox
        .mark_failed(&t.db, claim.token, &[Failure::new(c, "x").permanent()])
        .await
        .unwrap();
    let stats = t.outbox.stats(&t.db).await.unwrap();
    assert_eq!(stats.pending, 2);
    assert_eq!(stats.dead_letters, 1);
    assert_eq!(
        stats.oldest_pending,
        Some(chrono::SubsecRound::trunc_subsecs(old, 6))
    );
    assert!(stats.oldest_pending_age().unwrap() >= Duration::from_secs(90));
    t.drop_tables().await;
}

async fn retention_purges_old_published_events_in_batches(backend: Backend) {
    let t = TestDb::new(backend).await;
    t.outbox
        .add_events(&t.db, (0..7).map(|i| opened("a", i)))
        .await
        .unwrap();
    let claim = t.outbox.claim(&t.db, 5).await.unwrap();
    let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
    t.outbox
        .mark_published(&t.db, claim.token, &ids)
        .await
        .unwrap();
    // Published events younger than the retention stay.
    assert_eq!(
        t.outbox
            .purge_published(&t.db, Duration::from_secs(3600), 2)
            .await
            .unwrap(),
        0
    );
    t.sql("UPDATE {t} SET published_at = '2020-01-01 00:00:00' WHERE status = 1")
        .await;
    assert_eq!(
        t.outbox
            .purge_published(&t.db, Duration::from_secs(3600), 2)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        t.outbox.count_unpublished(&t.db).await.unwrap(),
        2,
        "pending events are never purged"
    );
    t.drop_tables().await;
}

async fn delete_on_publish_removes_rows(backend: Backend) {
    let mut config = OutboxConfig::default();
    config.delete_on_publish = true;
    let t = TestDb::with_config(backend, config).await;
    t.outbox
        .add_events(&t.db, [opened("a", 1), opened("a", 2)])
        .await
        .unwrap();
    let claim = t.outbox.claim(&t.db, 10).await.unwrap();
    let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
    assert_eq!(
        t.outbox
            .mark_published(&t.db, claim.token, &ids)
            .await
            .unwrap(),
        2
    );
    assert_eq!(t.sql("DELETE FROM {t}").await, 0, "the rows are gone");
    t.drop_tables().await;
}

async fn a_missing_table_says_to_run_the_migration(backend: Backend) {
    let t = TestDb::new(backend).await;
    let missing = OutboxRepository::builder()
        .table("no_such_outbox_table")
        .build()
        .unwrap();
    for err in [
        missing.check(&t.db).await.unwrap_err(),
        missing.add_event(&t.db, opened("a", 1)).await.unwrap_err(),
        missing.claim(&t.db, 10).await.unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(
            text.contains("`no_such_outbox_table` does not exist"),
            "{text}"
        );
        assert!(text.contains("run the outbox migration"), "{text}");
    }
    t.outbox.check(&t.db).await.unwrap();
    t.drop_tables().await;
}
