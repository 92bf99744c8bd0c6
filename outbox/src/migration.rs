//! The outbox table's schema, as a sea-orm migration and as plain SQL.
//!
//! - [`OutboxMigrator`] (feature `migrator`, on by default) runs on its own migration table (`seaql_migrations_outbox`), so it never collides with the
//!   application's: `OutboxMigrator::up(&db, None).await?`.
//! - An application with its own migrator adds [`OutboxMigration`], [`RelaysMigration`] and
//!   [`WakeOnDemandMigration`] to its list, in that order, with the table name it uses.
//! - [`create_table`] creates the table directly (idempotent), for tests and tools.
//! - Teams that manage schemas with other tools take the SQL from `outbox/sql/{postgres,mysql,sqlite}.sql`
//!   (the same statements, with the default table name).

use sea_orm::{ConnectionTrait, DbErr, Statement};
#[cfg(feature = "migrator")]
use sea_orm_migration::prelude::*;

use crate::repository::{Dialect, RepositoryError, SchemaObject, TableName};

/// Creates the outbox table under a given name (default `outbox_events`).
#[cfg(feature = "migrator")]
#[derive(Clone, Debug, Default)]
pub struct OutboxMigration {
    table: TableName,
}

#[cfg(feature = "migrator")]
impl OutboxMigration {
    /// The migration for a table of another name; the repository must use the same name.
    pub fn new(table: &str) -> Result<Self, RepositoryError> {
        Ok(Self {
            table: TableName::new(table)?,
        })
    }
}

#[cfg(feature = "migrator")]
impl MigrationName for OutboxMigration {
    fn name(&self) -> &str {
        "m20261128_000001_create_outbox_table"
    }
}

#[cfg(feature = "migrator")]
#[async_trait::async_trait]
impl MigrationTrait for OutboxMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_schema(manager.get_connection(), &self.table).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        // The cursor's tables too: a table created again must not find cursors past its new events.
        let t = self.table.as_str();
        for table in [
            format!("{t}_relays"),
            format!("{t}_lock"),
            format!("{t}_cursors"),
            format!("{t}_parked"),
            format!("{t}_sequences"),
            t.to_owned(),
        ] {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}

/// Adds `<table>_relays`, where relays record themselves for operators (see
/// [`OutboxRepository::relays`](crate::repository::OutboxRepository::relays)), to an outbox table created before
/// it. An application with its own migrator lists it after [`OutboxMigration`], with the same table name; on a
/// new table it finds everything there already.
#[cfg(feature = "migrator")]
#[derive(Clone, Debug, Default)]
pub struct RelaysMigration {
    table: TableName,
}

#[cfg(feature = "migrator")]
impl RelaysMigration {
    /// The migration for a table of another name; the repository must use the same name.
    pub fn new(table: &str) -> Result<Self, RepositoryError> {
        Ok(Self {
            table: TableName::new(table)?,
        })
    }
}

#[cfg(feature = "migrator")]
impl MigrationName for RelaysMigration {
    fn name(&self) -> &str {
        "m20261205_000001_create_outbox_relays_table"
    }
}

#[cfg(feature = "migrator")]
#[async_trait::async_trait]
impl MigrationTrait for RelaysMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Every statement of the schema is idempotent: on a table already there, only what is missing is made.
        run_schema(manager.get_connection(), &self.table).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "DROP TABLE IF EXISTS {}_relays",
                self.table.as_str()
            ))
            .await
            .map(drop)
    }
}

/// Makes the outbox table's insert trigger (PostgreSQL) wake relays only while one of them waits to be woken:
/// a column `wants_notify` in `<table>_relays`, and the trigger's function asking it. A relay under load polls
/// instead, so writers stop sending `NOTIFY`, whose commit-time lock made concurrent writers commit one at a
/// time (see `docs/design.md`, "Wake-ups"). An application with its own migrator lists it after
/// [`RelaysMigration`], with the same table name. On MySQL and SQLite, which have no trigger, it changes nothing.
#[cfg(feature = "migrator")]
#[derive(Clone, Debug, Default)]
pub struct WakeOnDemandMigration {
    table: TableName,
}

#[cfg(feature = "migrator")]
impl WakeOnDemandMigration {
    /// The migration for a table of another name; the repository must use the same name.
    pub fn new(table: &str) -> Result<Self, RepositoryError> {
        Ok(Self {
            table: TableName::new(table)?,
        })
    }
}

#[cfg(feature = "migrator")]
impl MigrationName for WakeOnDemandMigration {
    fn name(&self) -> &str {
        "m20261207_000001_outbox_wake_on_demand"
    }
}

#[cfg(feature = "migrator")]
#[async_trait::async_trait]
impl MigrationTrait for WakeOnDemandMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_schema(manager.get_connection(), &self.table).await
    }

    /// Leaves the column and the trigger as they are: relays of every version work with them (the column is
    /// true unless a relay says otherwise, so writers notify as they did before).
    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}

