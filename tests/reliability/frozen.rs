//! A relay process frozen (SIGSTOP) inside its claim, holding the claim lock: the other relays go on, on
//! PostgreSQL and on MariaDB (whose server ends an idle transaction; MySQL's cannot). Under the commit-order
//! cursor (`TEST_DELIVERY=cursor`) the transaction that holds locks is the one moving its cursors: the database
//! ends it, and another relay takes the partitions over once their leases run out.

use std::time::Duration;

use outbox::publisher::InMemoryPublisher;
use outbox::relay::Relay;
use outbox::repository::OutboxRepository;
use outbox::sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use outbox::{EventEnvelope, OutboxConfig};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;
use outbox_tests::running::Running;

use crate::child::{Faults, RelayProcess, Sink, mariadb_url, postgres_url};
use crate::ledger::{record, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_frozen_inside_its_claim_does_not_stop_the_others() {
    let name = format!("outbox-frozen-{}", uuid::Uuid::new_v4().simple());
    let base = postgres_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    // The lock statement gives the claim's transaction an id; the child runs no other transaction.
    let in_claim = format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{name}' \
         AND state = 'idle in transaction' AND backend_xid IS NOT NULL"
    );
    frozen_inside_its_claim(
        Backend::Postgres,
        &format!("{base}{separator}application_name={name}"),
        &in_claim,
        "4c. relay frozen inside its claim",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_frozen_inside_its_claim_on_mariadb_does_not_stop_the_others() {
    // Only the child runs transactions here; one that sleeps while holding row locks is its claim, frozen after
    // taking the lock.
    let in_claim = "SELECT COUNT(*) FROM information_schema.INNODB_TRX t \
         JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
         WHERE p.COMMAND = 'Sleep' AND t.trx_rows_locked > 0";
    frozen_inside_its_claim(
        Backend::MariaDb,
        &mariadb_url(),
        in_claim,
        "4d. relay frozen inside its claim, MariaDB",
    )
    .await;
}

/// Stops a relay process (on `url`) until a stop lands inside its claim, as `in_claim` counts it, then checks
/// that another relay delivers new events and that the database ended the frozen claim's session.
async fn frozen_inside_its_claim(backend: Backend, url: &str, in_claim: &str, scenario: &str) {
    let _serial = serial().await;
    let t = TestDb::new(backend).await;
    let sink = Sink::create(&t).await;
    // A backlog, so that the child claims one batch after another. In a transaction: MariaDB's writer takes the
    // cursor's sequence numbers only inside one.
    let txn = t.db.begin().await.unwrap();
    t.outbox
        .add_events(
            &txn,
            (0..20_000).map(|i| EventEnvelope::new(opened(&format!("old-{}", i % 500), i))),
        )
        .await
        .unwrap();
    txn.commit().await.unwrap();
    // Under the cursor the other relay takes the frozen one's partitions once their leases run out: short ones.
    let cursor = t.outbox.config().delivery == outbox::Delivery::Cursor;
    let lease = if cursor { "5s" } else { "30s" };
    let frozen = RelayProcess::spawn_with(
        url,
        &t,
        &sink,
        Faults::default(),
        &[
            ("OUTBOX_CLAIM_TIMEOUT", "2s"),
            ("OUTBOX_LEASE_DURATION", lease),
        ],
    );
    sink.wait_for(&t, 100, Duration::from_secs(60)).await;

    let pid = frozen.pid().to_string();
    let mut tries = 0;
    loop {
        tries += 1;
        // Under the cursor the only transaction holding locks is the short one that moves the cursors: 130-150
        // stops to land one there.
        assert!(tries <= 600, "no stop landed inside a claim in 600 tries");
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..30))).await;
        outbox_tests::run_command("kill", &["-STOP", &pid]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if count(&t, in_claim).await > 0 {
            break;
        }
        outbox_tests::run_command("kill", &["-CONT", &pid]);
    }

    // Another relay, and events it alone can deliver.
    let mut config = OutboxConfig::default();
    config.delivery = t.outbox.config().delivery;
    config.claim_timeout = Duration::from_secs(2);
    config.poll_interval = Duration::from_millis(50);
    let repository = OutboxRepository::builder()
        .table(t.outbox.table())
        .config(config)
        .build()
        .unwrap();
    let broker = InMemoryPublisher::new();
    let other = Running::start(Relay::builder(t.db.clone(), repository, broker.clone()).build());
    let started = tokio::time::Instant::now();
    let txn = t.db.begin().await.unwrap();
    let fresh = t
        .outbox
        .add_events(
            &txn,
            (0..10).map(|i| EventEnvelope::new(opened(&format!("fresh-{i}"), 1))),
        )
        .await
        .unwrap();
    txn.commit().await.unwrap();
    // Under the cursor the other relay first waits for the frozen one's leases (5 s) to run out: 13-16 s seen.
    let within = Duration::from_secs(if cursor { 30 } else { 20 });
    let arrived = tokio::time::timeout(within, async {
        loop {
            let ids: Vec<_> = broker.messages().iter().map(|m| m.message.id).collect();
            if fresh.iter().all(|id| ids.contains(id)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let took = started.elapsed();
    // The other relay's own claims would count on MariaDB, where `in_claim` cannot tell relays apart.
    other.stop().await;
    let ended = count(&t, in_claim).await;
    frozen.kill();
    assert!(
        arrived.is_ok(),
        "{backend:?}: the other relay delivered nothing in {within:?} while the frozen one held the claim lock"
    );
    assert_eq!(
        ended, 0,
        "{backend:?}: the database ended the frozen claim's session"
    );
    record(&format!(
        "| {scenario} | `SIGSTOP` on a relay process while its claim transaction holds the claim lock ({tries} \
         stops to land one there); claim timeout 2 s | – | – | – | – | – | pass: another relay delivered 10 new \
         events {:.1} s later; the database ended the frozen session |",
        took.as_secs_f64()
    ));
    sink.tear_down(t, []).await;
}

async fn count(t: &TestDb, sql: &str) -> i64 {
    t.db.query_one_raw(Statement::from_string(
        t.db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get_by_index::<i64>(0)
    .unwrap()
}
