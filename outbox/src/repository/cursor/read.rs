//! Reading a batch: the partitions a relay owns are opened as windows and read in turn.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sea_orm::{DatabaseConnection, QueryResult};

use super::{
    Batch, CursorSql, Cursors, Opened, Owned, Part, Position, State, Window, flag, get, get_at,
    no_row,
};
use crate::repository::claim::LeasedRow;
use crate::repository::{ClaimToken, Dialect, Leased, OutboxRepository, Result};

impl Cursors {
    /// Reads up to `limit` events from the next owned partition that has any, and leaves it out until the batch
    /// is acknowledged.
    pub(crate) async fn lease(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
        limit: u32,
    ) -> Result<Leased> {
        let sql = Dialect::of(db).cursor;
        self.ready(db, repo).await?;
        self.refresh(db, repo, sql).await?;
        self.abandon(repo.inner.config.lease_duration);
        let (candidates, busy): (Vec<(i16, Owned)>, bool) = {
            let mut state = self.state();
            let free: Vec<(i16, Owned)> = state
                .owned
                .iter()
                .filter(|(_, o)| !o.busy)
                .map(|(p, o)| (*p, o.clone()))
                .collect();
            let busy = free.len() < state.owned.len();
            let turn = state.turn;
            state.turn = state.turn.wrapping_add(1);
            let n = free.len().max(1);
            let mut free = free;
            free.rotate_left(turn % n);
            (free, busy)
        };
        // The partitions taken go back on every way out but one: the batch handed out.
        let mut taken = Taken {
            cursors: self,
            partitions: Vec::new(),
        };
        let txn = repo.begin(db).await?;
        let (parts, rows, more) = self
            .read_parts(&txn, repo, sql, candidates, limit, &mut taken)
            .await?;
        repo.commit(txn).await?;
        let none = Leased {
            token: ClaimToken(0),
            rows: Vec::new(),
            more,
            busy,
        };
        if parts.is_empty() {
            return Ok(none);
        }
        let token = {
            let mut state = self.state();
            state.next_token += 1;
            let token = state.next_token;
            let batch = Batch {
                parts,
                read_at: Instant::now(),
                settling: false,
            };
            state.reading.insert(token, batch);
            token
        };
        taken.partitions.clear();
        if rows.is_empty() {
            // Only events behind parked aggregates: park them and move on at once.
            self.acknowledge(db, repo, ClaimToken(token), &[]).await?;
            return Ok(Leased { more: true, ..none });
        }
        Ok(Leased {
            token: ClaimToken(token),
            rows: rows.into_iter().map(LeasedRow::new).collect(),
            more,
            busy,
        })
    }

