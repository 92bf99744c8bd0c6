//! The `outbox` command run as a process against real databases: what it prints, its exit code, and what it did
//! to the table.

#[path = "cli/schema.rs"]
mod schema;

use std::process::{Command, Output, Stdio};

use outbox::OutboxEvent;
use outbox::publisher::InMemoryPublisher;
use outbox::relay::Relay;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::{AccountClosed, AccountOpened, opened};

/// Runs `outbox args...` on the test's database and table, with no terminal on stdin.
fn outbox(t: &TestDb, args: &[&str]) -> Output {
    outbox_with(t, args, &[])
}

fn outbox_with(t: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outbox"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", &t.url)
        .env("OUTBOX_TABLE", t.outbox.table())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the outbox binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

#[track_caller]
fn failed(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
    format!("{}{}", stdout(output), stderr(output))
}

/// Three pending events (two account ones, one closing) and one dead letter whose reason is `broker said no`.
/// Returns the dead letter's row id.
async fn seed(t: &TestDb) -> i64 {
    t.outbox
        .add_events(&t.db, [opened("a", 1), opened("b", 1)])
        .await
        .unwrap();
    t.outbox
        .add_event(
            &t.db,
            AccountClosed {
                account: "c".into(),
                reason: "moved".into(),
            },
        )
        .await
        .unwrap();
    t.dead_letter_oldest("broker said no").await
}

async fn status_reports_the_backlog_and_dead_letters(backend: Backend) {
    let t = TestDb::new(backend).await;
    seed(&t).await;
    let json: serde_json::Value =
        serde_json::from_str(&succeeded(&outbox(&t, &["status", "--json"]))).unwrap();
    assert_eq!(json["pending"], 2);
    assert_eq!(json["dead_letters"], 1);
    assert!(json["oldest_pending"].is_string(), "{json}");
    let backlog = json["backlog"].as_array().unwrap();
    let pending: Vec<(&str, u64)> = backlog
        .iter()
        .map(|b| {
            (
                b["aggregate_type"].as_str().unwrap(),
                b["pending"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pending.iter().map(|(_, n)| n).sum::<u64>(), 2, "{json}");
    let text = succeeded(&outbox(&t, &["status"]));
    assert!(text.contains("pending       2"), "{text}");
    assert!(text.contains("dead letters  1"), "{text}");
    assert!(text.contains("AGGREGATE TYPE"), "{text}");
    assert!(text.contains("relays        0 alive, 0 gone"), "{text}");

    // A relay at work is listed, alive, under its name.
    let running = outbox_tests::running::Running::start(
        Relay::builder(t.db.clone(), t.outbox.clone(), InMemoryPublisher::new())
            .name("cli-relay")
            .build(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while t.outbox.relays(&t.db).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never recorded itself"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let json: serde_json::Value =
        serde_json::from_str(&succeeded(&outbox(&t, &["status", "--json"]))).unwrap();
    let relays = json["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 1, "{json}");
    assert_eq!(relays[0]["name"], "cli-relay", "{json}");
    assert_eq!(relays[0]["alive"], true, "{json}");
    let text = succeeded(&outbox(&t, &["status"]));
    assert!(text.contains("relays        1 alive, 0 gone"), "{text}");
    assert!(
        text.contains("cli-relay") && text.contains("alive"),
        "{text}"
    );
    running.stop().await;
    t.drop_tables().await;
}

async fn dead_letters_are_listed_and_shown_with_their_reason(backend: Backend) {
    let t = TestDb::new(backend).await;
    let id = seed(&t).await;
    let list: serde_json::Value =
        serde_json::from_str(&succeeded(&outbox(&t, &["dead-letters", "list", "--json"]))).unwrap();
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{list}");
    assert_eq!(rows[0]["id"], id);
    assert_eq!(rows[0]["last_error"], "broker said no");
    assert_eq!(
        rows[0]["payload"]["seq"], 1,
        "the payload is JSON, not text"
    );
    let other_type = succeeded(&outbox(
        &t,
        &[
            "dead-letters",
            "list",
            "--type",
            "com.example.account.closed",
        ],
    ));
    assert_eq!(
        other_type.lines().count(),
        1,
        "only the header: {other_type}"
    );
    let shown = succeeded(&outbox(&t, &["dead-letters", "show", &id.to_string()]));
    assert!(shown.contains("broker said no"), "{shown}");
    assert!(shown.contains("com.example.account.opened"), "{shown}");
    let missing = failed(&outbox(&t, &["dead-letters", "show", "987654321"]));
    assert!(
        missing.contains("no dead letter with id 987654321"),
        "{missing}"
    );
    t.drop_tables().await;
}

async fn filters_narrow_what_is_listed_and_replayed(backend: Backend) {
    let t = TestDb::new(backend).await;
    seed(&t).await;
    let list = |args: &[&str]| {
        let mut all = vec!["dead-letters", "list", "--json"];
        all.extend_from_slice(args);
        let rows: serde_json::Value = serde_json::from_str(&succeeded(&outbox(&t, &all))).unwrap();
        rows.as_array().unwrap().len()
    };
    let aggregate = format!("{}/a", AccountOpened::AGGREGATE_TYPE);
    assert_eq!(list(&["--reason", "said no"]), 1);
    assert_eq!(list(&["--reason", "said yes"]), 0);
    assert_eq!(list(&["--aggregate", &aggregate, "--since", "1h"]), 1);
    assert_eq!(list(&["--aggregate", &aggregate, "--before", "1h"]), 0);
    assert_eq!(
        list(&[
            "--aggregate",
            &format!("{}/b", AccountOpened::AGGREGATE_TYPE)
        ]),
        0
    );
    let dry = succeeded(&outbox(
        &t,
        &[
            "dead-letters",
            "replay",
            "--reason",
            "said no",
            "--type",
            AccountOpened::EVENT_TYPE,
            "--dry-run",
        ],
    ));
    assert!(dry.contains("would replay 1 dead letters"), "{dry}");
    let none = succeeded(&outbox(
        &t,
        &[
            "dead-letters",
            "purge",
            "--reason",
            "said no",
            "--since",
            "2000-01-01T00:00:00Z",
            "--before",
            "2000-01-02T00:00:00Z",
            "--yes",
        ],
    ));
    assert!(none.contains("no dead letters match"), "{none}");
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 1);
    t.drop_tables().await;
}

async fn a_replay_asks_first_then_the_relay_publishes_it(backend: Backend) {
    let t = TestDb::new(backend).await;
    let id = seed(&t).await;
    // No terminal to ask and no --yes: nothing is done.
    let refused = failed(&outbox(&t, &["dead-letters", "replay", "--all"]));
    assert!(refused.contains("pass --yes"), "{refused}");
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 1);
    let dry = succeeded(&outbox(
        &t,
        &[
            "dead-letters",
            "replay",
            "--id",
            &id.to_string(),
            "--dry-run",
        ],
    ));
    assert!(dry.contains("would replay 1 dead letters"), "{dry}");
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 1);
    let done = succeeded(&outbox(
        &t,
        &["dead-letters", "replay", "--id", &id.to_string(), "--yes"],
    ));
    assert!(done.contains("replayed 1"), "{done}");
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);
    // The replayed event goes out with the others.
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), publisher.clone()).build();
    relay.publish_batch(10).await.unwrap();
    let ids: Vec<_> = publisher.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    t.drop_tables().await;
}

