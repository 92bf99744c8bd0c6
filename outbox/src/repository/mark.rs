//! Marking a claim's outcome: published (or deleted), failed (retried, dead-lettered or held), released. Every
//! mark is fenced by the claim's token.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{ConnectionTrait, Value};

use super::{ClaimToken, ClaimedEvent, Dialect, OutboxRepository, Result, micros, now_micros, sql};

/// Longest error text kept per event; the rest is cut so one huge message cannot bloat the table.
const MAX_ERROR_LEN: usize = 4096;

/// One event whose publish failed, for [`OutboxRepository::mark_failed`].
#[derive(Clone, Debug)]
pub struct Failure {
    pub(super) id: i64,
    pub(super) attempts: u32,
    pub(super) error: String,
    pub(super) kind: FailureKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// Counts an attempt; retried after backoff until the budget is spent.
    Retry,
    /// A dead letter at once.
    Permanent,
    /// Not the event's fault: tried again after this long, no attempt counted.
    Held(Duration),
}

impl Failure {
    /// A failure worth retrying (after backoff, until the retry budget is spent).
    pub fn new(event: &ClaimedEvent, error: impl Into<String>) -> Self {
        Self {
            id: event.id,
            attempts: event.attempts,
            error: error.into(),
            kind: FailureKind::Retry,
        }
    }

    /// A failure that no retry can fix (the broker rejected the message for good): a dead letter at once.
    pub fn permanent(mut self) -> Self {
        self.kind = FailureKind::Permanent;
        self
    }

    /// A row that no longer decodes: a dead letter at once, with the reason.
    pub(crate) fn undecodable(dead: &super::DeadLettered) -> Self {
        Self {
            id: dead.id,
            attempts: 0,
            error: dead.reason.clone(),
            kind: FailureKind::Permanent,
        }
    }

    /// Not the event's failure (its destination cannot take messages now): the event is tried again after
    /// `retry_in`, with no attempt counted, and holds its aggregate back until then. The error is kept as the
    /// event's last error.
    pub fn held(event: &ClaimedEvent, error: impl Into<String>, retry_in: Duration) -> Self {
        Self {
            kind: FailureKind::Held(retry_in),
            ..Self::new(event, error)
        }
    }
}

/// What [`OutboxRepository::mark_failed`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureOutcome {
    /// Events scheduled for another attempt.
    pub retrying: u64,
    /// Events that became dead letters.
    pub dead_lettered: u64,
    /// Events held for a while with no attempt counted ([`Failure::held`]).
    pub held: u64,
    /// Events not marked because the claim no longer owns them (its lease expired and another relay claimed them).
    pub fenced_out: u64,
}

impl OutboxRepository {
    /// Marks claimed events published in one statement (one per 500 on MySQL and SQLite), or deletes them with
    /// [`OutboxConfig::delete_on_publish`](crate::OutboxConfig::delete_on_publish). Returns how many were marked: fewer than given means the claim lost
    /// the others (its lease expired and another relay claimed them, which will publish them again).
    pub async fn mark_published<C: ConnectionTrait>(
        &self,
        db: &C,
        token: ClaimToken,
        ids: &[i64],
    ) -> Result<u64> {
        let delete = self.inner.config.delete_on_publish;
        self.per_id_chunk(db, ids, |id_in, id_values| async move {
            let (query, mut values) = if delete {
                (
                    format!(
                        "DELETE FROM {{t}} WHERE claim_token = ? AND status = {} AND {id_in}",
                        sql::PENDING,
                    ),
                    vec![Value::from(token.0)],
                )
            } else {
                (
                    format!(
                        "UPDATE {{t}} SET status = {}, published_at = ?, {} \
                         WHERE claim_token = ? AND status = {} AND {id_in}",
                        sql::PUBLISHED,
                        sql::END_LEASE,
                        sql::PENDING,
                    ),
                    vec![Value::from(Utc::now()), Value::from(token.0)],
                )
            };
            values.extend(id_values);
            self.execute(db, "marking events published", &query, values)
                .await
        })
        .await
    }

