//! Connecting and migrating: the errors a new user meets first.

use outbox::migration::{OutboxMigration, OutboxMigrator, WakeOnDemandMigration, create_table};
use outbox::repository::{OutboxRepository, RepositoryError, connect};
use outbox::sea_orm::ConnectionTrait;
use outbox::sea_orm_migration::MigratorTrait;

use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;

#[tokio::test]
async fn an_unsupported_url_names_what_is_expected() {
    let err = connect("redis://127.0.0.1:6379").await.unwrap_err();
    assert!(matches!(err, RepositoryError::InvalidUrl { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("expected postgres://, mysql://, mariadb:// or sqlite:"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_a_connect_error_without_the_password() {
    // Port 1 on loopback: nothing listens there.
    let err = connect("postgres://app:s3cret@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(matches!(err, RepositoryError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("cannot connect to the database at `postgres://app:***@127.0.0.1:1/test`"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn a_wrong_database_name_is_a_connect_error() {
    let err = connect("mariadb://root@127.0.0.1:3306/no_such_database_here")
        .await
        .unwrap_err();
    assert!(matches!(err, RepositoryError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("no_such_database_here"), "{err}");
}

#[tokio::test]
async fn the_outbox_migrator_uses_its_own_migration_table_and_is_idempotent() {
    let db = connect("sqlite::memory:").await.unwrap();
    // An application table named like sea-orm's default migration table is left alone.
    db.execute_unprepared("CREATE TABLE seaql_migrations (version TEXT)")
        .await
        .unwrap();
    OutboxMigrator::up(&db, None).await.unwrap();
    OutboxMigrator::up(&db, None).await.unwrap();
    let outbox = OutboxRepository::new();
    outbox.check(&db).await.unwrap();
    outbox.add_event(&db, opened("a", 1)).await.unwrap();
    assert_eq!(outbox.count_unpublished(&db).await.unwrap(), 1);
    let applied = db
        .query_all_raw(outbox::sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT version FROM seaql_migrations_outbox",
        ))
        .await
        .unwrap();
    assert_eq!(applied.len(), 3);
    assert_eq!(outbox.relays(&db).await.unwrap(), vec![]);
    OutboxMigrator::down(&db, None).await.unwrap();
    assert!(outbox.check(&db).await.is_err());
    assert!(outbox.relays(&db).await.is_err());
}

/// A database migrated before the relays table existed gets it from the migrator's next step.
#[tokio::test]
async fn the_outbox_migrator_adds_the_relays_table_to_an_older_schema() {
    struct Older;
    impl outbox::sea_orm_migration::MigratorTrait for Older {
        fn migrations() -> Vec<Box<dyn outbox::sea_orm_migration::MigrationTrait>> {
            vec![Box::new(OutboxMigration::default())]
        }
        fn migration_table_name() -> outbox::sea_orm::DynIden {
            use outbox::sea_orm_migration::prelude::IntoIden;
            "seaql_migrations_outbox".into_iden()
        }
    }
    let db = connect("sqlite::memory:").await.unwrap();
    Older::up(&db, None).await.unwrap();
    db.execute_unprepared("DROP TABLE outbox_events_relays")
        .await
        .unwrap();
    let outbox = OutboxRepository::new();
    assert!(outbox.relays(&db).await.is_err());
    OutboxMigrator::up(&db, None).await.unwrap();
    assert_eq!(outbox.relays(&db).await.unwrap(), vec![]);
}

/// A PostgreSQL table migrated before wake-ups on demand (no `wants_notify`, a trigger that always notifies) gets
/// both from the migration.
#[tokio::test]
async fn the_wake_on_demand_migration_upgrades_an_older_postgres_table() {
    use outbox::sea_orm_migration::{MigrationTrait, SchemaManager};
    let t = TestDb::new(Backend::Postgres).await;
    let asks = "SELECT COUNT(*) FROM pg_proc WHERE proname = '{t}_notify' AND prosrc LIKE '%wants_notify%'";
    t.sql("ALTER TABLE {t}_relays DROP COLUMN wants_notify")
        .await;
    t.sql(
        "CREATE OR REPLACE FUNCTION {t}_notify() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_notify(TG_TABLE_NAME, ''); RETURN NULL; END $$",
    )
    .await;
    assert_eq!(t.scalar(asks).await, 0);
    WakeOnDemandMigration::new(t.outbox.table())
        .unwrap()
        .up(&SchemaManager::new(&t.db))
        .await
        .unwrap();
    assert_eq!(
        t.scalar(asks).await,
        1,
        "the trigger still notifies on every commit"
    );
    assert_eq!(
        t.scalar("SELECT COUNT(*) FROM {t}_relays WHERE wants_notify")
            .await,
        0
    );
    t.drop_tables().await;
}

#[tokio::test]
async fn create_table_is_idempotent_and_checks_the_name() {
    let db = connect("sqlite::memory:").await.unwrap();
    create_table(&db, "shop_outbox").await.unwrap();
    create_table(&db, "shop_outbox").await.unwrap();
    let err = create_table(&db, "shop-outbox; DROP TABLE x")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RepositoryError::InvalidTableName(_)),
        "{err:?}"
    );
    assert!(OutboxMigration::new("bad name").is_err());
    assert!(OutboxRepository::builder().table("ok_name").build().is_ok());
    assert!(OutboxRepository::builder().table("1bad").build().is_err());
}

#[tokio::test]
async fn an_invalid_config_is_refused_by_the_builder() {
    let mut config = outbox::OutboxConfig::default();
    config.batch_size = 0;
    let err = OutboxRepository::builder()
        .config(config)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("OUTBOX_BATCH_SIZE=0"), "{err}");
}

/// Services migrate at every start. With a transaction open on the outbox table, migrating again must not wait
/// for it: PostgreSQL's `CREATE INDEX IF NOT EXISTS` and `CREATE OR REPLACE TRIGGER` lock the table before they
/// look, and every insert would then queue behind the waiting migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_again_waits_for_no_open_transaction() {
    use outbox::sea_orm::TransactionTrait;
    use outbox_tests::backend::{Backend, TestDb};

    for backend in [Backend::Postgres, Backend::MariaDb] {
        let t = TestDb::new(backend).await;
        let open = t.db.begin().await.unwrap();
        t.outbox.add_event(&open, opened("a", 1)).await.unwrap();
        let migrated = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            create_table(&t.db, t.outbox.table()),
        )
        .await;
        assert!(
            migrated.is_ok(),
            "{backend:?}: the migration waited for the open transaction"
        );
        migrated.unwrap().unwrap();
        open.commit().await.unwrap();
        t.drop_tables().await;
    }
}

/// Checking the catalog first still creates what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_again_puts_back_a_dropped_index() {
    use outbox_tests::backend::{Backend, TestDb};

    for backend in [Backend::Postgres, Backend::SqliteFile] {
        let t = TestDb::new(backend).await;
        let index = format!("{}_dead_idx", t.outbox.table());
        t.sql(&format!("DROP INDEX {index}")).await;
        create_table(&t.db, t.outbox.table()).await.unwrap();
        let query = match backend {
            Backend::Postgres => format!("SELECT COUNT(*) FROM pg_class WHERE relname = '{index}'"),
            _ => format!("SELECT COUNT(*) FROM sqlite_master WHERE name = '{index}'"),
        };
        assert_eq!(t.scalar(&query).await, 1, "{backend:?}");
        t.drop_tables().await;
    }
}

/// A table name is refused up front when an index name derived from it would not fit a backend's identifiers
/// (MySQL refuses them over 64 bytes, PostgreSQL cuts them at 63), rather than failing halfway through a migration.
#[tokio::test]
async fn the_longest_table_name_migrates_on_every_backend_and_a_longer_one_is_refused() {
    let urls = [
        std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        std::env::var("TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
        "sqlite::memory:".into(),
    ];
    let suffix = format!("{:08x}", fastrand::u32(..));
    for url in urls {
        let db = connect(&url).await.unwrap();
        let longest = format!("o{suffix}{}", "x".repeat(40));
        assert_eq!(longest.len(), 49);
        create_table(&db, &longest).await.unwrap();
        OutboxRepository::builder()
            .table(&longest)
            .build()
            .unwrap()
            .check(&db)
            .await
            .unwrap();
        for table in [
            format!("{longest}_lock"),
            format!("{longest}_relays"),
            longest.clone(),
        ] {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await
                .unwrap();
        }
        let err = create_table(&db, &format!("{longest}x")).await.unwrap_err();
        assert!(
            matches!(err, RepositoryError::InvalidTableName(_)),
            "{url}: {err:?}"
        );
        assert!(err.to_string().contains("1 to 49"), "{err}");
    }
}