    /// Opens every candidate's window in one statement, then reads the partitions that have events in turn, in
    /// one transaction (only so that its statements are planned as [`CursorSql::bound_read`] sets; each still sees
    /// what committed before it), until the batch is full or half the partitions gave events. Returns the parts,
    /// their rows, and whether partitions with events were left unread; the partitions it took are in `out`.
    async fn read_parts<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        repo: &OutboxRepository,
        sql: &CursorSql,
        candidates: Vec<(i16, Owned)>,
        limit: u32,
        out: &mut Taken<'_>,
    ) -> Result<(Vec<Part>, Vec<QueryResult>, bool)> {
        let (mut parts, mut rows, mut more) = (Vec::new(), Vec::new(), false);
        // Up to half the partitions per batch, so the next batch in flight has its own to read.
        let most = self.state().owned.len().div_ceil(2).max(1);
        if let Some(bound) = sql.bound_read {
            let values = sql.bounds(bound, repo.inner.config.claim_timeout);
            repo.query(txn, "bounding the reads", bound, values).await?;
        }
        let taken: Vec<(i16, Owned)> = candidates
            .into_iter()
            .filter(|(partition, owned)| out.take(*partition, owned.epoch))
            .collect();
        if taken.is_empty() {
            return Ok((parts, rows, more));
        }
        let asked: Vec<(i16, &Position, bool)> = taken
            .iter()
            .map(|(partition, owned)| (*partition, &owned.at, owned.fresh()))
            .collect();
        let mut opened = self.open(txn, repo, sql, &asked).await?;
        // The batch is shared between the partitions it may read that have events. Under a backlog the first one
        // filled it alone: a few aggregates with long runs each, which a broker whose acknowledgements take
        // milliseconds took a few at a time (Kafka: 28k events/s against 45k under rows, 4 sent ahead).
        let with_events = taken
            .iter()
            .filter(|(partition, owned)| {
                opened
                    .get(partition)
                    .is_some_and(|found| found.has_events(owned))
            })
            .count()
            .clamp(1, most);
        let share = u64::from(limit).div_ceil(with_events as u64);
        for (partition, owned) in taken {
            let Some(found) = opened.remove(&partition) else {
                return Err(no_row(
                    repo,
                    "opening windows",
                    "a partition asked for is missing",
                ));
            };
            if rows.len() >= limit as usize || parts.len() >= most {
                more |= found.has_events(&owned);
                out.put_back(partition);
                continue;
            }
            let missing = u64::from(limit)
                .saturating_sub(rows.len() as u64)
                .min(share);
            match self
                .read(txn, repo, sql, partition, owned, found, missing)
                .await?
            {
                Some((part, part_rows)) => {
                    // Read up to its share: it may have more.
                    more |= (part.window.len() + part.parked.len()) as u64 >= missing;
                    parts.push(part);
                    rows.extend(part_rows);
                }
                None => out.put_back(partition),
            }
        }
        Ok((parts, rows, more))
    }

    /// Runs [`CursorSql::open`] for `partitions`: what it found of each, by partition.
    async fn open<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        repo: &OutboxRepository,
        sql: &CursorSql,
        partitions: &[(i16, &Position, bool)],
    ) -> Result<HashMap<i16, Opened>> {
        let found = repo
            .query(txn, "opening windows", sql.open, sql.windows(partitions))
            .await?;
        let mut opened = HashMap::with_capacity(found.len());
        for row in found {
            let partition: i16 = get(repo, &row, "partition_no")?;
            let fresh = partitions
                .iter()
                .any(|(p, _, fresh)| *p == partition && *fresh);
            let window = if fresh {
                let low: Option<i64> = get(repo, &row, "low")?;
                let high: Option<i64> = get(repo, &row, "high")?;
                Some(Window {
                    snapshot: get(repo, &row, "snapshot")?,
                    ends: low.zip(high),
                })
            } else {
                None
            };
            let parked = flag(repo, &row, "parked")?;
            opened.insert(partition, Opened { parked, window });
        }
        Ok(opened)
    }

    /// Abandons the batches read more than `lease` ago whose outcome has not started to come (their task failed
    /// before marking): their partitions are read again from the cursor, a duplicate rather than a stuck partition.
    /// A batch being settled is left alone: it frees its partitions itself, and reading one beside it would put two
    /// batches of a partition out at once.
    fn abandon(&self, lease: Duration) {
        let mut state = self.state();
        let State { owned, reading, .. } = &mut *state;
        reading.retain(|_, batch| {
            let stale = !batch.settling && batch.read_at.elapsed() > lease;
            if stale {
                tracing::warn!(
                    target: "outbox",
                    partitions = ?batch.parts.iter().map(|p| p.partition).collect::<Vec<_>>(),
                    "a batch's outcome never came within the lease: its partitions are read again from their \
                     cursors (its events go out again)"
                );
                for part in &batch.parts {
                    if let Some(o) = owned
                        .get_mut(&part.partition)
                        .filter(|o| o.epoch == part.epoch)
                    {
                        o.busy = false;
                        o.window_end = None;
                    }
                }
            }
            !stale
        });
    }

    /// What a batch reads of one partition, given what [`open`](Self::open) found of it: its parked events whose
    /// turn has come, then its window's next events; `None` when it has nothing.
    #[allow(clippy::too_many_arguments)]
    async fn read<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        repo: &OutboxRepository,
        sql: &CursorSql,
        partition: i16,
        owned: Owned,
        found: Opened,
        limit: u64,
    ) -> Result<Option<(Part, Vec<QueryResult>)>> {
        let mut rows: Vec<QueryResult> = Vec::new();
        let mut parked = Vec::new();
        if found.parked {
            let due = repo
                .query(
                    txn,
                    "reading parked events",
                    sql.parked,
                    vec![
                        partition.into(),
                        i64::try_from(limit).unwrap_or(i64::MAX).into(),
                    ],
                )
                .await?;
            for row in due {
                parked.push(get_at::<i64>(repo, &row, 0)?);
                rows.push(row);
            }
        }
        let mut window = Vec::new();
        let mut at = owned.at.clone();
        let mut window_end = owned.window_end;
        let mut opened = found.window;
        // Two windows at most: the one in hand, and a fresh one when that ran out before the batch was full.
        for _ in 0..2 {
            let missing = limit.saturating_sub((rows.len() + window.len()) as u64);
            if missing == 0 {
                break;
            }
            let (to, end) = match (&at.snap_to, window_end) {
                (Some(to), Some(end)) => (to.clone(), end),
                _ => {
                    let Window { snapshot, ends } = match opened.take() {
                        Some(window) => window,
                        None => self
                            .open(txn, repo, sql, &[(partition, &at, true)])
                            .await?
                            .remove(&partition)
                            .and_then(|found| found.window)
                            .ok_or_else(|| {
                                no_row(
                                    repo,
                                    "opening a window",
                                    "the snapshot query returned nothing",
                                )
                            })?,
                    };
                    match ends {
                        Some((low, high)) => {
                            if at.snap_to.is_none() {
                                at.after_id = low - 1;
                            }
                            at.snap_to = Some(snapshot.clone());
                            (snapshot, high)
                        }
                        // An empty window: the cursor moves to its end without reading anything.
                        None => {
                            at = Position {
                                snap_from: snapshot,
                                snap_to: None,
                                after_id: 0,
                            };
                            window_end = None;
                            break;
                        }
                    }
                }
            };
            let read = repo
                .query(
                    txn,
                    "reading a window",
                    sql.read,
                    vec![
                        partition.into(),
                        at.after_id.into(),
                        end.into(),
                        to.clone().into(),
                        at.snap_from.clone().into(),
                        i64::try_from(missing).unwrap_or(i64::MAX).into(),
                    ],
                )
                .await?;
            let got = read.len() as u64;
            for row in read {
                let id: i64 = get_at(repo, &row, 0)?;
                let behind = flag(repo, &row, "behind")?;
                at.after_id = get(repo, &row, "pos")?;
                window.push((id, !behind));
                if !behind {
                    rows.push(row);
                }
            }
            if got < missing {
                // The window is read to its end: the next one starts at its snapshot.
                at = Position {
                    snap_from: to,
                    snap_to: None,
                    after_id: 0,
                };
                window_end = None;
            } else {
                window_end = Some(end);
                break;
            }
        }
        if rows.is_empty() && window.is_empty() {
            // Nothing to publish; an empty window moved the cursor in memory only (written with the next batch).
            let mut state = self.state();
            if let Some(o) = state
                .owned
                .get_mut(&partition)
                .filter(|o| o.epoch == owned.epoch)
            {
                o.at = at;
                o.window_end = window_end;
            }
            return Ok(None);
        }
        // Parked runs, then the window in commit order: an aggregate is in one or the other, never both (its
        // window events are behind its parked ones and wait in the parked table). A part with nothing to publish
        // (only events behind parked aggregates) still moves its cursor and parks them with the batch.
        let part = Part {
            partition,
            epoch: owned.epoch,
            to: at,
            window_end,
            window,
            parked,
        };
        Ok(Some((part, rows)))
    }
}

