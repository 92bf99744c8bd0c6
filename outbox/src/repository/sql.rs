//! The SQL the repository runs, written once with `?` placeholders and adapted to each backend here.
//!
//! Hand-written rather than built with sea-query so that every statement is readable in one place and the
//! claim query is exactly the one `docs/design.md` explains.

use sea_orm::{DbBackend, Statement, Value};

use super::error::RepositoryError;

/// Row states. Stored as a small integer so the partial indexes stay tiny.
pub const PENDING: i16 = 0;
pub const PUBLISHED: i16 = 1;
pub const DEAD: i16 = 2;

/// Ends a row's lease: what every mark, failure, release and replay sets.
pub const END_LEASE: &str = "locked_until = NULL, claim_token = NULL";

/// Every column a stored event is read back with, in the order `row::StoredEvent::from_row` expects.
pub const COLUMNS: &str = "id, event_id, event_type, data_version, aggregate_type, aggregate_id, payload, \
     correlation_id, causation_id, traceparent, tracestate, occurred_at, status, attempts, last_error, published_at";

/// The longest suffix the schema adds to the table's name (`_published_idx`, `_aggregate_idx`).
const LONGEST_SUFFIX: usize = "_published_idx".len();

/// The outbox table's name, validated so it can be spliced into SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName(String);

impl TableName {
    /// The default table name.
    pub const DEFAULT: &'static str = "outbox_events";

    /// The longest name: the schema names indexes `<table>_published_idx` and `<table>_aggregate_idx` (14 more
    /// bytes), and PostgreSQL cuts identifiers at 63 bytes (so two long index names could become one, silently)
    /// while MySQL refuses them over 64. One limit for every backend, so a table can move between them.
    pub const MAX_LEN: usize = 63 - LONGEST_SUFFIX;

