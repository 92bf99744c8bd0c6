//! The database goes away under the relay: its connections terminated, or PostgreSQL restarted.

use std::time::Duration;

use outbox::sea_orm::{ConnectionTrait, Statement};
use outbox_tests::backend::{Backend, TestDb};

use crate::child::{Faults, RelayProcess, Sink, postgres_url};
use crate::crashes::{CHILD_BATCH, drain, random_pause, steady_writers};
use crate::ledger::{serial, soak};
use crate::writers::Writers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_survives_its_connections_being_terminated() {
    let _serial = serial().await;
    let cuts = if soak() { 20 } else { 3 };
    let t = TestDb::new(Backend::Postgres).await;
    let sink = Sink::create(&t).await;
    // The relay's connections carry a name of their own, so only they are terminated.
    let name = format!("outbox-relay-{}", uuid::Uuid::new_v4().simple());
    let base = postgres_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}application_name={name}");
    let writers = Writers::start(&t, steady_writers(100));
    let relay = RelayProcess::spawn_on(&url, &t, &sink, Faults::default());
    sink.wait_for(&t, 100, Duration::from_secs(60)).await;
    let kill = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
    );
    let mut terminated = 0;
    for _ in 0..cuts {
        tokio::time::sleep(random_pause(200, 800)).await;
        terminated +=
            t.db.query_all_raw(Statement::from_string(
                t.db.get_database_backend(),
                kill.clone(),
            ))
            .await
            .unwrap()
            .len();
    }
    assert!(terminated > 0, "the relay's connections were found");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = writers.stop().await;
    let tally = drain(&t, &sink, &ledger).await;
    sink.check(
        &t,
        &tally,
        "3a. relay's database connections terminated",
        &format!("`pg_terminate_backend` {cuts} times mid-flow ({terminated} connections)"),
        cuts * CHILD_BATCH,
    )
    .await;
    sink.tear_down(t, [relay]).await;
}

fn restart_postgres() {
    let clusters = std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL's Debian layout (/etc/postgresql/<version>)");
    let version = clusters
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("one PostgreSQL cluster");
    outbox_tests::run_command(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "restart"],
    );
}

/// The shared PostgreSQL is restarted: writers, relay and test all lose every connection at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_survives_a_postgres_restart() {
    let _serial = serial().await;
    let t = TestDb::new(Backend::Postgres).await;
    let sink = Sink::create(&t).await;
    let writers = Writers::start(&t, steady_writers(100));
    let relay = RelayProcess::spawn(&t, &sink, Faults::default());
    sink.wait_for(&t, 200, Duration::from_secs(60)).await;
    let before = writers.committed();
    tokio::task::spawn_blocking(restart_postgres)
        .await
        .expect("the restart ran");
    // Writers commit again after the restart, and the relay delivers what they write.
    writers.wait_for(before + 1000).await;
    let ledger = writers.stop().await;
    let uncertain = ledger.uncertain.len();
    let tally = drain(&t, &sink, &ledger).await;
    sink.check(
        &t,
        &tally,
        "3b. PostgreSQL restarted",
        &format!(
            "`pg_ctlcluster restart` mid-flow; {uncertain} events in commits cut by the restart (may or may not arrive)"
        ),
        CHILD_BATCH,
    )
    .await;
    sink.tear_down(t, [relay]).await;
}
