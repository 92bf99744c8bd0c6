use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, TransactionTrait,
};

use super::Cursors;
use tokio::task::JoinHandle;

use crate::repository::{ClaimToken, OutboxRepository, Result, connect};
use crate::tested::Tested;
use crate::{Delivery, OutboxConfig};

/// One partition of an SQLite file with three events stored, and a second pool on the same file whose one
/// connection [`Fixture::new`] hands back, taken: an outcome written through that pool waits until it is freed,
/// its batch in hand.
struct Fixture {
    path: PathBuf,
    db: DatabaseConnection,
    repo: OutboxRepository,
    cursors: Arc<Cursors>,
    waiting_db: DatabaseConnection,
}

impl Fixture {
    async fn new() -> (Self, DatabaseTransaction) {
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
        let fixture = Self {
            path,
            db,
            repo,
            cursors: Arc::new(Cursors::new()),
            waiting_db,
        };
        (fixture, held)
    }

    /// Reads the three events stored: the batch's token and their ids.
    async fn lease(&self) -> (ClaimToken, Vec<i64>) {
        let batch = self.cursors.lease(&self.db, &self.repo, 10).await.unwrap();
        assert_eq!(batch.rows.len(), 3);
        (batch.token, batch.rows.iter().map(|row| row.id).collect())
    }

    /// Starts acknowledging every event of `token` through the waiting pool.
    fn settle(&self, token: ClaimToken, ids: Vec<i64>) -> JoinHandle<Result<u64>> {
        let (cursors, repo, db) = (
            self.cursors.clone(),
            self.repo.clone(),
            self.waiting_db.clone(),
        );
        tokio::spawn(async move { cursors.acknowledge(&db, &repo, token, &ids).await })
    }

    /// Stores a fourth event and asserts that the next batch reads it alone: the cursor is past the first three.
    async fn assert_moved_past_the_batch(&self) {
        self.repo
            .add_events(&self.db, [Tested { id: 4 }])
            .await
            .unwrap();
        let next = self.cursors.lease(&self.db, &self.repo, 10).await.unwrap();
        assert_eq!(
            next.rows.len(),
            1,
            "the cursor moved past the settled batch"
        );
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
    let (f, held) = Fixture::new().await;
    let (token, ids) = f.lease().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let settle = f.settle(token, ids);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let beside = f.cursors.lease(&f.db, &f.repo, 10).await.unwrap();
    assert!(
        beside.rows.is_empty(),
        "the partition was read again while its batch was being settled"
    );
    held.rollback().await.unwrap();
    assert_eq!(settle.await.unwrap().unwrap(), 3);
    f.assert_moved_past_the_batch().await;
}

/// An outcome dropped half-way (`run` stopped with batches in flight) leaves its batch out as it was: it can be
/// acknowledged again, or abandoned after a lease; marked as being settled for good, its partition would never be
/// read again.
#[tokio::test]
async fn an_outcome_dropped_half_way_leaves_its_batch_to_be_settled_again() {
    let (f, held) = Fixture::new().await;
    let (token, ids) = f.lease().await;

    let settle = f.settle(token, ids.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    settle.abort();
    assert!(settle.await.unwrap_err().is_cancelled());
    held.rollback().await.unwrap();

    assert_eq!(
        f.cursors
            .acknowledge(&f.db, &f.repo, token, &ids)
            .await
            .unwrap(),
        3,
        "the batch was out no more after its first outcome was dropped"
    );
    f.assert_moved_past_the_batch().await;
}
