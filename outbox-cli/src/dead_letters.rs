//! `outbox dead-letters`: see what gave up and why, then replay or purge it.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use outbox::repository::{DeadLetterFilter, StoredEvent};
use uuid::Uuid;

use crate::render::{Table, event_json};
use crate::{CliError, Target, confirm};

/// How many dead letters one replay or purge statement takes.
const CHUNK: u64 = 500;

/// How many of the dead letters a dry run would act on it lists.
const DRY_RUN_SHOWN: u64 = 100;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List dead letters, oldest first, with their last error.
    List {
        #[command(flatten)]
        filters: Filters,
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

/// Which dead letters a replay or purge acts on, and whether to act: `--all`, one by `--id` or `--event-id`, or
/// the ones every given filter selects.
#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("selection")
        .required(true)
        .multiple(true)
        .args(["id", "event_id", "all", "event_type", "aggregate", "reason", "since", "before"])
))]
pub(crate) struct Action {
    /// One dead letter, by row id.
    #[arg(long, conflicts_with_all = ["event_id", "all"])]
    id: Option<i64>,
    /// One dead letter, by event id (CloudEvents `id`).
    #[arg(long, conflicts_with = "all")]
    event_id: Option<Uuid>,
    /// Every dead letter.
    #[arg(long, conflicts_with_all = ["event_type", "aggregate", "reason", "since", "before"])]
    all: bool,
    #[command(flatten)]
    filters: Filters,
    /// Print what would be done, and do nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do it without asking (needed when the input is not a terminal).
    #[arg(long, short)]
    yes: bool,
}

/// Filters that narrow the dead letters down; given together, a dead letter must match all of them.
#[derive(Debug, Args)]
pub(crate) struct Filters {
    /// Of this event type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Of this aggregate, as `TYPE/ID` (e.g. `com.example.user/42`).
    #[arg(long, value_name = "TYPE/ID", value_parser = parse_aggregate)]
    aggregate: Option<(String, String)>,
    /// Whose last error contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// Whose event occurred at or after this time: RFC 3339 (`2026-12-01T08:00:00Z`) or an age (`2h`: two hours
    /// ago).
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Whose event occurred before this time: RFC 3339 or an age, as for `--since`.
    #[arg(long, value_parser = parse_time)]
    before: Option<DateTime<Utc>>,
}

impl Filters {
    fn filter(&self) -> DeadLetterFilter {
        let mut all = Vec::new();
        if let Some(event_type) = &self.event_type {
            all.push(DeadLetterFilter::EventType(event_type.clone()));
        }
        if let Some((aggregate_type, aggregate_id)) = &self.aggregate {
            all.push(DeadLetterFilter::Aggregate {
                aggregate_type: aggregate_type.clone(),
                aggregate_id: aggregate_id.clone(),
            });
        }
        if let Some(reason) = &self.reason {
            all.push(DeadLetterFilter::ErrorContains(reason.clone()));
        }
        if let Some(since) = self.since {
            all.push(DeadLetterFilter::OccurredSince(since));
        }
        if let Some(before) = self.before {
            all.push(DeadLetterFilter::OccurredBefore(before));
        }
        DeadLetterFilter::AllOf(all)
    }
}

impl Action {
    fn filter(&self) -> DeadLetterFilter {
        match (self.id, self.event_id) {
            (Some(id), _) => DeadLetterFilter::Id(id),
            (_, Some(event_id)) => DeadLetterFilter::AllOf(vec![
                DeadLetterFilter::EventId(event_id),
                self.filters.filter(),
            ]),
            // `--all` excludes every filter, so an empty AllOf is all.
            _ => self.filters.filter(),
        }
    }
}

/// `TYPE/ID`, split at the last `/` (an aggregate type may hold one, an id rarely does).
fn parse_aggregate(text: &str) -> Result<(String, String), String> {
    match text.rsplit_once('/') {
        Some((kind, id)) if !kind.is_empty() && !id.is_empty() => {
            Ok((kind.to_owned(), id.to_owned()))
        }
        _ => Err(format!(
            "expected TYPE/ID, e.g. com.example.user/42, not {text:?}"
        )),
    }
}

/// A time in RFC 3339, or an age meaning that long ago.
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let age = humantime::parse_duration(text).map_err(|_| {
        format!(
            "expected an RFC 3339 time (2026-12-01T08:00:00Z) or an age (30m, 2h, 7d), not {text:?}"
        )
    })?;
    let age = chrono::Duration::from_std(age).map_err(|e| e.to_string())?;
    Utc::now()
        .checked_sub_signed(age)
        .ok_or_else(|| format!("{text} ago is before any time this can name"))
}

impl Command {
    pub(crate) async fn run(&self, target: &Target) -> Result<(), CliError> {
        let Target { db, outbox } = target;
        match self {
            Self::List {
                filters,
                limit,
                offset,
                json,
            } => {
                let filter = filters.filter();
                let rows = outbox
                    .dead_letters_matching(db, &filter, *limit, *offset)
                    .await?;
                if *json {
                    let rows: Vec<_> = rows.iter().map(event_json).collect();
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
                    println!("{:#}", event_json(row));
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
        let filter = self.filter();
        let n = outbox.count_dead_letters_matching(db, &filter).await?;
        if n == 0 {
            println!("no dead letters match");
            return Ok(());
        }
        if self.dry_run {
            let shown = outbox
                .dead_letters_matching(db, &filter, DRY_RUN_SHOWN, 0)
                .await?;
            print!("{}", table(&shown));
            if n > DRY_RUN_SHOWN {
                println!("... and {} more", n - DRY_RUN_SHOWN);
            }
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
        // In chunks, oldest first, so that a long replay shows its progress and each statement stays short. A
        // replayed event that fails for good again meanwhile is a dead letter again: the count taken above bounds
        // the work, so it is not replayed twice by this command.
        let progress = crate::render::progress(n, verb.word());
        let mut done = 0;
        while done < n {
            let chunk = outbox
                .dead_letters_matching(db, &filter, CHUNK.min(n - done), 0)
                .await?;
            if chunk.is_empty() {
                break;
            }
            let ids = DeadLetterFilter::Ids(chunk.iter().map(|row| row.id).collect());
            done += match verb {
                Verb::Replay => outbox.replay_dead_letters(db, ids).await?,
                Verb::Purge => outbox.purge_dead_letters(db, ids).await?,
            };
            progress.set_position(done);
        }
        progress.finish_and_clear();
        match verb {
            Verb::Replay => println!("replayed {done} dead letters: they are pending again"),
            Verb::Purge => println!("purged {done} dead letters"),
        }
        Ok(())
    }
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
