//! Settling a batch: each partition's cursor moves past what was read of it, fenced by its epoch, and what was
//! not published is parked, retried from there or made a dead letter.

use std::collections::BTreeMap;

use sea_orm::DatabaseConnection;

use super::sql::{ADVANCE, DEAD, FENCE, RETRY};
use super::{CursorSql, Cursors, Part, SETTLED_KEPT, Settled};
use crate::repository::mark::{FailureKind, truncate};
use crate::repository::{
    ClaimToken, Dialect, Failure, FailureOutcome, OutboxRepository, Result, micros,
};

impl Cursors {
    /// A batch's outcome: each partition's cursor moves past what the batch read of it, and what it did not
    /// publish is parked, in one transaction, each partition fenced by the epoch it was read under. Returns how
    /// many of `published` count as published: those of the partitions still owned (the new owner of one taken
    /// over reads its events again).
    pub(crate) async fn acknowledge(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
        token: ClaimToken,
        published: &[i64],
    ) -> Result<u64> {
        let sql = Dialect::of(db).cursor;
        // A batch abandoned (see `Cursors::abandon`) was read again: this outcome counts for nothing.
        let Some(parts) = self.start_settling(token.0) else {
            return Ok(0);
        };
        let _settling = Settling {
            cursors: self,
            token: token.0,
        };
        let done: std::collections::HashSet<i64> = published.iter().copied().collect();
        let txn = self.begin_settling(db, repo, sql).await?;
        let settled = self.settle_parts(&txn, repo, sql, parts, &done).await;
        let (kept, lost, counted) = self.end_settling(txn, repo, sql, settled).await?;
        let mut state = self.state();
        state.reading.remove(&token.0);
        for part in &lost {
            if state
                .owned
                .get(&part.partition)
                .is_some_and(|o| o.epoch == part.epoch)
            {
                state.owned.remove(&part.partition);
            }
            tracing::warn!(
                target: "outbox",
                partition = part.partition,
                "partition taken over before its batch was settled"
            );
        }
        let mut settled = Vec::new();
        for part in kept {
            let ids = part
                .window
                .iter()
                .map(|(id, _)| *id)
                .chain(part.parked.iter().copied())
                .collect();
            settled.push(Settled {
                partition: part.partition,
                epoch: part.epoch,
                ids,
            });
            if let Some(owned) = state
                .owned
                .get_mut(&part.partition)
                .filter(|o| o.epoch == part.epoch)
            {
                owned.at = part.to;
                owned.window_end = part.window_end;
                owned.busy = false;
            }
        }
        state.settled.push_back((token.0, settled));
        while state.settled.len() > SETTLED_KEPT {
            state.settled.pop_front();
        }
        Ok(counted)
    }

    /// Marks the batch `token` as being settled, and returns its parts; `None` if it is not out (abandoned, or
    /// settled already).
    fn start_settling(&self, token: i64) -> Option<Vec<Part>> {
        let mut state = self.state();
        let batch = state.reading.get_mut(&token).filter(|b| !b.settling)?;
        batch.settling = true;
        Some(batch.parts.clone())
    }

