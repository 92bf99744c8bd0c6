//! PostgreSQL's claim: a window of the oldest pending rows from where nothing older is pending (see
//! `scan.rs`), then the full statement for the rest, in one transaction under the claim lock.

use sea_orm::{ConnectionTrait, QueryResult, TransactionTrait};

use super::claim::Lease;
use super::cursor::{Bounds, CursorSql, parked_runs, window_read};
use super::dialect::{Dialect, OneStatement, SchemaObject, Wake, WakeTask};
use super::wake::WakeSql;
use super::{OutboxRepository, Result, TableName, scan, sql};

/// How PostgreSQL differs: numbered placeholders, id lists as one array, a native UUID, LISTEN/NOTIFY, and a
/// second batch in flight (claiming the next batch while the current one publishes pays here).
pub(super) const DIALECT: Dialect = Dialect {
    backend: sea_orm::DbBackend::Postgres,
    name: "postgres",
    schema: include_str!("../../sql/postgres.sql"),
    inbox_schema: include_str!("../../sql/postgres_inbox.sql"),
    inbox_record: sql::INBOX_RECORD,
    insert_returning: true,
    inbox_dead_letter: sql::INBOX_DEAD_LETTER,
    numbered_placeholders: true,
    id_array: true,
    one_statement: OneStatement::Cte,
    native_uuid: true,
    purge_published: sql::PURGE_PUBLISHED,
    batches_in_flight: 2,
    catalog,
    missing_table: |error, table| error.contains("does not exist") && error.contains(table),
    wake_ups,
    wake: Some(&WAKE),
    cursor: &CURSOR,
};

/// Wake-ups on demand: the relay's wish in its row, which the insert trigger reads (see `wake.rs`).
const WAKE: WakeSql = WakeSql {
    want: "UPDATE {t}_relays SET wants_notify = ? WHERE relay_id = ?",
    snapshot: "SELECT CAST(pg_current_snapshot() AS TEXT)",
    // No transaction below the snapshot's xmax runs any more.
    settled: "SELECT pg_snapshot_xmin(pg_current_snapshot()) >= pg_snapshot_xmax(CAST(? AS pg_snapshot))",
    forget: "UPDATE {t}_relays SET wants_notify = FALSE WHERE wants_notify AND heartbeat_at < ?",
};

/// Whether a schema object named `?` exists, from the catalog: it takes no lock on the table (see
/// `migration.rs`).
fn catalog(object: SchemaObject) -> &'static str {
    match object {
        SchemaObject::Trigger => {
            "SELECT COUNT(*) FROM pg_trigger WHERE tgname = ? AND NOT tgisinternal"
        }
        SchemaObject::Fillfactor => {
            "SELECT COUNT(*) FROM pg_class WHERE oid = to_regclass(?) \
             AND reloptions @> ARRAY['fillfactor=50']"
        }
        SchemaObject::Table | SchemaObject::Index => {
            "SELECT COUNT(*) FROM pg_class WHERE oid = to_regclass(?)"
        }
        SchemaObject::Column => {
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema() \
             AND table_name || '.' || column_name = ?"
        }
        SchemaObject::ColumnDefault => {
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema() \
             AND table_name || '.' || column_name = ? AND column_default IS NOT NULL"
        }
    }
}

/// The PostgreSQL claim's windows, in multiples of the batch size: the first fits a backlog whose head is this
/// relay's own or free (a relay claims with at most one of its batches in flight by default, two at three in
/// flight), and every row it reads costs: 3x instead of 4x took a claim of 1,000 from 9.3 to 7.8 ms (`EXPLAIN
/// ANALYZE`, medians of 8). The second reaches past the batches other relays hold at the head (4 relays with 2
/// batches in flight each lease 8 batches there).
const WINDOWS: [i64; 2] = [3, 16];

// The statements of PostgreSQL's claim.

/// Puts the lock row back when it was deleted, so the claims stay serialized (the migration creates it).
pub(super) const LOCK_ROW_POSTGRES: &str =
    "INSERT INTO {t}_lock (id) VALUES (1) ON CONFLICT DO NOTHING";

