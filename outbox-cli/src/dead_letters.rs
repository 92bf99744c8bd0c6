//! `outbox dead-letters`: see what gave up and why, then replay or purge it.

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};
use outbox::repository::{DeadLetterFilter, StoredEvent};
use uuid::Uuid;

use crate::render::Table;
use crate::{CliError, Target};

/// Every dead letter a filter selects is read at once: dead letters are an exception to look at, not a backlog.
const ALL: u64 = i64::MAX as u64;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List dead letters, oldest first, with their last error.
    List {
        /// Only dead letters of this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// Skip this many first.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Print JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter whole: its metadata, its last error and its payload.
    Show {
        /// The row id (the first column of `list`).
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make dead letters pending again, with a fresh retry budget: the relay publishes them.
    Replay(Action),
    /// Delete dead letters for good.
    Purge(Action),
}

/// Which dead letters a replay or purge acts on, and whether to act.
#[derive(Debug, Args)]
pub(crate) struct Action {
    #[command(flatten)]
    select: Select,
    /// Print what would be done, and do nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do it without asking (needed when the input is not a terminal).
    #[arg(long, short)]
    yes: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Select {
    /// One dead letter, by row id.
    #[arg(long)]
    id: Option<i64>,
    /// One dead letter, by event id (CloudEvents `id`).
    #[arg(long)]
    event_id: Option<Uuid>,
    /// Every dead letter of this event type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    all: bool,
}

impl Select {
    fn filter(&self) -> DeadLetterFilter {
        match (self.id, self.event_id, &self.event_type) {
            (Some(id), _, _) => DeadLetterFilter::Id(id),
            (_, Some(event_id), _) => DeadLetterFilter::EventId(event_id),
            (_, _, Some(event_type)) => DeadLetterFilter::EventType(event_type.clone()),
            // clap requires exactly one of the four.
            _ => DeadLetterFilter::All,
        }
    }
}

impl Command {
    pub(crate) async fn run(&self, target: &Target) -> Result<(), CliError> {
        let Target { db, outbox } = target;
        match self {
            Self::List {
                event_type,
                limit,
                offset,
                json,
            } => {
                let filter = event_type
                    .clone()
                    .map_or(DeadLetterFilter::All, DeadLetterFilter::EventType);
                let rows = outbox
                    .dead_letters_matching(db, &filter, *limit, *offset)
                    .await?;
                if *json {
                    let rows: Vec<_> = rows.iter().map(to_json).collect();
                    println!("{:#}", serde_json::Value::Array(rows));
                } else {
                    print!("{}", table(&rows));
                }
                Ok(())
            }
            Self::Show { id, json } => {
                let rows = outbox
                    .dead_letters_matching(db, &DeadLetterFilter::Id(*id), 1, 0)
                    .await?;
                let row = rows.first().ok_or_else(|| {
                    CliError::Refused(format!(
                        "no dead letter with id {id} in `{}`",
                        outbox.table()
                    ))
                })?;
                if *json {
                    println!("{:#}", to_json(row));
                } else {
                    show(row);
                }
                Ok(())
            }
            Self::Replay(action) => action.run(target, Verb::Replay).await,
            Self::Purge(action) => action.run(target, Verb::Purge).await,
        }
    }
}

#[derive(Clone, Copy)]
enum Verb {
    Replay,
    Purge,
}

impl Verb {
    fn word(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Purge => "purge",
        }
    }
}

impl Action {
    async fn run(&self, target: &Target, verb: Verb) -> Result<(), CliError> {
        let Target { db, outbox } = target;
        let filter = self.select.filter();
        let matching = outbox.dead_letters_matching(db, &filter, ALL, 0).await?;
        if matching.is_empty() {
            println!("no dead letters match");
            return Ok(());
        }
        let n = matching.len();
        if self.dry_run {
            print!("{}", table(&matching));
            println!(
                "would {} {n} dead letters (dry run: nothing done)",
                verb.word()
            );
            return Ok(());
        }
        if !self.yes && !confirm(&format!("{} {n} dead letters?", verb.word()))? {
            return Err(CliError::Refused(format!(
                "not confirmed: nothing done (pass --yes to {} without asking)",
                verb.word()
            )));
        }
        let done = match verb {
            Verb::Replay => outbox.replay_dead_letters(db, filter).await?,
            Verb::Purge => outbox.purge_dead_letters(db, filter).await?,
        };
        match verb {
            Verb::Replay => println!("replayed {done} dead letters: they are pending again"),
            Verb::Purge => println!("purged {done} dead letters"),
        }
        Ok(())
    }
}

/// Asks on the terminal; without one there is nobody to ask, which is a no.
fn confirm(question: &str) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn table(rows: &[StoredEvent]) -> Table {
    let mut table = Table::new([
        "ID",
        "TYPE",
        "AGGREGATE",
        "ATTEMPTS",
        "OCCURRED",
        "LAST ERROR",
    ]);
    for row in rows {
        table.row([
            row.id.to_string(),
            row.event_type.clone(),
            format!("{}/{}", row.aggregate_type, row.aggregate_id),
            row.attempts.to_string(),
            row.occurred_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            first_line(row.last_error.as_deref().unwrap_or("-")),
        ]);
    }
    table
}

/// An error's first line, cut to fit a table row.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(100) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line.to_owned(),
    }
}

fn show(row: &StoredEvent) {
    let optional = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    println!("id              {}", row.id);
    println!("event id        {}", row.event_id);
    println!(
        "type            {} (version {})",
        row.event_type, row.data_version
    );
    println!(
        "aggregate       {}/{}",
        row.aggregate_type, row.aggregate_id
    );
    println!("occurred        {}", row.occurred_at.to_rfc3339());
    println!("attempts        {}", row.attempts);
    println!("correlation id  {}", optional(&row.correlation_id));
    println!("causation id    {}", optional(&row.causation_id));
    println!("traceparent     {}", optional(&row.traceparent));
    println!("last error      {}", optional(&row.last_error));
    let payload = serde_json::from_str::<serde_json::Value>(&row.payload)
        .map_or_else(|_| row.payload.clone(), |v| format!("{v:#}"));
    println!("payload\n{payload}");
}

fn to_json(row: &StoredEvent) -> serde_json::Value {
    // The payload as JSON when it is JSON (it always is when the repository stored it), else as text.
    let payload = serde_json::from_str::<serde_json::Value>(&row.payload)
        .unwrap_or_else(|_| serde_json::Value::String(row.payload.clone()));
    serde_json::json!({
        "id": row.id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "data_version": row.data_version,
        "aggregate_type": row.aggregate_type,
        "aggregate_id": row.aggregate_id,
        "occurred_at": row.occurred_at.to_rfc3339(),
        "attempts": row.attempts,
        "last_error": row.last_error,
        "correlation_id": row.correlation_id,
        "causation_id": row.causation_id,
        "traceparent": row.traceparent,
        "payload": payload,
    })
}