/// The partitions a read has taken out, each with the epoch it was taken under, put back when the read ends
/// without handing out a batch: on an error, or when the claim is dropped half-way.
struct Taken<'a> {
    cursors: &'a Cursors,
    partitions: Vec<(i16, i64)>,
}

impl Taken<'_> {
    /// Marks an owned partition out; false if it is gone or out already.
    fn take(&mut self, partition: i16, epoch: i64) -> bool {
        let mut state = self.cursors.state();
        match state.owned.get_mut(&partition) {
            Some(owned) if owned.epoch == epoch && !owned.busy => {
                owned.busy = true;
                self.partitions.push((partition, epoch));
                true
            }
            _ => false,
        }
    }

    /// Puts one partition taken back, unless it was taken over meanwhile (and back, under a new epoch: it may be
    /// out in another batch).
    fn put_back(&mut self, partition: i16) {
        let Some(i) = self.partitions.iter().position(|(p, _)| *p == partition) else {
            return;
        };
        let (_, epoch) = self.partitions.swap_remove(i);
        if let Some(owned) = self
            .cursors
            .state()
            .owned
            .get_mut(&partition)
            .filter(|o| o.epoch == epoch)
        {
            owned.busy = false;
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        while let Some(&(partition, _)) = self.partitions.last() {
            self.put_back(partition);
        }
    }
}
