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
