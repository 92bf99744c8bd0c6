//! One test database per test: a fresh outbox table (and domain table) on the chosen backend.

use std::time::Duration;

use outbox::OutboxConfig;
use outbox::migration::create_table;
use outbox::repository::OutboxRepository;
use outbox::sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MariaDb,
    SqliteFile,
    SqliteMemory,
}

pub struct TestDb {
    pub backend: Backend,
    pub db: DatabaseConnection,
    pub outbox: OutboxRepository,
    /// The database's URL, for another process (an in-memory SQLite database is this process's alone).
    pub url: String,
    /// A domain table of the test's own: `users_<suffix>` (id, email).
    pub users: String,
    _dir: Option<TempDir>,
}

/// A directory removed when the test ends.
pub struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The delivery design a whole test run is asked to use (`TEST_DELIVERY=rows|cursor`; unset: each test's own):
/// the reliability suite runs once more under the commit-order cursor this way (see its `main.rs`), and the relay
/// suite passes under either. The repository suite does not: its contract tests call the rows design's claim API,
/// which the cursor refuses (`RepositoryError::RowsDesignOnly`).
pub fn suite_delivery() -> Option<outbox::Delivery> {
    match std::env::var("TEST_DELIVERY").ok()?.as_str() {
        "rows" => Some(outbox::Delivery::Rows),
        "cursor" => Some(outbox::Delivery::Cursor),
        other => panic!("TEST_DELIVERY={other}: expected rows or cursor"),
    }
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        Self::with_config(backend, OutboxConfig::default()).await
    }

    /// Under [`suite_delivery`], with that delivery design unless `config` asks for the cursor itself.
    pub async fn with_config(backend: Backend, mut config: OutboxConfig) -> Self {
        if let Some(delivery) = suite_delivery()
            && config.delivery == outbox::Delivery::Rows
        {
            config.delivery = delivery;
        }
        Self::with_design(backend, config).await
    }

    /// With the delivery design `config` names, whatever [`suite_delivery`] asks: for a test of one design's own
    /// mechanics (the rows design's leases, what one of its batches holds, an upgrade from it).
    pub async fn with_design(backend: Backend, config: OutboxConfig) -> Self {
        let suffix = format!("{:016x}", fastrand::u64(..));
        let mut dir = None;
        let (url, max_connections) = match backend {
            Backend::Postgres => (
                std::env::var("TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
                8,
            ),
            Backend::MariaDb => (
                std::env::var("TEST_MYSQL_URL")
                    .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
                8,
            ),
            Backend::SqliteFile => {
                let path = std::env::temp_dir().join(format!("outbox-test-{suffix}"));
                std::fs::create_dir_all(&path).unwrap();
                let url = format!("sqlite://{}?mode=rwc", path.join("outbox.db").display());
                dir = Some(TempDir(path));
                (url, 4)
            }
            // Every connection to `:memory:` is a database of its own: one connection is the whole database.
            Backend::SqliteMemory => ("sqlite::memory:".into(), 1),
        };
        let mut options = ConnectOptions::new(url.clone());
        options
            .max_connections(max_connections)
            .sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(30));
        let db = Database::connect(options).await.unwrap_or_else(|e| {
            panic!("{backend:?} at {url} is not reachable ({e}); .ci/run starts it")
        });
        let table = format!("outbox_{suffix}");
        create_table(&db, &table).await.unwrap();
        let users = format!("users_{suffix}");
        let id_type = match db.get_database_backend() {
            DbBackend::Postgres => "BIGINT PRIMARY KEY",
            DbBackend::MySql => "BIGINT NOT NULL PRIMARY KEY",
            _ => "INTEGER PRIMARY KEY",
        };
        db.execute_unprepared(&format!(
            "CREATE TABLE {users} (id {id_type}, email VARCHAR(255) NOT NULL)"
        ))
        .await
        .unwrap();
        let outbox = OutboxRepository::builder()
            .table(&table)
            .config(config)
            .build()
            .unwrap();
        Self {
            backend,
            db,
            outbox,
            url,
            users,
            _dir: dir,
        }
    }

    /// Claims the oldest pending event and fails it for good with `reason`, making it a dead letter. Returns its
    /// row id.
    pub async fn dead_letter_oldest(&self, reason: &str) -> i64 {
        let claim = self.outbox.claim(&self.db, 1).await.unwrap();
        let event = claim.events.first().expect("a pending event to fail");
        let failure = outbox::repository::Failure::new(event, reason).permanent();
        self.outbox
            .mark_failed(&self.db, claim.token, &[failure])
            .await
            .unwrap();
        event.id
    }

    /// Whether a second connection can look at the database while a transaction is open.
    pub fn has_second_connection(&self) -> bool {
        self.backend != Backend::SqliteMemory
    }

    pub async fn drop_tables(&self) {
        if matches!(self.backend, Backend::Postgres | Backend::MariaDb) {
            for table in [
                format!("{}_lock", self.outbox.table()),
                format!("{}_relays", self.outbox.table()),
                format!("{}_cursors", self.outbox.table()),
                format!("{}_parked", self.outbox.table()),
                format!("{}_sequences", self.outbox.table()),
                self.outbox.table().to_owned(),
                self.users.clone(),
            ] {
                let _ = self
                    .db
                    .execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                    .await;
            }
        }
    }

    /// The single integer a query returns (a count, a maximum), with `{t}` standing for the outbox table.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let sql = sql.replace("{t}", self.outbox.table());
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                self.db.get_database_backend(),
                sql.clone(),
            ))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_else(|| panic!("{sql}: no row"));
        row.try_get_by_index::<i64>(0)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Holds the claim lock in a transaction of its own, as a relay frozen inside its claim would (PostgreSQL,
    /// MySQL); rolling the transaction back lets go.
    pub async fn hold_claim_lock(&self) -> outbox::sea_orm::DatabaseTransaction {
        use outbox::sea_orm::TransactionTrait;
        let holder = self.db.begin().await.unwrap();
        holder
            .execute_unprepared(&format!(
                "SELECT id FROM {}_lock WHERE id = 1 FOR UPDATE",
                self.outbox.table()
            ))
            .await
            .unwrap();
        holder
    }

    /// Runs raw SQL with `{t}` standing for the outbox table.
    pub async fn sql(&self, sql: &str) -> u64 {
        self.db
            .execute_unprepared(&sql.replace("{t}", self.outbox.table()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .rows_affected()
    }
}

/// Generates one `#[tokio::test]` per backend for each listed async fn taking a `Backend`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::backend::Backend::Postgres).await } )*
        }
        mod mariadb {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::backend::Backend::MariaDb).await } )*
        }
        mod sqlite_file {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::backend::Backend::SqliteFile).await } )*
        }
        mod sqlite_memory {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::backend::Backend::SqliteMemory).await } )*
        }
    };
}