    /// [`acknowledge`](Self::acknowledge)'s writes, in its transaction: each part's cursor moved (fenced), its
    /// unpublished events parked, its published parked ones ended. Returns the parts kept, those lost to another
    /// relay, and how many events count as published.
    async fn settle_parts(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        repo: &OutboxRepository,
        sql: &CursorSql,
        mut parts: Vec<Part>,
        done: &std::collections::HashSet<i64>,
    ) -> Result<(Vec<Part>, Vec<Part>, u64)> {
        let lease = micros(repo.inner.config.lease_duration);
        let (mut kept, mut lost, mut counted) = (Vec::new(), Vec::new(), 0u64);
        // In ascending partition order, as every statement that locks several cursor rows (see `CursorSql::renew`).
        parts.sort_by_key(|part| part.partition);
        for part in parts {
            let moved = repo
                .execute(
                    txn,
                    "moving the cursor",
                    &sql.shared(ADVANCE),
                    vec![
                        part.to.snap_from.clone().into(),
                        part.to.snap_to.clone().into(),
                        part.to.after_id.into(),
                        lease.into(),
                        part.partition.into(),
                        self.owner.clone().into(),
                        part.epoch.into(),
                    ],
                )
                .await?;
            if moved == 0 {
                lost.push(part);
                continue;
            }
            let unpublished: Vec<i64> = part
                .window
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !done.contains(id))
                .collect();
            let unparked: Vec<i64> = part
                .parked
                .iter()
                .copied()
                .filter(|id| done.contains(id))
                .collect();
            if !unpublished.is_empty() {
                repo.execute(
                    txn,
                    "parking events",
                    sql.park,
                    vec![sql.array(&unpublished)],
                )
                .await?;
            }
            if !unparked.is_empty() {
                repo.execute(
                    txn,
                    "unparking events",
                    sql.unpark,
                    vec![sql.array(&unparked)],
                )
                .await?;
            }
            // A window event handed out and published; not one behind its aggregate's parked events, which may
            // be itself (parked, and after a cursor made later: see `CursorSql::pending_in_place`), published from
            // the parked table and counted there.
            let from_window = part
                .window
                .iter()
                .filter(|(id, handed_out)| *handed_out && done.contains(id))
                .count();
            counted += (from_window + unparked.len()) as u64;
            kept.push(part);
        }
        Ok((kept, lost, counted))
    }

    /// A transaction that records a batch's outcome, bounded (see [`CursorSql::bound_settle`]); it ends with
    /// [`end_settling`](Self::end_settling).
    async fn begin_settling(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
        sql: &CursorSql,
    ) -> Result<sea_orm::DatabaseTransaction> {
        let txn = repo.begin(db).await?;
        if let Some(bound) = sql.bound_settle {
            let values = sql.bounds(bound, repo.inner.config.claim_timeout);
            repo.query(&txn, "bounding a batch's outcome", bound, values)
                .await?;
        }
        Ok(txn)
    }

    /// Ends a transaction of [`begin_settling`](Self::begin_settling): committed if `outcome` is a success,
    /// then the session's settings put back, on success or not.
    async fn end_settling<T>(
        &self,
        txn: sea_orm::DatabaseTransaction,
        repo: &OutboxRepository,
        sql: &CursorSql,
        outcome: Result<T>,
    ) -> Result<T> {
        match sql.unbound_settle {
            Some(unbound) => repo.end_bounded(txn, unbound, outcome.is_ok()).await?,
            None if outcome.is_ok() => repo.commit(txn).await?,
            None => {}
        }
        outcome
    }

    /// Failures of an acknowledged batch, whose events are parked by now: each is scheduled again or becomes a
    /// dead letter, fenced like the acknowledgement.
    pub(crate) async fn fail(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
        token: ClaimToken,
        failures: &[Failure],
    ) -> Result<FailureOutcome> {
        let sql = Dialect::of(db).cursor;
        let parts = self
            .state()
            .settled
            .iter()
            .find(|(t, _)| *t == token.0)
            .map(|(_, parts)| parts.clone())
            .unwrap_or_default();
        let txn = self.begin_settling(db, repo, sql).await?;
        let recorded = self
            .record_failures(&txn, repo, sql, &parts, failures)
            .await;
        self.end_settling(txn, repo, sql, recorded).await
    }

    /// [`fail`](Self::fail)'s writes, in its transaction.
    async fn record_failures(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        repo: &OutboxRepository,
        sql: &CursorSql,
        parts: &[Settled],
        failures: &[Failure],
    ) -> Result<FailureOutcome> {
        let config = &repo.inner.config;
        let mut outcome = FailureOutcome::default();
        // Each failure's partition and the epoch it was read under.
        let located: Vec<Option<(i16, i64)>> = failures
            .iter()
            .map(|failure| {
                parts
                    .iter()
                    .find(|part| part.ids.contains(&failure.id))
                    .map(|part| (part.partition, part.epoch))
            })
            .collect();
        // The partitions of the failures that are still this relay's, each fenced once, in ascending order (see
        // `CursorSql::renew`).
        let mut owned: BTreeMap<i16, (i64, bool)> = located
            .iter()
            .flatten()
            .map(|&(partition, epoch)| (partition, (epoch, false)))
            .collect();
        for (partition, (epoch, still)) in &mut owned {
            let fenced = repo
                .execute(
                    txn,
                    "recording failures",
                    &sql.shared(FENCE),
                    vec![
                        micros(config.lease_duration).into(),
                        (*partition).into(),
                        self.owner.clone().into(),
                        (*epoch).into(),
                    ],
                )
                .await?;
            *still = fenced > 0;
        }
        for (failure, located) in failures.iter().zip(&located) {
            let still = located
                .and_then(|(partition, _)| owned.get(&partition))
                .is_some_and(|(_, still)| *still);
            if !still {
                outcome.fenced_out += 1;
                continue;
            }
            self.record(txn, repo, sql, failure, &mut outcome).await?;
        }
        Ok(outcome)
    }

    /// One failure of a parked event: scheduled again after its backoff (or its hold), or a dead letter.
    async fn record<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        repo: &OutboxRepository,
        sql: &CursorSql,
        failure: &Failure,
        outcome: &mut FailureOutcome,
    ) -> Result<()> {
        let config = &repo.inner.config;
        let attempts = failure.attempts.saturating_add(1);
        let error = truncate(&failure.error);
        let (delay, counted) = match failure.kind {
            FailureKind::Held(retry_in) => (Some(retry_in), failure.attempts),
            FailureKind::Retry if attempts <= config.max_retry_count => {
                (Some(config.retry_delay_jittered(attempts)), attempts)
            }
            FailureKind::Retry | FailureKind::Permanent => (None, attempts),
        };
        match delay {
            Some(delay) => {
                repo.execute(
                    txn,
                    "scheduling a parked event",
                    &sql.shared(RETRY),
                    vec![
                        i64::from(counted).into(),
                        error.into(),
                        micros(delay).into(),
                        failure.id.into(),
                    ],
                )
                .await?;
                if matches!(failure.kind, FailureKind::Held(_)) {
                    outcome.held += 1;
                } else {
                    outcome.retrying += 1;
                }
            }
            None => {
                repo.execute(
                    txn,
                    "keeping a dead letter",
                    DEAD,
                    vec![i64::from(counted).into(), error.into(), failure.id.into()],
                )
                .await?;
                repo.execute(
                    txn,
                    "unparking events",
                    sql.unpark,
                    vec![sql.array(&[failure.id])],
                )
                .await?;
                outcome.dead_lettered += 1;
            }
        }
        Ok(())
    }

    /// Events of an acknowledged batch given back: parked already, due at once.
    pub(crate) fn release(&self, ids: &[i64]) -> u64 {
        ids.len() as u64
    }
}

/// A batch's outcome being written: if that ends without settling it (an error, or the call dropped half-way), the
/// batch is out as before, to be acknowledged again or, failing that, abandoned.
struct Settling<'a> {
    cursors: &'a Cursors,
    token: i64,
}

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.cursors.state().reading.get_mut(&self.token) {
            batch.settling = false;
        }
    }
}
