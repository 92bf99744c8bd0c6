//! The consumer side's inbox: a message is applied once per consumer, in the handler's transaction; a rollback
//! leaves it to be applied again; two deliveries at once apply it once.

use std::time::Duration;

use outbox::repository::{Inbox, Recorded, RepositoryError};
use outbox::sea_orm::{ConnectionTrait, TransactionTrait};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::on_every_backend;

on_every_backend!(
    a_message_is_recorded_once_per_consumer,
    a_rolled_back_record_leaves_the_message_to_apply_again,
    two_deliveries_at_once_apply_the_message_once,
    the_dedup_window_purges_old_records_only,
    keys_no_column_can_hold_are_refused,
    many_messages_are_recorded_at_once,
);

/// An inbox in a table of the test's own, created.
async fn inbox(t: &TestDb, consumer: &str) -> Inbox {
    let inbox = Inbox::new(consumer)
        .unwrap()
        .table(&format!("{}_inbox", t.outbox.table()))
        .unwrap();
    inbox.create_table(&t.db).await.unwrap();
    inbox
        .create_table(&t.db)
        .await
        .expect("creating it again is a no-op");
    inbox
}

async fn drop_inbox(t: &TestDb, inbox: &Inbox) {
    t.db.execute_unprepared(&format!("DROP TABLE IF EXISTS {}", inbox.table_name()))
        .await
        .unwrap();
    t.drop_tables().await;
}

async fn a_message_is_recorded_once_per_consumer(backend: Backend) {
    let t = TestDb::new(backend).await;
    let billing = inbox(&t, "billing").await;
    let txn = t.db.begin().await.unwrap();
    assert_eq!(billing.record(&txn, "m-1").await.unwrap(), Recorded::First);
    txn.commit().await.unwrap();

    let txn = t.db.begin().await.unwrap();
    assert_eq!(
        billing.record(&txn, "m-1").await.unwrap(),
        Recorded::Duplicate,
        "{backend:?}"
    );
    assert_eq!(
        billing.record(&txn, "M-1").await.unwrap(),
        Recorded::First,
        "ids compare exactly"
    );
    txn.commit().await.unwrap();

    // Another consumer of the same message keeps its own record.
    let shipping = Inbox::new("shipping")
        .unwrap()
        .table(billing.table_name())
        .unwrap();
    assert!(!shipping.contains(&t.db, "m-1").await.unwrap());
    assert_eq!(
        shipping.record(&t.db, "m-1").await.unwrap(),
        Recorded::First
    );
    assert!(billing.contains(&t.db, "m-1").await.unwrap());
    drop_inbox(&t, &billing).await;
}

async fn a_rolled_back_record_leaves_the_message_to_apply_again(backend: Backend) {
    let t = TestDb::new(backend).await;
    let inbox = inbox(&t, "billing").await;
    let txn = t.db.begin().await.unwrap();
    assert_eq!(inbox.record(&txn, "m-1").await.unwrap(), Recorded::First);
    txn.rollback().await.unwrap(); // the handler failed: nothing it did stays, the record neither
    assert!(!inbox.contains(&t.db, "m-1").await.unwrap());
    let txn = t.db.begin().await.unwrap();
    assert_eq!(
        inbox.record(&txn, "m-1").await.unwrap(),
        Recorded::First,
        "{backend:?}"
    );
    txn.commit().await.unwrap();
    drop_inbox(&t, &inbox).await;
}

