//! Connecting and migrating: the errors a new user meets first.

use outbox::migration::{OutboxMigration, OutboxMigrator, create_table};
use outbox::repository::{OutboxRepository, RepositoryError, connect};
use outbox::sea_orm::ConnectionTrait;
use outbox::sea_orm_migration::MigratorTrait;

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
    assert_eq!(applied.len(), 1);
    OutboxMigrator::down(&db, None).await.unwrap();
    assert!(outbox.check(&db).await.is_err());
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