    /// How many of the rows `ids` are still pending.
    pub(crate) async fn count_pending_ids<C: ConnectionTrait>(
        &self,
        db: &C,
        ids: &[i64],
    ) -> Result<u64> {
        self.per_id_chunk(db, ids, |id_in, values| async move {
            let query = format!(
                "SELECT COUNT(*) FROM {{t}} WHERE status = {} AND {id_in}",
                sql::PENDING
            );
            let rows = self
                .query(db, "reading marked events", &query, values)
                .await?;
            let count = match rows.first() {
                Some(row) => row.try_get_by_index::<i64>(0).map_err(|e| {
                    self.db_error("reading marked events", db.get_database_backend(), e)
                })?,
                None => 0,
            };
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    /// Records failed publishes in one statement per outcome (retry, dead letter) and 500 events: the error text, one more attempt, and the next attempt
    /// time (exponential backoff from the configuration, with jitter). An event whose attempts exceed
    /// [`OutboxConfig::max_retry_count`](crate::OutboxConfig::max_retry_count), or whose failure is permanent, becomes a dead letter. Nothing is deleted.
    pub async fn mark_failed<C: ConnectionTrait>(
        &self,
        db: &C,
        token: ClaimToken,
        failures: &[Failure],
    ) -> Result<FailureOutcome> {
        let config = &self.inner.config;
        let now = now_micros();
        // Retries, dead letters and holds go in separate statements (one each at most per 500), so each count is
        // exact even when another relay has taken some rows over since the claim.
        let (mut retries, mut dead, mut held) = (Vec::new(), Vec::new(), Vec::new());
        for failure in failures {
            let attempts = failure.attempts.saturating_add(1);
            match failure.kind {
                FailureKind::Held(retry_in) => held.push((failure, Some(now + micros(retry_in)))),
                FailureKind::Permanent => dead.push((failure, None)),
                FailureKind::Retry if attempts > config.max_retry_count => {
                    dead.push((failure, None));
                }
                FailureKind::Retry => {
                    let delay = config.retry_delay_jittered(attempts);
                    retries.push((failure, Some(now + micros(delay))));
                }
            }
        }
        let mut outcome = FailureOutcome::default();
        let groups = [
            (retries, sql::PENDING, 1, &mut outcome.retrying),
            (dead, sql::DEAD, 1, &mut outcome.dead_lettered),
            (held, sql::PENDING, 0, &mut outcome.held),
        ];
        let mut fenced_out = 0;
        for (group, status, attempt, count) in groups {
            for chunk in group.chunks(sql::CHUNK) {
                let marked = self.fail_rows(db, token, chunk, status, attempt).await?;
                *count += marked;
                fenced_out += chunk.len() as u64 - marked;
            }
        }
        outcome.fenced_out = fenced_out;
        Ok(outcome)
    }

    /// One UPDATE for failures that all end in `status`, each row with its own next attempt time and error,
    /// adding `attempt` (1 or 0) to the attempts.
    async fn fail_rows<C: ConnectionTrait>(
        &self,
        db: &C,
        token: ClaimToken,
        rows: &[(&Failure, Option<i64>)],
        status: i16,
        attempt: u8,
    ) -> Result<u64> {
        let cases = vec![" WHEN ? THEN ?"; rows.len()].concat();
        let ids: Vec<i64> = rows.iter().map(|(f, _)| f.id).collect();
        let (id_in, id_values) = Dialect::of(db).id_in(&ids);
        let query = format!(
            "UPDATE {{t}} SET attempts = attempts + {attempt}, status = {status}, \
             next_attempt_at = CASE id{cases} END, last_error = CASE id{cases} END, {} \
             WHERE claim_token = ? AND status = {} AND {id_in}",
            sql::END_LEASE,
            sql::PENDING,
        );
        let mut values = Vec::with_capacity(rows.len() * 5 + 1);
        for (failure, next_attempt) in rows {
            values.extend([Value::from(failure.id), Value::from(*next_attempt)]);
        }
        for (failure, _) in rows {
            values.extend([
                Value::from(failure.id),
                Value::from(truncate(&failure.error)),
            ]);
        }
        values.push(token.0.into());
        values.extend(id_values);
        self.execute(db, "recording failed publishes", &query, values)
            .await
    }

    /// Gives claimed events back without counting an attempt: on shutdown, or for the later events of an
    /// aggregate whose earlier event failed. Returns how many were released.
    pub async fn release<C: ConnectionTrait>(
        &self,
        db: &C,
        token: ClaimToken,
        ids: &[i64],
    ) -> Result<u64> {
        self.per_id_chunk(db, ids, |id_in, id_values| async move {
            let query = format!(
                "UPDATE {{t}} SET {} WHERE claim_token = ? AND status = {} AND {id_in}",
                sql::END_LEASE,
                sql::PENDING,
            );
            let mut values = vec![Value::from(token.0)];
            values.extend(id_values);
            self.execute(db, "releasing events", &query, values).await
        })
        .await
    }

    /// Runs `statement` with an `id IN` condition (and its values) for each slice of `ids` one condition may
    /// name on this backend (all of them on PostgreSQL), and sums what each run returns.
    async fn per_id_chunk<C, F, Fut>(&self, db: &C, ids: &[i64], mut statement: F) -> Result<u64>
    where
        C: ConnectionTrait,
        F: FnMut(String, Vec<Value>) -> Fut,
        Fut: Future<Output = Result<u64>>,
    {
        let dialect = Dialect::of(db);
        let mut total = 0;
        for chunk in ids.chunks(dialect.id_chunk()) {
            let (id_in, values) = dialect.id_in(chunk);
            total += statement(id_in, values).await?;
        }
        Ok(total)
    }
}

pub(super) fn truncate(error: &str) -> String {
    if error.len() <= MAX_ERROR_LEN {
        return error.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}
