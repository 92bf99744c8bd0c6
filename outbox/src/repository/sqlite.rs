//! SQLite's claim: one `UPDATE ... RETURNING`, atomic under its single writer.

use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::claim::Lease;
use super::cursor::{Bounds, CursorSql, parked_runs, window_read};
use super::dialect::{Dialect, OneStatement, SchemaObject, no_wake_ups};
use super::{OutboxRepository, Result, sql};

/// How SQLite differs: `?` placeholders, one per id, the event id as text, no wake-up signal across processes,
/// and one batch in flight (a claim beside a mark halved the drain under its single writer: 12.0k -> 6.4k
/// events/s).
pub(super) const DIALECT: Dialect = Dialect {
    backend: sea_orm::DbBackend::Sqlite,
    name: "sqlite",
    schema: include_str!("../../sql/sqlite.sql"),
    inbox_schema: include_str!("../../sql/sqlite_inbox.sql"),
    inbox_record: sql::INBOX_RECORD,
    insert_returning: true,
    inbox_dead_letter: sql::INBOX_DEAD_LETTER,
    numbered_placeholders: false,
    id_array: false,
    one_statement: OneStatement::Two,
    native_uuid: false,
    purge_published: sql::PURGE_PUBLISHED,
    batches_in_flight: 1,
    catalog,
    missing_table: |error, _| error.contains("no such table"),
    wake_ups: no_wake_ups,
    wake: None,
    cursor: &CURSOR,
};

/// Whether a schema object named `?` exists.
fn catalog(object: SchemaObject) -> &'static str {
    match object {
        SchemaObject::Column | SchemaObject::ColumnDefault => {
            "SELECT COUNT(*) FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name || '.' || p.name = ?"
        }
        _ => "SELECT COUNT(*) FROM sqlite_master WHERE name = ?",
    }
}

impl OutboxRepository {
    /// SQLite: one UPDATE ... RETURNING, atomic under its single writer.
    pub(super) async fn claim_sqlite<C: ConnectionTrait>(
        &self,
        db: &C,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<QueryResult>> {
        let update = format!(
            "UPDATE {{t}} SET claim_token = ?, locked_until = ? WHERE status = {} AND id IN (SELECT o.id {}) \
             RETURNING {}",
            sql::PENDING,
            sql::CLAIMABLE,
            sql::COLUMNS
        );
        let mut values: Vec<Value> = vec![lease.token.0.into(), lease.until.into()];
        values.extend(lease.claimable_values(limit));
        self.query(db, "claiming events", &update, values).await
    }
}

/// SQLite's clock in Unix microseconds (to the millisecond), which partition leases are judged by.
macro_rules! db_now {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
    };
}