/// More dead letters than one statement takes: the replay goes through all of them, chunk by chunk, and a dry
/// run lists the first ones and counts the rest.
async fn a_large_replay_goes_in_chunks_and_stops_at_what_it_counted(backend: Backend) {
    let t = TestDb::new(backend).await;
    t.outbox
        .add_events(&t.db, (1..=1_234).map(|n| opened(&format!("acct-{n}"), 1)))
        .await
        .unwrap();
    t.sql("UPDATE {t} SET status = 2, last_error = 'gave up'")
        .await;
    let dry = succeeded(&outbox(
        &t,
        &["dead-letters", "replay", "--all", "--dry-run"],
    ));
    assert!(
        dry.contains("... and 1134 more"),
        "{}",
        &dry[dry.len().saturating_sub(300)..]
    );
    assert!(
        dry.contains("would replay 1234 dead letters"),
        "{}",
        &dry[dry.len() - 200..]
    );
    let done = succeeded(&outbox(&t, &["dead-letters", "replay", "--all", "--yes"]));
    assert_eq!(
        done.trim(),
        "replayed 1234 dead letters: they are pending again"
    );
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 1_234);
    t.drop_tables().await;
}

/// The event ids `outbox tail --json` printed, one object a line.
fn tailed(output: &str) -> Vec<String> {
    output
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(event["published_at"].is_string(), "{event}");
            event["event_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

async fn tail_follows_what_the_relay_publishes(backend: Backend) {
    let t = TestDb::new(backend).await;
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), InMemoryPublisher::new()).build();
    let before = t
        .outbox
        .add_events(&t.db, [opened("a", 1), opened("a", 2)])
        .await
        .unwrap();
    relay.publish_batch(10).await.unwrap();
    let from_start = succeeded(&outbox(
        &t,
        &[
            "tail",
            "--from-start",
            "--count",
            "2",
            "--json",
            "--settle",
            "0s",
        ],
    ));
    let expected: Vec<String> = before.iter().map(ToString::to_string).collect();
    assert_eq!(
        tailed(&from_start),
        expected,
        "in the order they were published"
    );

    // From now: what was published before the tail started is not shown, what comes after is.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .args([
            "tail",
            "--count",
            "2",
            "--json",
            "--settle",
            "300ms",
            "--interval",
            "50ms",
        ])
        .env_clear()
        .env("DATABASE_URL", &t.url)
        .env("OUTBOX_TABLE", t.outbox.table())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after = t
        .outbox
        .add_events(&t.db, [opened("b", 1), opened("c", 1)])
        .await
        .unwrap();
    relay.publish_batch(10).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("tail did not show the two new events within 20 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let output = child.wait_with_output().unwrap();
    let followed = succeeded(&output);
    let expected: Vec<String> = after.iter().map(ToString::to_string).collect();
    assert_eq!(tailed(&followed), expected);
    t.drop_tables().await;
}

