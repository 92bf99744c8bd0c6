//! One batch: claimed, decoded, published run by run, and its outcome marked in one statement per kind.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::chain::ChainOutcome;
use super::observe;
use super::order::{Link, Order, runs};
use super::{BatchReport, Relay, RelayError};
use crate::repository::{Failure, LeaseOwner, Leased, RepositoryError};

impl Relay {
    /// Claims up to `limit` events, publishes them and marks the outcome (python-outbox-core's `publish_batch`).
    ///
    /// Use it to write a schedule of your own; [`run`](Self::run) is the ready one.
    pub async fn publish_batch(&self, limit: u32) -> Result<BatchReport, RelayError> {
        let started = Instant::now();
        let leased = self.claim(&LeaseOwner::new(), limit).await?;
        let runs = runs(&mut Order::default(), 1, &leased.rows);
        self.finish(started, leased, runs, &AtomicBool::new(false))
            .await
    }

    /// Decodes a leased batch and publishes it, each aggregate's run after its run in the batch before (see
    /// [`runs`]), and marks the outcome.
    pub(super) async fn finish(
        &self,
        started: Instant,
        leased: Leased,
        runs: Vec<(Vec<usize>, Link)>,
        stop: &AtomicBool,
    ) -> Result<BatchReport, RelayError> {
        if leased.rows.is_empty() {
            observe::no_events();
            return Ok(BatchReport {
                duration: started.elapsed(),
                ..BatchReport::default()
            });
        }
        let ids: Vec<i64> = leased.rows.iter().map(|row| row.id).collect();
        let claim = self.store.decode(leased).await;
        // The runs index leased rows; the decoded events are the same rows in the same (id) order, less the dead
        // letters. A run left empty still waits for its turn and reports, so the aggregate's next run goes on.
        let position: Vec<Option<usize>> = {
            let mut decoded = claim.events.iter().enumerate().peekable();
            ids.iter()
                .map(|&id| decoded.next_if(|(_, event)| event.id == id).map(|(i, _)| i))
                .collect()
        };
        let runs: Vec<(Vec<usize>, Link)> = runs
            .into_iter()
            .map(|(chain, link)| {
                (
                    chain.into_iter().filter_map(|row| position[row]).collect(),
                    link,
                )
            })
            .collect();
        let metrics = self.config().enable_metrics;
        let mut report = BatchReport {
            claimed: ids.len() as u64,
            ..BatchReport::default()
        };
        // Rows that no longer decode become dead letters with the batch's other outcomes: they never block it.
        observe::undecodable(&claim.dead_lettered, metrics);
        let mut tally = observe::Tally::default();

        // Set by the first chain that finds the broker unreachable, so the others stop too; unlike `stop`
        // (shutdown), it lasts one batch.
        let halt = AtomicBool::new(false);
        // The lease as this relay counts it: from before the claim, so it ends a little before the database's.
        let lease_end = started + self.config().lease_duration;
        let outcomes: Vec<ChainOutcome> = futures_util::stream::iter(runs)
            .map(|(chain, link)| {
                self.publish_chain(&claim.events, chain, link, lease_end, stop, &halt)
            })
            .buffer_unordered(self.max_in_flight)
            .collect()
            .await;

        let (mut published, mut released) = (Vec::new(), Vec::new());
        let mut failures: Vec<Failure> = claim
            .dead_lettered
            .iter()
            .map(Failure::undecodable)
            .collect();
        let mut lease_ran_out = 0;
        for outcome in outcomes {
            if outcome.lease_ran_out {
                lease_ran_out += outcome.released.len();
            }
            for i in outcome.published {
                observe::event_published(&mut tally, &claim.events[i], metrics);
                published.push(claim.events[i].id);
            }
            if let Some((i, reason, retry_in)) = outcome.held {
                failures.push(Failure::held(&claim.events[i], reason, retry_in));
            }
            if let Some((i, error)) = outcome.failed {
                let event = &claim.events[i];
                self.handler.handle(event, &error);
                let retry = self.handler.should_retry(event, &error, event.attempts + 1);
                let text = error.to_string();
                observe::event_failed(&mut tally, event, &text, retry);
                let failure = Failure::new(event, text);
                failures.push(if retry { failure } else { failure.permanent() });
            }
            released.extend(outcome.released.iter().map(|&i| claim.events[i].id));
            if let Some(error) = outcome.unavailable {
                report.publisher_unavailable.get_or_insert(error);
            }
        }

        let token = claim.token;
        let (marked, fenced_out) = self
            .mark_published(&published, || self.store.acknowledge(token, &published))
            .await?;
        report.published = marked;
        report.fenced_out = fenced_out;
        if !failures.is_empty() {
            let outcome = self.persist(|| self.store.fail(token, &failures)).await?;
            report.failed = outcome.retrying;
            report.dead_lettered += outcome.dead_lettered;
            report.held = outcome.held;
            report.fenced_out += outcome.fenced_out;
        }
        if !released.is_empty() {
            report.released = self
                .persist(|| self.store.release(token, &released))
                .await?;
        }
        if report.fenced_out > 0 {
            tracing::warn!(
                target: "outbox",
                fenced_out = report.fenced_out,
                "lease expired before the batch was marked: another relay owns these events and will publish them \
                 again (raise OUTBOX_LEASE_DURATION if batches take this long)"
            );
        }
        if lease_ran_out > 0 {
            tracing::warn!(
                target: "outbox",
                given_back = lease_ran_out,
                "the batch's lease would have run out before these events were published: given back unpublished \
                 (raise OUTBOX_LEASE_DURATION if batches take this long)"
            );
        }
        if let Some(error) = &report.publisher_unavailable {
            observe::publisher_unavailable(self.publisher.name(), error, metrics);
        }
        report.duration = started.elapsed();
        observe::batch_complete(&report, tally, metrics);
        Ok(report)
    }

