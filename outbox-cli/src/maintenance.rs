//! The commands on the table as a whole: status, retention, schema, and the check a deploy script runs.

use std::time::Duration;

use crate::render::{Table, age};
use crate::{Cli, CliError, Target};

/// The databases whose schema `migrate --print` prints.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Backend {
    Postgres,
    Mysql,
    Sqlite,
}

pub(crate) async fn status(target: &Target, json: bool) -> Result<(), CliError> {
    let Target { db, outbox } = target;
    let stats = outbox.stats(db).await?;
    let backlog = outbox.backlog(db).await?;
    let oldest_age = stats.oldest_pending_age();
    // A schema from before the relays table still has a status; the line about relays says what is missing.
    let relays = outbox
        .relays(db)
        .await
        .map_err(|error| format!("unknown ({error}); `outbox migrate` creates the relays table"));
    if json {
        let relays = match &relays {
            Ok(relays) => serde_json::Value::Array(
                relays
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "relay_id": r.relay_id,
                            "name": r.name,
                            "alive": r.is_alive(),
                            "started_at": r.started_at.to_rfc3339(),
                            "heartbeat_at": r.heartbeat_at.to_rfc3339(),
                            "since_heartbeat_seconds": r.since_heartbeat().as_secs_f64(),
                            "published": r.published,
                            "dead_lettered": r.dead_lettered,
                            "wants_notify": r.wants_notify,
                        })
                    })
                    .collect(),
            ),
            Err(_) => serde_json::Value::Null,
        };
        let types: Vec<_> = backlog
            .iter()
            .map(|b| {
                serde_json::json!({
                    "aggregate_type": b.aggregate_type,
                    "pending": b.pending,
                    "oldest_pending": b.oldest_pending.map(|t| t.to_rfc3339()),
                })
            })
            .collect();
        let status = serde_json::json!({
            "table": outbox.table(),
            "pending": stats.pending,
            "oldest_pending": stats.oldest_pending.map(|t| t.to_rfc3339()),
            "oldest_pending_age_seconds": oldest_age.map(|a| a.as_secs_f64()),
            "dead_letters": stats.dead_letters,
            "backlog": types,
            "relays": relays,
        });
        println!("{status:#}");
        return Ok(());
    }
    println!("table         {}", outbox.table());
    println!("pending       {}", stats.pending);
    println!(
        "oldest        {}",
        oldest_age.map_or_else(|| "-".to_owned(), age)
    );
    println!("dead letters  {}", stats.dead_letters);
    match &relays {
        Ok(relays) => {
            let alive = relays.iter().filter(|r| r.is_alive()).count();
            println!("relays        {alive} alive, {} gone", relays.len() - alive);
        }
        Err(unknown) => println!("relays        {unknown}"),
    }
    if !backlog.is_empty() {
        println!();
        let mut table = Table::new(["AGGREGATE TYPE", "PENDING", "OLDEST"]);
        for b in &backlog {
            let oldest = b
                .oldest_pending
                .map(|t| age((chrono::Utc::now() - t).to_std().unwrap_or_default()));
            table.row([
                b.aggregate_type.clone(),
                b.pending.to_string(),
                oldest.unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        print!("{table}");
    }
    if let Ok(relays) = &relays
        && !relays.is_empty()
    {
        println!();
        let mut table = Table::new(["RELAY", "STATE", "HEARTBEAT", "UP", "PUBLISHED", "DEAD"]);
        for r in relays {
            table.row([
                r.name.clone(),
                r.state().to_owned(),
                format!("{} ago", age(r.since_heartbeat())),
                age((chrono::Utc::now() - r.started_at)
                    .to_std()
                    .unwrap_or_default()),
                r.published.to_string(),
                r.dead_lettered.to_string(),
            ]);
        }
        print!("{table}");
    }
    Ok(())
}

pub(crate) async fn purge_published(
    target: &Target,
    older_than: Duration,
    batch: u32,
) -> Result<(), CliError> {
    let Target { db, outbox } = target;
    let progress = crate::render::spinner("deleting published events");
    let deleted = outbox
        .purge_published_reporting(db, older_than, batch, |total| progress.set_position(total))
        .await?;
    progress.finish_and_clear();
    println!(
        "deleted {deleted} published events older than {}",
        humantime::format_duration(older_than)
    );
    Ok(())
}

pub(crate) async fn return_to_rows(target: &Target, yes: bool) -> Result<(), CliError> {
    let Target { db, outbox } = target;
    let question = format!(
        "mark every event the cursors of `{}` passed published and delete the cursors?",
        outbox.table()
    );
    if !yes && !crate::confirm(&question)? {
        return Err(CliError::Refused(
            "not confirmed: nothing done (pass --yes to return the table without asking)".into(),
        ));
    }
    let marked = outbox.return_to_rows(db).await?;
    println!(
        "`{}` is back on the rows design: {marked} events the cursors published are marked published; start its \
         relays with OUTBOX_DELIVERY=rows",
        outbox.table()
    );
    Ok(())
}

pub(crate) fn print_schema(backend: Backend, table: &str) -> Result<(), CliError> {
    let backend = match backend {
        Backend::Postgres => sea_orm::DbBackend::Postgres,
        Backend::Mysql => sea_orm::DbBackend::MySql,
        Backend::Sqlite => sea_orm::DbBackend::Sqlite,
    };
    for statement in outbox::migration::schema(backend, table)? {
        // The mysql client ends a statement at its first `;`: a trigger's body has its own, so it goes between
        // another delimiter.
        if backend == sea_orm::DbBackend::MySql && statement.contains(';') {
            println!("DELIMITER //\n{statement} //\nDELIMITER ;\n");
        } else {
            println!("{statement};\n");
        }
    }
    Ok(())
}

pub(crate) async fn migrate(target: &Target) -> Result<(), CliError> {
    let Target { db, outbox } = target;
    outbox::migration::create_table(db, outbox.table()).await?;
    outbox.check(db).await?;
    println!("the outbox table `{}` is in place", outbox.table());
    Ok(())
}

/// Runs every check, printing one line each, and fails if any failed.
pub(crate) async fn check(cli: &Cli, broker: Option<&str>) -> Result<(), CliError> {
    let mut failed = 0;
    let mut report = |what: &str, outcome: Result<String, String>| match outcome {
        Ok(detail) => println!("ok    {what}: {detail}"),
        Err(error) => {
            failed += 1;
            println!("FAIL  {what}: {error}");
        }
    };
    report(
        "settings",
        crate::settings()
            .map(|_| "every OUTBOX_* variable is valid".to_owned())
            .map_err(|e| e.to_string()),
    );
    match cli.target().await {
        Ok(target) => {
            report("database", Ok("connected".to_owned()));
            report(
                "table",
                target
                    .outbox
                    .check(&target.db)
                    .await
                    .map(|()| format!("`{}` has every column", target.outbox.table()))
                    .map_err(|e| e.to_string()),
            );
        }
        Err(error) => report("database", Err(error.to_string())),
    }
    if let Some(url) = broker {
        let outcome = match outbox::publisher::from_url(url).await {
            Ok(publisher) => publisher
                .check()
                .await
                .map(|()| format!("{} answers", publisher.name()))
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        report("broker", outcome);
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::Checks(failed))
    }
}
