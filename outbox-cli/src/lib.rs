//! `outbox`: the outbox table from a shell. See how the backlog stands, look at dead letters and replay or purge
//! them, apply retention, create the table or print its schema, and check that the settings, the database and the
//! broker are all usable.
//!
//! ```text
//! outbox status                                   # backlog per type, oldest pending age, dead letters, relays
//! outbox dead-letters list --type com.example.user.created --json
//! outbox dead-letters show 42
//! outbox dead-letters replay --all --dry-run      # what would be replayed; then again with --yes
//! outbox purge-published --older-than 7d
//! outbox tail --json                              # follow what the relays publish
//! outbox return-to-rows                           # undo OUTBOX_DELIVERY=cursor on a table, relays stopped
//! outbox migrate --print --backend postgres       # the schema, for a team's own migration tool
//! outbox check --broker nats://127.0.0.1:4222     # exit code 0 only if everything answers
//! outbox schema asyncapi --broker nats://h:4222   # the AsyncAPI 3.0 document of the linked event types
//! outbox schema check --previous schemas.json     # exit code 1 if a payload changed incompatibly
//! ```
//!
//! The database comes from `--database-url` or `DATABASE_URL`, the table from `--table` or `OUTBOX_TABLE`, as
//! the relay reads them. Exit codes: 0 done, 1 failed (the message says what and why), 2 bad usage.
//!
//! The `schema` commands read the event types linked into the program. The `outbox` binary links none, so for
//! them a service builds its own, two lines in a crate that depends on its events:
//!
//! ```no_run
//! // src/bin/outbox.rs
//! fn main() -> std::process::ExitCode {
//!     // my_events::register(); // anything that references the events' crate keeps the linker from dropping it
//!     outbox_cli::main()
//! }
//! ```

mod dead_letters;
mod maintenance;
mod render;
mod schema;
mod tail;

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outbox::repository::{OutboxRepository, RepositoryError};
use sea_orm::DatabaseConnection;

/// The outbox table from a shell: backlog, dead letters, retention, schema and checks.
#[derive(Debug, Parser)]
#[command(name = "outbox", version, about, long_about = None)]
struct Cli {
    /// The database: `postgres://`, `mysql://`, `mariadb://` or `sqlite:` URL.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// The outbox table's name.
    #[arg(
        long,
        env = "OUTBOX_TABLE",
        default_value = "outbox_events",
        global = true,
        hide_env_values = true
    )]
    table: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pending events, the oldest one's age, dead letters, the backlog per aggregate type, and the relays with
    /// their last heartbeat.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List, show, replay or purge dead letters.
    #[command(subcommand)]
    DeadLetters(dead_letters::Command),
    /// Delete published events older than a given age, in batches.
    PurgePublished {
        /// The age, e.g. `7d`, `12h`, `30m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// Rows per DELETE statement, so the table is never locked for long.
        #[arg(long, default_value_t = 1000)]
        batch: u32,
    },
    /// Follow events as the relays mark them published (Ctrl-C stops).
    Tail(tail::Tail),
    /// Hand a table the commit-order cursor delivered back to the rows design: what the cursors passed is marked
    /// published, the rest stays pending, the cursors go. Stop every relay of the table first.
    ReturnToRows {
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Create the outbox table (idempotent), or print its schema.
    Migrate {
        /// Print the schema instead of applying it; needs no database.
        #[arg(long, requires = "backend")]
        print: bool,
        /// The database whose schema to print.
        #[arg(long, value_enum)]
        backend: Option<maintenance::Backend>,
    },
    /// Check the `OUTBOX_*` settings, the database and the table, and a broker if given; exit code 1 if any fails.
    Check {
        /// A broker URL to reach too (`nats://`, `amqp://`, `redis://`, `kafka://`, `memory://`).
        #[arg(long, env = "OUTBOX_BROKER", hide_env_values = true)]
        broker: Option<String>,
    },
    /// The contract of the event types linked into this program: payload JSON Schemas, the AsyncAPI document,
    /// and a check for breaking changes against a previous export.
    #[command(subcommand)]
    Schema(schema::Command),
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error("no database given: pass --database-url or set DATABASE_URL")]
    NoDatabase,
    #[error("{0}")]
    Refused(String),
    #[error("cannot read the confirmation: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0} of the checks failed")]
    Checks(usize),
    #[error(transparent)]
    Contract(#[from] outbox::contract::ContractError),
}

/// What every command that reads the table starts from.
struct Target {
    db: DatabaseConnection,
    outbox: OutboxRepository,
}

impl Cli {
    async fn target(&self) -> Result<Target, CliError> {
        let url = self.database_url.as_deref().ok_or(CliError::NoDatabase)?;
        let outbox = OutboxRepository::builder()
            .table(&self.table)
            .build()
            .map_err(|e| CliError::Refused(e.to_string()))?;
        let db = outbox::repository::connect(url).await?;
        Ok(Target { db, outbox })
    }
}

/// Asks on the terminal (before a replay, a purge, a return to the rows design); without one there is nobody to ask, which is a no.
pub(crate) fn confirm(question: &str) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// The relay's `OUTBOX_*` settings, as the relay beside this command reads them (with the variables a service
/// reads beside them: the table, the broker and the ops dashboard's token).
fn settings() -> Result<outbox::OutboxConfig, outbox::ConfigError> {
    outbox::config::ConfigLoader::new()
        .allow("OUTBOX_TABLE")
        .allow("OUTBOX_BROKER")
        .allow("OUTBOX_OPS_TOKEN")
        .from_env()
}

/// Runs the `outbox` command with the program's arguments, as the `outbox` binary does. Call it from a binary of
/// your own to have the `schema` commands see your event types.
pub fn main() -> ExitCode {
    run_from(std::env::args_os())
}

/// Runs the `outbox` command with `args` (the first one is the program's name). Bad usage prints the error and
/// returns exit code 2 instead of ending the process.
pub fn run_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            // `--help` and `--version` are "errors" that print to stdout and succeed.
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Status { json } => maintenance::status(&cli.target().await?, *json).await,
        Command::DeadLetters(command) => command.run(&cli.target().await?).await,
        Command::PurgePublished { older_than, batch } => {
            maintenance::purge_published(&cli.target().await?, *older_than, *batch).await
        }
        Command::Tail(tail) => tail.run(&cli.target().await?).await,
        Command::ReturnToRows { yes } => {
            maintenance::return_to_rows(&cli.target().await?, *yes).await
        }
        Command::Migrate {
            print: true,
            backend: Some(backend),
        } => maintenance::print_schema(*backend, &cli.table),
        Command::Migrate { .. } => maintenance::migrate(&cli.target().await?).await,
        Command::Check { broker } => maintenance::check(&cli, broker.as_deref()).await,
        Command::Schema(command) => command.run(),
    }
}
