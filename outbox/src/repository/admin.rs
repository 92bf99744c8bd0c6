//! What operators and tools do with the table: list and count pending events, mark one by hand, dead letters
//! (list, replay, purge), retention, lag, and the table check.

use std::time::Duration;

use chrono::Utc;
use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;

use super::mark::FailureKind;
use super::{
    ClaimToken, Dialect, Failure, OutboxRepository, RepositoryError, Result, StoredEvent, sql,
};

/// Which dead letters to replay or purge.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterFilter {
    /// Every dead letter.
    All,
    /// One event, by event id.
    EventId(Uuid),
    /// One row, by row id.
    Id(i64),
    /// Every dead letter of one event type.
    EventType(String),
    /// Every dead letter of one aggregate.
    Aggregate {
        /// The aggregate type.
        aggregate_type: String,
        /// The aggregate id.
        aggregate_id: String,
    },
    /// Every dead letter whose last error contains this text (matched with the database's `LIKE`, so its case
    /// rules apply: case-sensitive on PostgreSQL, not for ASCII on MySQL's default collations and SQLite).
    ErrorContains(String),
    /// Every dead letter whose event occurred at or after this time.
    OccurredSince(chrono::DateTime<Utc>),
    /// Every dead letter whose event occurred before this time.
    OccurredBefore(chrono::DateTime<Utc>),
    /// These rows, by row id: one statement, with one parameter per id outside PostgreSQL, so a few thousand ids
    /// at a time.
    Ids(Vec<i64>),
    /// The dead letters that every one of these filters selects (all of them when empty).
    AllOf(Vec<DeadLetterFilter>),
}

/// Lag figures for health checks and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Events not yet published (including those being published now).
    pub pending: u64,
    /// When the oldest pending event occurred.
    pub oldest_pending: Option<chrono::DateTime<Utc>>,
    /// Dead letters waiting for replay or purge.
    pub dead_letters: u64,
}

/// One partition's cursor and what waits behind it, under the commit-order cursor (see
/// [`OutboxRepository::partitions`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionLag {
    /// The partition.
    pub partition: u16,
    /// The relay instance holding it (an id of the relay's cursors, not its name), if any.
    pub owner: Option<String>,
    /// Events not yet published: after its cursor, or parked.
    pub pending: u64,
    /// When the oldest of them occurred.
    pub oldest_pending: Option<chrono::DateTime<Utc>>,
}

impl PartitionLag {
    /// How long ago the oldest pending event occurred.
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        self.oldest_pending
            .map(|t| (Utc::now() - t).to_std().unwrap_or(Duration::ZERO))
    }
}

/// The pending events of one aggregate type (see [`OutboxRepository::backlog`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backlog {
    /// The aggregate type.
    pub aggregate_type: String,
    /// Its pending events.
    pub pending: u64,
    /// When the oldest of them occurred.
    pub oldest_pending: Option<chrono::DateTime<Utc>>,
}

impl OutboxStats {
    /// How long the oldest pending event has waited.
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        self.oldest_pending
            .map(|t| (Utc::now() - t).to_std().unwrap_or_default())
    }
}

