//! MySQL's and MariaDB's claim: pick, lease and read back, under the claim lock and within the claim's bounds.

use sea_orm::{ConnectionTrait, QueryResult, TransactionTrait, Value};

use super::claim::Lease;
use super::dialect::{Dialect, SchemaObject, no_wake_ups};
use super::{OutboxRepository, Result, sql};

/// How MySQL and MariaDB differ: `?` placeholders, one per id, the event id as text, no wake-up signal, and one
/// batch in flight (a claim beside a mark slowed the drain: MariaDB 4.2k -> 3.5k events/s).
pub(super) const DIALECT: Dialect = Dialect {
    backend: sea_orm::DbBackend::MySql,
    name: "mysql",
    schema: include_str!("../../sql/mysql.sql"),
    inbox_schema: include_str!("../../sql/mysql_inbox.sql"),
    inbox_record: INBOX_RECORD,
    insert_returning: false,
    inbox_dead_letter: INBOX_DEAD_LETTER,
    numbered_placeholders: false,
    id_array: false,
    native_uuid: false,
    purge_published: PURGE_PUBLISHED,
    batches_in_flight: 1,
    catalog,
    missing_table: |error, table| error.contains("doesn't exist") && error.contains(table),
    wake_ups: no_wake_ups,
    cursor: None,
};

/// `INSERT IGNORE`: MySQL has no `ON CONFLICT`. It also turns a too-long value into a warning, so the inbox
/// checks lengths before it gets here.
const INBOX_RECORD: &str =
    "INSERT IGNORE INTO {t} (consumer, message_id, processed_at) VALUES (?, ?, ?)";

/// `ON DUPLICATE KEY UPDATE` is MySQL's upsert.
const INBOX_DEAD_LETTER: &str = "INSERT INTO {t} (consumer, message_id, event_type, cloudevent, reason, attempts, \
     failed_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE event_type = VALUES(event_type), \
     cloudevent = VALUES(cloudevent), reason = VALUES(reason), attempts = VALUES(attempts), \
     failed_at = VALUES(failed_at)";

/// MySQL refuses a subquery on the table it deletes from, but has `DELETE ... LIMIT`.
const PURGE_PUBLISHED: &str =
    "DELETE FROM {t} WHERE status = 1 AND published_at < ? ORDER BY id LIMIT ?";

/// Whether a schema object named `?` exists: MySQL's schema creates tables only (its indexes are declared in
/// them).
fn catalog(object: SchemaObject) -> &'static str {
    match object {
        SchemaObject::Column | SchemaObject::ColumnDefault => {
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND CONCAT(table_name, '.', column_name) = ?"
        }
        _ => {
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?"
        }
    }
}

// The statements of MySQL's claim.

/// Serializes claims on one table (MySQL; PostgreSQL's is `postgres.rs`'s `LOCK_POSTGRES`): a row lock held until the claim
/// commits, so two relays never judge the same aggregate's order at once. Released by commit or rollback, never
/// left behind. Also returns the database's clock, which lease times are judged by (microseconds since the
/// epoch, UTC), read before the lock is granted: a lease measured from it ends early rather than late.
pub(super) const LOCK: &str = "SELECT id, TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) AS now_micros \
     FROM {t}_lock WHERE id = 1 FOR UPDATE";

/// Puts the lock row back when it was deleted, so the claims stay serialized (the migration creates it).
pub(super) const LOCK_ROW_MYSQL: &str = "INSERT IGNORE INTO {t}_lock (id) VALUES (1)";

/// Bounds a MySQL claim: its lock wait, and (MariaDB, with `idle_transaction_timeout`) how long its
/// transaction may sit idle before the server ends the session, which is what frees the lock of a relay frozen
/// inside its claim. Session variables, so the session's own values are kept in user variables and put back by
/// [`RESTORE_MYSQL`] before the claim commits. Values: the timeout in seconds (once, or twice on MariaDB).
pub(super) const BOUND_MYSQL: &str = "SET @outbox_lwt = @@SESSION.innodb_lock_wait_timeout, \
     SESSION innodb_lock_wait_timeout = ?";

/// [`BOUND_MYSQL`]'s MariaDB form.
pub(super) const BOUND_MARIADB: &str = "SET @outbox_lwt = @@SESSION.innodb_lock_wait_timeout, \
     @outbox_itt = @@SESSION.idle_transaction_timeout, SESSION innodb_lock_wait_timeout = ?, \
     SESSION idle_transaction_timeout = ?";

