//! `add_event_with`: the caller's change and its event, in one statement on PostgreSQL and two elsewhere, with
//! the same outcome on every backend.

use outbox::OutboxConfig;
use outbox::repository::RepositoryError;
use outbox::sea_orm::{DbBackend, Statement, TransactionTrait, Value};

use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::{AccountTagged, opened, tagged};
use outbox_tests::on_every_backend;

on_every_backend!(
    the_change_and_its_event_commit_or_roll_back_together,
    several_events_are_stored_with_one_change,
    the_rows_the_change_affected_are_returned,
    a_failing_change_stores_no_event_and_says_what_failed,
    an_event_refused_before_the_change_runs,
);

/// `sql` written with `?`, in `t`'s placeholders, with `values`.
fn change(t: &TestDb, sql: &str, values: Vec<Value>) -> Statement {
    let backend = t.db.get_database_backend();
    let mut numbered = String::new();
    let mut n = 0;
    for c in sql.replace("{users}", &t.users).chars() {
        if c == '?' && backend == DbBackend::Postgres {
            n += 1;
            numbered.push_str(&format!("${n}"));
        } else {
            numbered.push(c);
        }
    }
    Statement::from_sql_and_values(backend, numbered, values)
}

fn insert_user(t: &TestDb, id: i64, email: &str) -> Statement {
    change(
        t,
        "INSERT INTO {users} (id, email) VALUES (?, ?)",
        vec![id.into(), email.into()],
    )
}

async fn users_with(t: &TestDb, id: i64, email: &str) -> i64 {
    t.scalar(&format!(
        "SELECT COUNT(*) FROM {} WHERE id = {id} AND email = '{email}'",
        t.users
    ))
    .await
}

async fn the_change_and_its_event_commit_or_roll_back_together(backend: Backend) {
    let t = TestDb::new(backend).await;
    let txn = t.db.begin().await.unwrap();
    let done = t
        .outbox
        .add_event_with(
            &txn,
            insert_user(&t, 1, "kept@example.com"),
            opened("kept", 1),
        )
        .await
        .unwrap();
    assert_eq!(done.rows_affected, 1);
    txn.commit().await.unwrap();
    // The change's values and the event's are each bound where they belong.
    assert_eq!(users_with(&t, 1, "kept@example.com").await, 1);
    let stored = t.outbox.get_unpublished(&t.db, 10, 0).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].event_id, done.event_id);
    assert_eq!(stored[0].aggregate_id, "kept");
    assert!(
        stored[0].payload.contains(r#""seq":1"#),
        "{}",
        stored[0].payload
    );

    let txn = t.db.begin().await.unwrap();
    t.outbox
        .add_event_with(
            &txn,
            insert_user(&t, 2, "gone@example.com"),
            opened("gone", 1),
        )
        .await
        .unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(users_with(&t, 2, "gone@example.com").await, 0);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 1);
    t.drop_tables().await;
}

async fn several_events_are_stored_with_one_change(backend: Backend) {
    let t = TestDb::new(backend).await;
    let txn = t.db.begin().await.unwrap();
    let done = t
        .outbox
        .add_events_with(
            &txn,
            insert_user(&t, 1, "a@example.com"),
            [opened("a", 1), opened("b", 1), opened("a", 2)],
        )
        .await
        .unwrap();
    assert_eq!(done.rows_affected, 1);
    assert_eq!(done.event_ids.len(), 3);
    txn.commit().await.unwrap();
    let stored = t.outbox.get_unpublished(&t.db, 10, 0).await.unwrap();
    let stored: Vec<_> = stored
        .iter()
        .map(|e| (e.event_id, e.aggregate_id.as_str()))
        .collect();
    for (id, aggregate) in done.event_ids.iter().zip(["a", "b", "a"]) {
        assert!(
            stored.contains(&(*id, aggregate)),
            "{id} of {aggregate} stored: {stored:?}"
        );
    }

    let txn = t.db.begin().await.unwrap();
    t.outbox
        .add_events_with(
            &txn,
            insert_user(&t, 2, "b@example.com"),
            [opened("c", 1), opened("d", 1)],
        )
        .await
        .unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(users_with(&t, 2, "b@example.com").await, 0);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 3);

    // No events: the change alone.
    let alone = t
        .outbox
        .add_events_with(
            &t.db,
            insert_user(&t, 3, "c@example.com"),
            Vec::<outbox::EventEnvelope<outbox_tests::events::AccountOpened>>::new(),
        )
        .await
        .unwrap();
    assert_eq!((alone.rows_affected, alone.event_ids.len()), (1, 0));
    assert_eq!(users_with(&t, 3, "c@example.com").await, 1);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 3);
    t.drop_tables().await;
}

