//! The CDC path (PostgreSQL): the outbox table read through logical decoding, as Debezium's outbox event router
//! reads it, with `docs/debezium-outbox-connector.json`'s column mapping. Each committed event appears once, in
//! commit order, with every column the mapping names; a rolled-back one never appears. Needs `wal_level =
//! logical` (`.ci/run` sets it).

use std::collections::HashMap;

use outbox::sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;

/// One INSERT as `test_decoding` prints it: `table public.t: INSERT: id[bigint]:1 name[text]:'x' ...`.
fn decoded_insert(line: &str, table: &str) -> Option<HashMap<String, Option<String>>> {
    let rest = line.strip_prefix(&format!("table public.{table}: INSERT: "))?;
    let mut columns = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|&c| c != '[').collect();
        if name.is_empty() {
            return Some(columns);
        }
        let _type: String = chars.by_ref().take_while(|&c| c != ']').collect();
        assert_eq!(chars.next(), Some(':'), "{line}");
        let value = if chars.peek() == Some(&'\'') {
            chars.next();
            let mut value = String::new();
            while let Some(c) = chars.next() {
                if c == '\'' {
                    if chars.peek() == Some(&'\'') {
                        chars.next();
                        value.push('\'');
                        continue;
                    }
                    break;
                }
                value.push(c);
            }
            Some(value)
        } else {
            let raw: String = chars.by_ref().take_while(|&c| c != ' ').collect();
            (raw != "null").then_some(raw)
        };
        if chars.peek() == Some(&' ') {
            chars.next();
        }
        columns.insert(name.trim().to_owned(), value);
    }
}

/// The table's columns the connector configuration maps (`table.field.event.*`, `route.by.field`, and the
/// `table.fields.additional.placement` list).
fn mapped_columns() -> Vec<String> {
    let config: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/debezium-outbox-connector.json")).unwrap();
    let config = &config["config"];
    let mut columns: Vec<String> = [
        "transforms.outbox.table.field.event.id",
        "transforms.outbox.table.field.event.key",
        "transforms.outbox.table.field.event.payload",
        "transforms.outbox.route.by.field",
    ]
    .iter()
    .map(|key| config[*key].as_str().unwrap().to_owned())
    .collect();
    columns.extend(
        config["transforms.outbox.table.fields.additional.placement"]
            .as_str()
            .unwrap()
            .split(',')
            .map(|placement| placement.split(':').next().unwrap().to_owned()),
    );
    columns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_decoding_sees_each_committed_event_once_in_commit_order() {
    let t = TestDb::new(Backend::Postgres).await;
    let wal_level =
        t.db.query_one_raw(Statement::from_string(
            t.db.get_database_backend(),
            "SHOW wal_level",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<String>(0)
        .unwrap();
    assert_eq!(
        wal_level, "logical",
        "logical decoding needs wal_level = logical: ALTER SYSTEM SET wal_level = logical, then restart \
         PostgreSQL (.ci/run does)"
    );
    let slot = format!("outbox_cdc_test_{:08x}", fastrand::u32(..));
    t.sql(&format!(
        "SELECT 1 FROM pg_create_logical_replication_slot('{slot}', 'test_decoding')"
    ))
    .await;
    // The slot keeps WAL until it is dropped: whatever the test does, drop it.
    let body = {
        let (db, outbox, slot) = (t.db.clone(), t.outbox.clone(), slot.clone());
        tokio::spawn(async move {
            // Two transactions interleaved: the second commits first, so commit order is not id order.
            let first = db.begin().await.unwrap();
            let a1 = outbox.add_event(&first, opened("a", 1)).await.unwrap();
            let second = db.begin().await.unwrap();
            let b1 = outbox.add_event(&second, opened("b", 1)).await.unwrap();
            second.commit().await.unwrap();
            let a2 = outbox.add_event(&first, opened("a", 2)).await.unwrap();
            first.commit().await.unwrap();
            let rolled_back = db.begin().await.unwrap();
            let never = outbox
                .add_event(&rolled_back, opened("c", 1))
                .await
                .unwrap();
            rolled_back.rollback().await.unwrap();

            let changes = db
                .query_all_raw(Statement::from_string(
                    db.get_database_backend(),
                    format!("SELECT data FROM pg_logical_slot_get_changes('{slot}', NULL, NULL)"),
                ))
                .await
                .unwrap();
            let inserts: Vec<HashMap<String, Option<String>>> = changes
                .iter()
                .map(|row| row.try_get_by_index::<String>(0).unwrap())
                .filter_map(|line| decoded_insert(&line, outbox.table()))
                .collect();
            (vec![b1, a1, a2], never, inserts)
        })
        .await
    };
    t.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await;
    let (committed, never, inserts) =
        body.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));

    let seen: Vec<String> = inserts
        .iter()
        .map(|row| row["event_id"].clone().unwrap())
        .collect();
    let expected: Vec<String> = committed.iter().map(ToString::to_string).collect();
    assert_eq!(seen, expected, "each committed event once, in commit order");
    assert!(!seen.contains(&never.to_string()), "a rolled-back event");
    let columns = mapped_columns();
    for row in &inserts {
        for column in &columns {
            assert!(
                row.contains_key(column),
                "the connector maps {column}, not in {row:?}"
            );
        }
        for required in [
            "event_id",
            "aggregate_type",
            "aggregate_id",
            "event_type",
            "payload",
            "occurred_at",
        ] {
            assert!(row[required].is_some(), "{required} is null in {row:?}");
        }
        let payload: serde_json::Value =
            serde_json::from_str(row["payload"].as_deref().unwrap()).unwrap();
        assert!(
            payload.is_object(),
            "the router expands JSON payloads: {payload}"
        );
    }
    t.drop_tables().await;
}
