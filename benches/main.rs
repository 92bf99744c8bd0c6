//! The benchmark harness: `cargo run --release -p outbox-bench -- [scenario] [runs]`, where scenario is one of
//! write, drain, baseline, brokers, publish, latency, sustained, stability, sqlite, mariadb, writers, consume,
//! scaleout, or all (the default).
//!
//! Workload (fixed so results compare across projects): ~200-byte JSON events
//! (`{"user_id": <uuid>, "email": ..., "name": ...}`), type `com.example.user.created`, 100 aggregates, the
//! machine's PostgreSQL (`BENCH_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`) unless the
//! scenario names another database. Each scenario runs `runs` times (default 3) on fresh tables and prints
//! min / median / max as a markdown table; sustained and stability are one long run per line instead, and print
//! tables of their own.
//!
//! Environment (see BENCHMARKS.md): `BENCH_SECONDS` (length of each timed load: sustained rate, stability run,
//! latency measurement; default 60, 60 and 10), `BENCH_DELIVERY=cursor` (scenarios that do not compare the two
//! designs themselves run under the commit-order cursor), `BENCH_RATES` (the sustained ladder, events/s, default
//! `5000,10000,15000,20000`), `BENCH_STABILITY_RATE` (default 10000), `BENCH_PINNED_ONLY=1` (stability: only
//! the run with a transaction pinning the xmin), `BENCH_MYSQL_URL`, `BENCH_SKIP_KAFKA`,
//! `BENCH_UNACKNOWLEDGED` (brokers, publish; default 4), `BENCH_BROKERS_ONLY` (brokers, publish: the rows whose
//! label contains it), `BENCH_WRITERS_ONLY` (writers: the rows whose label contains it), `BENCH_QUEUE_VERSION` (RabbitMQ's bench queue: `x-queue-version`), `BENCH_QUEUE_TYPE`
//! (RabbitMQ's bench queue: `classic`, `quorum` or `stream`, declared durable; unset or empty, a transient classic queue).

mod baseline;
mod brokers;
mod consume;
mod drain;
mod latency;
mod load;
mod publish;
mod report;
mod scaleout;
mod service;
mod stability;
mod sustained;
mod workload;
mod write;
mod writers;

use std::str::FromStr;
use std::time::{Duration, Instant};

use outbox::repository::connect;

use report::{Row, Table};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SCENARIOS: [&str; 13] = [
    "write",
    "drain",
    "baseline",
    "brokers",
    "publish",
    "latency",
    "sustained",
    "stability",
    "sqlite",
    "mariadb",
    "writers",
    "consume",
    "scaleout",
];

/// What the command line and the environment ask for.
pub struct Settings {
    pub runs: usize,
    /// `BENCH_SECONDS`: overrides each scenario's default length of a timed load.
    pub seconds: Option<Duration>,
    pub rates: Vec<f64>,
    pub stability_rate: f64,
}

/// The variable `name` parsed, if it is set.
pub fn env<T: FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    std::env::var(name)
        .ok()
        .map(|value| {
            value
                .trim()
                .parse()
                .map_err(|e| format!("{name}={value}: {e}").into())
        })
        .transpose()
}

#[tokio::main]
async fn main() -> Result<()> {
    // The library's warnings and errors (a failed batch, a timed-out claim) on stderr: a figure measured
    // through one of them says so. `RUST_LOG` overrides.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| "all".into());
    if scenario != "all" && !SCENARIOS.contains(&scenario.as_str()) {
        return Err(format!(
            "unknown scenario `{scenario}`: expected all or one of {}",
            SCENARIOS.join(", ")
        )
        .into());
    }
    let settings = Settings {
        runs: args
            .next()
            .map(|r| r.parse())
            .transpose()?
            .unwrap_or(3)
            .max(1),
        seconds: env("BENCH_SECONDS")?
            .map(Duration::try_from_secs_f64)
            .transpose()?,
        rates: env::<String>("BENCH_RATES")?
            .unwrap_or_else(|| "5000,10000,15000,20000".into())
            .split(',')
            .map(|r| {
                r.trim()
                    .parse()
                    .map_err(|e| format!("BENCH_RATES: {r}: {e}"))
            })
            .collect::<std::result::Result<_, _>>()?,
        stability_rate: env("BENCH_STABILITY_RATE")?.unwrap_or(10_000.0),
    };
    let url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let db = connect(&url).await?;
    let started = Instant::now();
    let runs = settings.runs;
    let mut rows: Vec<Row> = Vec::new();
    let mut tables: Vec<Table> = Vec::new();
    for name in SCENARIOS
        .into_iter()
        .filter(|&s| scenario == "all" || scenario == s)
    {
        match name {
            "write" => rows.extend(write::run(&db, runs).await?),
            "drain" => rows.extend(drain::postgres(&db, runs).await?),
            "baseline" => rows.extend(baseline::run(&db, runs).await?),
            "brokers" => rows.extend(brokers::run(&db, runs).await?),
            "publish" => rows.extend(publish::run(runs).await?),
            "latency" => rows.extend(latency::run(&db, &settings).await?),
            "sustained" => tables.push(sustained::run(&db, &settings).await?),
            "stability" => tables.push(stability::run(&db, &settings).await?),
            "sqlite" => rows.extend(drain::sqlite(runs).await?),
            "mariadb" => rows.extend(drain::mariadb(runs).await?),
            "writers" => rows.extend(writers::run(runs).await?),
            "consume" => rows.extend(consume::run(&db, runs).await?),
            "scaleout" => rows.extend(scaleout::run(&db, runs).await?),
            _ => unreachable!("every name in SCENARIOS has its arm"),
        }
    }
    if !rows.is_empty() {
        Table::summary(&rows).print();
    }
    for table in &tables {
        table.print();
    }
    eprintln!("{runs} run(s) each, {:.0?} in all", started.elapsed());
    Ok(())
}