async fn the_rows_the_change_affected_are_returned(backend: Backend) {
    let t = TestDb::new(backend).await;
    for id in 1..=3 {
        t.outbox
            .add_event_with(
                &t.db,
                insert_user(&t, id, "old@example.com"),
                opened("a", id as u32),
            )
            .await
            .unwrap();
    }
    let txn = t.db.begin().await.unwrap();
    let renamed = change(
        &t,
        "UPDATE {users} SET email = ? WHERE id >= ?",
        vec!["new@example.com".into(), 2i64.into()],
    );
    let done = t
        .outbox
        .add_event_with(&txn, renamed, opened("a", 4))
        .await
        .unwrap();
    assert_eq!(done.rows_affected, 2);
    let nobody = change(
        &t,
        "UPDATE {users} SET email = ? WHERE id = ?",
        vec!["x@example.com".into(), 99i64.into()],
    );
    let done = t
        .outbox
        .add_event_with(&txn, nobody, opened("a", 5))
        .await
        .unwrap();
    assert_eq!(
        done.rows_affected, 0,
        "an UPDATE that matched nothing says so, for the caller to roll back"
    );
    txn.commit().await.unwrap();
    assert_eq!(users_with(&t, 3, "new@example.com").await, 1);
    assert_eq!(users_with(&t, 1, "old@example.com").await, 1);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 5);
    t.drop_tables().await;
}

async fn a_failing_change_stores_no_event_and_says_what_failed(backend: Backend) {
    let t = TestDb::new(backend).await;
    t.outbox
        .add_event_with(&t.db, insert_user(&t, 1, "a@example.com"), opened("a", 1))
        .await
        .unwrap();
    let txn = t.db.begin().await.unwrap();
    let error = t
        .outbox
        .add_event_with(
            &txn,
            insert_user(&t, 1, "again@example.com"),
            opened("a", 2),
        )
        .await
        .expect_err("the user's id is taken");
    txn.rollback().await.unwrap();
    assert!(
        matches!(error, RepositoryError::Database { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("running the caller's change with its event"),
        "{error}"
    );
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 1);
    t.drop_tables().await;
}

async fn an_event_refused_before_the_change_runs(backend: Backend) {
    let mut config = OutboxConfig::default();
    config.max_payload_bytes = 2048;
    let t = TestDb::with_config(backend, config).await;
    let too_big = AccountTagged {
        note: "n".repeat(2100),
        ..tagged("a")
    };
    let error = t
        .outbox
        .add_event_with(&t.db, insert_user(&t, 1, "a@example.com"), too_big)
        .await
        .expect_err("the payload is over the limit");
    assert!(
        matches!(error, RepositoryError::InvalidEvent(_)),
        "{error:?}"
    );
    assert_eq!(users_with(&t, 1, "a@example.com").await, 0);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    t.drop_tables().await;
}

/// A change that returns rows (`RETURNING`, which SQLite, PostgreSQL and MariaDB have) is counted by the rows it
/// affected, not read for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_returns_rows_is_counted() {
    for backend in [Backend::Postgres, Backend::MariaDb, Backend::SqliteFile] {
        let t = TestDb::new(backend).await;
        let returning = change(
            &t,
            "INSERT INTO {users} (id, email) VALUES (?, ?) RETURNING id",
            vec![7i64.into(), "r@example.com".into()],
        );
        let done = t
            .outbox
            .add_event_with(&t.db, returning, opened("r", 1))
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        assert_eq!(
            done.rows_affected, 1,
            "{backend:?}: the returned id was read"
        );
        assert_eq!(users_with(&t, 7, "r@example.com").await, 1, "{backend:?}");
        assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 1);
        t.drop_tables().await;
    }
}

/// On PostgreSQL the event's INSERT joins the change's own `WITH` clause, plain or recursive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_with_a_with_clause_of_its_own() {
    let t = TestDb::new(Backend::Postgres).await;
    let changes = [
        "WITH v (id, email) AS (VALUES (CAST(? AS BIGINT), CAST(? AS TEXT))) \
         INSERT INTO {users} (id, email) SELECT id, email FROM v",
        "with recursive n (id) as (SELECT CAST(? AS BIGINT) UNION ALL SELECT id + 1 FROM n WHERE id < 12) \
         INSERT INTO {users} (id, email) SELECT id, CAST(? AS TEXT) FROM n",
    ];
    let mut first = 1i64;
    for (i, sql) in changes.into_iter().enumerate() {
        let email = format!("w{i}@example.com");
        let done = t
            .outbox
            .add_event_with(
                &t.db,
                change(&t, sql, vec![first.into(), email.as_str().into()]),
                opened("w", i as u32),
            )
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(done.rows_affected >= 1, "{sql}");
        assert_eq!(users_with(&t, first, &email).await, 1, "{sql}");
        first = 10;
    }
    assert_eq!(users_with(&t, 12, "w1@example.com").await, 1);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 2);
    t.drop_tables().await;
}

