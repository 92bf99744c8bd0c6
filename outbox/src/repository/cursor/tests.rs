use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, TransactionTrait,
};

use super::Cursors;
use crate::repository::{OutboxRepository, connect};
use crate::tested::Tested;
use crate::{Delivery, OutboxConfig};

/// One partition of an SQLite file, with three events stored and a second pool on the same file whose one
/// connection is taken: an outcome written through it waits there, its batch in hand.
struct Fixture {
    path: PathBuf,
    db: DatabaseConnection,
    repo: OutboxRepository,
    cursors: Arc<Cursors>,
    waiting_db: DatabaseConnection,
    held: Option<DatabaseTransaction>,
}

impl Fixture {
    async fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("outbox-cursor-{:016x}.db", fastrand::u64(..)));
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
        let mut options = ConnectOptions::new(url);
        options.max_connections(1).sqlx_logging(false);
        let waiting_db = Database::connect(options).await.unwrap();
        let held = waiting_db.begin().await.unwrap();
        Self {
            path,
            db,
            repo,
            cursors: Arc::new(Cursors::new()),
            waiting_db,
            held: Some(held),
        }
    }

    /// Starts acknowledging every event of `token` through the waiting pool.
    fn settle(
        &self,
        token: crate::repository::ClaimToken,
        ids: Vec<i64>,
    ) -> tokio::task::JoinHandle<crate::repository::Result<u64>> {
        let (cursors, repo, db) = (
            self.cursors.clone(),
            self.repo.clone(),
            self.waiting_db.clone(),
        );
        tokio::spawn(async move { cursors.acknowledge(&db, &repo, token, &ids).await })
    }
}

impl Fixture {
    /// Frees the waiting pool's connection.
    async fn release(&mut self) {
        if let Some(held) = self.held.take() {
            held.rollback().await.unwrap();
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A batch whose outcome is being written when its partition's lease runs out is not taken for abandoned: reading
/// the partition again beside it would put two batches of one partition out at once, and the older one's outcome
/// would then free the partition under the newer one.
#[tokio::test]
async fn a_batch_being_settled_is_not_read_again_beside_it() {
    let mut f = Fixture::new().await;
    let (db, repo, cursors) = (f.db.clone(), f.repo.clone(), f.cursors.clone());
    let (db, repo) = (&db, &repo);
    let first = cursors.lease(db, repo, 10).await.unwrap();
    assert_eq!(first.rows.len(), 3);
    let ids: Vec<i64> = first.rows.iter().map(|row| row.id).collect();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let settle = f.settle(first.token, ids);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let beside = cursors.lease(db, repo, 10).await.unwrap();
    assert!(
        beside.rows.is_empty(),
        "the partition was read again while its batch was being settled"
    );
    f.release().await;
    assert_eq!(settle.await.unwrap().unwrap(), 3);

    repo.add_events(db, [Tested { id: 4 }]).await.unwrap();
    let next = cursors.lease(db, repo, 10).await.unwrap();
    assert_eq!(
        next.rows.len(),
        1,
        "the cursor moved past the settled batch"
    );
}

/// An outcome dropped half-way (`run` stopped with batches in flight) leaves its batch out as it was: it can be
/// acknowledged again, or abandoned after a lease; marked as being settled for good, its partition would never be
/// read again.
#[tokio::test]
async fn an_outcome_dropped_half_way_leaves_its_batch_to_be_settled_again() {
    let mut f = Fixture::new().await;
    let (db, repo, cursors) = (f.db.clone(), f.repo.clone(), f.cursors.clone());
    let (db, repo) = (&db, &repo);
    let first = cursors.lease(db, repo, 10).await.unwrap();
    let ids: Vec<i64> = first.rows.iter().map(|row| row.id).collect();

    let settle = f.settle(first.token, ids.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    settle.abort();
    assert!(settle.await.unwrap_err().is_cancelled());
    f.release().await;

    assert_eq!(
        cursors
            .acknowledge(db, repo, first.token, &ids)
            .await
            .unwrap(),
        3,
        "the batch was out no more after its first outcome was dropped"
    );
    repo.add_events(db, [Tested { id: 4 }]).await.unwrap();
    let next = cursors.lease(db, repo, 10).await.unwrap();
    assert_eq!(
        next.rows.len(),
        1,
        "the cursor moved past the settled batch"
    );
}
