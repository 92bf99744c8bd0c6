//! The consumer side's inbox: which messages a consumer has applied, recorded in the same transaction as what
//! applying them changed.
//!
//! At-least-once delivery means a consumer sees some messages twice (a redelivery after a crash between its
//! commit and its acknowledgement, a relay that published twice). A handler that records the message id in its
//! own transaction, before or after its domain change, makes the pair atomic: the first delivery commits both,
//! and any later one finds the id and is acknowledged without being applied again. A delivery whose transaction
//! rolls back leaves no row, so its redelivery runs.
//!
//! ```no_run
//! # use outbox::repository::{Inbox, Recorded};
//! # use outbox::sea_orm::{DatabaseConnection, TransactionTrait};
//! # async fn example(db: DatabaseConnection, message_id: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let inbox = Inbox::new("billing")?; // the consumer's name: each consumer keeps its own record
//! inbox.create_table(&db).await?;
//!
//! let txn = db.begin().await?;
//! match inbox.record(&txn, message_id).await? {
//!     Recorded::First => {
//!         // ... apply the event with `txn` ...
//!         txn.commit().await?; // then acknowledge the message
//!     }
//!     Recorded::Duplicate => txn.rollback().await?, // applied before: acknowledge, do nothing
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Value};

use super::{Dialect, RepositoryError, Result, TableName, micros, now_micros};

/// The inbox table's default name.
pub(crate) const DEFAULT_TABLE: &str = "outbox_inbox";

/// The longest consumer name and message id: both are key columns of 255 characters.
const MAX_KEY: usize = 255;

/// One consumer's view of the inbox table; cheap to clone.
#[derive(Clone, Debug)]
pub struct Inbox {
    table: TableName,
    consumer: String,
}

/// What [`Inbox::record`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a duplicate must not be applied again"]
pub enum Recorded {
    /// The message was not in the inbox: it is now, in the caller's transaction. Apply it, then commit.
    First,
    /// The message was applied before (its row is committed): acknowledge it without applying it.
    Duplicate,
}

impl Inbox {
    /// The inbox of the consumer called `consumer` (1 to 255 bytes, no control characters), in the table
    /// `outbox_inbox`.
    pub fn new(consumer: impl Into<String>) -> Result<Self> {
        let consumer = consumer.into();
        check_key("consumer name", &consumer)?;
        Ok(Self {
            table: TableName::new(DEFAULT_TABLE)?,
            consumer,
        })
    }

    /// The same inbox in a table of another name (same rules as the outbox table's name).
    pub fn table(mut self, table: &str) -> Result<Self> {
        self.table = TableName::new(table)?;
        Ok(self)
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        self.table.as_str()
    }

    /// Creates the inbox table and its index if they do not exist (every statement is idempotent); the SQL is in
    /// `outbox/sql/<backend>_inbox.sql`, for a team's own migration tool.
    pub async fn create_table(&self, db: &impl ConnectionTrait) -> Result<()> {
        for statement in Dialect::of(db).inbox_schema(&self.table) {
            db.execute_unprepared(&statement)
                .await
                .map_err(|source| self.error("creating the inbox table", source))?;
        }
        Ok(())
    }

    /// Records `message_id` as applied by this consumer, on `txn` (the handler's transaction; never commits).
    ///
    /// If another transaction recorded the same id and has not finished, this waits for it: when it commits,
    /// this one is a [`Duplicate`](Recorded::Duplicate); when it rolls back, this one is [`First`](Recorded::First).
    /// So two deliveries of one message at once still apply it once.
    pub async fn record(&self, txn: &impl ConnectionTrait, message_id: &str) -> Result<Recorded> {
        check_key("message id", message_id)?;
        let dialect = Dialect::of(txn);
        let values: Vec<Value> = vec![
            self.consumer.clone().into(),
            message_id.to_owned().into(),
            now_micros().into(),
        ];
        let result = txn
            .execute_raw(dialect.statement(&self.table, dialect.inbox_record, values))
            .await
            .map_err(|source| self.error("recording a message in the inbox", source))?;
        Ok(if result.rows_affected() == 0 {
            Recorded::Duplicate
        } else {
            Recorded::First
        })
    }

