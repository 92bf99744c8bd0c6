//! The seam between the outbox table and what runs on it: a relay or a health check asks [`Store`] to claim,
//! decode, acknowledge, fail and release events, for wake-ups and for health facts, and never sees a connection, a
//! backend or SQL. Each backend's way of answering is behind it (`postgres.rs`, `mysql.rs`, `sqlite.rs`).

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::cursor::Cursors;
use super::dialect::WakeTask;
use super::{
    Claim, ClaimToken, Dialect, Failure, FailureOutcome, Heartbeat, LeaseOwner, Leased,
    OutboxRepository, OutboxStats, Result, Since,
};

/// An outbox table on one database.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    db: DatabaseConnection,
    repository: OutboxRepository,
    /// With [`Delivery::Cursor`](crate::Delivery::Cursor): this store's partitions and batches.
    cursors: Option<Arc<Cursors>>,
    /// Under the rows design: whether the table was found free of cursors (see
    /// [`OutboxRepository::refuse_cursor_table`]), asked until it was once.
    rows_checked: Arc<AtomicBool>,
}

/// Wake-ups from the database while held: see [`Store::wake_ups`].
pub(crate) struct WakeUps {
    task: WakeTask,
}

impl Drop for WakeUps {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Store {
    pub(crate) fn new(db: DatabaseConnection, repository: OutboxRepository) -> Self {
        let cursors = (repository.config().delivery == crate::Delivery::Cursor)
            .then(|| Arc::new(Cursors::new()));
        Self {
            db,
            repository,
            cursors,
            rows_checked: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The table's repository: its name, configuration and registry.
    pub(crate) fn repository(&self) -> &OutboxRepository {
        &self.repository
    }

    /// Leases up to `limit` events for `owner` (see [`OutboxRepository::claim_as`]), undecoded.
    pub(crate) async fn lease(&self, owner: &LeaseOwner, limit: u32) -> Result<Leased> {
        match &self.cursors {
            Some(cursors) => cursors.lease(&self.db, &self.repository, limit).await,
            None => {
                self.refuse_cursor_table().await?;
                self.repository.lease_as(&self.db, owner, limit).await
            }
        }
    }

    /// Decodes a leased batch; writes nothing.
    pub(crate) async fn decode(&self, leased: Leased) -> Claim {
        self.repository.decode(leased).await
    }

    /// Marks the events `ids` of the claim `token` published.
    pub(crate) async fn acknowledge(&self, token: ClaimToken, ids: &[i64]) -> Result<u64> {
        match &self.cursors {
            Some(cursors) => {
                cursors
                    .acknowledge(&self.db, &self.repository, token, ids)
                    .await
            }
            None => self.repository.mark_published(&self.db, token, ids).await,
        }
    }

    /// Records failures of the claim `token`.
    pub(crate) async fn fail(
        &self,
        token: ClaimToken,
        failures: &[Failure],
    ) -> Result<FailureOutcome> {
        match &self.cursors {
            Some(cursors) => {
                cursors
                    .fail(&self.db, &self.repository, token, failures)
                    .await
            }
            None => self.repository.mark_failed(&self.db, token, failures).await,
        }
    }

    /// Gives the events `ids` of the claim `token` back.
    pub(crate) async fn release(&self, token: ClaimToken, ids: &[i64]) -> Result<u64> {
        match &self.cursors {
            Some(cursors) => Ok(cursors.release(ids)),
            None => self.repository.release(&self.db, token, ids).await,
        }
    }

    /// How many of the events `ids` are still pending: asked after a mark was retried, to tell this relay's own
    /// lost commit from a takeover. A cursor's acknowledgement is idempotent, so a retried one that moved nothing
    /// was taken over: all of them are another relay's.
    pub(crate) async fn still_pending(&self, ids: &[i64]) -> Result<u64> {
        match &self.cursors {
            Some(_) => Ok(ids.len() as u64),
            None => self.repository.count_pending_ids(&self.db, ids).await,
        }
    }

    /// Lag figures.
    pub(crate) async fn stats(&self) -> Result<OutboxStats> {
        self.repository.stats(&self.db).await
    }

    /// Lag figures per partition, under a cursor (none otherwise).
    pub(crate) async fn partitions(&self) -> Result<Vec<super::PartitionLag>> {
        match &self.cursors {
            Some(_) => self.repository.partitions(&self.db).await,
            None => Ok(Vec::new()),
        }
    }

    /// That the table is there with every column.
    pub(crate) async fn check(&self) -> Result<()> {
        self.repository.check(&self.db).await
    }

    /// What a relay does before its first batch: under a cursor, adopts the events stored before it and creates
    /// the cursors, or refuses a partition count that disagrees with the table's; under the rows design, refuses
    /// a table the cursor delivers.
    pub(crate) async fn prepare(&self) -> Result<()> {
        match &self.cursors {
            Some(cursors) => cursors.ready(&self.db, &self.repository).await,
            None => self.refuse_cursor_table().await,
        }
    }

    /// Under the rows design, before the first claim: a table the cursor delivers is refused, since its published
    /// events are pending in place.
    async fn refuse_cursor_table(&self) -> Result<()> {
        if !self.rows_checked.load(Ordering::Relaxed) {
            self.repository.refuse_cursor_table(&self.db).await?;
            self.rows_checked.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A relay stops cleanly, its batches settled: it gives its partitions back at once, so another relay takes
    /// them over without waiting for the leases to end.
    pub(crate) async fn hand_over(&self) -> Result<()> {
        match &self.cursors {
            Some(cursors) => cursors.hand_over(&self.db, &self.repository).await,
            None => Ok(()),
        }
    }

    /// A relay starts: its row in `<table>_relays`.
    pub(crate) async fn sign_on(&self, beat: &Heartbeat<'_>) -> Result<()> {
        self.repository.sign_on(&self.db, beat).await
    }

    /// A relay's heartbeat.
    pub(crate) async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<()> {
        self.repository.heartbeat(&self.db, beat).await
    }

    /// A relay stops cleanly.
    pub(crate) async fn sign_off(&self, relay_id: &str) -> Result<()> {
        self.repository.sign_off(&self.db, relay_id).await
    }

    /// Whether relays on this database can ask writers not to wake them (see `wake.rs`).
    pub(crate) fn wakes_on_demand(&self) -> bool {
        self.repository.wakes_on_demand(&self.db)
    }

    /// Records that the relay `relay_id` sleeps until a writer wakes it; the snapshot whose transactions it must
    /// wait out before it sleeps. `None`: the wish is not recorded (no row).
    pub(crate) async fn ask_to_be_woken(&self, relay_id: &str) -> Result<Option<Since>> {
        self.repository.ask_to_be_woken(&self.db, relay_id).await
    }

    /// Records that the relay `relay_id` polls and needs no notification.
    pub(crate) async fn ask_not_to_be_woken(&self, relay_id: &str) -> Result<()> {
        self.repository
            .ask_not_to_be_woken(&self.db, relay_id)
            .await
    }

    /// Whether every transaction in progress at `since` has ended.
    pub(crate) async fn settled(&self, since: &Since) -> Result<bool> {
        self.repository.settled(&self.db, since).await
    }

    /// Withdraws the wake-up wishes of relays that stopped reporting.
    pub(crate) async fn forget_wishes_of_gone_relays(&self) -> Result<()> {
        self.repository.forget_wishes_of_gone_relays(&self.db).await
    }

    /// That the database answers a trivial query.
    pub(crate) async fn ping(&self) -> std::result::Result<(), DbErr> {
        let backend = self.db.get_database_backend();
        self.db
            .query_one_raw(Statement::from_string(backend, "SELECT 1"))
            .await
            .map(drop)
    }

    /// How many batches a relay keeps in flight unless told otherwise: two where claiming the next one while the
    /// current one publishes pays (PostgreSQL), one where a claim beside a mark slows the drain (see each
    /// backend's [`Dialect`]).
    pub(crate) fn batches_in_flight(&self) -> usize {
        let most = Dialect::of(&self.db).batches_in_flight;
        match &self.cursors {
            // Batches of one partition go one after the other (each moves the cursor the last one left).
            Some(cursors) => cursors.batches_in_flight(most),
            None => most,
        }
    }

    /// Calls `wake` whenever a transaction that stored events commits, while the returned guard is held: on
    /// PostgreSQL through LISTEN on the table's channel (its insert trigger NOTIFYs). `None` where the database
    /// has no such signal: the relay polls.
    pub(crate) fn wake_ups(&self, wake: impl Fn() + Send + Sync + 'static) -> Option<WakeUps> {
        let dialect = Dialect::of(&self.db);
        let task = (dialect.wake_ups)(&self.db, &self.repository.inner.table, Box::new(wake))?;
        Some(WakeUps { task })
    }
}