/// PostgreSQL's fast claim: the first `window` pending rows by id, walked in the pending index (with bitmap and
/// sequential scans turned off for the transaction by [`LOCK_POSTGRES`]), and from them the claimable ones.
/// Every pending row older than a row of the window is in the window too, so "no earlier pending event of the
/// same aggregate is leased or retrying" can be judged inside it. Its cost is the window's, not the backlog's,
/// whatever the statistics say: without them the planner reads every pending row and sorts (372 ms for a batch of
/// 50 over 350k pending rows, measured; 40 ms for 1,000 this way). When the window holds fewer claimable rows
/// than asked (many heads leased or retrying), [`CLAIM_POSTGRES`] claims the rest. The window starts at an id
/// below which nothing is pending (see `scan.rs`). A row is `leased` by anyone, `held` when it keeps its
/// aggregate's later events back (leased by another owner, or retrying). The held aggregates are grouped first
/// (`held`, usually empty or a few rows): the planner cannot know a materialized window's contents and joins it
/// to itself with a nested loop, which read the whole window once per row (5.6 s for a batch of 10,000, over the
/// claim timeout; 0.3 s this way, `EXPLAIN ANALYZE`). The UPDATE finds the chosen rows by
/// their physical address (`ctid`), read with the window, rather than by a second walk of the pending index (7%
/// of the statement, measured). Values: now, now, owner's first token, owner's last token, now, start id, window,
/// token, lease until, limit.
pub(super) const CLAIM_POSTGRES_WINDOW: &str = "WITH head AS MATERIALIZED ( \
       SELECT id, ctid AS tid, aggregate_type, aggregate_id, COALESCE(locked_until >= ?, FALSE) AS leased, \
              (COALESCE(locked_until >= ? AND claim_token NOT BETWEEN ? AND ?, FALSE) \
               OR COALESCE(next_attempt_at > ?, FALSE)) AS held \
       FROM {t} WHERE status = 0 AND id >= ? ORDER BY id LIMIT ?), \
     held AS MATERIALIZED ( \
       SELECT aggregate_type, aggregate_id, MIN(id) AS first_id FROM head WHERE held \
       GROUP BY aggregate_type, aggregate_id) \
     UPDATE {t} SET claim_token = ?, locked_until = ? \
     WHERE status = 0 AND ctid = ANY(ARRAY( \
       SELECT o.tid FROM head o WHERE NOT o.leased AND NOT o.held \
         AND NOT EXISTS (SELECT 1 FROM held b WHERE b.aggregate_type = o.aggregate_type \
           AND b.aggregate_id = o.aggregate_id AND b.first_id < o.id) \
       ORDER BY o.id LIMIT ?))";

/// The claim lock (MySQL's is `mysql.rs`'s `LOCK`) on PostgreSQL, which also makes the rest of the claim transaction walk indexes in order (see
/// [`CLAIM_POSTGRES_WINDOW`]) and plan each statement for its values: a generic plan, which sqlx's prepared
/// statements get from the sixth execution on, does not know how far the window's start is from the head, and on
/// a table without statistics took 600-800 ms per claim instead of 20 ms (measured). One round trip for all.
///
/// It also bounds the claim: how long it waits for the lock (`lock_timeout`), how long each statement may run
/// (`statement_timeout`), and how long its transaction may sit idle (`idle_in_transaction_session_timeout`: a
/// relay frozen inside its claim, by SIGSTOP, a VM pause or a network that drops packets, has its session ended by
/// the server, which frees the lock for the others). Each is local to the claim's transaction and set before the
/// lock is waited for. It returns the database's clock, which lease times are judged by (read before the lock is granted: a lease measured from it ends early rather than late). Values: the claim timeout in milliseconds,
/// three times.
pub(super) const LOCK_POSTGRES: &str = "SELECT id, set_config('enable_bitmapscan', 'off', true), \
     set_config('enable_seqscan', 'off', true), set_config('plan_cache_mode', 'force_custom_plan', true), \
     set_config('lock_timeout', ?, true), set_config('statement_timeout', ?, true), \
     set_config('idle_in_transaction_session_timeout', ?, true), \
     CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT) AS now_micros \
     FROM {t}_lock WHERE id = 1 FOR UPDATE";