/// Undoes [`BOUND_MYSQL`].
pub(super) const RESTORE_MYSQL: &str = "SET SESSION innodb_lock_wait_timeout = @outbox_lwt";

/// Undoes [`BOUND_MARIADB`].
pub(super) const RESTORE_MARIADB: &str = "SET SESSION innodb_lock_wait_timeout = @outbox_lwt, \
     SESSION idle_transaction_timeout = @outbox_itt";

impl OutboxRepository {
    /// MySQL cannot `UPDATE` with a `LIMIT` subquery on the same table, nor return updated rows. Under the claim
    /// lock, in one READ COMMITTED transaction: pick the claimable ids, lease them, read back the rows that carry
    /// this claim's token. No data row is locked by a read, so marks running on other relays cannot deadlock with
    /// the claim (they did, measured, with `SELECT ... FOR UPDATE`); a row whose expired lease its old owner
    /// marks at the same moment simply does not come back.
    pub(super) async fn claim_mysql<C>(
        &self,
        db: &C,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<QueryResult>>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let mariadb = match self.inner.mariadb.get() {
            Some(&mariadb) => mariadb,
            None => {
                let version = self
                    .query(
                        db,
                        "reading the server version",
                        "SELECT VERSION()",
                        Vec::new(),
                    )
                    .await?;
                let mariadb = version
                    .first()
                    .and_then(|row| row.try_get_by_index::<String>(0).ok())
                    .is_some_and(|v| v.to_ascii_lowercase().contains("mariadb"));
                *self.inner.mariadb.get_or_init(|| mariadb)
            }
        };
        let (bound, restore) = if mariadb {
            (BOUND_MARIADB, RESTORE_MARIADB)
        } else {
            (BOUND_MYSQL, RESTORE_MYSQL)
        };
        // Whole seconds, at least one, rounded up.
        let seconds = self.inner.config.claim_timeout.as_millis().div_ceil(1000) as u64;
        let txn = self.begin(db).await?;
        let values = if mariadb {
            vec![seconds.into(), seconds.into()]
        } else {
            vec![seconds.into()]
        };
        self.execute(&txn, "bounding the claim", bound, values)
            .await?;
        let claimed = self.claim_mysql_bounded(&txn, lease, limit).await;
        // The session's own timeouts come back before the connection returns to the pool, on success or not.
        let restored = self
            .execute(&txn, "ending the claim's bounds", restore, Vec::new())
            .await;
        let rows = claimed?;
        restored?;
        self.commit(txn).await?;
        Ok(rows)
    }

    /// [`claim_mysql`](Self::claim_mysql)'s work, inside the bounds it set on `txn`.
    async fn claim_mysql_bounded<T: ConnectionTrait>(
        &self,
        txn: &T,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<QueryResult>> {
        let locked = self.lock(txn, LOCK, LOCK_ROW_MYSQL, Vec::new()).await?;
        let lease = lease.on_clock(locked.try_get::<i64>("", "now_micros").ok());
        let select = format!("SELECT o.id {}", sql::CLAIMABLE);
        let candidates = self
            .query(
                txn,
                "claiming events",
                &select,
                lease.claimable_values(limit),
            )
            .await?;
        let ids: Vec<i64> = candidates
            .iter()
            .map(|r| r.try_get_by_index::<i64>(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.db_error("claiming events", txn.get_database_backend(), e))?;
        let mut rows = Vec::new();
        if !ids.is_empty() {
            // Every id in one statement, not in chunks: the claim is one transaction, and the largest batch stays
            // within MySQL's limit on bound parameters (tested).
            let (id_in, id_values) = DIALECT.id_in(&ids);
            let update = format!(
                "UPDATE {{t}} SET claim_token = ?, locked_until = ? WHERE status = {} AND {id_in}",
                sql::PENDING
            );
            let mut values: Vec<Value> = vec![lease.token.0.into(), lease.until.into()];
            values.extend(id_values.iter().cloned());
            self.execute(txn, "claiming events", &update, values)
                .await?;
            let read = format!(
                "SELECT {} FROM {{t}} WHERE claim_token = ? AND {id_in}",
                sql::COLUMNS
            );
            let mut values: Vec<Value> = vec![lease.token.0.into()];
            values.extend(id_values);
            rows = self.query(txn, "claiming events", &read, values).await?;
        }
        Ok(rows)
    }
}