/// SQLite's commit-order cursor: a "snapshot" is the highest id stored when the window opened. There is one
/// writer at a time and AUTOINCREMENT ids are never reused, so every row at or below it had committed (or
/// rolled back for good) by then, and a window is the ids between two of them.
pub(super) const CURSOR: CursorSql = CursorSql {
    now: db_now!(),
    json_arrays: true,
    sequenced: false,
    adopts_late: false,
    first_start_lock: None,
    bound_read: None,
    bound_settle: None,
    unbound_settle: None,
    bounds: Bounds::Seconds,
    legacy: "SELECT id, aggregate_type, aggregate_id FROM {t} \
        WHERE status = 0 AND partition_no IS NULL ORDER BY id LIMIT ?",
    adopt: "UPDATE {t} SET partition_no = (SELECT p.value FROM json_each(?1) i JOIN json_each(?2) p \
          ON p.key = i.key WHERE i.value = {t}.id) \
        WHERE id IN (SELECT value FROM json_each(?1))",
    create: "WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n + 1 < ?1) \
        INSERT INTO {t}_cursors (partition_no, partitions, snap_from) \
        SELECT n, ?2, CAST(COALESCE((SELECT MIN(id) - 1 FROM {t} WHERE status = 0 AND partition_no = g.n), \
          (SELECT COALESCE(MAX(id), 0) FROM {t})) AS TEXT) FROM g WHERE true \
        ON CONFLICT DO NOTHING",
    analyze: "ANALYZE {t}_cursors",
    acquire: concat!(
        "UPDATE {t}_cursors SET owner = ?1, epoch = epoch + 1, lease_until = ",
        db_now!(),
        " + ?2 WHERE partition_no IN (SELECT partition_no FROM {t}_cursors \
          WHERE owner IS NULL OR lease_until < ",
        db_now!(),
        " ORDER BY partition_no LIMIT ?3)"
    ),
    // One writer at a time: no order to keep.
    renew: concat!(
        "UPDATE {t}_cursors SET lease_until = ",
        db_now!(),
        " + ?1 WHERE owner = ?2"
    ),
    open: "SELECT v.part AS partition_no, CAST(v.cur AS TEXT) AS snapshot, \
          (SELECT MIN(id) FROM {t} WHERE v.fresh AND status = 0 AND partition_no = v.part \
            AND id > v.snap_from AND id <= v.cur) AS low, \
          (SELECT MAX(id) FROM {t} WHERE v.fresh AND status = 0 AND partition_no = v.part \
            AND id > v.snap_from AND id <= v.cur) AS high, \
          EXISTS (SELECT 1 FROM {t}_parked k WHERE k.partition_no = v.part) AS parked \
        FROM (SELECT json_extract(j.value, '$[0]') AS part, \
            CAST(json_extract(j.value, '$[1]') AS INTEGER) AS snap_from, \
            COALESCE(CAST(NULLIF(json_extract(j.value, '$[2]'), '') AS INTEGER), \
              (SELECT COALESCE(MAX(id), 0) FROM {t})) AS cur, \
            json_extract(j.value, '$[3]') AS fresh FROM json_each(?) j) v",
    read: window_read!(
        pos = "id";
        "partition_no = ?1 AND id > ?2 AND id <= ?3 AND id <= CAST(?4 AS INTEGER) AND id > CAST(?5 AS INTEGER) \
        ORDER BY id LIMIT ?6"
    ),
    parked: parked_runs!(db_now!()),
    repartition: "UPDATE {t} SET partition_no = (SELECT p.value FROM json_each(?1) i JOIN json_each(?2) p \
          ON p.key = i.key WHERE i.value = {t}.id) \
        WHERE id IN (SELECT value FROM json_each(?1)) AND partition_no IS NULL",
    park: concat!(
        "INSERT INTO {t}_parked (id, partition_no, aggregate_type, aggregate_id, next_attempt_at) \
        SELECT o.id, o.partition_no, o.aggregate_type, o.aggregate_id, ",
        db_now!(),
        " FROM json_each(?) j JOIN {t} o ON o.id = j.value WHERE true ORDER BY j.key \
        ON CONFLICT (id) DO NOTHING"
    ),
    unpark: "DELETE FROM {t}_parked WHERE id IN (SELECT value FROM json_each(?))",
    unplaced: "o.partition_no IS NULL",
    ahead: "o.id > CASE WHEN c.snap_to IS NULL THEN CAST(c.snap_from AS INTEGER) ELSE c.after_id END",
    delivered: "SELECT o.id FROM {t}_cursors c JOIN {t} o ON o.partition_no = c.partition_no AND o.status = 0 \
          AND o.id <= CAST(c.snap_from AS INTEGER) \
        WHERE o.occurred_at < ? AND NOT EXISTS (SELECT 1 FROM {t}_parked p WHERE p.id = o.id) LIMIT ?",
    pending: "SELECT (SELECT COUNT(*) FROM {t} o JOIN {t}_cursors c ON c.partition_no = o.partition_no \
            WHERE o.status = 0 AND o.id > CASE WHEN c.snap_to IS NULL THEN CAST(c.snap_from AS INTEGER) \
              ELSE c.after_id END) \
          + {parked} \
          + (SELECT COUNT(*) FROM {t} WHERE status = 0 AND partition_no IS NULL) \
          + CASE WHEN EXISTS (SELECT 1 FROM {t}_cursors) THEN 0 ELSE (SELECT COUNT(*) FROM {t} \
            WHERE status = 0 AND partition_no IS NOT NULL) END, \
        (SELECT MIN(m.oldest) FROM ( \
          SELECT MIN(o.occurred_at) AS oldest FROM {t} o JOIN {t}_cursors c ON c.partition_no = o.partition_no \
            WHERE o.status = 0 AND o.id > CASE WHEN c.snap_to IS NULL THEN CAST(c.snap_from AS INTEGER) \
              ELSE c.after_id END \
          UNION ALL SELECT MIN(o.occurred_at) FROM {t}_parked p JOIN {t} o ON o.id = p.id \
          UNION ALL SELECT MIN(occurred_at) FROM {t} WHERE status = 0 AND partition_no IS NULL \
          UNION ALL SELECT CASE WHEN EXISTS (SELECT 1 FROM {t}_cursors) THEN NULL ELSE (SELECT MIN(occurred_at) \
            FROM {t} WHERE status = 0 AND partition_no IS NOT NULL) END) m)",
};