/// How many rows a window held, and its first and last id.
macro_rules! window_bounds {
    () => {
        "(SELECT COUNT(*) FROM head) AS window_rows, (SELECT MIN(id) FROM head) AS window_start, \
         (SELECT MAX(id) FROM head) AS window_end"
    };
}

/// What [`CLAIM_POSTGRES_WINDOW`] returns besides the columns: how many rows the window held, its first and last
/// id.
pub(super) const WINDOW_RETURNING: &str = window_bounds!();

/// [`WINDOW_RETURNING`] and the transactions other than this one that hold a write lock on the outbox table
/// just after the window's snapshot, as one comma-separated text of virtual transaction ids (`scan.rs`: every
/// transaction that stores an event holds that lock from before it takes the event's id until it ends).
pub(super) const WINDOW_RETURNING_WRITERS: &str = concat!(
    window_bounds!(),
    ", (SELECT string_agg(virtualtransaction, ',') FROM pg_locks WHERE locktype = 'relation' \
     AND relation = CAST('{t}' AS regclass) AND mode = 'RowExclusiveLock' AND granted \
     AND pid IS DISTINCT FROM pg_backend_pid()) AS writers"
);

/// Gives the planner its choices back, for [`CLAIM_POSTGRES`] after the window.
pub(super) const FREE_PLANNER: &str = "SELECT set_config('enable_bitmapscan', 'on', true), \
     set_config('enable_seqscan', 'on', true)";

/// PostgreSQL's claim, one statement. The planner cannot be trusted with `CLAIMABLE` as an `IN` subquery: on a
/// queue table whose statistics lag its churn it re-ran the subquery for every pending row (5 s for 800 rows,
/// measured). Here the blocked aggregates are materialized first and the claimed ids are collected into an array
/// before the UPDATE looks rows up by primary key. Retrying rows come from their small partial index; leased rows
/// are in no index (so that leasing stays a HOT update) and are found by walking the pending index, which costs a
/// read of every pending row: this statement only runs when even the widest window held too few claimable rows.
/// Values: now, owner's first token, owner's last token, now, token, lease until, now, now, limit.
pub(super) const CLAIM_POSTGRES: &str = "WITH blocked AS MATERIALIZED ( \
       SELECT aggregate_type, aggregate_id, MIN(id) AS first_id FROM ( \
         SELECT aggregate_type, aggregate_id, id FROM {t} \
         WHERE status = 0 AND locked_until >= ? AND claim_token NOT BETWEEN ? AND ? \
         UNION ALL \
         SELECT aggregate_type, aggregate_id, id FROM {t} \
         WHERE status = 0 AND next_attempt_at IS NOT NULL AND next_attempt_at > ?) h \
       GROUP BY aggregate_type, aggregate_id) \
     UPDATE {t} SET claim_token = ?, locked_until = ? \
     WHERE status = 0 AND id = ANY(ARRAY( \
       SELECT o.id FROM {t} o \
       WHERE o.status = 0 \
         AND (o.locked_until IS NULL OR o.locked_until < ?) \
         AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= ?) \
         AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.aggregate_type = o.aggregate_type \
           AND b.aggregate_id = o.aggregate_id AND b.first_id < o.id) \
       ORDER BY o.id LIMIT ?))";

