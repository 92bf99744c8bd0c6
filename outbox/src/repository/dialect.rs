//! What tells one database from another, in one place.
//!
//! The repository's SQL is written once (`sql.rs`) and each backend declares how it differs in its own module:
//! `postgres.rs`, `mysql.rs` and `sqlite.rs` each hold a [`Dialect`] (placeholders, id lists, the event id's
//! type, the schema, the statements whose form differs, the catalog the migration asks, the wake-up source) next
//! to their claim algorithm. This file is the only place that picks one by the connection's backend; nothing else
//! in the crate matches on a backend. A new database is a new module with its `Dialect` and claim, and an arm
//! here (see `docs/design.md`).

use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, TransactionTrait, Value};
use uuid::Uuid;

use super::claim::Lease;
use super::{OutboxRepository, Result, TableName};

/// The differences of one database, as data: the shared code reads these fields and never asks which backend
/// it runs on.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// sea-orm's name for it, which statements are built for.
    pub(crate) backend: DbBackend,
    /// `postgres`, `mysql` or `sqlite`: the name of its schema file (`outbox/sql/<name>.sql`) in errors.
    pub(crate) name: &'static str,
    /// The schema, with the default table name, one statement per line ending in `;`.
    pub(crate) schema: &'static str,
    /// Whether placeholders are numbered (`$1`, `$2`) rather than `?`.
    pub(crate) numbered_placeholders: bool,
    /// Whether a list of ids goes as one array parameter (any number of ids, one statement text) rather than
    /// one placeholder per id (at most [`sql::CHUNK`](super::sql::CHUNK) at a time).
    pub(crate) id_array: bool,
    /// How [`add_event_with`](super::OutboxRepository::add_event_with) stores the event in the caller's
    /// statement, if it can.
    pub(crate) one_statement: OneStatement,
    /// Whether the event id column is a native UUID rather than text.
    pub(crate) native_uuid: bool,
    /// Deletes published rows older than `?`, at most `?` of them, oldest first.
    pub(crate) purge_published: &'static str,
    /// The inbox table's schema (`outbox/sql/<backend>_inbox.sql`).
    pub(crate) inbox_schema: &'static str,
    /// Records a message in the inbox unless its key is there: `(consumer, message_id, processed_at)`.
    pub(crate) inbox_record: &'static str,
    /// Whether an INSERT can return the rows it inserted (`RETURNING`), so a batch of messages is recorded in
    /// the inbox by one statement; MySQL cannot, and records them one by one.
    pub(crate) insert_returning: bool,
    /// Keeps a consumer dead letter, replacing one of the same message: `(consumer, message_id, event_type,
    /// cloudevent, reason, attempts, failed_at)`. One statement, since a DELETE then INSERT of absent keys
    /// deadlocks on InnoDB's gap locks when two consumers' tasks do it at once.
    pub(crate) inbox_dead_letter: &'static str,
    /// How many batches a relay keeps in flight unless told otherwise.
    pub(crate) batches_in_flight: usize,
    /// The catalog query that counts the schema objects of a kind named `?`, for the migration.
    pub(crate) catalog: fn(SchemaObject) -> &'static str,
    /// Whether a driver error says the table named in it does not exist.
    pub(crate) missing_table: fn(error: &str, table: &str) -> bool,
    /// Starts the task that calls `wake` whenever a transaction that stored events commits, where the database
    /// can signal that; `None` where it cannot (the relay then polls).
    pub(crate) wake_ups: fn(&sea_orm::DatabaseConnection, &TableName, Wake) -> Option<WakeTask>,
    /// The statements that let relays under load ask writers not to wake them, where the database wakes relays
    /// (see `wake.rs`); `None` elsewhere.
    pub(crate) wake: Option<&'static super::wake::WakeSql>,
    /// The statements of the commit-order cursor ([`Delivery::Cursor`](crate::Delivery::Cursor)).
    pub(crate) cursor: &'static super::cursor::CursorSql,
}

/// How the caller's change and its event become one statement, so the event costs no round trip of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OneStatement {
    /// The event's INSERT as a data-modifying CTE of the change (`WITH e AS (INSERT ...) UPDATE ...`).
    Cte,
    /// Both in an anonymous block (`BEGIN NOT ATOMIC ... END`): MariaDB has it and MySQL lacks it, so the server
    /// is asked which it is.
    Block,
    /// Neither: two statements.
    Two,
}

/// What a wake-up calls.
pub(crate) type Wake = Box<dyn Fn() + Send + Sync>;

/// A running wake-up source; aborting it stops the wake-ups.
pub(crate) type WakeTask = tokio::task::JoinHandle<()>;

