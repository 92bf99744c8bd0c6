//! The claim lock (PostgreSQL, MySQL/MariaDB): a claim waits for it no longer than the claim timeout, gives the
//! session its own settings back, and puts a deleted lock row back rather than claim unserialized.

use std::time::{Duration, Instant};

use outbox::OutboxConfig;
use outbox::sea_orm::{ConnectOptions, ConnectionTrait, Database, Statement};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;

async fn a_deleted_lock_row_is_put_back(backend: Backend) {
    let t = TestDb::new(backend).await;
    t.outbox.add_event(&t.db, opened("a", 1)).await.unwrap();
    assert_eq!(t.sql("DELETE FROM {t}_lock").await, 1);
    let claim = t.outbox.claim(&t.db, 10).await.unwrap();
    assert_eq!(claim.events.len(), 1);
    assert_eq!(
        t.scalar("SELECT COUNT(*) FROM {t}_lock WHERE id = 1").await,
        1,
        "the claim ran serialized on a lock row it put back"
    );
    t.drop_tables().await;
}

async fn a_claim_waits_for_the_lock_no_longer_than_the_claim_timeout(backend: Backend) {
    let mut config = OutboxConfig::default();
    config.claim_timeout = Duration::from_secs(1);
    let t = TestDb::with_config(backend, config).await;
    t.outbox.add_event(&t.db, opened("a", 1)).await.unwrap();
    // Another relay frozen inside its claim, as far as this one can tell: the lock row is held.
    let holder = t.hold_claim_lock().await;
    let started = Instant::now();
    let claimed = tokio::time::timeout(Duration::from_secs(20), t.outbox.claim(&t.db, 10))
        .await
        .expect("the claim gave up on the lock");
    let waited = started.elapsed();
    let error = claimed.expect_err("the lock is held");
    assert!(error.is_timeout(), "{error}");
    assert!(
        waited < Duration::from_secs(5),
        "waited {waited:?} for a 1 s claim timeout"
    );
    holder.rollback().await.unwrap();
    assert_eq!(t.outbox.claim(&t.db, 10).await.unwrap().events.len(), 1);
    t.drop_tables().await;
}

/// MySQL's bounds are session variables: the claim must give the pooled connection its own values back.
async fn a_claim_leaves_the_sessions_timeouts_as_it_found_them(backend: Backend) {
    let t = TestDb::new(backend).await;
    t.outbox.add_event(&t.db, opened("a", 1)).await.unwrap();
    let url = std::env::var("TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let single = Database::connect(options).await.unwrap();
    let read = || async {
        let row = single
            .query_one_raw(Statement::from_string(
                single.get_database_backend(),
                "SELECT @@SESSION.innodb_lock_wait_timeout, @@SESSION.idle_transaction_timeout",
            ))
            .await
            .unwrap()
            .unwrap();
        (
            row.try_get_by_index::<u64>(0).unwrap(),
            row.try_get_by_index::<u64>(1).unwrap(),
        )
    };
    let before = read().await;
    let claim = t.outbox.claim(&single, 10).await.unwrap();
    assert_eq!(claim.events.len(), 1);
    assert_eq!(read().await, before);
    t.drop_tables().await;
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_lock_row_is_put_back() {
        super::a_deleted_lock_row_is_put_back(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_waits_for_the_lock_no_longer_than_the_claim_timeout() {
        super::a_claim_waits_for_the_lock_no_longer_than_the_claim_timeout(Backend::Postgres).await;
    }
}

mod mariadb {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_lock_row_is_put_back() {
        super::a_deleted_lock_row_is_put_back(Backend::MariaDb).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_waits_for_the_lock_no_longer_than_the_claim_timeout() {
        super::a_claim_waits_for_the_lock_no_longer_than_the_claim_timeout(Backend::MariaDb).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_leaves_the_sessions_timeouts_as_it_found_them() {
        super::a_claim_leaves_the_sessions_timeouts_as_it_found_them(Backend::MariaDb).await;
    }
}