impl OutboxRepository {
    /// PostgreSQL: the window of the oldest pending rows from where nothing older is pending (see
    /// [`CLAIM_POSTGRES_WINDOW`] and `scan.rs`), then the full statement for the rest if the window was full
    /// and fell short; in one transaction under the claim lock.
    pub(super) async fn claim_postgres<C>(
        &self,
        db: &C,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<QueryResult>>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let txn = self.begin(db).await?;
        let timeout = self.inner.config.claim_timeout.as_millis().to_string();
        let locked = self
            .lock(
                &txn,
                LOCK_POSTGRES,
                LOCK_ROW_POSTGRES,
                vec![
                    timeout.as_str().into(),
                    timeout.as_str().into(),
                    timeout.into(),
                ],
            )
            .await?;
        let lease = lease.on_clock(locked.try_get::<i64>("", "now_micros").ok());
        let started = std::time::Instant::now();
        let read_writers = self.inner.scan.wants_writers(started);
        let claim = format!(
            "{} RETURNING {}, {}",
            CLAIM_POSTGRES_WINDOW,
            sql::COLUMNS,
            if read_writers {
                WINDOW_RETURNING_WRITERS
            } else {
                WINDOW_RETURNING
            }
        );
        let from = self.inner.scan.next(started);
        let (now, (mine_from, mine_to)) = (lease.now, lease.owner);
        let mut rows: Vec<QueryResult> = Vec::new();
        let mut observation = None;
        let mut missing = limit;
        // A window that was not full held every pending row from its start: nothing is left beyond it. One that
        // was full but short (its head leased by other relays or retrying) is tried once more, wider, before the
        // full statement, which reads every pending row.
        let mut window_full = true;
        for window in WINDOWS.map(|times| i64::from(limit) * times) {
            if missing == 0 || !window_full {
                break;
            }
            let values = vec![
                now.into(),
                now.into(),
                mine_from.into(),
                mine_to.into(),
                now.into(),
                from.into(),
                window.into(),
                lease.token.0.into(),
                lease.until.into(),
                missing.into(),
            ];
            let claimed = self.query(&txn, "claiming events", &claim, values).await?;
            if let Some(row) = claimed.first() {
                window_full = row
                    .try_get::<i64>("", "window_rows")
                    .is_ok_and(|n| n >= window);
                let start = row.try_get::<i64>("", "window_start");
                let end = row.try_get::<i64>("", "window_end");
                if let (Ok(oldest_pending), Ok(newest)) = (start, end) {
                    observation = Some(scan::Observation {
                        oldest_pending,
                        newest,
                        writers: read_writers.then(|| writers(row)).flatten(),
                    });
                }
            }
            missing = missing.saturating_sub(u32::try_from(claimed.len()).unwrap_or(missing));
            rows.extend(claimed);
        }
        if missing > 0 && window_full {
            self.query(&txn, "planning the claim", FREE_PLANNER, Vec::new())
                .await?;
            let claim = format!("{} RETURNING {}", CLAIM_POSTGRES, sql::COLUMNS);
            let values = vec![
                now.into(),
                mine_from.into(),
                mine_to.into(),
                now.into(),
                lease.token.0.into(),
                lease.until.into(),
                now.into(),
                now.into(),
                missing.into(),
            ];
            rows.extend(self.query(&txn, "claiming events", &claim, values).await?);
        }
        self.commit(txn).await?;
        // Only once committed: a claim rolled back saw nothing that lasts.
        self.inner.scan.saw(started, from, observation);
        Ok(rows)
    }
}

/// The `writers` column of [`WINDOW_RETURNING_WRITERS`]: virtual transaction ids. `None` when it cannot be
/// read, which settles nothing.
fn writers(row: &QueryResult) -> Option<Vec<String>> {
    let list = row.try_get::<Option<String>>("", "writers").ok()?;
    Some(list.map_or_else(Vec::new, |list| {
        list.split(',').map(str::to_owned).collect()
    }))
}

/// LISTEN on the table's channel, with the pool the database connection holds.
fn wake_ups(db: &sea_orm::DatabaseConnection, table: &TableName, wake: Wake) -> Option<WakeTask> {
    #[cfg(feature = "postgres")]
    {
        let pool = db.get_postgres_connection_pool().clone();
        Some(listen(pool, table.as_str().to_owned(), wake))
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (db, table, wake);
        None
    }
}

