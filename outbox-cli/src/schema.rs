//! `outbox schema`: the contract of the event types linked into the program, and the check a CI runs on it.

use std::path::{Path, PathBuf};

use outbox::Registry;
use outbox::contract::{self, AsyncApi, Protocol};
use serde_json::Value;

use crate::CliError;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Print the payload JSON Schemas (draft-07) as one bundle, `{"events": {type: {version: schema}}}`.
    Jsonschema {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the AsyncAPI 3.0 document of the events: channels, messages with their CloudEvents headers, payloads.
    Asyncapi {
        /// The document's title (default: this program's name).
        #[arg(long)]
        title: Option<String>,
        /// The version of the service's API the document describes.
        #[arg(long = "api-version", default_value = "1.0.0")]
        api_version: String,
        /// The broker the relay publishes to: its scheme picks the binding, its host the server.
        #[arg(
            long,
            env = "OUTBOX_BROKER",
            hide_env_values = true,
            conflicts_with = "protocol"
        )]
        broker: Option<String>,
        /// The binding, when no broker URL is given.
        #[arg(long, value_enum, default_value = "kafka")]
        protocol: ProtocolArg,
        /// Messages are structured-mode CloudEvents (`encoding=structured` on the broker URL says the same).
        #[arg(long)]
        structured: bool,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Compare a previous schema export with the current one; exit code 1 if a payload changed incompatibly.
    Check {
        /// The bundle exported before (`outbox schema jsonschema`), e.g. the one committed with the last release.
        #[arg(long)]
        previous: PathBuf,
        /// The bundle to check (default: the event types linked into this program).
        #[arg(long)]
        current: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum ProtocolArg {
    Kafka,
    Amqp,
    Nats,
    Redis,
    Http,
}

impl From<ProtocolArg> for Protocol {
    fn from(protocol: ProtocolArg) -> Self {
        match protocol {
            ProtocolArg::Kafka => Protocol::Kafka,
            ProtocolArg::Amqp => Protocol::Amqp,
            ProtocolArg::Nats => Protocol::Nats,
            ProtocolArg::Redis => Protocol::Redis,
            ProtocolArg::Http => Protocol::Http,
        }
    }
}

impl Command {
    pub(crate) fn run(&self) -> Result<(), CliError> {
        match self {
            Command::Jsonschema { out } => {
                let registry = linked()?;
                for info in contract::without_schema(registry) {
                    eprintln!(
                        "note: `{}` version {} exports no schema (add `#[outbox(schema)]` to `{}`)",
                        info.meta.event_type, info.meta.data_version, info.rust_type
                    );
                }
                write(out.as_deref(), &contract::json_schemas(registry))
            }
            Command::Asyncapi {
                title,
                api_version,
                broker,
                protocol,
                structured,
                out,
            } => {
                let registry = linked()?;
                let title = title.clone().unwrap_or_else(program_name);
                let document = AsyncApi::new(title, api_version);
                let document = match broker {
                    Some(url) => {
                        if Protocol::from_broker_url(url).is_none() {
                            // Only the scheme: the rest of a broker URL may hold a password.
                            let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
                            return Err(CliError::Refused(format!(
                                "--broker: a `{scheme}://` URL names no broker binding; expected kafka://, \
                                 amqp://, nats://, redis:// or http://"
                            )));
                        }
                        document.broker(url)
                    }
                    None => document.protocol((*protocol).into()),
                };
                let document = if *structured {
                    document.structured(true)
                } else {
                    document
                };
                write(out.as_deref(), &document.document(registry))
            }
            Command::Check { previous, current } => {
                let previous_bundle = read(previous)?;
                let current_bundle = match current {
                    Some(path) => read(path)?,
                    None => contract::json_schemas(linked()?),
                };
                let changes = contract::breaking_changes(&previous_bundle, &current_bundle)?;
                if changes.is_empty() {
                    println!(
                        "compatible: no breaking change against {}",
                        previous.display()
                    );
                    return Ok(());
                }
                for change in &changes {
                    println!("{change}");
                }
                Err(CliError::Refused(format!(
                    "{} breaking change(s) against {}; a change consumers cannot follow needs a new `version` of \
                     the event type",
                    changes.len(),
                    previous.display()
                )))
            }
        }
    }
}

/// The program's registry, refused when empty: the plain `outbox` binary links no event types.
fn linked() -> Result<&'static Registry, CliError> {
    let registry = Registry::global();
    if registry.is_empty() {
        return Err(CliError::Refused(
            "no event types are linked into this program: the schema commands read the types a program links, \
             so build your own `outbox` binary that calls `outbox_cli::main()` from a crate depending on your \
             events (see `outbox_cli`), or give `schema check` a `--current` file"
                .to_owned(),
        ));
    }
    registry
        .validate()
        .map_err(|e| CliError::Refused(e.to_string()))?;
    Ok(registry)
}

fn read(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Refused(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Refused(format!("{} is not JSON: {e}", path.display())))
}

fn write(out: Option<&Path>, value: &Value) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Refused(format!("cannot render the document: {e}")))?;
    text.push('\n');
    match out {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(path) => std::fs::write(path, text)
            .map_err(|e| CliError::Refused(format!("cannot write {}: {e}", path.display()))),
    }
}

fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "events".to_owned())
}
