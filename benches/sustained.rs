//! Sustained throughput: writers commit 100-event transactions at a steady offered rate while one relay
//! (`Relay::run`, LISTEN/NOTIFY, batch 1000) publishes to NATS JetStream with acknowledgements. One run per
//! rate of a ladder; the relay keeps up with a rate when the backlog does not accumulate. Delivery lag is from
//! the writer's commit to the broker's acknowledgement, for about one event in a hundred (chosen by id); memory
//! is the resident size of the whole process (writers and relay) at each slice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::OutboxConfig;
use outbox::message::Message;
use outbox::publisher::{Acknowledgement, PublishError, Publisher, from_url};
use outbox::sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::brokers::{NATS, prepare};
use crate::load::{Commit, Load, Record, Sample, in_sample};
use crate::report::{Table, percentile};
use crate::service::InService;
use crate::{Result, Settings};

/// Backlog samples per run: the table shows the first and the last.
pub const SLICES: u32 = 6;

pub async fn run(db: &DatabaseConnection, settings: &Settings) -> Result<Table> {
    let duration = settings.seconds.unwrap_or(Duration::from_secs(60));
    let mut table = Table {
        header: vec![
            "offered events/s (100-event txns, 4 writers)",
            "written events/s",
            "published events/s",
            "backlog after 1st slice",
            "backlog at end",
            "max backlog",
            "lag p50 / p99 / max, ms",
            "RSS per slice, MiB",
            "keeps up",
        ],
        rows: Vec::new(),
    };
    for &rate in &settings.rates {
        prepare(NATS).await?;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let publisher: Arc<dyn Publisher> = Arc::new(Timed {
            inner: from_url(NATS).await?,
            acked: acked.clone(),
        });
        let service = InService::start(db, config(), true, publisher).await?;
        let load = Load {
            rate,
            txn_size: 100,
            writers: 4,
        };
        let (samples, commits) = load
            .sampled(db, &service.outbox, duration, SLICES, Record::Sample, || ())
            .await?;
        service.stop(db).await?;
        let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|e| e.into_inner()));
        table
            .rows
            .push(row(rate, &samples, &lags(&commits, &acked)));
    }
    prepare(NATS).await?;
    Ok(table)
}

/// The relay's configuration in the sustained scenarios: batches of 1000 (the best of the drain rows),
/// metrics off (no exporter is installed).
pub fn config() -> OutboxConfig {
    let mut config = OutboxConfig::default();
    config.batch_size = 1000;
    config.enable_metrics = false;
    config
}

/// The sampled events' commit-to-acknowledgement lags in ms, sorted; an event acknowledged twice counts once,
/// at its first acknowledgement.
fn lags(commits: &[Commit], acked: &[(Uuid, Instant)]) -> Vec<f64> {
    let mut first: HashMap<Uuid, Instant> = HashMap::with_capacity(acked.len());
    for (id, at) in acked {
        first.entry(*id).or_insert(*at);
    }
    let mut lags: Vec<f64> = commits
        .iter()
        .filter_map(|(id, committed)| {
            let at = first.get(id)?;
            Some(at.saturating_duration_since(*committed).as_secs_f64() * 1000.0)
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    lags
}

fn row(rate: f64, samples: &[Sample], lags: &[f64]) -> Vec<String> {
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let written = last.written_rate(first);
    let max = samples.iter().map(|s| s.pending).max().unwrap_or_default();
    // Keeping up leaves at most what was committed since the last claim, plus the batch in hand: well under
    // one second of the offered rate. A relay 5% short of the rate leaves 3 s of it after a 60-s run.
    let verdict = if written < 0.95 * rate {
        "no: the writers fell short"
    } else if last.pending as f64 > rate {
        "no: the backlog grew"
    } else {
        "yes"
    };
    vec![
        format!("{rate:.0}"),
        format!("{written:.0}"),
        format!("{:.0}", last.published_rate(first)),
        samples[1].pending.to_string(),
        last.pending.to_string(),
        max.to_string(),
        match lags {
            [] => "none acknowledged".to_owned(),
            _ => format!(
                "{:.1} / {:.1} / {:.1} ({} events)",
                percentile(lags, 50),
                percentile(lags, 99),
                percentile(lags, 100),
                lags.len()
            ),
        },
        samples
            .iter()
            .map(|s| format!("{:.1}", s.rss as f64 / (1024.0 * 1024.0)))
            .collect::<Vec<_>>()
            .join(", "),
        verdict.to_owned(),
    ]
}

/// A publisher that notes when the broker acknowledged each sampled event.
struct Timed {
    inner: Box<dyn Publisher>,
    acked: Arc<Mutex<Vec<(Uuid, Instant)>>>,
}

impl Timed {
    fn note(acked: &Mutex<Vec<(Uuid, Instant)>>, id: Uuid) {
        if in_sample(&id) {
            let at = Instant::now();
            acked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((id, at));
        }
    }
}

#[async_trait::async_trait]
impl Publisher for Timed {
    async fn publish(&self, message: &Message) -> std::result::Result<(), PublishError> {
        self.inner.publish(message).await?;
        Self::note(&self.acked, message.id);
        Ok(())
    }

    async fn send(&self, message: &Message) -> std::result::Result<Acknowledgement, PublishError> {
        let ack = self.inner.send(message).await?;
        let (acked, id) = (self.acked.clone(), message.id);
        Ok(Box::pin(async move {
            ack.await?;
            Self::note(&acked, id);
            Ok(())
        }))
    }

    async fn check(&self) -> std::result::Result<(), PublishError> {
        self.inner.check().await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}