/// The outbox's own migrator, on its own migration table.
#[cfg(feature = "migrator")]
#[derive(Clone, Copy, Debug)]
pub struct OutboxMigrator;

#[cfg(feature = "migrator")]
#[async_trait::async_trait]
impl MigratorTrait for OutboxMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(OutboxMigration::default()),
            Box::new(RelaysMigration::default()),
            Box::new(WakeOnDemandMigration::default()),
        ]
    }

    fn migration_table_name() -> sea_orm::DynIden {
        "seaql_migrations_outbox".into_iden()
    }
}

/// The schema of the outbox table named `table` on `backend`, one statement per item, as [`create_table`] runs
/// it: for teams that apply schemas with their own tools.
///
/// ```
/// let statements = outbox::migration::schema(sea_orm::DbBackend::Sqlite, "shop_outbox")?;
/// assert!(statements[0].starts_with("CREATE TABLE IF NOT EXISTS shop_outbox"));
/// # Ok::<(), outbox::repository::RepositoryError>(())
/// ```
pub fn schema(backend: sea_orm::DbBackend, table: &str) -> Result<Vec<String>, RepositoryError> {
    Ok(Dialect::for_backend(backend).schema(&TableName::new(table)?))
}

/// Creates the outbox table named `table` and its indexes on `db` if they do not exist yet.
pub async fn create_table<C: ConnectionTrait>(db: &C, table: &str) -> Result<(), RepositoryError> {
    let table = TableName::new(table)?;
    run_schema(db, &table)
        .await
        .map_err(|source| RepositoryError::Database {
            operation: "creating the outbox table",
            table: table.as_str().to_owned(),
            source,
        })
}

async fn run_schema<C: ConnectionTrait>(db: &C, table: &TableName) -> Result<(), DbErr> {
    for statement in Dialect::of(db).schema(table) {
        if !already_done(db, &statement).await? {
            db.execute_unprepared(&statement).await?;
        }
    }
    Ok(())
}

/// Whether `statement` would change nothing because what it creates is there already, as the catalog says.
///
/// Every statement of the schema is idempotent, but PostgreSQL takes its lock on the table before it looks:
/// `CREATE INDEX IF NOT EXISTS` a `SHARE` lock, `CREATE OR REPLACE TRIGGER` a `SHARE ROW EXCLUSIVE` one. Both wait
/// for any open transaction that wrote to the table, and every insert queues behind the waiting lock: one long
/// transaction and a relay starting up (services migrate at every start) would stop all writers. Asked first,
/// the catalog takes no lock on the table.
async fn already_done<C: ConnectionTrait>(db: &C, statement: &str) -> Result<bool, DbErr> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let (object, name) = match words.as_slice() {
        ["CREATE", "TABLE", "IF", "NOT", "EXISTS", name, ..] => (SchemaObject::Table, *name),
        ["CREATE", "INDEX", "IF", "NOT", "EXISTS", name, ..] => (SchemaObject::Index, *name),
        ["CREATE", "OR", "REPLACE", "TRIGGER", name, ..] => (SchemaObject::Trigger, *name),
        ["CREATE", "TRIGGER", "IF", "NOT", "EXISTS", name, ..] => (SchemaObject::Trigger, *name),
        // MySQL's form: it has no `CREATE INDEX IF NOT EXISTS`.
        ["ALTER", "TABLE", _, "ADD", "INDEX", name, ..] => (SchemaObject::Index, *name),
        ["ALTER", "TABLE", name, "SET", "(fillfactor", "=", "50)"] => {
            (SchemaObject::Fillfactor, *name)
        }
        [
            "ALTER",
            "TABLE",
            table,
            "ADD",
            "COLUMN",
            "IF",
            "NOT",
            "EXISTS",
            column,
            ..,
        ]
        | ["ALTER", "TABLE", table, "ADD", "COLUMN", column, ..] => {
            return exists(db, SchemaObject::Column, &format!("{table}.{column}")).await;
        }
        [
            "ALTER",
            "TABLE",
            table,
            "ALTER",
            "COLUMN",
            column,
            "SET",
            "DEFAULT",
            ..,
        ] => {
            return exists(
                db,
                SchemaObject::ColumnDefault,
                &format!("{table}.{column}"),
            )
            .await;
        }
        _ => return Ok(false),
    };
    exists(db, object, name).await
}

/// Whether the catalog lists `name` as a schema object of kind `object`.
pub(crate) async fn exists<C: ConnectionTrait>(
    db: &C,
    object: SchemaObject,
    name: &str,
) -> Result<bool, DbErr> {
    let dialect = Dialect::of(db);
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            dialect.backend,
            dialect.with_placeholders((dialect.catalog)(object)),
            [name.into()],
        ))
        .await?;
    Ok(row
        .map(|row| row.try_get_by_index::<i64>(0))
        .transpose()?
        .is_some_and(|count| count > 0))
}
