//! The caller's change and its event, stored together by [`OutboxRepository::add_event_with`]: as one statement
//! where the database can carry both, else as two.

use sea_orm::{ConnectionTrait, Statement};
use uuid::Uuid;

use super::dialect::{Dialect, OneStatement};
use super::{OutboxRepository, Result};
use crate::envelope::{AsDynEvent, EventEnvelope};

/// What [`OutboxRepository::add_event_with`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeAndEvent {
    /// The id of the event stored.
    pub event_id: Uuid,
    /// The rows the caller's change affected (inserted, updated or deleted).
    pub rows_affected: u64,
}

/// What [`OutboxRepository::add_events_with`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeAndEvents {
    /// The ids of the events stored, in the order they were given.
    pub event_ids: Vec<Uuid>,
    /// The rows the caller's change affected (inserted, updated or deleted).
    pub rows_affected: u64,
}

/// What the statements say when they fail.
const OPERATION: &str = "running the caller's change with its event";

impl OutboxRepository {
    /// Runs the caller's `change` (an `INSERT`, `UPDATE` or `DELETE` of its own tables) on `db` and stores `event`
    /// with it; never commits. Returns the event id and the rows `change` affected.
    ///
    /// On PostgreSQL and MariaDB the two are one statement, so the event costs the transaction no round trip of
    /// its own: on a one-row transaction that is most of what [`add_event`](Self::add_event) adds
    /// (BENCHMARKS.md). On PostgreSQL the event's `INSERT` is a CTE of `change` (`WITH outbox_event AS (INSERT
    /// ...) UPDATE ...`); on MariaDB both go in an anonymous block (`BEGIN NOT ATOMIC ... END`). On MySQL and
    /// SQLite `change` runs, then the event is stored, as `add_event` would. `change` is written in `db`'s
    /// placeholders (`$1`... on PostgreSQL) and, on PostgreSQL, may have a `WITH` clause of its own; rows it
    /// returns (`RETURNING`) are counted, not returned.
    ///
    /// The event is stored whatever `change` affected, as two statements in one transaction would: check
    /// `rows_affected` and roll back if the event must not go out. The event is checked as `add_event` checks it
    /// before anything runs. Outside a transaction, on PostgreSQL and MariaDB, the change and the event commit
    /// together or not at all; on MySQL and SQLite each statement commits on its own, so pass a transaction.
    ///
    /// ```no_run
    /// # use outbox::{OutboxEvent, repository::OutboxRepository};
    /// # use sea_orm::{DbBackend, Statement, TransactionTrait};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize, OutboxEvent)]
    /// # #[outbox(type = "com.example.user.renamed")]
    /// # struct UserRenamed { #[outbox(aggregate_id)] user_id: i64, name: String }
    /// # async fn example(db: sea_orm::DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
    /// let outbox = OutboxRepository::new();
    /// let txn = db.begin().await?;
    /// let rename = Statement::from_sql_and_values(
    ///     DbBackend::Postgres,
    ///     "UPDATE users SET name = $1 WHERE id = $2",
    ///     ["Ada".into(), 7i64.into()],
    /// );
    /// let done = outbox
    ///     .add_event_with(&txn, rename, UserRenamed { user_id: 7, name: "Ada".into() })
    ///     .await?;
    /// if done.rows_affected == 1 {
    ///     txn.commit().await?; // the rename and its event, in one statement and one commit
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn add_event_with<C, E>(
        &self,
        db: &C,
        change: Statement,
        event: impl Into<EventEnvelope<E>>,
    ) -> Result<ChangeAndEvent>
    where
        C: ConnectionTrait,
        E: AsDynEvent,
    {
        let done = self.add_events_with(db, change, [event.into()]).await?;
        Ok(ChangeAndEvent {
            event_id: done.event_ids[0],
            rows_affected: done.rows_affected,
        })
    }

