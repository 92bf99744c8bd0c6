//! MySQL's and MariaDB's claim: pick, lease and read back, under the claim lock and within the claim's bounds.

use std::collections::{BTreeMap, HashMap};

use sea_orm::{ConnectionTrait, QueryResult, TransactionTrait, Value};

use super::claim::Lease;
use super::cursor::{Bounds, CursorSql, parked_runs, window_read};
use super::dialect::{Dialect, OneStatement, SchemaObject, no_wake_ups};
use super::{OutboxRepository, RepositoryError, Result, sql};

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
    one_statement: OneStatement::Block,
    native_uuid: false,
    purge_published: PURGE_PUBLISHED,
    batches_in_flight: 1,
    catalog,
    missing_table: |error, table| error.contains("doesn't exist") && error.contains(table),
    wake_ups: no_wake_ups,
    wake: None,
    cursor: &CURSOR,
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

/// Whether a schema object named `?` exists: tables, their columns, and the indexes added to a table after it
/// was created (the others are declared in it).
fn catalog(object: SchemaObject) -> &'static str {
    match object {
        SchemaObject::Column | SchemaObject::ColumnDefault => {
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND CONCAT(table_name, '.', column_name) = ?"
        }
        SchemaObject::Index => {
            "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() \
             AND index_name = ?"
        }
        SchemaObject::Trigger => {
            "SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE() \
             AND trigger_name = ?"
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
        let mariadb = self.is_mariadb(db).await?;
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
        self.end_bounded(txn, restore, claimed.is_ok()).await?;
        claimed
    }

    /// Ends a transaction whose session timeouts were changed for it ([`BOUND_MYSQL`]): the transaction ends
    /// first (`COMMIT`, or `ROLLBACK` when `commit` is false), as a statement on its connection, then `restore`
    /// puts the session's own timeouts back on that same connection, outside any transaction, before it returns
    /// to the pool. Restoring before the end left a window in which a relay frozen between the two statements held
    /// its locks with no idle timeout in force, for good (found by the reliability suite's scenario 4d run under
    /// the cursor: one run in three).
    pub(super) async fn end_bounded<T: sea_orm::TransactionSession + ConnectionTrait>(
        &self,
        txn: T,
        restore: &str,
        commit: bool,
    ) -> Result<()> {
        let backend = txn.get_database_backend();
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        let ended = txn
            .execute_unprepared(end)
            .await
            .map_err(|e| self.db_error("ending a bounded transaction", backend, e));
        let restored = self
            .execute(
                &txn,
                "restoring the session's timeouts",
                restore,
                Vec::new(),
            )
            .await;
        ended?;
        restored?;
        // Nothing is left to commit: this only hands the connection back.
        self.commit(txn).await
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

/// Whether `SELECT VERSION()` answered as MariaDB does (`10.11.19-MariaDB-0+deb12u1`; MySQL says `8.0.36`).
fn is_mariadb(version: &str) -> bool {
    version.to_ascii_lowercase().contains("mariadb")
}

/// Takes the next `k` numbers of a partition's sequence (partition, k, k), in the caller's transaction only: the
/// numbers and the events that carry them must commit together, so outside a transaction nothing is taken (no
/// row affected). The counter row stays locked until the transaction ends, which is what puts the partition's
/// numbers in commit order; the last number taken is left in `LAST_INSERT_ID()`, which comes back with the
/// statement's result.
const TAKE_SEQUENCE: &str = "INSERT INTO {t}_sequences (partition_no, next_seq) \
     SELECT ?, LAST_INSERT_ID(?) FROM DUAL WHERE @@in_transaction = 1 \
     ON DUPLICATE KEY UPDATE next_seq = LAST_INSERT_ID(next_seq + ?)";

impl OutboxRepository {
    /// Whether the server is MariaDB rather than MySQL, asked once.
    pub(super) async fn is_mariadb<C: ConnectionTrait>(&self, db: &C) -> Result<bool> {
        self.asked_once(
            db,
            &self.inner.mariadb,
            ("reading the server version", "SELECT VERSION()", Vec::new()),
            |row| {
                row.try_get_by_index::<String>(0)
                    .is_ok_and(|v| is_mariadb(&v))
            },
        )
        .await
    }

    /// `cell`'s answer, asked of the server the first time with `(operation, query, values)`; `judge` reads the
    /// first row (no row: no).
    async fn asked_once<C: ConnectionTrait>(
        &self,
        db: &C,
        cell: &std::sync::OnceLock<bool>,
        (operation, query, values): (&'static str, &str, Vec<Value>),
        judge: impl FnOnce(&QueryResult) -> bool,
    ) -> Result<bool> {
        if let Some(&answer) = cell.get() {
            return Ok(answer);
        }
        let rows = self.query(db, operation, query, values).await?;
        let answer = rows.first().is_some_and(judge);
        Ok(*cell.get_or_init(|| answer))
    }

    /// The cursor's sequence tells a transaction from autocommit by MariaDB's `@@in_transaction`, which MySQL
    /// lacks: refused there, by name, rather than failing on an unknown variable.
    pub(super) async fn check_sequenced<C: ConnectionTrait>(&self, db: &C) -> Result<()> {
        if self.is_mariadb(db).await? {
            Ok(())
        } else {
            Err(RepositoryError::CursorUnsupported {
                table: self.table().to_owned(),
            })
        }
    }

    /// What `add_event` stores in `seq` for events of the partitions `partitions` (one per event, in order), to
    /// place them in commit order: `0` for each where the table's trigger numbers them as they are inserted (the
    /// migration creates it), else their numbers, taken here (see [`sequence`](Self::sequence)).
    pub(super) async fn places<C: ConnectionTrait>(
        &self,
        db: &C,
        partitions: &[i16],
    ) -> Result<Vec<i64>> {
        self.check_sequenced(db).await?;
        if self.has_sequence_trigger(db).await? {
            Ok(vec![0; partitions.len()])
        } else {
            self.sequence(db, partitions).await
        }
    }

    /// Whether the table has the trigger that numbers events as they are inserted, asked once. A table migrated
    /// by an older version lacks it until the migration runs again; its writers take their numbers themselves.
    async fn has_sequence_trigger<C: ConnectionTrait>(&self, db: &C) -> Result<bool> {
        let name = format!("{}_seq", self.table());
        self.asked_once(
            db,
            &self.inner.sequence_trigger,
            (
                "looking for the sequence trigger",
                catalog(SchemaObject::Trigger),
                vec![name.into()],
            ),
            |row| row.try_get_by_index::<i64>(0).is_ok_and(|n| n > 0),
        )
        .await
    }

    /// Places in commit order for events of the partitions `partitions` (one per event, in order), each partition's
    /// numbers taken at once from its sequence in the caller's transaction `db`. Partitions are taken in
    /// ascending order, so two writers of several partitions wait for each other's counters in one direction.
    /// The caller has run [`check_sequenced`](Self::check_sequenced) (`places`, or the relay's start before it
    /// adopts).
    pub(super) async fn sequence<C: ConnectionTrait>(
        &self,
        db: &C,
        partitions: &[i16],
    ) -> Result<Vec<i64>> {
        let mut counts: BTreeMap<i16, i64> = BTreeMap::new();
        for partition in partitions {
            *counts.entry(*partition).or_default() += 1;
        }
        let backend = db.get_database_backend();
        let mut next: HashMap<i16, i64> = HashMap::with_capacity(counts.len());
        for (partition, k) in counts {
            let taken = db
                .execute_raw(self.statement(
                    backend,
                    TAKE_SEQUENCE,
                    vec![partition.into(), k.into(), k.into()],
                ))
                .await
                .map_err(|e| self.db_error("taking places in commit order", backend, e))?;
            if taken.rows_affected() == 0 {
                return Err(RepositoryError::CursorNeedsTransaction {
                    table: self.table().to_owned(),
                });
            }
            let last = i64::try_from(taken.last_insert_id()).unwrap_or(i64::MAX);
            next.insert(partition, last - k + 1);
        }
        Ok(partitions
            .iter()
            .map(|partition| {
                let n = next.entry(*partition).or_default();
                *n += 1;
                *n - 1
            })
            .collect())
    }
}

/// The database's clock in Unix microseconds, which partition leases are judged by.
macro_rules! db_now {
    () => {
        "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))"
    };
}

/// The claim lock row, which a relay's first start holds (see `CursorSql::first_start_lock`).
const LOCK_FIRST_START: &str = "SELECT id FROM {t}_lock WHERE id = 1 FOR UPDATE";

/// MySQL's and MariaDB's commit-order cursor: no snapshot a reader could take, so the order is the writer's.
/// Under the cursor, `add_event` numbers each partition's events from the partition's counter row in the
/// writer's transaction ([`OutboxRepository::sequence`]); the counter row is locked until that transaction ends,
/// so every number up to the counter's committed value belongs to a committed event, and a "snapshot" is that
/// value: a window is the numbers between two of them. Lists of numbers go as JSON arrays, read by `JSON_TABLE`
/// (MariaDB 10.6; MySQL 8 has `JSON_TABLE` too, but not the `@@in_transaction` the sequence relies on, so the
/// cursor is refused there: [`RepositoryError::CursorUnsupported`]).
///
/// A `seq` of `0` is an event the table's trigger should have numbered but did not (it was dropped after a writer
/// saw it): it is adopted like an event stored without a number, rather than left below every window.
///
/// Events adopted before a partition's cursor exists (stored before the upgrade, see `cursor/partitions.rs`) are placed
/// below every number a counter hands out (their id minus 2^62), so they go first, in id order, as on the other
/// backends; no relay reads yet, and the first start is serialized by the claim lock row. Events adopted later
/// take counter numbers like any writer's.
pub(super) const CURSOR: CursorSql = CursorSql {
    now: db_now!(),
    json_arrays: true,
    sequenced: true,
    adopts_late: true,
    first_start_lock: Some(LOCK_FIRST_START),
    bound_read: None,
    bound_settle: Some(BOUND_MARIADB),
    unbound_settle: Some(RESTORE_MARIADB),
    bounds: Bounds::Seconds,
    legacy: "SELECT id, aggregate_type, aggregate_id FROM {t} WHERE status = 0 AND (seq IS NULL OR seq = 0) \
        AND (partition_no IS NULL OR partition_no IN ({partitions})) ORDER BY id LIMIT ?",
    adopt: "UPDATE {t} o JOIN (SELECT i.id, q.p, s.seq \
          FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, id BIGINT PATH '$')) i \
          JOIN JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, p SMALLINT PATH '$')) q ON q.n = i.n \
          JOIN JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, seq BIGINT PATH '$')) s ON s.n = i.n) v \
        ON o.id = v.id SET o.partition_no = v.p, o.seq = CASE \
          WHEN EXISTS (SELECT 1 FROM {t}_cursors c WHERE c.partition_no = v.p) THEN v.seq \
          ELSE o.id - 4611686018427387904 END \
        WHERE o.seq IS NULL OR o.seq = 0",
    create: "INSERT IGNORE INTO {t}_cursors (partition_no, partitions, snap_from) \
        SELECT g.n, ?, CAST(COALESCE( \
          (SELECT MIN(o.seq) - 1 FROM {t} o WHERE o.status = 0 AND o.partition_no = g.n AND o.seq <> 0), \
          (SELECT s.next_seq FROM {t}_sequences s WHERE s.partition_no = g.n), 0) AS CHAR) \
        FROM JSON_TABLE('[{partitions}]', '$[*]' COLUMNS (n INT PATH '$')) g WHERE g.n < ?",
    analyze: "ANALYZE TABLE {t}_cursors",
    acquire: concat!(
        "UPDATE {t}_cursors SET owner = ?, epoch = epoch + 1, lease_until = ",
        db_now!(),
        " + ? WHERE owner IS NULL OR lease_until < ",
        db_now!(),
        " ORDER BY partition_no LIMIT ?"
    ),
    renew: concat!(
        "UPDATE {t}_cursors SET lease_until = ",
        db_now!(),
        " + ? WHERE owner = ? ORDER BY partition_no"
    ),
    // The ends are the window's numbers whatever their status, read from the index alone: asking for pending ones
    // made MariaDB read every row of the window to open it (12.5k rows per batch, 2.5 of the 4 s of a 100k
    // drain); the reads skip the rest.
    open: "SELECT s.part AS partition_no, CAST(s.cur AS CHAR) AS snapshot, \
          (SELECT MIN(o.seq) FROM {t} o WHERE s.fresh = 1 AND o.partition_no = s.part \
            AND o.seq > s.snap_from AND o.seq <= s.cur) AS low, \
          (SELECT MAX(o.seq) FROM {t} o WHERE s.fresh = 1 AND o.partition_no = s.part \
            AND o.seq > s.snap_from AND o.seq <= s.cur) AS high, \
          EXISTS (SELECT 1 FROM {t}_parked k WHERE k.partition_no = s.part) AS parked \
        FROM (SELECT v.part, v.fresh, CAST(v.snap_from AS SIGNED) AS snap_from, \
            COALESCE(CAST(NULLIF(v.snap_to, '') AS SIGNED), q.next_seq, 0) AS cur \
          FROM JSON_TABLE(?, '$[*]' COLUMNS (part SMALLINT PATH '$[0]', snap_from VARCHAR(40) PATH '$[1]', \
            snap_to VARCHAR(40) PATH '$[2]', fresh TINYINT PATH '$[3]')) v \
          LEFT JOIN {t}_sequences q ON q.partition_no = v.part) s",
    read: window_read!(
        pos = "o.seq";
        "o.partition_no = ? AND o.seq > ? AND o.seq <= ? AND o.seq <= CAST(? AS SIGNED) \
          AND o.seq > CAST(? AS SIGNED) ORDER BY o.seq LIMIT ?"
    ),
    parked: parked_runs!(db_now!()),
    repartition: "UPDATE {t} o JOIN (SELECT i.id, q.p \
          FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, id BIGINT PATH '$')) i \
          JOIN JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, p SMALLINT PATH '$')) q ON q.n = i.n) v \
        ON o.id = v.id SET o.partition_no = v.p WHERE o.partition_no IS NULL",
    // IGNORE only skips events parked already: every value comes from a stored row of the same types.
    park: concat!(
        "INSERT IGNORE INTO {t}_parked (id, partition_no, aggregate_type, aggregate_id, next_attempt_at) \
        SELECT o.id, o.partition_no, o.aggregate_type, o.aggregate_id, ",
        db_now!(),
        " FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, id BIGINT PATH '$')) j JOIN {t} o ON o.id = j.id \
        ORDER BY j.n"
    ),
    unpark: "DELETE p FROM {t}_parked p \
        JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) j ON p.id = j.id",
    unplaced: "(o.seq IS NULL OR o.seq = 0) AND (o.partition_no IS NULL OR o.partition_no IN ({partitions}))",
    ahead: "o.seq > CASE WHEN c.snap_to IS NULL THEN CAST(c.snap_from AS SIGNED) ELSE c.after_id END",
    delivered: "SELECT o.id FROM {t}_cursors c JOIN {t} o ON o.partition_no = c.partition_no AND o.status = 0 \
          AND o.seq <= CAST(c.snap_from AS SIGNED) \
        WHERE o.occurred_at < ? AND NOT EXISTS (SELECT 1 FROM {t}_parked p WHERE p.id = o.id) LIMIT ?",
    pending: "SELECT CAST((SELECT COUNT(*) FROM {t}_cursors c JOIN {t} o ON o.partition_no = c.partition_no \
            AND o.seq > CASE WHEN c.snap_to IS NULL THEN CAST(c.snap_from AS SIGNED) ELSE c.after_id END \
            WHERE o.status = 0) \
          + {parked} \
          + (SELECT COUNT(*) FROM {t} WHERE status = 0 AND (seq IS NULL OR seq = 0) \
            AND (partition_no IS NULL OR partition_no IN ({partitions}))) \
          + CASE WHEN EXISTS (SELECT 1 FROM {t}_cursors) THEN 0 ELSE (SELECT COUNT(*) FROM {t} \
            WHERE status = 0 AND seq <> 0) END AS SIGNED), \
        (SELECT MIN(m.oldest) FROM ( \
          SELECT MIN(o.occurred_at) AS oldest FROM {t}_cursors c JOIN {t} o ON o.partition_no = c.partition_no \
            AND o.seq > CASE WHEN c.snap_to IS NULL THEN CAST(c.snap_from AS SIGNED) ELSE c.after_id END \
            WHERE o.status = 0 \
          UNION ALL SELECT MIN(o.occurred_at) FROM {t}_parked p JOIN {t} o ON o.id = p.id \
          UNION ALL SELECT MIN(occurred_at) FROM {t} WHERE status = 0 AND (seq IS NULL OR seq = 0) \
            AND (partition_no IS NULL OR partition_no IN ({partitions})) \
          UNION ALL SELECT CASE WHEN EXISTS (SELECT 1 FROM {t}_cursors) THEN NULL ELSE (SELECT MIN(occurred_at) \
            FROM {t} WHERE status = 0 AND seq <> 0) END) m)",
};

#[cfg(test)]
mod tests {
    #[test]
    fn mysql_is_told_from_mariadb_by_its_version() {
        assert!(super::is_mariadb("10.11.19-MariaDB-0+deb12u1"));
        assert!(super::is_mariadb("11.4.2-MariaDB"));
        assert!(!super::is_mariadb("8.0.36"));
        assert!(!super::is_mariadb("8.4.0-commercial"));
    }
}
