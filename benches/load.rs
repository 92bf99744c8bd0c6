//! A steady offered load: writer tasks committing transactions of a fixed number of events (`add_events`) on a
//! fixed schedule, open-loop (a writer that falls behind catches up, so the achieved rate shows what the
//! database allowed, not what the schedule asked).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox::relay::RelayHandle;
use outbox::repository::OutboxRepository;
use outbox::sea_orm::{DatabaseConnection, TransactionTrait};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::Result;
use crate::workload::event;

/// `writers` tasks, each committing `txn_size` events every `writers * txn_size / rate` seconds, their phases
/// staggered so that commits are spread evenly: `rate` events/s in all.
pub struct Load {
    pub rate: f64,
    pub txn_size: usize,
    pub writers: usize,
}

/// An event's id and the moment its transaction's commit returned.
pub type Commit = (Uuid, Instant);

/// Which events' commits the writers keep.
#[derive(Clone, Copy, PartialEq)]
pub enum Record {
    None,
    All,
    /// About one event in a hundred, chosen by its id ([`in_sample`]), so that a publisher can pick the same ones
    /// without being told: a long run at a high rate keeps a few thousand times, not millions.
    Sample,
}

/// Whether the event `id` is one of the sampled ones (its id's random bits are uniform).
pub fn in_sample(id: &Uuid) -> bool {
    id.as_u128().is_multiple_of(100)
}

/// The writers of a running load.
pub struct Writers {
    started: Instant,
    written: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Result<Vec<Commit>>>>,
}

/// The state at one moment of a load: events written (committed) so far, and pending in the outbox.
pub struct Sample {
    pub at: Duration,
    pub written: u64,
    pub pending: u64,
    /// This process's resident memory (writers, relay and all), in bytes.
    pub rss: u64,
}

impl Sample {
    /// Events written per second between `earlier` and this sample.
    pub fn written_rate(&self, earlier: &Sample) -> f64 {
        (self.written - earlier.written) as f64 / (self.at - earlier.at).as_secs_f64()
    }

    /// Events published per second between `earlier` and this sample: what was written and is no longer
    /// pending (counted in the database, so it holds for any publisher).
    pub fn published_rate(&self, earlier: &Sample) -> f64 {
        let published = |s: &Sample| s.written as f64 - s.pending as f64;
        (published(self) - published(earlier)) / (self.at - earlier.at).as_secs_f64()
    }
}

impl Load {
    /// Starts the writers for `duration`; they keep the commit times `record` asks for (for latency); with
    /// `wake`, they wake that relay in-process after each commit, as a service whose writers and relay share a
    /// process would.
    pub fn start(
        &self,
        db: &DatabaseConnection,
        outbox: &OutboxRepository,
        duration: Duration,
        record: Record,
        wake: Option<RelayHandle>,
    ) -> Writers {
        let started = Instant::now();
        let deadline = started + duration;
        let period = Duration::from_secs_f64((self.writers * self.txn_size) as f64 / self.rate);
        let written = Arc::new(AtomicU64::new(0));
        let tasks = (0..self.writers)
            .map(|w| {
                let (db, outbox, written) = (db.clone(), outbox.clone(), written.clone());
                let wake = wake.clone();
                let (writers, txn_size) = (self.writers, self.txn_size);
                let first = started + period.mul_f64(w as f64 / writers as f64);
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval_at(first.into(), period);
                    let mut commits = Vec::new();
                    for k in 0.. {
                        tick.tick().await;
                        if Instant::now() >= deadline {
                            break;
                        }
                        let base = (k * writers + w) * txn_size;
                        let txn = db.begin().await?;
                        let ids = outbox
                            .add_events(&txn, (base..base + txn_size).map(event))
                            .await?;
                        txn.commit().await?;
                        let at = Instant::now();
                        if let Some(relay) = &wake {
                            relay.wake();
                        }
                        written.fetch_add(txn_size as u64, Ordering::Relaxed);
                        match record {
                            Record::None => {}
                            Record::All => commits.extend(ids.into_iter().map(|id| (id, at))),
                            Record::Sample => {
                                commits.extend(ids.into_iter().filter(in_sample).map(|id| (id, at)))
                            }
                        }
                    }
                    Ok(commits)
                })
            })
            .collect();
        Writers {
            started,
            written,
            tasks,
        }
    }

    /// Runs the load for `duration`, sampling at its start and at the end of each of `slices` equal slices,
    /// and calling `after_sample` after each (the last sample is taken once the writers have stopped). Returns
    /// the samples and the commits `record` asked for.
    pub async fn sampled(
        &self,
        db: &DatabaseConnection,
        outbox: &OutboxRepository,
        duration: Duration,
        slices: u32,
        record: Record,
        mut after_sample: impl FnMut(),
    ) -> Result<(Vec<Sample>, Vec<Commit>)> {
        let mut writers = self.start(db, outbox, duration, record, None);
        let mut samples = vec![writers.sample(db, outbox).await?];
        let mut commits = Vec::new();
        for k in 1..=slices {
            if k < slices {
                tokio::time::sleep_until((writers.started + duration * k / slices).into()).await;
            } else {
                commits = writers.finish().await?;
            }
            samples.push(writers.sample(db, outbox).await?);
            after_sample();
        }
        Ok((samples, commits))
    }
}

impl Writers {
    /// Events written so far and pending now.
    async fn sample(&self, db: &DatabaseConnection, outbox: &OutboxRepository) -> Result<Sample> {
        Ok(Sample {
            at: self.started.elapsed(),
            written: self.written.load(Ordering::Relaxed),
            pending: outbox.count_unpublished(db).await?,
            rss: rss(),
        })
    }

    /// Waits for the writers to stop; the commits they recorded.
    pub async fn finish(&mut self) -> Result<Vec<Commit>> {
        let mut commits = Vec::new();
        for task in std::mem::take(&mut self.tasks) {
            commits.extend(task.await??);
        }
        Ok(commits)
    }
}

/// This process's resident memory in bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
