use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectOptions, Database, TransactionTrait};

use super::Cursors;
use crate::repository::{OutboxRepository, connect};
use crate::tested::Tested;
use crate::{Delivery, OutboxConfig};

/// A batch whose outcome is being written when its partition's lease runs out is not taken for abandoned: reading
/// the partition again beside it would put two batches of one partition out at once, and the older one's outcome
/// would then free the partition under the newer one.
#[tokio::test]
async fn a_batch_being_settled_is_not_read_again_beside_it() {
    let path = std::env::temp_dir().join(format!("outbox-cursor-{:016x}.db", fastrand::u64(..)));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let db = connect(&url).await.unwrap();
    crate::migration::create_table(&db, "outbox_events")
        .await
        .unwrap();
    let config = OutboxConfig {
        delivery: Delivery::Cursor,
        partitions: 1,
        lease_duration: Duration::from_secs(1),
        ..OutboxConfig::default()
    };
    let repo = OutboxRepository::builder().config(config).build().unwrap();
    repo.add_events(&db, (1..=3).map(|id| Tested { id }))
        .await
        .unwrap();
    let cursors = Arc::new(Cursors::new());
    let first = cursors.lease(&db, &repo, 10).await.unwrap();
    assert_eq!(first.rows.len(), 3);
    let ids: Vec<i64> = first.rows.iter().map(|row| row.id).collect();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The outcome is written on a pool whose one connection is taken: it waits there, its batch in hand.
    let mut options = ConnectOptions::new(url);
    options.max_connections(1).sqlx_logging(false);
    let settling_db = Database::connect(options).await.unwrap();
    let held = settling_db.begin().await.unwrap();
    let settle = tokio::spawn({
        let (cursors, repo) = (cursors.clone(), repo.clone());
        async move {
            cursors
                .acknowledge(&settling_db, &repo, first.token, &ids)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let beside = cursors.lease(&db, &repo, 10).await.unwrap();
    assert!(
        beside.rows.is_empty(),
        "the partition was read again while its batch was being settled"
    );
    held.rollback().await.unwrap();
    assert_eq!(settle.await.unwrap().unwrap(), 3);

    repo.add_events(&db, [Tested { id: 4 }]).await.unwrap();
    let next = cursors.lease(&db, &repo, 10).await.unwrap();
    assert_eq!(
        next.rows.len(),
        1,
        "the cursor moved past the settled batch"
    );
    drop(db);
    let _ = std::fs::remove_file(&path);
}
