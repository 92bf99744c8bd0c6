//! Commit-to-publish latency under a steady load: from the moment a writer's commit returned to the moment the
//! in-memory publisher accepted the message. It includes the wake-up (a NOTIFY through PostgreSQL, or the
//! poll, or an in-process `RelayHandle::wake`), the claim, the decode and the publish, not a broker's own
//! latency. The relay is one `Relay::run` with the default batch of 100.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use outbox::OutboxConfig;
use outbox::publisher::InMemoryPublisher;
use outbox::sea_orm::DatabaseConnection;

use crate::load::{Load, Record};
use crate::report::{Row, percentile};
use crate::service::InService;
use crate::{Result, Settings};

/// The poll interval of the polling runs (the library's default is 5 s; with it, latency is about half that).
const POLL: Duration = Duration::from_millis(100);

/// How the relay learns of a commit.
#[derive(Clone, Copy, PartialEq)]
enum Wake {
    /// LISTEN/NOTIFY through PostgreSQL, as across processes (fallback poll 1 s).
    Notify,
    /// `RelayHandle::wake` right after the writer's commit, as when writer and relay share a process (no
    /// LISTEN; fallback poll 1 s).
    InProcess,
    /// Polling every [`POLL`], no LISTEN.
    Poll,
}

/// 200 events/s as single-event transactions every 5 ms (the light load), and 5,000 events/s as 10-event
/// transactions from 5 writers each committing every 10 ms (500 commits/s, each a NOTIFY); each with
/// LISTEN/NOTIFY (fallback poll 1 s, far above what is measured), with an in-process wake after each commit,
/// and polling every 100 ms.
pub async fn run(db: &DatabaseConnection, settings: &Settings) -> Result<Vec<Row>> {
    let duration = settings.seconds.unwrap_or(Duration::from_secs(10));
    let mut rows = Vec::new();
    for (load, name) in [
        (
            Load {
                rate: 200.0,
                txn_size: 1,
                writers: 1,
            },
            "200 events/s",
        ),
        (
            Load {
                rate: 5000.0,
                txn_size: 10,
                writers: 5,
            },
            "5,000 events/s in 10-event txns",
        ),
    ] {
        for wake in [Wake::Notify, Wake::InProcess, Wake::Poll] {
            let how = match wake {
                Wake::Notify => "LISTEN/NOTIFY".to_owned(),
                Wake::InProcess => "in-process wake".to_owned(),
                Wake::Poll => format!("polling every {POLL:?}"),
            };
            let mut p50 = Row::new(format!("commit-to-publish p50, {name}, {how}"), "ms");
            let mut p99 = Row::new(format!("commit-to-publish p99, {name}, {how}"), "ms");
            for _ in 0..settings.runs {
                let mut latencies = measure(db, &load, wake, duration).await?;
                latencies.sort_by(f64::total_cmp);
                p50.values.push(percentile(&latencies, 50));
                p99.values.push(percentile(&latencies, 99));
            }
            rows.extend([p50, p99]);
        }
    }
    Ok(rows)
}

/// Every event's commit-to-publish latency in ms, for one run of `load`.
async fn measure(
    db: &DatabaseConnection,
    load: &Load,
    wake: Wake,
    duration: Duration,
) -> Result<Vec<f64>> {
    let mut config = OutboxConfig::default();
    config.poll_interval = if wake == Wake::Poll {
        POLL
    } else {
        Duration::from_secs(1)
    };
    config.enable_metrics = false;
    let broker = InMemoryPublisher::new();
    let listen = wake == Wake::Notify;
    let service = InService::start(db, config, listen, Arc::new(broker.clone())).await?;
    broker.clear(); // the table's history
    let in_process = (wake == Wake::InProcess).then(|| service.handle.clone());
    let commits: HashMap<_, _> = load
        .start(db, &service.outbox, duration, Record::All, in_process)
        .finish()
        .await?
        .into_iter()
        .collect();
    let all = broker
        .wait_for(commits.len(), Duration::from_secs(60))
        .await;
    service.stop(db).await?;
    if !all {
        return Err(format!(
            "published {} of {} events within 60 s",
            broker.len(),
            commits.len()
        )
        .into());
    }
    Ok(broker
        .messages()
        .iter()
        .filter_map(|m| {
            commits
                .get(&m.message.id)
                .map(|c| m.at.duration_since(*c).as_secs_f64() * 1000.0)
        })
        .collect())
}