async fn purges_delete_what_they_select(backend: Backend) {
    let t = TestDb::new(backend).await;
    seed(&t).await;
    let none = succeeded(&outbox(
        &t,
        &[
            "dead-letters",
            "purge",
            "--type",
            "com.example.account.closed",
            "--yes",
        ],
    ));
    assert!(none.contains("no dead letters match"), "{none}");
    let purged = succeeded(&outbox(&t, &["dead-letters", "purge", "--all", "-y"]));
    assert!(purged.contains("purged 1"), "{purged}");
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), InMemoryPublisher::new()).build();
    relay.publish_batch(10).await.unwrap();
    let published = succeeded(&outbox(&t, &["purge-published", "--older-than", "0s"]));
    assert!(
        published.contains("deleted 2 published events"),
        "{published}"
    );
    t.drop_tables().await;
}

async fn migrate_and_check(backend: Backend) {
    let t = TestDb::new(backend).await;
    let fresh = format!("{}_cli", t.outbox.table());
    // The table is not there yet: the check says so and fails.
    let missing = failed(&outbox_with(&t, &["check"], &[("OUTBOX_TABLE", &fresh)]));
    assert!(missing.contains("FAIL  table"), "{missing}");
    assert!(missing.contains("run the outbox migration"), "{missing}");
    let migrated = succeeded(&outbox_with(&t, &["migrate"], &[("OUTBOX_TABLE", &fresh)]));
    assert!(
        migrated.contains(&format!("`{fresh}` is in place")),
        "{migrated}"
    );
    let ok = succeeded(&outbox_with(
        &t,
        &["check", "--broker", "memory://"],
        &[("OUTBOX_TABLE", &fresh)],
    ));
    assert!(ok.contains("ok    table"), "{ok}");
    assert!(ok.contains("ok    broker: memory answers"), "{ok}");
    // A bad setting and an unknown broker scheme are each a failed check, named.
    let bad = failed(&outbox_with(
        &t,
        &["check", "--broker", "pigeon://coop"],
        &[("OUTBOX_TABLE", &fresh), ("OUTBOX_BATCH_SIZE", "0")],
    ));
    assert!(bad.contains("FAIL  settings: OUTBOX_BATCH_SIZE=0"), "{bad}");
    assert!(bad.contains("FAIL  broker"), "{bad}");
    assert!(bad.contains("2 of the checks failed"), "{bad}");
    for table in [format!("{fresh}_lock"), format!("{fresh}_relays"), fresh] {
        let _ = outbox::sea_orm::ConnectionTrait::execute_unprepared(
            &t.db,
            &format!("DROP TABLE IF EXISTS {table}"),
        )
        .await;
    }
    t.drop_tables().await;
}

macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                super::$test(super::Backend::Postgres).await;
            })*
        }
        mod mariadb {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                super::$test(super::Backend::MariaDb).await;
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                super::$test(super::Backend::SqliteFile).await;
            })*
        }
    };
}

on_every_backend!(
    status_reports_the_backlog_and_dead_letters,
    dead_letters_are_listed_and_shown_with_their_reason,
    filters_narrow_what_is_listed_and_replayed,
    a_replay_asks_first_then_the_relay_publishes_it,
    purges_delete_what_they_select,
    a_large_replay_goes_in_chunks_and_stops_at_what_it_counted,
    tail_follows_what_the_relay_publishes,
    migrate_and_check,
);

