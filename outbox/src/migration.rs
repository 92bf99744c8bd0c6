//! The outbox table's schema, as a sea-orm migration and as plain SQL.
//!
//! - [`OutboxMigrator`] runs on its own migration table (`seaql_migrations_outbox`), so it never collides with the
//!   application's: `OutboxMigrator::up(&db, None).await?`.
//! - An application with its own migrator adds [`OutboxMigration`] to its list, with the table name it uses.
//! - [`create_table`] creates the table directly (idempotent), for tests and tools.
//! - Teams that manage schemas with other tools take the SQL from `outbox/sql/{postgres,mysql,sqlite}.sql`
//!   (the same statements, with the default table name).

use sea_orm::{ConnectionTrait, DbErr};
use sea_orm_migration::prelude::*;

use crate::repository::{RepositoryError, TableName};

/// Creates the outbox table under a given name (default `outbox_events`).
#[derive(Clone, Debug, Default)]
pub struct OutboxMigration {
    table: TableName,
}

impl OutboxMigration {
    /// The migration for a table of another name; the repository must use the same name.
    pub fn new(table: &str) -> Result<Self, RepositoryError> {
        Ok(Self {
            table: TableName::new(table)?,
        })
    }
}

impl MigrationName for OutboxMigration {
    fn name(&self) -> &str {
        "m20261128_000001_create_outbox_table"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for OutboxMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_schema(manager.get_connection(), &self.table).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for table in [
            format!("{}_lock", self.table.as_str()),
            self.table.as_str().to_owned(),
        ] {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}

/// The outbox's own migrator, on its own migration table.
#[derive(Clone, Copy, Debug)]
pub struct OutboxMigrator;

#[async_trait::async_trait]
impl MigratorTrait for OutboxMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(OutboxMigration::default())]
    }

    fn migration_table_name() -> sea_orm::DynIden {
        "seaql_migrations_outbox".into_iden()
    }
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
    for statement in crate::repository::schema(db.get_database_backend(), table) {
        db.execute_unprepared(&statement).await?;
    }
    Ok(())
}