impl OutboxRepository {
    /// Pending events in write order (python-outbox-core's `get_unpublished`). Use [`StoredEvent::decode`] to get the
    /// typed events; a row that no longer decodes is still listed, so nothing is hidden.
    ///
    /// Under [`Delivery::Cursor`](crate::Delivery::Cursor), where published rows stay pending in place, these are
    /// the events no cursor has passed yet, the parked ones, and those not adopted yet (every pending row before
    /// the first cursor relay started).
    pub async fn get_unpublished<C: ConnectionTrait>(
        &self,
        db: &C,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<StoredEvent>> {
        if !self.under_cursor() {
            return self
                .list(db, "listing pending events", sql::PENDING, limit, offset)
                .await;
        }
        // An event without a place in commit order makes `ahead` NULL: it is not adopted yet, so pending.
        let query = format!(
            "SELECT {columns} FROM {{t}} WHERE id IN ( \
               SELECT o.id FROM {{t}}_cursors c JOIN {{t}} o \
                 ON o.partition_no = c.partition_no AND o.status = {pending} AND COALESCE({ahead}, TRUE) \
               UNION SELECT p.id FROM {{t}}_parked p \
               UNION SELECT o.id FROM {{t}} o WHERE o.status = {pending} \
                 AND (o.partition_no IS NULL OR NOT EXISTS (SELECT 1 FROM {{t}}_cursors))) \
             ORDER BY id LIMIT ? OFFSET ?",
            columns = sql::COLUMNS,
            pending = sql::PENDING,
            ahead = Dialect::of(db).cursor.ahead
        );
        self.select(
            db,
            "listing pending events",
            &query,
            vec![limit.into(), offset.into()],
        )
        .await
    }

    /// How many events are pending (python-outbox-core's `count_unpublished`), including those being published now.
    pub async fn count_unpublished<C: ConnectionTrait>(&self, db: &C) -> Result<u64> {
        if self.under_cursor() {
            return Ok(self.stats(db).await?.pending);
        }
        self.count(db, "counting pending events", sql::PENDING)
            .await
    }

    /// Whether this table's events are delivered by the commit-order cursor, where rows stay pending in place
    /// and what is pending is what no cursor has passed (or is parked).
    fn under_cursor(&self) -> bool {
        self.inner.config.delivery == crate::Delivery::Cursor
    }

    /// Refuses `operation`, a call of the rows design, under the cursor (see [`RepositoryError::RowsDesignOnly`]).
    pub(super) fn rows_design_only(&self, operation: &'static str) -> Result<()> {
        if self.under_cursor() {
            return Err(RepositoryError::RowsDesignOnly {
                table: self.table().to_owned(),
                operation,
            });
        }
        Ok(())
    }

    /// Marks one event published by row id, whoever holds it (python-outbox-core's `mark_published(id)`). Relays use the
    /// fenced [`mark_published`](Self::mark_published); this is for tools and hand-written schedules.
    pub async fn mark_event_published<C: ConnectionTrait>(&self, db: &C, id: i64) -> Result<bool> {
        self.rows_design_only("mark_event_published")?;
        let query = format!(
            "UPDATE {{t}} SET status = {}, published_at = ?, {} WHERE id = ? AND status = {}",
            sql::PUBLISHED,
            sql::END_LEASE,
            sql::PENDING
        );
        let marked = self
            .execute(
                db,
                "marking an event published",
                &query,
                vec![Utc::now().into(), id.into()],
            )
            .await?;
        Ok(marked == 1)
    }

    /// Records one failed publish by row id (python-outbox-core's `mark_failed(id, error)`), with the same backoff and
    /// dead-letter rule as [`mark_failed`](Self::mark_failed). Returns false if the event is not pending.
    pub async fn mark_event_failed<C: ConnectionTrait>(
        &self,
        db: &C,
        id: i64,
        error: &str,
    ) -> Result<bool> {
        self.rows_design_only("mark_event_failed")?;
        // Take the event over under a one-off token, then fail it through the fenced path.
        let token = ClaimToken(fastrand::i64(..));
        let query = format!(
            "UPDATE {{t}} SET claim_token = ? WHERE id = ? AND status = {}",
            sql::PENDING
        );
        if self
            .execute(
                db,
                "recording a failed publish",
                &query,
                vec![token.0.into(), id.into()],
            )
            .await?
            == 0
        {
            return Ok(false);
        }
        let select = "SELECT attempts FROM {t} WHERE id = ? AND claim_token = ?";
        let rows = self
            .query(
                db,
                "recording a failed publish",
                select,
                vec![id.into(), token.0.into()],
            )
            .await?;
        let attempts = match rows.first() {
            Some(row) => row.try_get_by_index::<i32>(0).map_err(|e| {
                self.db_error("recording a failed publish", db.get_database_backend(), e)
            })?,
            None => return Ok(false),
        };
        let failure = Failure {
            id,
            attempts: u32::try_from(attempts).unwrap_or(0),
            error: error.to_owned(),
            kind: FailureKind::Retry,
        };
        let outcome = self.mark_failed(db, token, &[failure]).await?;
        Ok(outcome.fenced_out == 0)
    }

    /// Dead letters in id order, with their last error.
    pub async fn dead_letters<C: ConnectionTrait>(
        &self,
        db: &C,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<StoredEvent>> {
        self.dead_letters_matching(db, &DeadLetterFilter::All, limit, offset)
            .await
    }

    /// The dead letters that `filter` selects, in id order, with their last error: what
    /// [`replay_dead_letters`](Self::replay_dead_letters) or [`purge_dead_letters`](Self::purge_dead_letters)
    /// with the same filter would act on.
    pub async fn dead_letters_matching<C: ConnectionTrait>(
        &self,
        db: &C,
        filter: &DeadLetterFilter,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<StoredEvent>> {
        let (condition, mut values) = self.filter(Dialect::of(db), filter);
        let query = format!(
            "SELECT {} FROM {{t}} WHERE status = {}{condition} ORDER BY id LIMIT ? OFFSET ?",
            sql::COLUMNS,
            sql::DEAD
        );
        values.extend([limit.into(), offset.into()]);
        self.select(db, "listing dead letters", &query, values)
            .await
    }

    /// Published events in the order they were marked published (by `published_at`, then id): those after
    /// `after` (a previous page's last `(published_at, id)`, or from the beginning) and marked at or before
    /// `until`, at most `limit`. For following what the relays publish (`outbox tail`): pass an `until` a few
    /// seconds in the past, so that a mark still committing, or stamped by a relay whose clock is slightly behind,
    /// is not passed over. With [`delete_on_publish`](crate::OutboxConfig::delete_on_publish) there is nothing to
    /// read. Under the cursor nothing is marked published (the cursors say what went out), and this is refused with
    /// [`RepositoryError::RowsDesignOnly`] rather than staying empty for good.
    pub async fn published_between<C: ConnectionTrait>(
        &self,
        db: &C,
        after: Option<(chrono::DateTime<Utc>, i64)>,
        until: chrono::DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<StoredEvent>> {
        self.rows_design_only("published_between")?;
        self.refuse_cursor_table(db).await?;
        let (after_time, after_id) =
            after.unwrap_or((chrono::DateTime::<Utc>::UNIX_EPOCH, i64::MIN));
        let query = format!(
            "SELECT {} FROM {{t}} WHERE status = {} AND published_at <= ? \
             AND (published_at > ? OR (published_at = ? AND id > ?)) ORDER BY published_at, id LIMIT ?",
            sql::COLUMNS,
            sql::PUBLISHED
        );
        let values = vec![
            until.into(),
            after_time.into(),
            after_time.into(),
            after_id.into(),
            limit.into(),
        ];
        self.select(db, "reading published events", &query, values)
            .await
    }

    /// The pending events per aggregate type, largest backlog first: how many, and when the oldest occurred.
    pub async fn backlog<C: ConnectionTrait>(&self, db: &C) -> Result<Vec<Backlog>> {
        const OPERATION: &str = "reading the backlog";
        let query = if self.under_cursor() {
            // After their partition's cursor, or parked (rows stay pending in place under the cursor); or not
            // adopted yet, and every pending row before a relay made the cursors. Separate parts, not an `OR`,
            // and the last joined to the cursor count: every database skips it at once when cursors exist, where
            // an `OR` (or SQLite with `NOT EXISTS`) read every row the table keeps (40 ms at 200k rows, 0.1 ms).
            let cursor = Dialect::of(db).cursor;
            let query = format!(
                "SELECT aggregate_type, COUNT(*), MIN(occurred_at) FROM ( \
                   SELECT o.aggregate_type, o.occurred_at FROM {{t}}_cursors c JOIN {{t}} o \
                     ON o.partition_no = c.partition_no AND o.status = {pending} AND {ahead} \
                   UNION ALL \
                   SELECT o.aggregate_type, o.occurred_at FROM {{t}}_parked p JOIN {{t}} o ON o.id = p.id \
                     WHERE NOT ({in_place}) \
                   UNION ALL \
                   SELECT o.aggregate_type, o.occurred_at FROM {{t}} o WHERE o.status = {pending} AND {unplaced} \
                   UNION ALL \
                   SELECT o.aggregate_type, o.occurred_at FROM (SELECT COUNT(*) AS n FROM {{t}}_cursors) z \
                     JOIN {{t}} o ON z.n = 0 AND o.status = {pending} AND NOT ({unplaced}) \
                 ) x GROUP BY aggregate_type ORDER BY COUNT(*) DESC, aggregate_type",
                pending = sql::PENDING,
                ahead = cursor.ahead,
                unplaced = cursor.unplaced,
                in_place = cursor.pending_in_place(),
            );
            cursor.statement(&query, self.inner.config.partitions)
        } else {
            format!(
                "SELECT aggregate_type, COUNT(*), MIN(occurred_at) FROM {{t}} WHERE status = {} \
                 GROUP BY aggregate_type ORDER BY COUNT(*) DESC, aggregate_type",
                sql::PENDING
            )
        };
        let backend = db.get_database_backend();
        self.query(db, OPERATION, &query, Vec::new())
            .await?
            .iter()
            .map(|row| {
                let pending: i64 = row.try_get_by_index(1)?;
                Ok(Backlog {
                    aggregate_type: row.try_get_by_index(0)?,
                    pending: u64::try_from(pending).unwrap_or(0),
                    oldest_pending: row.try_get_by_index(2)?,
                })
            })
            .collect::<std::result::Result<_, sea_orm::DbErr>>()
            .map_err(|e| self.db_error(OPERATION, backend, e))
    }

    /// Under the commit-order cursor, each partition's cursor: who holds it, how many events wait behind it
    /// (after it, or parked) and since when; in partition order. Empty before a relay made the cursors.
    pub async fn partitions<C: ConnectionTrait>(&self, db: &C) -> Result<Vec<PartitionLag>> {
        const OPERATION: &str = "reading the partitions";
        // One pass over what waits after each cursor (counted and dated together); the parked table is small. A
        // parked event after the cursor is counted there (see `CursorSql::pending_in_place`).
        let query = format!(
            "SELECT c.partition_no, c.owner, COUNT(o.id), MIN(o.occurred_at), \
               (SELECT COUNT(*) FROM {{t}}_parked p WHERE p.partition_no = c.partition_no \
                 AND NOT EXISTS (SELECT 1 FROM {{t}} o WHERE o.id = p.id AND o.partition_no = c.partition_no \
                   AND o.status = {pending} AND {ahead})), \
               (SELECT MIN(q.occurred_at) FROM {{t}}_parked p JOIN {{t}} q ON q.id = p.id \
                 WHERE p.partition_no = c.partition_no) \
             FROM {{t}}_cursors c LEFT JOIN {{t}} o ON o.partition_no = c.partition_no \
               AND o.status = {pending} AND {ahead} \
             GROUP BY c.partition_no, c.owner ORDER BY c.partition_no",
            pending = sql::PENDING,
            ahead = Dialect::of(db).cursor.ahead
        );
        let backend = db.get_database_backend();
        self.query(db, OPERATION, &query, Vec::new())
            .await?
            .iter()
            .map(|row| {
                let partition: i16 = row.try_get_by_index(0)?;
                let ahead: i64 = row.try_get_by_index(2)?;
                let parked: i64 = row.try_get_by_index(4)?;
                let oldest: [Option<chrono::DateTime<Utc>>; 2] =
                    [row.try_get_by_index(3)?, row.try_get_by_index(5)?];
                Ok(PartitionLag {
                    partition: u16::try_from(partition).unwrap_or_default(),
                    owner: row.try_get_by_index(1)?,
                    pending: u64::try_from(ahead + parked).unwrap_or(0),
                    oldest_pending: oldest.into_iter().flatten().min(),
                })
            })
            .collect::<std::result::Result<_, sea_orm::DbErr>>()
            .map_err(|e| self.db_error(OPERATION, backend, e))
    }

    /// How many dead letters there are.
    pub async fn count_dead_letters<C: ConnectionTrait>(&self, db: &C) -> Result<u64> {
        self.count(db, "counting dead letters", sql::DEAD).await
    }

    /// How many dead letters `filter` selects.
    pub async fn count_dead_letters_matching<C: ConnectionTrait>(
        &self,
        db: &C,
        filter: &DeadLetterFilter,
    ) -> Result<u64> {
        const OPERATION: &str = "counting dead letters";
        let (condition, values) = self.filter(Dialect::of(db), filter);
        let query = format!(
            "SELECT COUNT(*) FROM {{t}} WHERE status = {}{condition}",
            sql::DEAD
        );
        let backend = db.get_database_backend();
        let rows = self.query(db, OPERATION, &query, values).await?;
        let count: i64 = rows
            .first()
            .map(|row| row.try_get_by_index(0))
            .transpose()
            .map_err(|e| self.db_error(OPERATION, backend, e))?
            .unwrap_or(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Makes dead letters pending again with a fresh retry budget (their last error is kept until the next
    /// attempt). Returns how many.
    ///
    /// Order: a dead letter does not hold its aggregate back, so the aggregate's later events may have gone out
    /// meanwhile; a replayed event is then published after them. Among events still pending, it keeps its place
    /// by id (it goes out before the aggregate's later pending events).
    pub async fn replay_dead_letters<C: ConnectionTrait>(
        &self,
        db: &C,
        filter: DeadLetterFilter,
    ) -> Result<u64> {
        let (condition, values) = self.filter(Dialect::of(db), &filter);
        let query = format!(
            "UPDATE {{t}} SET status = {}, attempts = 0, next_attempt_at = NULL, {} WHERE status = {}{condition}",
            sql::PENDING,
            sql::END_LEASE,
            sql::DEAD
        );
        if self.under_cursor() {
            return self
                .replay_parked(db, Dialect::of(db).cursor, &condition, values)
                .await;
        }
        self.execute(db, "replaying dead letters", &query, values)
            .await
    }

    /// Replay under the cursor, which has long passed the dead letters: each goes to its aggregate's parked
    /// queue (after what waits there), then becomes pending again. In that order, so that a failure between the
    /// two leaves an event published twice rather than pending where no relay looks.
    async fn replay_parked<C: ConnectionTrait>(
        &self,
        db: &C,
        cursor: &super::cursor::CursorSql,
        condition: &str,
        values: Vec<Value>,
    ) -> Result<u64> {
        let select = format!(
            "SELECT id, aggregate_type, aggregate_id FROM {{t}} WHERE status = {}{condition} ORDER BY id",
            sql::DEAD
        );
        let dead = self
            .query(db, "finding dead letters", &select, values)
            .await?;
        let mut replayed = 0;
        for chunk in dead.chunks(sql::CHUNK) {
            let (mut ids, mut partitions) = (Vec::new(), Vec::new());
            for row in chunk {
                let read = |i| row.try_get_by_index::<String>(i).unwrap_or_default();
                ids.push(row.try_get_by_index::<i64>(0).unwrap_or_default());
                partitions.push(super::partition_of(
                    &read(1),
                    &read(2),
                    self.inner.config.partitions,
                ));
            }
            self.execute(
                db,
                "replaying dead letters",
                cursor.repartition,
                vec![cursor.array(&ids), cursor.array(&partitions)],
            )
            .await?;
            self.execute(
                db,
                "replaying dead letters",
                cursor.park,
                vec![cursor.array(&ids)],
            )
            .await?;
            let (within, ids) = Dialect::of(db).id_in(&ids);
            let revive = format!(
                "UPDATE {{t}} SET status = {}, attempts = 0, next_attempt_at = NULL, {} WHERE status = {} AND {within}",
                sql::PENDING,
                sql::END_LEASE,
                sql::DEAD
            );
            replayed += self
                .execute(db, "replaying dead letters", &revive, ids)
                .await?;
        }
        Ok(replayed)
    }

    /// Deletes dead letters for good. Returns how many.
    pub async fn purge_dead_letters<C: ConnectionTrait>(
        &self,
        db: &C,
        filter: DeadLetterFilter,
    ) -> Result<u64> {
        let (condition, values) = self.filter(Dialect::of(db), &filter);
        let query = format!("DELETE FROM {{t}} WHERE status = {}{condition}", sql::DEAD);
        self.execute(db, "purging dead letters", &query, values)
            .await
    }

    /// The condition (` AND ...`, or nothing) and its values that select `filter`'s dead letters.
    fn filter(&self, dialect: &Dialect, filter: &DeadLetterFilter) -> (String, Vec<Value>) {
        let (condition, values) = match filter {
            DeadLetterFilter::All => return (String::new(), Vec::new()),
            // No ids select nothing (`IN ()` is not SQL everywhere).
            DeadLetterFilter::Ids(ids) if ids.is_empty() => ("1 = 0", Vec::new()),
            DeadLetterFilter::Ids(ids) => {
                let (condition, values) = dialect.id_in(ids);
                return (format!(" AND {condition}"), values);
            }
            DeadLetterFilter::Id(id) => ("id = ?", vec![(*id).into()]),
            DeadLetterFilter::EventId(id) => ("event_id = ?", vec![dialect.event_id(*id)]),
            DeadLetterFilter::EventType(t) => ("event_type = ?", vec![t.clone().into()]),
            DeadLetterFilter::Aggregate {
                aggregate_type,
                aggregate_id,
            } => (
                "aggregate_type = ? AND aggregate_id = ?",
                vec![aggregate_type.clone().into(), aggregate_id.clone().into()],
            ),
            // `!` escapes: a backslash means different things in MySQL's and PostgreSQL's string literals.
            DeadLetterFilter::ErrorContains(text) => (
                "last_error LIKE ? ESCAPE '!'",
                vec![format!("%{}%", like_escaped(text)).into()],
            ),
            DeadLetterFilter::OccurredSince(t) => ("occurred_at >= ?", vec![(*t).into()]),
            DeadLetterFilter::OccurredBefore(t) => ("occurred_at < ?", vec![(*t).into()]),
            DeadLetterFilter::AllOf(filters) => {
                let mut condition = String::new();
                let mut values = Vec::new();
                for filter in filters {
                    let (more, more_values) = self.filter(dialect, filter);
                    condition.push_str(&more);
                    values.extend(more_values);
                }
                return (condition, values);
            }
        };
        (format!(" AND {condition}"), values)
    }

    /// Deletes published events older than `older_than`, `batch_size` rows per statement so the table is never
    /// locked for long. Returns how many were deleted.
    ///
    /// Under the commit-order cursor, where a published event's row is never written, "published" is every
    /// event below its partition's cursor and not parked, and its age is its `occurred_at`; rows marked
    /// published before the table moved to the cursor go as before, dead letters stay (see
    /// [`purge_dead_letters`](Self::purge_dead_letters)).
    pub async fn purge_published<C: ConnectionTrait>(
        &self,
        db: &C,
        older_than: Duration,
        batch_size: u32,
    ) -> Result<u64> {
        self.purge_published_reporting(db, older_than, batch_size, |_| {})
            .await
    }

    /// [`purge_published`](Self::purge_published), calling `progress` with the running total after each
    /// statement: for a progress display on a long purge.
    pub async fn purge_published_reporting<C: ConnectionTrait>(
        &self,
        db: &C,
        older_than: Duration,
        batch_size: u32,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<u64> {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let batch = batch_size.max(1);
        // Under the cursor, rows marked published before the table moved to it go too.
        let mut total = if self.under_cursor() {
            self.purge_delivered(db, cutoff, batch, &mut progress)
                .await?
        } else {
            0
        };
        let query = Dialect::of(db).purge_published;
        loop {
            let deleted = self
                .execute(
                    db,
                    "purging published events",
                    query,
                    vec![cutoff.into(), batch.into()],
                )
                .await?;
            total += deleted;
            progress(total);
            if deleted < u64::from(batch) {
                return Ok(total);
            }
        }
    }

    /// [`purge_published`](Self::purge_published) under the cursor: the events every relay is done with, found
    /// through each partition's cursor, deleted `batch` at a time by id.
    async fn purge_delivered<C: ConnectionTrait>(
        &self,
        db: &C,
        cutoff: chrono::DateTime<Utc>,
        batch: u32,
        progress: &mut (impl FnMut(u64) + Send),
    ) -> Result<u64> {
        let dialect = Dialect::of(db);
        let mut total = 0;
        loop {
            let found = self
                .query(
                    db,
                    "finding delivered events",
                    dialect.cursor.delivered,
                    vec![cutoff.into(), batch.into()],
                )
                .await?;
            let ids = found
                .iter()
                .map(|row| row.try_get_by_index::<i64>(0))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| self.db_error("finding delivered events", dialect.backend, e))?;
            for chunk in ids.chunks(dialect.id_chunk()) {
                let (within, values) = dialect.id_in(chunk);
                total += self
                    .execute(
                        db,
                        "purging delivered events",
                        &format!("DELETE FROM {{t}} WHERE {within}"),
                        values,
                    )
                    .await?;
            }
            progress(total);
            if ids.len() < batch as usize {
                return Ok(total);
            }
        }
    }

    /// Pending count, oldest pending time and dead-letter count, for health checks and metrics.
    pub async fn stats<C: ConnectionTrait>(&self, db: &C) -> Result<OutboxStats> {
        let query = if self.under_cursor() {
            Dialect::of(db)
                .cursor
                .pending_statement(self.inner.config.partitions)
        } else {
            format!(
                "SELECT COUNT(*), MIN(occurred_at) FROM {{t}} WHERE status = {}",
                sql::PENDING
            )
        };
        let rows = self
            .query(db, "reading outbox lag", &query, Vec::new())
            .await?;
        let backend = db.get_database_backend();
        let (pending, oldest_pending) = match rows.first() {
            Some(row) => (
                row.try_get_by_index::<i64>(0)
                    .map_err(|e| self.db_error("reading outbox lag", backend, e))?,
                row.try_get_by_index(1)
                    .map_err(|e| self.db_error("reading outbox lag", backend, e))?,
            ),
            None => (0, None),
        };
        Ok(OutboxStats {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest_pending,
            dead_letters: self.count_dead_letters(db).await?,
        })
    }

    /// Checks that the table exists with every column the repository uses; the error says to run the
    /// migration if not.
    pub async fn check<C: ConnectionTrait>(&self, db: &C) -> Result<()> {
        let query = format!(
            "SELECT {}, next_attempt_at, locked_until, claim_token FROM {{t}} WHERE 1 = 0",
            sql::COLUMNS
        );
        self.query(db, "checking the outbox table", &query, Vec::new())
            .await
            .map(drop)
    }

    async fn list<C: ConnectionTrait>(
        &self,
        db: &C,
        operation: &'static str,
        status: i16,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<StoredEvent>> {
        let query = format!(
            "SELECT {} FROM {{t}} WHERE status = {status} ORDER BY id LIMIT ? OFFSET ?",
            sql::COLUMNS
        );
        self.select(db, operation, &query, vec![limit.into(), offset.into()])
            .await
    }

    async fn count<C: ConnectionTrait>(
        &self,
        db: &C,
        operation: &'static str,
        status: i16,
    ) -> Result<u64> {
        let query = format!("SELECT COUNT(*) FROM {{t}} WHERE status = {status}");
        let rows = self.query(db, operation, &query, Vec::new()).await?;
        let count = match rows.first() {
            Some(row) => row
                .try_get_by_index::<i64>(0)
                .map_err(|e| self.db_error(operation, db.get_database_backend(), e))?,
            None => 0,
        };
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn select<C: ConnectionTrait>(
        &self,
        db: &C,
        operation: &'static str,
        query: &str,
        values: Vec<Value>,
    ) -> Result<Vec<StoredEvent>> {
        let backend = db.get_database_backend();
        self.query(db, operation, query, values)
            .await?
            .iter()
            .map(|row| StoredEvent::from_row(row).map_err(|e| self.db_error(operation, backend, e)))
            .collect()
    }
}

/// `text` with `LIKE`'s wildcards and the escape character `!` escaped by `!`.
fn like_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '!') {
            escaped.push('!');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_are_taken_literally() {
        assert_eq!(super::like_escaped("50% off_now!"), "50!% off!_now!!");
        assert_eq!(super::like_escaped("plain"), "plain");
    }
}