    /// Records several messages in `txn` at once, as [`record`](Self::record) does one: what each one is, in the
    /// order given. One statement on PostgreSQL and SQLite (a multi-row insert that returns the rows it
    /// inserted), a statement per message on MySQL, which returns none.
    pub async fn record_all(
        &self,
        txn: &impl ConnectionTrait,
        message_ids: &[&str],
    ) -> Result<Vec<Recorded>> {
        for id in message_ids {
            check_key("message id", id)?;
        }
        let dialect = Dialect::of(txn);
        if !dialect.insert_returning {
            let mut recorded = Vec::with_capacity(message_ids.len());
            for id in message_ids {
                recorded.push(self.record(txn, id).await?);
            }
            return Ok(recorded);
        }
        // Sorted, so two transactions recording overlapping ids take their row locks in one order.
        let mut sorted: Vec<&str> = message_ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let now = now_micros();
        let mut inserted = std::collections::HashSet::new();
        // 3 values a row: within SQLite's oldest limit of 999 bound values.
        for chunk in sorted.chunks(300) {
            let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "INSERT INTO {{t}} (consumer, message_id, processed_at) VALUES {rows} ON CONFLICT DO NOTHING \
                 RETURNING message_id"
            );
            let values: Vec<Value> = chunk
                .iter()
                .flat_map(|id| {
                    [
                        self.consumer.clone().into(),
                        (*id).to_owned().into(),
                        now.into(),
                    ]
                })
                .collect();
            let returned = txn
                .query_all_raw(dialect.statement(&self.table, &sql, values))
                .await
                .map_err(|source| self.error("recording messages in the inbox", source))?;
            for row in returned {
                let id: String = row
                    .try_get_by_index(0)
                    .map_err(|source| self.error("recording messages in the inbox", source))?;
                inserted.insert(id);
            }
        }
        Ok(message_ids
            .iter()
            .map(|id| {
                if inserted.remove(*id) {
                    Recorded::First
                } else {
                    Recorded::Duplicate
                }
            })
            .collect())
    }

    /// Whether this consumer has applied `message_id` (as far as committed rows say).
    pub async fn contains(&self, db: &impl ConnectionTrait, message_id: &str) -> Result<bool> {
        let dialect = Dialect::of(db);
        let statement = dialect.statement(
            &self.table,
            "SELECT COUNT(*) FROM {t} WHERE consumer = ? AND message_id = ?",
            vec![self.consumer.clone().into(), message_id.to_owned().into()],
        );
        let row = db
            .query_one_raw(statement)
            .await
            .map_err(|source| self.error("reading the inbox", source))?;
        let count: i64 = row
            .map(|row| row.try_get_by_index(0))
            .transpose()
            .map_err(|source| self.error("reading the inbox", source))?
            .unwrap_or(0);
        Ok(count > 0)
    }

    /// Deletes this consumer's records older than `window`, the dedup window: a message redelivered after its
    /// record is gone is applied again, so keep the window longer than any redelivery (a broker's retention,
    /// a replay) can reach back. Returns how many rows went.
    pub async fn purge_older_than(
        &self,
        db: &impl ConnectionTrait,
        window: Duration,
    ) -> Result<u64> {
        let dialect = Dialect::of(db);
        let statement = dialect.statement(
            &self.table,
            "DELETE FROM {t} WHERE consumer = ? AND processed_at < ?",
            vec![
                self.consumer.clone().into(),
                (now_micros() - micros(window)).into(),
            ],
        );
        db.execute_raw(statement)
            .await
            .map(|result| result.rows_affected())
            .map_err(|source| self.error("purging the inbox", source))
    }

    /// Keeps a message this consumer could not apply, as the structured CloudEvent it received, with the reason;
    /// replaces an earlier dead letter of the same message (one that failed again after a replay).
    pub async fn dead_letter(
        &self,
        db: &impl ConnectionTrait,
        dead: &NewDeadLetter<'_>,
    ) -> Result<()> {
        check_key("message id", dead.message_id)?;
        let dialect = Dialect::of(db);
        let values: Vec<Value> = vec![
            self.consumer.clone().into(),
            dead.message_id.to_owned().into(),
            dead.event_type.to_owned().into(),
            dead.cloudevent.to_owned().into(),
            dead.reason.to_owned().into(),
            i32::try_from(dead.attempts).unwrap_or(i32::MAX).into(),
            now_micros().into(),
        ];
        let statement = dialect.statement(
            &self.dead_letter_table()?,
            dialect.inbox_dead_letter,
            values,
        );
        db.execute_raw(statement)
            .await
            .map(drop)
            .map_err(|source| self.error("keeping a consumer dead letter", source))
    }

    /// This consumer's dead letters, oldest first.
    pub async fn dead_letters(&self, db: &impl ConnectionTrait) -> Result<Vec<InboxDeadLetter>> {
        let dialect = Dialect::of(db);
        let statement = dialect.statement(
            &self.dead_letter_table()?,
            "SELECT message_id, event_type, cloudevent, reason, attempts, failed_at FROM {t} \
             WHERE consumer = ? ORDER BY failed_at, message_id",
            vec![self.consumer.clone().into()],
        );
        let error = |source| self.error("reading consumer dead letters", source);
        let rows = db.query_all_raw(statement).await.map_err(error)?;
        rows.into_iter()
            .map(|row| {
                let attempts: i32 = row.try_get_by_index(4).map_err(error)?;
                let failed_at: i64 = row.try_get_by_index(5).map_err(error)?;
                Ok(InboxDeadLetter {
                    message_id: row.try_get_by_index(0).map_err(error)?,
                    event_type: row.try_get_by_index(1).map_err(error)?,
                    cloudevent: row.try_get_by_index(2).map_err(error)?,
                    reason: row.try_get_by_index(3).map_err(error)?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    failed_at: DateTime::from_timestamp_micros(failed_at).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Deletes one dead letter (after replaying it); whether it was there.
    pub async fn remove_dead_letter(
        &self,
        db: &impl ConnectionTrait,
        message_id: &str,
    ) -> Result<bool> {
        let dialect = Dialect::of(db);
        let statement = dialect.statement(
            &self.dead_letter_table()?,
            "DELETE FROM {t} WHERE consumer = ? AND message_id = ?",
            vec![self.consumer.clone().into(), message_id.to_owned().into()],
        );
        db.execute_raw(statement)
            .await
            .map(|result| result.rows_affected() > 0)
            .map_err(|source| self.error("removing a consumer dead letter", source))
    }

    fn dead_letter_table(&self) -> Result<TableName> {
        // The inbox name is at most 49 bytes, so this fits every backend's identifier limit; TableName checks it.
        TableName::new(&format!("{}_dead_letters", self.table.as_str()))
            .map_err(|_| RepositoryError::InvalidTableName(self.table.as_str().to_owned()))
    }

    fn error(&self, operation: &'static str, source: sea_orm::DbErr) -> RepositoryError {
        RepositoryError::Database {
            operation,
            table: self.table.as_str().to_owned(),
            source,
        }
    }
}

/// A message to keep as a consumer dead letter; see [`Inbox::dead_letter`].
#[derive(Clone, Copy, Debug)]
pub struct NewDeadLetter<'a> {
    /// The message's id (CloudEvents `id`).
    pub message_id: &'a str,
    /// Its CloudEvents `type` (or what the message claimed, if it could not be read).
    pub event_type: &'a str,
    /// The message as a structured CloudEvent, for a replay.
    pub cloudevent: &'a str,
    /// Why it could not be applied.
    pub reason: &'a str,
    /// How many times the handler ran.
    pub attempts: u32,
}

/// A message a consumer could not apply, as kept in `<inbox>_dead_letters`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxDeadLetter {
    /// The message's id.
    pub message_id: String,
    /// Its CloudEvents `type`.
    pub event_type: String,
    /// The message as a structured CloudEvent.
    pub cloudevent: String,
    /// Why it could not be applied.
    pub reason: String,
    /// How many times the handler ran.
    pub attempts: u32,
    /// When it was given up on.
    pub failed_at: DateTime<Utc>,
}

/// A key column's value: 1 to 255 bytes (MySQL's `INSERT IGNORE` would cut a longer one silently, and two ids
/// that share 255 bytes would then be one), no control characters.
fn check_key(what: &'static str, value: &str) -> Result<()> {
    let problem = if value.is_empty() {
        Some("it is empty".to_owned())
    } else if value.len() > MAX_KEY {
        Some(format!(
            "it is {} bytes, over the limit of {MAX_KEY}",
            value.len()
        ))
    } else if value.chars().any(char::is_control) {
        Some("it holds a control character".to_owned())
    } else {
        None
    };
    match problem {
        Some(reason) => Err(RepositoryError::InvalidInboxKey { what, reason }),
        None => Ok(()),
    }
}
