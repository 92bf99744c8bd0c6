//! Configuration from the environment alone; a bad value stops the service at start, naming the variable.

use std::net::SocketAddr;

use outbox::OutboxConfig;
use outbox::config::ConfigLoader;

/// What runs in this process: the HTTP API, the relay, or both (the FastAPI-lifespan pattern).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Api,
    Relay,
    All,
}

pub struct Settings {
    pub database_url: String,
    pub broker_url: String,
    pub bind: SocketAddr,
    /// Where consumers reach this service (`PUBLIC_URL`, default `http://` + `BIND_ADDR`): the base of the
    /// schema URLs in the messages' `dataschema`.
    pub public_url: String,
    pub mode: Mode,
    pub table: String,
    pub json_logs: bool,
    pub outbox: OutboxConfig,
    /// The ops dashboard's token (`OUTBOX_OPS_TOKEN`): without one, the dashboard at `/ops` is read-only.
    pub ops_token: Option<String>,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

impl Settings {
    /// Reads `DATABASE_URL`, `OUTBOX_BROKER`, `BIND_ADDR`, `PUBLIC_URL`, `SERVICE_MODE` (or `--mode`), `OUTBOX_TABLE`,
    /// `OUTBOX_OPS_TOKEN`, `LOG_FORMAT` and every `OUTBOX_*` setting.
    pub fn from_env() -> Result<Self, String> {
        let mut problems = Vec::new();
        let bind_text = var("BIND_ADDR", "127.0.0.1:8080");
        let bind = bind_text.parse().unwrap_or_else(|_| {
            problems.push(format!(
                "BIND_ADDR={bind_text}: expected host:port, like 127.0.0.1:8080"
            ));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        let args: Vec<String> = std::env::args().collect();
        let mode_text = args
            .iter()
            .position(|a| a == "--mode")
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| var("SERVICE_MODE", "all"));
        let mode = match mode_text.as_str() {
            "api" => Mode::Api,
            "relay" => Mode::Relay,
            "all" => Mode::All,
            other => {
                problems.push(format!(
                    "SERVICE_MODE (or --mode)={other}: expected api, relay or all"
                ));
                Mode::All
            }
        };
        let json_logs = match var("LOG_FORMAT", "text").as_str() {
            "json" => true,
            "text" => false,
            other => {
                problems.push(format!("LOG_FORMAT={other}: expected text or json"));
                false
            }
        };
        let outbox = ConfigLoader::new()
            .allow("OUTBOX_BROKER")
            .allow("OUTBOX_TABLE")
            .allow("OUTBOX_OPS_TOKEN")
            .from_env()
            .unwrap_or_else(|e| {
                problems.push(e.to_string());
                OutboxConfig::default()
            });
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Ok(Self {
            database_url: var("DATABASE_URL", "sqlite://service.db?mode=rwc"),
            broker_url: var("OUTBOX_BROKER", "stdout://"),
            public_url: var("PUBLIC_URL", &format!("http://{bind}"))
                .trim_end_matches('/')
                .to_owned(),
            bind,
            mode,
            table: var("OUTBOX_TABLE", "outbox_events"),
            json_logs,
            outbox,
            ops_token: std::env::var("OUTBOX_OPS_TOKEN").ok(),
        })
    }
}