/// On PostgreSQL and MariaDB the change and the event are one statement, so they stand or fall together even
/// outside a transaction: an event refused by the table (its id stored already) takes the change with it. Two
/// statements would have committed the change on its own.
async fn outside_a_transaction_the_change_and_the_event_commit_together(backend: Backend) {
    let t = TestDb::new(backend).await;
    let first = t
        .outbox
        .add_event_with(&t.db, insert_user(&t, 1, "a@example.com"), opened("a", 1))
        .await
        .unwrap();
    assert_eq!(users_with(&t, 1, "a@example.com").await, 1);
    let again = outbox::EventEnvelope::new(opened("a", 2)).with_event_id(first.event_id);
    t.outbox
        .add_event_with(&t.db, insert_user(&t, 2, "b@example.com"), again)
        .await
        .expect_err("the event id is stored already");
    assert_eq!(
        users_with(&t, 2, "b@example.com").await,
        0,
        "the change committed without its event"
    );
    // Several events: one refused takes the change and the others with it.
    let fresh = outbox::EventEnvelope::new(opened("b", 1));
    let taken = outbox::EventEnvelope::new(opened("b", 2)).with_event_id(first.event_id);
    t.outbox
        .add_events_with(&t.db, insert_user(&t, 3, "c@example.com"), [fresh, taken])
        .await
        .expect_err("the second event's id is stored already");
    assert_eq!(
        users_with(&t, 3, "c@example.com").await,
        0,
        "the change committed without its events"
    );
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 1);
    t.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_change_and_the_event_commit_together() {
    outside_a_transaction_the_change_and_the_event_commit_together(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mariadb_the_change_and_the_event_commit_together() {
    outside_a_transaction_the_change_and_the_event_commit_together(Backend::MariaDb).await;
}

/// MariaDB's block opens a transaction of its own only outside the caller's: in the caller's transaction a
/// refused event neither commits nor rolls back what the caller did before, and the caller decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mariadb_a_refused_event_leaves_the_callers_transaction_to_the_caller() {
    let t = TestDb::new(Backend::MariaDb).await;
    let txn = t.db.begin().await.unwrap();
    // A trailing semicolon or comment, as a hand-written statement may have, ends with the change.
    let first = t
        .outbox
        .add_event_with(
            &txn,
            change(
                &t,
                "INSERT INTO {users} (id, email) VALUES (?, ?);  ",
                vec![1i64.into(), "a@example.com".into()],
            ),
            opened("a", 1),
        )
        .await
        .unwrap();
    assert_eq!(first.rows_affected, 1);
    let commented = change(
        &t,
        "UPDATE {users} SET email = ? WHERE id = ? -- the user's new address",
        vec!["a@example.com".into(), 1i64.into()],
    );
    t.outbox
        .add_event_with(&txn, commented, opened("a", 2))
        .await
        .unwrap();
    let again = outbox::EventEnvelope::new(opened("a", 3)).with_event_id(first.event_id);
    let error = t
        .outbox
        .add_event_with(&txn, insert_user(&t, 2, "b@example.com"), again)
        .await
        .expect_err("the event id is stored already");
    assert!(
        error
            .to_string()
            .contains("running the caller's change with its event"),
        "{error}"
    );
    assert_eq!(
        users_with(&t, 1, "a@example.com").await,
        0,
        "the caller's transaction was committed"
    );
    txn.commit().await.unwrap();
    assert_eq!(
        users_with(&t, 1, "a@example.com").await,
        1,
        "the caller's transaction was rolled back under it"
    );
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 2);
    t.drop_tables().await;
}

/// Under the commit-order cursor MariaDB numbers each event as it is inserted (the table's trigger); an event
/// stored in the caller's block is numbered as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mariadb_under_the_cursor_an_event_stored_with_a_change_is_numbered() {
    let mut config = OutboxConfig::default();
    config.delivery = outbox::Delivery::Cursor;
    let t = TestDb::with_design(Backend::MariaDb, config).await;
    for id in 1..=2 {
        let txn = t.db.begin().await.unwrap();
        t.outbox
            .add_event_with(
                &txn,
                insert_user(&t, id, "a@example.com"),
                opened("a", id as u32),
            )
            .await
            .unwrap();
        txn.commit().await.unwrap();
    }
    assert_eq!(
        t.scalar(&format!(
            "SELECT COUNT(DISTINCT seq) FROM {} WHERE seq > 0",
            t.outbox.table()
        ))
        .await,
        2
    );
    t.drop_tables().await;
}