    /// Runs the caller's `change` on `db` and stores `events` with it, as
    /// [`add_event_with`](Self::add_event_with) does for one event; never commits. Returns the events' ids, in
    /// order, and the rows `change` affected.
    ///
    /// Up to 500 events go in one INSERT, so on PostgreSQL and MariaDB the change and up to 500 events are one
    /// statement. More run as the change, then one INSERT per 500, which commit one by one outside a
    /// transaction: pass a transaction. Every event is checked before anything runs. With no events, `change`
    /// runs alone.
    pub async fn add_events_with<C, E, I>(
        &self,
        db: &C,
        change: Statement,
        events: I,
    ) -> Result<ChangeAndEvents>
    where
        C: ConnectionTrait,
        E: AsDynEvent,
        I: IntoIterator,
        I::Item: Into<EventEnvelope<E>>,
    {
        let envelopes: Vec<EventEnvelope<E>> = events.into_iter().map(Into::into).collect();
        let dialect = Dialect::of(db);
        let mut inserts = self.inserts(db, &envelopes).await?;
        let one = match dialect.one_statement {
            OneStatement::Block if !self.is_mariadb(db).await? => OneStatement::Two,
            one => one,
        };
        let rows_affected = match (one, inserts.len()) {
            (OneStatement::Cte | OneStatement::Block, 1) => {
                let (insert, values) = inserts.swap_remove(0);
                let Statement {
                    sql, values: bound, ..
                } = change;
                let mut bound = bound.map(|values| values.0).unwrap_or_default();
                // The change's placeholders come first, so its text is sent as written.
                let first = u32::try_from(bound.len() + 1).unwrap_or(u32::MAX);
                let insert = dialect.sql(&self.inner.table, &insert, first);
                bound.extend(values);
                self.run_joined(db, one, &insert, &sql, bound).await?
            }
            _ => {
                let rows_affected = db
                    .execute_raw(change)
                    .await
                    .map_err(|e| self.db_error(OPERATION, dialect.backend, e))?
                    .rows_affected();
                for (insert, values) in inserts {
                    self.execute(db, "storing events", &insert, values).await?;
                }
                rows_affected
            }
        };
        Ok(ChangeAndEvents {
            event_ids: envelopes.iter().map(EventEnvelope::event_id).collect(),
            rows_affected,
        })
    }

    /// Runs `change` and `insert` as one statement the way `one` joins them, with the values `bound`, and
    /// returns the rows the change affected: the statement's own count for a CTE (the change is its main
    /// statement), the `ROW_COUNT()` a block selects last (its own count adds up its statements').
    async fn run_joined<C: ConnectionTrait>(
        &self,
        db: &C,
        one: OneStatement,
        insert: &str,
        change: &str,
        bound: Vec<sea_orm::Value>,
    ) -> Result<u64> {
        let backend = db.get_database_backend();
        let error = |e| self.db_error(OPERATION, backend, e);
        if one == OneStatement::Cte {
            let statement =
                Statement::from_sql_and_values(backend, with_event(insert, change), bound);
            return Ok(db
                .execute_raw(statement)
                .await
                .map_err(error)?
                .rows_affected());
        }
        let statement = Statement::from_sql_and_values(backend, in_block(insert, change), bound);
        let rows = db.query_all_raw(statement).await.map_err(error)?;
        // The block's row comes last, after any the change returned (`RETURNING`); for such a change
        // `ROW_COUNT()` is -1, and the rows it returned are the rows it affected.
        match rows.last().map(|row| row.try_get_by_index::<i64>(0)) {
            Some(Ok(count)) => Ok(u64::try_from(count).unwrap_or(rows.len() as u64 - 1)),
            Some(Err(e)) => Err(error(e)),
            None => Err(error(sea_orm::DbErr::RecordNotFound(
                "the change's row count, which the block selects last".to_owned(),
            ))),
        }
    }
}

/// `change` with `insert` as a CTE before it, joining `change`'s own `WITH` clause if it has one.
fn with_event(insert: &str, change: &str) -> String {
    let (first, rest) = split_word(change);
    if first.eq_ignore_ascii_case("WITH") {
        let (second, after) = split_word(rest);
        if second.eq_ignore_ascii_case("RECURSIVE") {
            return format!("WITH RECURSIVE outbox_event AS ({insert}), {after}");
        }
        return format!("WITH outbox_event AS ({insert}), {rest}");
    }
    format!("WITH outbox_event AS ({insert}) {change}")
}

/// `change` then `insert` in MariaDB's anonymous block, which selects the rows `change` affected (the block's
/// own count is the sum of its statements'). The block is not atomic of itself: in the caller's transaction a
/// failure leaves the transaction to the caller, as two statements would; outside one the block opens its own
/// and rolls it back on any error, so the change never commits without its event. The change has lines of its
/// own, so that a comment at its end ends there.
fn in_block(insert: &str, change: &str) -> String {
    let change = change.trim_end().trim_end_matches(';');
    format!(
        "BEGIN NOT ATOMIC \
         DECLARE outbox_rows BIGINT; \
         DECLARE outbox_own BOOL DEFAULT @@in_transaction = 0; \
         DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN IF outbox_own THEN ROLLBACK; END IF; RESIGNAL; END; \
         IF outbox_own THEN START TRANSACTION; END IF;\n\
         {change}\n; \
         SET outbox_rows = ROW_COUNT(); \
         {insert}; \
         IF outbox_own THEN COMMIT; END IF; \
         SELECT outbox_rows; \
         END"
    )
}

/// The first word of `sql` (up to whitespace or `(`) and what follows it, leading whitespace skipped.
fn split_word(sql: &str) -> (&str, &str) {
    let sql = sql.trim_start();
    let end = sql
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(sql.len());
    (&sql[..end], sql[end..].trim_start())
}