/// A second delivery of a message whose first delivery's transaction is still open waits for it: a commit makes
/// it a duplicate, a rollback makes it the first.
async fn two_deliveries_at_once_apply_the_message_once(backend: Backend) {
    let t = TestDb::new(backend).await;
    if !t.has_second_connection() {
        return; // one connection: a second transaction cannot be open beside the first
    }
    let inbox = inbox(&t, "billing").await;
    for (first_commits, expected) in [(true, Recorded::Duplicate), (false, Recorded::First)] {
        let id = format!("m-{first_commits}");
        let first = t.db.begin().await.unwrap();
        assert_eq!(inbox.record(&first, &id).await.unwrap(), Recorded::First);

        let (db, other, second_id) = (t.db.clone(), inbox.clone(), id.clone());
        let second = tokio::spawn(async move {
            let txn = db.begin().await.unwrap();
            let recorded = other.record(&txn, &second_id).await.unwrap();
            txn.commit().await.unwrap();
            recorded
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !second.is_finished(),
            "{backend:?}: the second delivery did not wait for the first"
        );
        if first_commits {
            first.commit().await.unwrap();
        } else {
            first.rollback().await.unwrap();
        }
        assert_eq!(
            second.await.unwrap(),
            expected,
            "{backend:?}, first commits: {first_commits}"
        );
    }
    drop_inbox(&t, &inbox).await;
}

async fn the_dedup_window_purges_old_records_only(backend: Backend) {
    let t = TestDb::new(backend).await;
    let inbox = inbox(&t, "billing").await;
    let other = Inbox::new("shipping")
        .unwrap()
        .table(inbox.table_name())
        .unwrap();
    assert_eq!(inbox.record(&t.db, "old").await.unwrap(), Recorded::First);
    assert_eq!(other.record(&t.db, "old").await.unwrap(), Recorded::First);
    // Ten minutes ago, as the record of a message applied then.
    t.db.execute_unprepared(&format!(
        "UPDATE {} SET processed_at = processed_at - 600000000",
        inbox.table_name()
    ))
    .await
    .unwrap();
    assert_eq!(inbox.record(&t.db, "new").await.unwrap(), Recorded::First);

    assert_eq!(
        inbox
            .purge_older_than(&t.db, Duration::from_secs(300))
            .await
            .unwrap(),
        1
    );
    assert!(
        !inbox.contains(&t.db, "old").await.unwrap(),
        "outside the window: gone"
    );
    assert!(
        inbox.contains(&t.db, "new").await.unwrap(),
        "inside the window: kept"
    );
    assert!(
        other.contains(&t.db, "old").await.unwrap(),
        "another consumer's records are its own"
    );
    drop_inbox(&t, &inbox).await;
}

async fn keys_no_column_can_hold_are_refused(backend: Backend) {
    let t = TestDb::new(backend).await;
    let inbox = inbox(&t, "billing").await;
    let long = "x".repeat(256);
    for (id, expected) in [
        ("", "invalid inbox message id: it is empty"),
        (long.as_str(), "it is 256 bytes, over the limit of 255"),
        ("a\nb", "it holds a control character"),
    ] {
        let error = inbox.record(&t.db, id).await.unwrap_err();
        assert!(
            matches!(error, RepositoryError::InvalidInboxKey { .. }),
            "{error}"
        );
        assert!(error.to_string().contains(expected), "{error}");
    }
    // 255 bytes is a key that fits, and one byte more at the end would not collide with it silently.
    let longest = "y".repeat(255);
    assert_eq!(
        inbox.record(&t.db, &longest).await.unwrap(),
        Recorded::First
    );
    assert!(Inbox::new("").is_err());
    drop_inbox(&t, &inbox).await;
}

/// `record_all` answers as `record` would for each id, in the order given, past one statement's worth of rows.
async fn many_messages_are_recorded_at_once(backend: Backend) {
    let t = TestDb::new(backend).await;
    let inbox = inbox(&t, "billing").await;
    assert_eq!(inbox.record(&t.db, "m-1").await.unwrap(), Recorded::First);
    let ids: Vec<String> = ["m-3", "m-1", "m-2"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..700).map(|i| format!("bulk-{i}")))
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let txn = t.db.begin().await.unwrap();
    let recorded = inbox.record_all(&txn, &ids).await.unwrap();
    assert_eq!(
        recorded[..3],
        [Recorded::First, Recorded::Duplicate, Recorded::First],
        "{backend:?}"
    );
    assert!(recorded[3..].iter().all(|r| *r == Recorded::First));
    txn.commit().await.unwrap();
    let again = inbox.record_all(&t.db, &ids).await.unwrap();
    assert!(
        again.iter().all(|r| *r == Recorded::Duplicate),
        "{backend:?}: all recorded now"
    );
    assert!(matches!(
        inbox.record_all(&t.db, &["ok", &"x".repeat(256)]).await,
        Err(outbox::repository::RepositoryError::InvalidInboxKey { .. })
    ));
    drop_inbox(&t, &inbox).await;
}