    /// Accepts names of 1 to [`MAX_LEN`](Self::MAX_LEN) (49) lowercase ASCII letters, digits and underscores, not
    /// starting with a digit; lowercase keeps the name PostgreSQL folds it to equal to the LISTEN channel.
    pub fn new(name: &str) -> Result<Self, RepositoryError> {
        let valid = (1..=Self::MAX_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(RepositoryError::InvalidTableName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TableName {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

/// Builds a statement from SQL written with `?` placeholders and `{t}` for the (validated) table name.
pub fn statement(
    backend: DbBackend,
    table: &TableName,
    sql: &str,
    values: Vec<Value>,
) -> Statement {
    let sql = sql.replace("{t}", table.as_str());
    let sql = match backend {
        DbBackend::Postgres => numbered_placeholders(&sql),
        _ => sql,
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Rows per INSERT, per UPDATE of failures and per [`id_in`] outside PostgreSQL: well under every backend's limit
/// on bound parameters.
pub const CHUNK: usize = 500;

/// PostgreSQL numbers its placeholders: `?` becomes `$1`, `$2`, ... (the SQL here has no `?` in literals).
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut number = itoa::Buffer::new();
    let mut n: u32 = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(number.format(n));
        } else {
            out.push(c);
        }
    }
    out
}

/// The condition `id IN (ids)`, with its values. PostgreSQL takes the ids as one array parameter: the statement
/// is then the same text for any number of ids (one prepared statement), and nothing is built, bound or parsed
/// per id, which a placeholder per id cost the relay on every mark (callgrind). Elsewhere one placeholder per
/// id, so at most [`id_chunk`] ids at a time.
pub fn id_in(backend: DbBackend, ids: &[i64]) -> (String, Vec<Value>) {
    if backend == DbBackend::Postgres {
        let mut array = String::with_capacity(ids.len() * 8 + 2);
        let mut number = itoa::Buffer::new();
        array.push('{');
        for (i, &id) in ids.iter().enumerate() {
            if i > 0 {
                array.push(',');
            }
            array.push_str(number.format(id));
        }
        array.push('}');
        return (
            "id = ANY(CAST(? AS BIGINT[]))".to_owned(),
            vec![array.into()],
        );
    }
    let values = ids.iter().map(|&id| Value::from(id)).collect();
    (format!("id IN ({})", placeholders(ids.len())), values)
}

/// How many ids one [`id_in`] condition may take: any number on PostgreSQL (one parameter), [`CHUNK`] elsewhere.
pub fn id_chunk(backend: DbBackend) -> usize {
    if backend == DbBackend::Postgres {
        usize::MAX
    } else {
        CHUNK
    }
}

/// `?, ?, ?` for `n` values.
pub fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// The DDL for `backend`, one statement per item, with the table name substituted.
pub fn schema(backend: DbBackend, table: &TableName) -> Vec<String> {
    let template = match backend {
        DbBackend::Postgres => include_str!("../../sql/postgres.sql"),
        DbBackend::MySql => include_str!("../../sql/mysql.sql"),
        _ => include_str!("../../sql/sqlite.sql"),
    };
    // A statement ends with a line ending in `;` (a function body may hold `;` mid-line).
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in template
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
    {
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            let statement = current
                .trim()
                .trim_end_matches(';')
                .replace(TableName::DEFAULT, table.as_str());
            statements.push(statement);
            current.clear();
        }
    }
    statements
}

/// Serializes claims on one table (MySQL; PostgreSQL's is [`LOCK_POSTGRES`]): a row lock held until the claim
/// commits, so two relays never judge the same aggregate's order at once. Released by commit or rollback, never
/// left behind. Also returns the database's clock, which lease times are judged by (microseconds since the
/// epoch, UTC), read before the lock is granted: a lease measured from it ends early rather than late.
pub const LOCK: &str = "SELECT id, TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) AS now_micros \
     FROM {t}_lock WHERE id = 1 FOR UPDATE";

/// Puts the lock row back when it was deleted, so the claims stay serialized (the migration creates it).
pub const LOCK_ROW_POSTGRES: &str = "INSERT INTO {t}_lock (id) VALUES (1) ON CONFLICT DO NOTHING";
/// [`LOCK_ROW_POSTGRES`] for MySQL.
pub const LOCK_ROW_MYSQL: &str = "INSERT IGNORE INTO {t}_lock (id) VALUES (1)";

/// Bounds a MySQL claim: its lock wait, and (MariaDB, with `idle_transaction_timeout`) how long its
/// transaction may sit idle before the server ends the session, which is what frees the lock of a relay frozen
/// inside its claim. Session variables, so the session's own values are kept in user variables and put back by
/// [`RESTORE_MYSQL`] before the claim commits. Values: the timeout in seconds (once, or twice on MariaDB).
pub const BOUND_MYSQL: &str = "SET @outbox_lwt = @@SESSION.innodb_lock_wait_timeout, \
     SESSION innodb_lock_wait_timeout = ?";
/// [`BOUND_MYSQL`]'s MariaDB form.
pub const BOUND_MARIADB: &str = "SET @outbox_lwt = @@SESSION.innodb_lock_wait_timeout, \
     @outbox_itt = @@SESSION.idle_transaction_timeout, SESSION innodb_lock_wait_timeout = ?, \
     SESSION idle_transaction_timeout = ?";
/// Undoes [`BOUND_MYSQL`].
pub const RESTORE_MYSQL: &str = "SET SESSION innodb_lock_wait_timeout = @outbox_lwt";
/// Undoes [`BOUND_MARIADB`].
pub const RESTORE_MARIADB: &str = "SET SESSION innodb_lock_wait_timeout = @outbox_lwt, \
     SESSION idle_transaction_timeout = @outbox_itt";

/// Pending rows that may be claimed now, oldest first: not leased, due, and with no earlier pending event of the
/// same aggregate that is leased by another owner or waiting for a retry (so an aggregate's events are handed out
/// in order, and a failing event holds back only its own aggregate). Events behind the claiming owner's own leases
/// are claimable: the owner publishes them after the leased ones (see `LeaseOwner`). Preceded by the columns to
/// select. Values: now, now, now, owner's first token, owner's last token, now, limit.
pub const CLAIMABLE: &str = "FROM {t} o \
     WHERE o.status = 0 \
       AND (o.locked_until IS NULL OR o.locked_until < ?) \
       AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= ?) \
       AND NOT EXISTS ( \
         SELECT 1 FROM {t} p \
         WHERE p.status = 0 AND p.aggregate_type = o.aggregate_type AND p.aggregate_id = o.aggregate_id \
           AND p.id < o.id \
           AND ((p.locked_until >= ? AND p.claim_token NOT BETWEEN ? AND ?) OR p.next_attempt_at > ?)) \
     ORDER BY o.id LIMIT ?";

/// PostgreSQL's fast claim: the first `window` pending rows by id, walked in the pending index (with bitmap and
/// sequential scans turned off for the transaction by [`LOCK_POSTGRES`]), and from them the claimable ones.
/// Every pending row older than a row of the window is in the window too, so "no earlier pending event of the
/// same aggregate is leased or retrying" can be judged inside it. Its cost is the window's, not the backlog's,
/// whatever the statistics say: without them the planner reads every pending row and sorts (372 ms for a batch of
/// 50 over 350k pending rows, measured; 40 ms for 1,000 this way). When the window holds fewer claimable rows
/// than asked (many heads leased or retrying), [`CLAIM_POSTGRES`] claims the rest. The window starts at an id
/// below which nothing is pending (see `scan.rs`). A row is `leased` by anyone, `held` when it keeps its
/// aggregate's later events back (leased by another owner, or retrying). The UPDATE finds the chosen rows by
/// their physical address (`ctid`), read with the window, rather than by a second walk of the pending index (7%
/// of the statement, measured). Values: now, now, owner's first token, owner's last token, now, start id, window,
/// token, lease until, limit.
pub const CLAIM_POSTGRES_WINDOW: &str = "WITH head AS MATERIALIZED ( \
       SELECT id, ctid AS tid, aggregate_type, aggregate_id, COALESCE(locked_until >= ?, FALSE) AS leased, \
              (COALESCE(locked_until >= ? AND claim_token NOT BETWEEN ? AND ?, FALSE) \
               OR COALESCE(next_attempt_at > ?, FALSE)) AS held \
       FROM {t} WHERE status = 0 AND id >= ? ORDER BY id LIMIT ?) \
     UPDATE {t} SET claim_token = ?, locked_until = ? \
     WHERE status = 0 AND ctid = ANY(ARRAY( \
       SELECT o.tid FROM head o WHERE NOT o.leased AND NOT o.held \
         AND NOT EXISTS (SELECT 1 FROM head b WHERE b.held AND b.aggregate_type = o.aggregate_type \
           AND b.aggregate_id = o.aggregate_id AND b.id < o.id) \
       ORDER BY o.id LIMIT ?))";

/// [`LOCK`] on PostgreSQL, which also makes the rest of the claim transaction walk indexes in order (see
/// [`CLAIM_POSTGRES_WINDOW`]) and plan each statement for its values: a generic plan, which sqlx's prepared
/// statements get from the sixth execution on, does not know how far the window's start is from the head, and on
/// a table without statistics took 600-800 ms per claim instead of 20 ms (measured). One round trip for all.
///
/// It also bounds the claim: how long it waits for the lock (`lock_timeout`), how long each statement may run
/// (`statement_timeout`), and how long its transaction may sit idle (`idle_in_transaction_session_timeout`: a
/// relay frozen inside its claim, by SIGSTOP, a VM pause or a network that drops packets, has its session ended by
/// the server, which frees the lock for the others). Each is local to the claim's transaction and set before the
/// lock is waited for. It returns the database's clock (see [`LOCK`]). Values: the claim timeout in milliseconds,
/// three times.
pub const LOCK_POSTGRES: &str = "SELECT id, set_config('enable_bitmapscan', 'off', true), \
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
pub const WINDOW_RETURNING: &str = window_bounds!();

/// [`WINDOW_RETURNING`] and the transactions other than this one that hold a write lock on the outbox table
/// just after the window's snapshot, as one comma-separated text of virtual transaction ids (`scan.rs`: every
/// transaction that stores an event holds that lock from before it takes the event's id until it ends).
pub const WINDOW_RETURNING_WRITERS: &str = concat!(
    window_bounds!(),
    ", (SELECT string_agg(virtualtransaction, ',') FROM pg_locks WHERE locktype = 'relation' \
     AND relation = CAST('{t}' AS regclass) AND mode = 'RowExclusiveLock' AND granted \
     AND pid IS DISTINCT FROM pg_backend_pid()) AS writers"
);

/// Gives the planner its choices back, for [`CLAIM_POSTGRES`] after the window.
pub const FREE_PLANNER: &str = "SELECT set_config('enable_bitmapscan', 'on', true), \
     set_config('enable_seqscan', 'on', true)";

/// PostgreSQL's claim, one statement. The planner cannot be trusted with `CLAIMABLE` as an `IN` subquery: on a
/// queue table whose statistics lag its churn it re-ran the subquery for every pending row (5 s for 800 rows,
/// measured). Here the blocked aggregates are materialized first and the claimed ids are collected into an array
/// before the UPDATE looks rows up by primary key. Retrying rows come from their small partial index; leased rows
/// are in no index (so that leasing stays a HOT update) and are found by walking the pending index, which costs a
/// read of every pending row: this statement only runs when even the widest window held too few claimable rows.
/// Values: now, owner's first token, owner's last token, now, token, lease until, now, now, limit.
pub const CLAIM_POSTGRES: &str = "WITH blocked AS MATERIALIZED ( \
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered() {
        assert_eq!(
            numbered_placeholders("a = ? AND b IN (?, ?)"),
            "a = $1 AND b IN ($2, $3)"
        );
        assert_eq!(numbered_placeholders("?"), "$1");
        assert_eq!(numbered_placeholders("no placeholder"), "no placeholder");
        assert_eq!(placeholders(3), "?, ?, ?");
        assert_eq!(placeholders(0), "");
    }

    #[test]
    fn id_lists_are_one_array_on_postgres_and_placeholders_elsewhere() {
        let (condition, values) = id_in(DbBackend::Postgres, &[3, 10, -1]);
        assert_eq!(condition, "id = ANY(CAST(? AS BIGINT[]))");
        assert_eq!(values, vec![Value::from("{3,10,-1}")]);
        let (condition, values) = id_in(DbBackend::Postgres, &[]);
        assert_eq!(
            (condition.as_str(), values),
            ("id = ANY(CAST(? AS BIGINT[]))", vec![Value::from("{}")])
        );
        let (condition, values) = id_in(DbBackend::MySql, &[3, 10]);
        assert_eq!(condition, "id IN (?, ?)");
        assert_eq!(values, vec![Value::from(3i64), Value::from(10i64)]);
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(TableName::new("outbox_events").is_ok());
        assert!(TableName::new("outbox2").is_ok());
        for bad in [
            "",
            "2outbox",
            "outbox-events",
            "outbox; DROP TABLE users",
            "o\"x",
            &"x".repeat(50),
            "Outbox",
        ] {
            assert!(TableName::new(bad).is_err(), "{bad}");
        }
        assert!(TableName::new(&"x".repeat(49)).is_ok());
    }

    #[test]
    fn every_name_the_schema_derives_fits_every_backend() {
        let table = TableName::new(&"t".repeat(TableName::MAX_LEN)).unwrap();
        // PostgreSQL cuts identifiers at 63 bytes, MySQL refuses them over 64; SQLite has no limit.
        for (backend, limit) in [(DbBackend::Postgres, 63), (DbBackend::MySql, 64)] {
            for statement in schema(backend, &table) {
                for word in statement.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with(table.as_str()) {
                        assert!(
                            word.len() <= limit,
                            "{backend:?}: {word} ({} bytes)",
                            word.len()
                        );
                    }
                }
            }
        }
        let suffixes = ["postgres", "mysql", "sqlite"].map(|name| {
            let sql = match name {
                "postgres" => include_str!("../../sql/postgres.sql"),
                "mysql" => include_str!("../../sql/mysql.sql"),
                _ => include_str!("../../sql/sqlite.sql"),
            };
            sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter_map(|word| word.strip_prefix(TableName::DEFAULT))
                .map(str::len)
                .max()
                .unwrap_or(0)
        });
        assert_eq!(suffixes.into_iter().max(), Some(LONGEST_SUFFIX));
    }

    #[test]
    fn schema_substitutes_the_table_name_everywhere() {
        let table = TableName::new("shop_outbox").unwrap();
        for backend in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            let statements = schema(backend, &table);
            assert!(statements.len() >= 2, "{backend:?}");
            for s in &statements {
                assert!(!s.contains("outbox_events"), "{backend:?}: {s}");
                assert!(s.contains("shop_outbox"), "{backend:?}: {s}");
            }
        }
    }
}