/// The kinds of schema object the migration creates, each of which it first looks up in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SchemaObject {
    Table,
    Index,
    Trigger,
    /// A table's `fillfactor` setting (PostgreSQL): looked up as the table with that option.
    Fillfactor,
    /// A column, looked up as `table.column`.
    Column,
    /// A column's default (PostgreSQL), looked up as `table.column`.
    ColumnDefault,
}

impl Dialect {
    /// The dialect of the database `db` runs on.
    pub(crate) fn of(db: &impl ConnectionTrait) -> &'static Self {
        Self::for_backend(db.get_database_backend())
    }

    /// The dialect of `backend`. sea-orm knows three; anything else it may add speaks SQLite's dialect until it is
    /// given its own module.
    pub(crate) fn for_backend(backend: DbBackend) -> &'static Self {
        match backend {
            DbBackend::Postgres => &super::postgres::DIALECT,
            DbBackend::MySql => &super::mysql::DIALECT,
            _ => &super::sqlite::DIALECT,
        }
    }

    /// Builds a statement from SQL written with `?` placeholders and `{t}` for the (validated) table name.
    pub(crate) fn statement(&self, table: &TableName, sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.backend, self.sql(table, sql, 1), values)
    }

    /// `sql`, written with `{t}` for `table` and `?` placeholders, in this dialect, its placeholders numbered from
    /// `first` where they are numbered: for a statement bound after `first - 1` values of another.
    pub(crate) fn sql(&self, table: &TableName, sql: &str, first: u32) -> String {
        self.with_placeholders_from(&sql.replace("{t}", table.as_str()), first)
    }

    /// `sql`, written with `?` placeholders, in this dialect's placeholders.
    pub(crate) fn with_placeholders(&self, sql: &str) -> String {
        self.with_placeholders_from(sql, 1)
    }

    fn with_placeholders_from(&self, sql: &str, first: u32) -> String {
        if self.numbered_placeholders {
            numbered_placeholders(sql, first)
        } else {
            sql.to_owned()
        }
    }

    /// The condition `id IN (ids)`, with its values. As one array parameter where the dialect takes one: the
    /// statement is then the same text for any number of ids (one prepared statement), and nothing is built,
    /// bound or parsed per id, which a placeholder per id cost the relay on every mark (callgrind). Elsewhere one
    /// placeholder per id, so at most [`id_chunk`](Self::id_chunk) ids at a time.
    pub(crate) fn id_in(&self, ids: &[i64]) -> (String, Vec<Value>) {
        if self.id_array {
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
        (
            format!("id IN ({})", super::sql::placeholders(ids.len())),
            values,
        )
    }

    /// How many ids one [`id_in`](Self::id_in) condition may take.
    pub(crate) fn id_chunk(&self) -> usize {
        if self.id_array {
            usize::MAX
        } else {
            super::sql::CHUNK
        }
    }

    /// The event id as the column stores it.
    pub(crate) fn event_id(&self, id: Uuid) -> Value {
        if self.native_uuid {
            id.into()
        } else {
            id.to_string().into()
        }
    }

    /// The DDL, one statement per item, with the table name substituted.
    pub(crate) fn schema(&self, table: &TableName) -> Vec<String> {
        statements(self.schema, TableName::DEFAULT, table.as_str())
    }

    /// The inbox's statements, for a table named `table`.
    pub(crate) fn inbox_schema(&self, table: &TableName) -> Vec<String> {
        statements(
            self.inbox_schema,
            super::inbox::DEFAULT_TABLE,
            table.as_str(),
        )
    }
}

/// The statements of a schema file, comments dropped, its default table name replaced by `table`.
fn statements(schema: &str, default: &str, table: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in schema.lines().filter(|l| !l.trim_start().starts_with("--")) {
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            let statement = current.trim().trim_end_matches(';').replace(default, table);
            statements.push(statement);
            current.clear();
        }
    }
    statements
}

pub(super) fn no_wake_ups(
    _: &sea_orm::DatabaseConnection,
    _: &TableName,
    _: Wake,
) -> Option<WakeTask> {
    None
}

/// `?` becomes `$1`, `$2`, ... (the SQL here has no `?` in literals).
fn numbered_placeholders(sql: &str, first: u32) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut number = itoa::Buffer::new();
    let mut n = first;
    for c in sql.chars() {
        if c == '?' {
            out.push('$');
            out.push_str(number.format(n));
            n += 1;
        } else {
            out.push(c);
        }
    }
    out
}