/// `return-to-rows` asks first, is refused while a relay holds a partition, and then leaves a rows relay exactly
/// the events the cursor had not published.
#[tokio::test]
async fn return_to_rows_asks_then_hands_the_rest_to_a_rows_relay() {
    let mut config = outbox::OutboxConfig::default();
    config.delivery = outbox::Delivery::Cursor;
    let t = TestDb::with_config(Backend::SqliteFile, config).await;
    t.outbox
        .add_events(&t.db, [opened("a", 1), opened("a", 2)])
        .await
        .unwrap();
    let cursor = Relay::builder(t.db.clone(), t.outbox.clone(), InMemoryPublisher::new()).build();
    assert_eq!(cursor.publish_batch(10).await.unwrap().published, 2);
    let rest = t.outbox.add_event(&t.db, opened("a", 3)).await.unwrap();

    let refused = failed(&outbox(&t, &["return-to-rows"]));
    assert!(refused.contains("pass --yes"), "{refused}");
    let held = failed(&outbox(&t, &["return-to-rows", "--yes"]));
    assert!(held.contains("held by a running cursor relay"), "{held}");
    t.sql("UPDATE {t}_cursors SET owner = NULL, lease_until = NULL")
        .await;
    let done = succeeded(&outbox(&t, &["return-to-rows", "--yes"]));
    assert!(done.contains("2 events the cursors published"), "{done}");

    let rows = outbox::repository::OutboxRepository::builder()
        .table(t.outbox.table())
        .build()
        .unwrap();
    let publisher = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), rows, publisher.clone()).build();
    relay.publish_batch(10).await.unwrap();
    let ids: Vec<_> = publisher.messages().iter().map(|m| m.message.id).collect();
    assert_eq!(ids, [rest]);
    t.drop_tables().await;
}

#[test]
fn the_schema_prints_without_a_database() {
    let output = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .args([
            "migrate",
            "--print",
            "--backend",
            "postgres",
            "--table",
            "shop_outbox",
        ])
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let sql = stdout(&output);
    assert!(
        sql.starts_with("CREATE TABLE IF NOT EXISTS shop_outbox"),
        "{sql}"
    );
    assert!(
        sql.contains("CREATE TABLE IF NOT EXISTS shop_outbox_lock"),
        "{sql}"
    );
}

/// What `migrate --print` gives a MariaDB DBA runs as it is in the `mariadb` client, the sequence trigger (whose body
/// has semicolons of its own) included.
#[test]
fn the_mysql_schema_runs_in_the_mysql_client() {
    let table = format!("print_{}", std::process::id());
    let output = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .args([
            "migrate",
            "--print",
            "--backend",
            "mysql",
            "--table",
            &table,
        ])
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let client = |input: &[u8], query: &[&str]| {
        let mut child = Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-u", "root", "-N", "test"])
            .args(query)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the mariadb client (.ci/run installs MariaDB)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
        let done = child.wait_with_output().unwrap();
        assert!(done.status.success(), "{}", stderr(&done));
        stdout(&done)
    };
    client(&output.stdout, &[]);
    let triggers = client(
        b"",
        &[
            "-e",
            &format!(
                "SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE() \
                 AND trigger_name = '{table}_seq'"
            ),
        ],
    );
    let drop: String = ["", "_lock", "_relays", "_sequences", "_cursors", "_parked"]
        .iter()
        .map(|suffix| format!("DROP TABLE IF EXISTS {table}{suffix};"))
        .collect();
    client(drop.as_bytes(), &[]);
    assert_eq!(triggers.trim(), "1");
}

#[test]
fn usage_errors_say_what_is_missing() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_outbox"))
            .args(args)
            .env_clear()
            .output()
            .unwrap()
    };
    let no_database = run(&["status"]);
    assert_eq!(no_database.status.code(), Some(1));
    assert!(stderr(&no_database).contains("pass --database-url or set DATABASE_URL"));
    let bad_table = run(&[
        "status",
        "--database-url",
        "sqlite::memory:",
        "--table",
        "Bad-Name",
    ]);
    assert_eq!(bad_table.status.code(), Some(1));
    assert!(stderr(&bad_table).contains("invalid outbox table name \"Bad-Name\""));
    let no_selection = run(&["dead-letters", "replay"]);
    assert_eq!(no_selection.status.code(), Some(2), "clap's usage error");
    assert!(stderr(&no_selection).contains("--all"));
    let all_and_a_filter = run(&["dead-letters", "purge", "--all", "--type", "x"]);
    assert_eq!(all_and_a_filter.status.code(), Some(2));
    assert!(
        stderr(&all_and_a_filter).contains("cannot be used with"),
        "{}",
        stderr(&all_and_a_filter)
    );
    let bad_time = run(&["dead-letters", "list", "--since", "yesterday"]);
    assert_eq!(bad_time.status.code(), Some(2));
    assert!(
        stderr(&bad_time).contains("expected an RFC 3339 time"),
        "{}",
        stderr(&bad_time)
    );
    let bad_aggregate = run(&["dead-letters", "list", "--aggregate", "noslash"]);
    assert_eq!(bad_aggregate.status.code(), Some(2));
    assert!(
        stderr(&bad_aggregate).contains("expected TYPE/ID"),
        "{}",
        stderr(&bad_aggregate)
    );
}