/// Wake-ups from PostgreSQL: LISTEN on the outbox table's channel, which the table's insert trigger NOTIFYs.
/// PostgreSQL delivers a notification when the inserting transaction commits and folds duplicates within one
/// transaction, so a burst of commits costs at most one extra wake per batch. Reconnects by itself; while the
/// connection is down, `wake` is called once so that nothing committed meanwhile waits for the next poll.
#[cfg(feature = "postgres")]
fn listen(pool: sea_orm::sqlx::PgPool, channel: String, wake: Wake) -> WakeTask {
    tokio::spawn(async move {
        loop {
            match listen_once(&pool, &channel, &wake).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(target: "outbox", %error, "LISTEN connection lost; polling until it is back");
                    wake();
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    })
}

#[cfg(feature = "postgres")]
async fn listen_once(
    pool: &sea_orm::sqlx::PgPool,
    channel: &str,
    wake: &(impl Fn() + Send + Sync),
) -> std::result::Result<(), sea_orm::sqlx::Error> {
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    tracing::debug!(target: "outbox", channel, "listening for new outbox events");
    loop {
        // `try_recv` reports a lost connection as `None` (and reconnects on the next call) instead of hiding it;
        // either way there may be something to publish.
        listener.try_recv().await?;
        wake();
    }
}

/// The database's clock in Unix microseconds: partition leases are judged by it, so relays whose clocks disagree
/// agree on when a lease ends.
macro_rules! db_now {
    () => {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)"
    };
}