impl OutboxRepository {
    /// Leases rows with the claim algorithm of `db`'s database; the rows come back in no particular order.
    pub(super) async fn claim_rows<C>(
        &self,
        db: &C,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<QueryResult>>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        match db.get_database_backend() {
            DbBackend::Postgres => self.claim_postgres(db, lease, limit).await,
            DbBackend::MySql => self.claim_mysql(db, lease, limit).await,
            _ => self.claim_sqlite(db, lease, limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&Dialect; 3] = [
        &super::super::postgres::DIALECT,
        &super::super::mysql::DIALECT,
        &super::super::sqlite::DIALECT,
    ];

    #[test]
    fn each_backend_has_its_own_dialect() {
        for backend in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            assert_eq!(Dialect::for_backend(backend).backend, backend);
        }
    }

    #[test]
    fn numbered_placeholders_count_from_one() {
        assert_eq!(
            numbered_placeholders("a = ? AND b IN (?, ?)", 1),
            "a = $1 AND b IN ($2, $3)"
        );
        assert_eq!(numbered_placeholders("?", 1), "$1");
        assert_eq!(
            numbered_placeholders("no placeholders", 1),
            "no placeholders"
        );
        assert_eq!(numbered_placeholders("(?, ?)", 3), "($3, $4)");
    }

    #[test]
    fn an_id_array_is_one_parameter_for_any_number_of_ids() {
        let postgres = Dialect::for_backend(DbBackend::Postgres);
        let (condition, values) = postgres.id_in(&[3, 10, -1]);
        assert_eq!(condition, "id = ANY(CAST(? AS BIGINT[]))");
        assert_eq!(values, vec![Value::from("{3,10,-1}")]);
        let (condition, values) = postgres.id_in(&[]);
        assert_eq!(condition, "id = ANY(CAST(? AS BIGINT[]))");
        assert_eq!(values, vec![Value::from("{}")]);
        assert_eq!(postgres.id_chunk(), usize::MAX);
    }

    #[test]
    fn elsewhere_an_id_list_is_one_placeholder_per_id() {
        for dialect in [
            Dialect::for_backend(DbBackend::MySql),
            Dialect::for_backend(DbBackend::Sqlite),
        ] {
            let (condition, values) = dialect.id_in(&[3, 10]);
            assert_eq!(condition, "id IN (?, ?)");
            assert_eq!(values, vec![Value::from(3i64), Value::from(10i64)]);
            assert_eq!(dialect.id_chunk(), super::super::sql::CHUNK);
        }
    }

    #[test]
    fn every_name_the_schema_derives_fits_every_backend() {
        let table = TableName::new(&"t".repeat(TableName::MAX_LEN)).unwrap();
        // PostgreSQL cuts identifiers at 63 bytes, MySQL refuses them over 64; SQLite has no limit.
        for (dialect, limit) in [(ALL[0], 63), (ALL[1], 64)] {
            for statement in dialect.schema(&table) {
                for word in statement.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with(table.as_str()) {
                        assert!(
                            word.len() <= limit,
                            "{}: {word} ({} bytes)",
                            dialect.name,
                            word.len()
                        );
                    }
                }
            }
        }
        let longest = ALL
            .iter()
            .flat_map(|dialect| {
                dialect
                    .schema
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter_map(|word| word.strip_prefix(TableName::DEFAULT))
                    .map(str::len)
            })
            .max();
        assert_eq!(longest, Some(super::super::sql::LONGEST_SUFFIX));
    }

    #[test]
    fn the_schema_takes_the_table_name_everywhere() {
        let table = TableName::new("shop_outbox").unwrap();
        for dialect in ALL {
            let statements = dialect.schema(&table);
            assert!(statements.len() >= 2, "{}", dialect.name);
            for s in &statements {
                assert!(!s.contains("outbox_events"), "{}: {s}", dialect.name);
                assert!(s.contains("shop_outbox"), "{}: {s}", dialect.name);
            }
        }
    }

    #[test]
    fn no_backend_is_told_apart_outside_the_dialects() {
        // The seam's rule, checked on the source: only this file and the backends' own modules name a backend or
        // reach for a driver's pool in their code.
        let allowed = ["dialect.rs", "postgres.rs", "mysql.rs", "sqlite.rs"];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut pending = vec![root];
        let mut offenders = Vec::new();
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let in_store = path.parent().is_some_and(|p| p.ends_with("repository"));
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if in_store && allowed.contains(&name.as_str()) {
                    continue;
                }
                // Code only: a doc example may show a user naming a backend.
                let text: String = std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .filter(|line| !line.trim_start().starts_with("//"))
                    .collect();
                for needle in ["DbBackend::", "DatabaseBackend::", "_connection_pool("] {
                    if text.contains(needle) {
                        offenders.push(format!("{}: {needle}", path.display()));
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "{offenders:#?}");
    }
}