    /// Claims, running the claim again when the database aborted it for a conflict with another transaction
    /// (a deadlock victim claimed nothing, so this is safe).
    pub(super) async fn claim(
        &self,
        owner: &LeaseOwner,
        limit: u32,
    ) -> Result<Leased, RepositoryError> {
        observe::batch_started(limit);
        let mut attempt = 0;
        loop {
            match self.store.lease(owner, limit).await {
                Err(error) if error.is_conflict() && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=10 * attempt)))
                        .await;
                }
                other => return other,
            }
        }
    }

    /// Runs a bookkeeping write until it succeeds or cannot: giving up on a mark turns events that were
    /// published into duplicates once their lease expires, so a database hiccup (a deadlock, a dropped
    /// connection) is worth waiting out, for up to half the lease.
    async fn persist<T, F, Fut>(&self, write: F) -> Result<T, RepositoryError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, RepositoryError>>,
    {
        let deadline = Instant::now() + self.config().lease_duration / 2;
        let mut delay = Duration::from_millis(5);
        loop {
            match write().await {
                Err(error) if error.is_retryable() && Instant::now() + delay < deadline => {
                    tracing::warn!(target: "outbox", %error, retry_in = ?delay, "retrying outbox bookkeeping");
                    tokio::time::sleep(crate::config::jittered(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// Marks the published events `ids` with `write` (the repository's mark, run again through database hiccups
    /// by [`persist`](Self::persist)); returns how many are marked and how many another relay owns now (fenced
    /// out: it will publish them again).
    ///
    /// A mark whose commit went through but whose answer was lost is run again and then matches nothing: that
    /// alone cannot tell this relay's own lost commit from a takeover. So after a retry, the events that are still
    /// pending are the ones another relay took over, and the others are marked (by this relay's first attempt,
    /// or by the relay that took them over and published them too).
    async fn mark_published<F, Fut>(
        &self,
        ids: &[i64],
        write: F,
    ) -> Result<(u64, u64), RepositoryError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<u64, RepositoryError>>,
    {
        let runs = std::sync::atomic::AtomicU32::new(0);
        let marked = self
            .persist(|| {
                runs.fetch_add(1, Ordering::Relaxed);
                write()
            })
            .await?;
        let given = ids.len() as u64;
        if marked == given || runs.load(Ordering::Relaxed) == 1 {
            return Ok((marked, given - marked));
        }
        let pending = self.persist(|| self.store.still_pending(ids)).await?;
        Ok((given - pending, pending))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::publisher::InMemoryPublisher;
    use crate::repository::{OutboxRepository, connect};
    use crate::tested::Tested;

    /// A mark whose commit went through but whose answer was lost is retried; the retry matches nothing, and the
    /// events must still count as marked, not as taken over by another relay.
    #[tokio::test]
    async fn a_mark_whose_answer_was_lost_counts_as_marked() {
        let db = connect("sqlite::memory:").await.unwrap();
        crate::migration::create_table(&db, "outbox_events")
            .await
            .unwrap();
        let repository = OutboxRepository::new();
        repository
            .add_events(&db, (1..=3).map(|id| Tested { id }))
            .await
            .unwrap();
        let claim = repository.claim(&db, 10).await.unwrap();
        let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
        let relay =
            Relay::builder(db.clone(), repository.clone(), InMemoryPublisher::new()).build();
        let answered = AtomicBool::new(false);
        let marked = relay
            .mark_published(&ids, || async {
                let marked = repository.mark_published(&db, claim.token, &ids).await;
                if answered.swap(true, Ordering::Relaxed) {
                    return marked;
                }
                // Committed, but the answer never came back.
                Err(RepositoryError::Database {
                    operation: "marking events published",
                    table: "outbox_events".to_owned(),
                    source: sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal(
                        "connection reset".into(),
                    )),
                })
            })
            .await
            .unwrap();
        assert_eq!(marked, (3, 0));
        assert_eq!(repository.count_unpublished(&db).await.unwrap(), 0);
    }
}