/// PostgreSQL's commit-order cursor (see `cursor/mod.rs`): a window is the events whose transactions became visible
/// between two snapshots of `pg_current_snapshot()`.
pub(super) const CURSOR: CursorSql = CursorSql {
    now: db_now!(),
    json_arrays: false,
    sequenced: false,
    adopts_late: true,
    first_start_lock: None,
    // Sorts off: a window is read by walking its partition's id index, which needs none. On a table never
    // analyzed (300k rows written in a minute) the planner took the transaction-id index and sorted the whole
    // partition for every batch of 100 (37-67 ms a read instead of 0.2 ms, `EXPLAIN ANALYZE`): one partition fell
    // minutes behind the others.
    // Generic plans: with sorts off, each statement's ORDER BY leaves the planner one index to walk whatever the
    // values or the statistics (the same plan on an empty table as on one of 300k rows never analyzed), so a
    // statement is planned once per connection. Planning each time for its values cost more than running it:
    // 0.3-0.45 ms to plan the window's opening, 0.25 ms the read, against 0.05-0.09 ms to run either
    // (`pg_stat_statements`, 200 events/s).
    bound_read: Some(
        "SELECT set_config('plan_cache_mode', 'force_generic_plan', true), set_config('jit', 'off', true), \
         set_config('enable_sort', 'off', true), set_config('enable_incremental_sort', 'off', true), \
         set_config('statement_timeout', ?, true), set_config('idle_in_transaction_session_timeout', ?, true)",
    ),
    bound_settle: Some(
        "SELECT set_config('synchronous_commit', 'off', true), set_config('lock_timeout', ?, true), \
         set_config('statement_timeout', ?, true), set_config('idle_in_transaction_session_timeout', ?, true)",
    ),
    unbound_settle: None,
    bounds: Bounds::MillisText,
    legacy: "SELECT id, aggregate_type, aggregate_id FROM {t} \
        WHERE status = 0 AND (partition_no IS NULL OR txid IS NULL) ORDER BY id LIMIT ?",
    adopt: "UPDATE {t} SET partition_no = v.p, txid = pg_current_xact_id() \
        FROM (SELECT unnest(CAST(? AS BIGINT[])) AS id, unnest(CAST(? AS SMALLINT[])) AS p) v WHERE {t}.id = v.id \
          AND ({t}.partition_no IS NULL OR {t}.txid IS NULL)",
    create: "INSERT INTO {t}_cursors (partition_no, partitions, snap_from) \
        SELECT g, CAST(? AS SMALLINT), CAST(s.start AS TEXT) || ':' || CAST(s.start AS TEXT) || ':' \
        FROM generate_series(0, CAST(? AS INTEGER) - 1) g, LATERAL (SELECT COALESCE( \
          (SELECT MIN(txid) FROM {t} WHERE status = 0 AND partition_no = g), \
          pg_snapshot_xmin(pg_current_snapshot())) AS start) s \
        ON CONFLICT DO NOTHING",
    analyze: "ANALYZE {t}_cursors",
    acquire: concat!(
        "WITH free AS (SELECT partition_no FROM {t}_cursors WHERE owner IS NULL OR lease_until < ",
        db_now!(),
        " ORDER BY partition_no LIMIT $3 FOR UPDATE SKIP LOCKED) \
        UPDATE {t}_cursors c SET owner = $1, epoch = c.epoch + 1, lease_until = ",
        db_now!(),
        " + $2 FROM free WHERE c.partition_no = free.partition_no"
    ),
    renew: concat!(
        "WITH mine AS (SELECT partition_no FROM {t}_cursors WHERE owner = $2 ORDER BY partition_no FOR UPDATE) \
        UPDATE {t}_cursors c SET lease_until = ",
        db_now!(),
        " + $1 FROM mine WHERE c.partition_no = mine.partition_no"
    ),
    // The window's ends, found through the transaction-id index: its two parts are planned on their own
    // (`OFFSET 0`), or the planner takes MIN and MAX by walking the id index from either end and filtering, which
    // reads every event ever stored once the table keeps its history. Each part is
    // ordered by the transaction-id index (with sorts off, see `bound_read`), and an in-progress transaction is
    // looked up as a range of one: without statistics the planner costs both partial indexes alike and walked the
    // whole partition in the `(partition_no, id)` one, filtering (128 ms for three partitions of 28k rows on a
    // table never analyzed, 0.24 ms this way).
    open: "SELECT v.p AS partition_no, CAST(s.cur AS TEXT) AS snapshot, w.low, w.high, \
          EXISTS (SELECT 1 FROM {t}_parked k WHERE k.partition_no = v.p) AS parked \
        FROM unnest(CAST($1 AS SMALLINT[]), CAST($2 AS TEXT[]), CAST($3 AS TEXT[]), CAST($4 AS BOOLEAN[])) \
          AS v(p, snap_from, snap_to, fresh), \
        LATERAL (SELECT COALESCE(CAST(NULLIF(v.snap_to, '') AS pg_snapshot), pg_current_snapshot()) AS cur) s, \
        LATERAL (SELECT MIN(id) AS low, MAX(id) AS high FROM ( \
          (SELECT id FROM {t} WHERE v.fresh AND status = 0 AND partition_no = v.p \
            AND txid >= pg_snapshot_xmax(CAST(v.snap_from AS pg_snapshot)) AND txid < pg_snapshot_xmax(s.cur) \
            AND pg_visible_in_snapshot(txid, s.cur) ORDER BY partition_no, txid) \
          UNION ALL \
          (SELECT y.id FROM unnest(ARRAY(SELECT pg_snapshot_xip(CAST(v.snap_from AS pg_snapshot)))) x(xid), \
            LATERAL (SELECT id FROM {t} WHERE v.fresh AND status = 0 AND partition_no = v.p \
              AND txid >= x.xid AND txid <= x.xid AND pg_visible_in_snapshot(txid, s.cur) \
              ORDER BY partition_no, txid) y) \
          OFFSET 0) u) w",
    // Walked in the partition's id index, as a row comparison: the plain id index (status = 0 holds every event
    // under a cursor) would read every partition's events to find this one's (8x the rows with 8 partitions).
    read: window_read!(
        pos = "id";
        "(partition_no, id) > ($1, $2) AND (partition_no, id) <= ($1, $3) \
          AND pg_visible_in_snapshot(txid, CAST($4 AS pg_snapshot)) \
          AND NOT pg_visible_in_snapshot(txid, CAST($5 AS pg_snapshot)) \
        ORDER BY partition_no, id LIMIT $6"
    ),
    parked: parked_runs!(db_now!()),
    repartition: "UPDATE {t} SET partition_no = v.p \
        FROM (SELECT unnest(CAST(? AS BIGINT[])) AS id, unnest(CAST(? AS SMALLINT[])) AS p) v \
        WHERE {t}.id = v.id AND {t}.partition_no IS NULL",
    park: concat!(
        "INSERT INTO {t}_parked (id, partition_no, aggregate_type, aggregate_id, next_attempt_at) \
        SELECT o.id, o.partition_no, o.aggregate_type, o.aggregate_id, ",
        db_now!(),
        " FROM unnest(CAST(? AS BIGINT[])) WITH ORDINALITY AS u(id, n) JOIN {t} o ON o.id = u.id \
        ORDER BY u.n ON CONFLICT (id) DO NOTHING"
    ),
    unpark: "DELETE FROM {t}_parked WHERE id = ANY(CAST(? AS BIGINT[]))",
    unplaced: "(o.partition_no IS NULL OR o.txid IS NULL)",
    ahead: "o.txid >= pg_snapshot_xmin(CAST(c.snap_from AS pg_snapshot)) \
        AND NOT pg_visible_in_snapshot(o.txid, CAST(c.snap_from AS pg_snapshot)) \
        AND NOT (c.snap_to IS NOT NULL AND o.id <= c.after_id \
          AND pg_visible_in_snapshot(o.txid, CAST(c.snap_to AS pg_snapshot)))",
    // Below the snapshot's xmin, every transaction had ended when the cursor read to it: an index range of
    // `(partition_no, txid)` per partition.
    delivered: "SELECT o.id FROM {t}_cursors c JOIN {t} o ON o.partition_no = c.partition_no AND o.status = 0 \
          AND o.txid < pg_snapshot_xmin(CAST(c.snap_from AS pg_snapshot)) \
        WHERE o.occurred_at < $1 AND NOT EXISTS (SELECT 1 FROM {t}_parked p WHERE p.id = o.id) LIMIT $2",
    pending: "SELECT CAST(COALESCE(SUM(w.n), 0) + {parked} \
          + (SELECT COUNT(*) FROM {t} WHERE status = 0 AND (partition_no IS NULL OR txid IS NULL)) \
          + CASE WHEN EXISTS (SELECT 1 FROM {t}_cursors) THEN 0 ELSE (SELECT COUNT(*) FROM {t} \
            WHERE status = 0 AND partition_no IS NOT NULL AND txid IS NOT NULL) END AS BIGINT), \
          LEAST(MIN(w.oldest), \
            (SELECT MIN(o.occurred_at) FROM {t}_parked p JOIN {t} o ON o.id = p.id), \
            (SELECT MIN(occurred_at) FROM {t} WHERE status = 0 AND (partition_no IS NULL OR txid IS NULL)), \
            CASE WHEN EXISTS (SELECT 1 FROM {t}_cursors) THEN NULL ELSE (SELECT MIN(occurred_at) FROM {t} \
              WHERE status = 0 AND partition_no IS NOT NULL AND txid IS NOT NULL) END) \
        FROM {t}_cursors c, LATERAL (SELECT COUNT(*) AS n, MIN(o.occurred_at) AS oldest FROM {t} o \
          WHERE o.partition_no = c.partition_no AND o.status = 0 \
            AND o.txid >= pg_snapshot_xmin(CAST(c.snap_from AS pg_snapshot)) \
            AND NOT pg_visible_in_snapshot(o.txid, CAST(c.snap_from AS pg_snapshot)) \
            AND NOT (c.snap_to IS NOT NULL AND o.id <= c.after_id \
              AND pg_visible_in_snapshot(o.txid, CAST(c.snap_to AS pg_snapshot)))) w",
};

/// The plans the cursor's reads run with: generic plans (`bound_read`), on a table never analyzed and on one
/// analyzed, must walk the partition's indexes and never sort or scan the events table. A plan that does reads
/// every event the table keeps for each batch: it is right and fast on a small table, so only its shape shows it.
#[cfg(all(test, feature = "postgres"))]
mod plans {
    use sea_orm::{ConnectionTrait, Database, DatabaseConnection, TransactionTrait};

    use super::CURSOR;

    const EVENTS: u32 = 20_000;
    const PARTITIONS: i16 = 8;

    async fn connect() -> DatabaseConnection {
        let url = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        Database::connect(&url).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {url} is not reachable ({e}); .ci/run starts it")
        })
    }

    /// The generic plan of `statement` run with `arguments`, as the relay runs it: prepared, in a transaction
    /// under the settings of `bound_read`.
    async fn generic_plan(db: &DatabaseConnection, statement: &str, arguments: &str) -> String {
        let txn = db.begin().await.unwrap();
        let bound = CURSOR.bound_read.unwrap().replace('?', "'5000'");
        txn.execute_unprepared(&bound).await.unwrap();
        txn.execute_unprepared(&format!("PREPARE plan_shape AS {statement}"))
            .await
            .unwrap();
        let rows = txn
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!("EXPLAIN (COSTS OFF) EXECUTE plan_shape({arguments})"),
            ))
            .await
            .unwrap();
        // A prepared statement outlives the transaction.
        txn.execute_unprepared("DEALLOCATE plan_shape")
            .await
            .unwrap();
        txn.rollback().await.unwrap();
        let lines: Vec<String> = rows
            .iter()
            .map(|row| row.try_get_by_index::<String>(0).unwrap())
            .collect();
        lines.join("\n")
    }

    /// Asserts that the events table `t` is read only through `index`, with no sort anywhere.
    fn assert_walks(plan: &str, t: &str, index: &str, what: &str) {
        assert!(
            plan.lines()
                .any(|line| line.contains(&format!("using {t}_{index} on {t}"))),
            "{what} does not walk {t}_{index}:\n{plan}"
        );
        for line in plan.lines() {
            let scans_events = line
                .split(" on ")
                .skip(1)
                .any(|after| after.split(' ').next() == Some(t));
            let through_an_index = line.contains(&format!("Index Scan using {t}_"))
                || line.contains(&format!("Index Only Scan using {t}_"));
            assert!(
                !scans_events || through_an_index,
                "{what} reads the events table other than through an index:\n{plan}"
            );
            assert!(!line.contains("Sort"), "{what} sorts:\n{plan}");
        }
    }

    async fn assert_cursor_plans(db: &DatabaseConnection, t: &str, state: &str) {
        let snapshot: String = db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT CAST(pg_current_snapshot() AS TEXT)",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index(0)
            .unwrap();
        let open = CURSOR.open.replace("{t}", t);
        let plan = generic_plan(
            db,
            &open,
            &format!(
                "ARRAY[0, 1], ARRAY['1:1:', '1:1:'], ARRAY['{snapshot}', ''], ARRAY[true, true]"
            ),
        )
        .await;
        assert_walks(&plan, t, "txid_idx", &format!("opening a window ({state})"));
        let read = CURSOR.read.replace("{t}", t);
        let plan = generic_plan(
            db,
            &read,
            &format!("0, 0, {EVENTS}, '{snapshot}', '1:1:', 1000"),
        )
        .await;
        assert_walks(&plan, t, "log_idx", &format!("reading a window ({state})"));
    }

    #[tokio::test]
    async fn the_cursor_walks_its_indexes_under_generic_plans() {
        let db = connect().await;
        let t = format!("plans_{:016x}", fastrand::u64(..));
        crate::migration::create_table(&db, &t).await.unwrap();
        assert_cursor_plans(&db, &t, "empty").await;
        db.execute_unprepared(&format!(
            "INSERT INTO {t} (event_id, event_type, data_version, aggregate_type, aggregate_id, payload, \
               occurred_at, partition_no) \
             SELECT gen_random_uuid(), 'user.registered', '1', 'user', 'u' || (g % 500), '{{}}', now(), \
               g % {PARTITIONS} FROM generate_series(1, {EVENTS}) g"
        ))
        .await
        .unwrap();
        assert_cursor_plans(&db, &t, "never analyzed").await;
        db.execute_unprepared(&format!("ANALYZE {t}"))
            .await
            .unwrap();
        assert_cursor_plans(&db, &t, "analyzed").await;
        db.execute_unprepared(&format!(
            "DROP TABLE {t}, {t}_lock, {t}_relays, {t}_cursors, {t}_parked; DROP FUNCTION {t}_notify()"
        ))
        .await
        .unwrap();
    }
}
