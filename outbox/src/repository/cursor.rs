//! The commit-order cursor ([`Delivery::Cursor`](crate::Delivery::Cursor)): the outbox table read as an
//! append-only log, one cursor per partition, no write per event on the way out.
//!
//! Each partition's cursor row holds the snapshot it has read to (`snap_from`). A relay that owns the partition
//! takes the current snapshot (`snap_to`): the *window* is every event whose transaction committed between the
//! two, walked in id order (`after_id` is how far). An event belongs to exactly one window, whenever its
//! transaction commits, so a slow transaction is never skipped and never holds the others back, and no clock is
//! involved. Publishing a batch costs one fenced UPDATE of the cursor row.
//!
//! Ownership: a relay holds a partition under a lease on the database's clock, renewed while it works; taking a
//! partition over bumps its epoch, and every write of a batch's outcome is fenced by the epoch the batch was read
//! under, so a relay that lost its partition cannot move the cursor or touch the parked events. Relays share the
//! partitions evenly (by the live relays in `<table>_relays`), take over expired ones, and give theirs back when
//! they stop.
//!
//! Failures: the events of a batch that were not published (failed, held, given back, undecodable) move to the
//! parked table as the cursor moves past them, in order; so do later events of an aggregate that has parked
//! events. Parked events are retried from there, the oldest of each aggregate first, so a failing event holds
//! back only its aggregate. A parked event past its retry budget becomes a dead letter (status 2, in place).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sea_orm::{DatabaseConnection, QueryResult, Value};

use super::claim::LeasedRow;
use super::mark::{FailureKind, truncate};
use super::{
    ClaimToken, Dialect, Failure, FailureOutcome, Leased, OutboxRepository, RepositoryError,
    Result, micros, now_micros, partition_of,
};

/// The statements of one backend's cursor, written with `?` and `{t}` like the rest, or with numbered
/// parameters (`$1`, `?1`) where one value is used twice. `{partitions}` stands for the partition numbers, `0,1,..`.
#[derive(Debug)]
pub(crate) struct CursorSql {
    /// The database's clock in Unix microseconds, as an SQL expression: what `{now}` stands for in the
    /// statements every backend shares (below).
    pub(crate) now: &'static str,
    /// Whether lists of numbers go as one JSON array parameter (`[1,2]`, SQLite's `json_each`, MySQL's
    /// `JSON_TABLE`) rather than a PostgreSQL array (`{1,2}`).
    pub(crate) json_arrays: bool,
    /// Whether commit order is a sequence the writer takes (MySQL, see `mysql.rs`), which adopted rows take
    /// numbers from too: [`adopt`](Self::adopt) then gets them as a third list.
    pub(crate) sequenced: bool,
    /// Whether adoption gives a row a new place in commit order (a transaction id, a sequence number), so rows
    /// stored the old way after the cursors exist can still be adopted. SQLite's place is the id, which adoption
    /// cannot change: it adopts only before its cursors are made.
    pub(crate) adopts_late: bool,
    /// Taken first in the transaction of a relay's first start (adoption, then the cursors made), so that two
    /// relays' first starts do not interleave: MySQL's first adoption places rows below every sequence number,
    /// which is safe only while no relay reads.
    pub(crate) first_start_lock: Option<&'static str>,
    /// Run first in the transaction of a batch's reads, with the claim timeout (see [`Bounds`]) for each `?`:
    /// sets how the database plans the reads (PostgreSQL: no sorts, so each read walks the one index that gives
    /// its order, and then one plan per connection; see `postgres.rs`), and ends the session of a relay frozen
    /// inside the transaction (it pins the oldest snapshot the database keeps rows for).
    pub(crate) bound_read: Option<&'static str>,
    /// Run first in the transactions that record a batch's outcome (the cursor moved, events parked, failures),
    /// with the claim timeout for each `?`. They lock cursor rows, so the database must end the session of a
    /// relay frozen inside one, or no other relay could take its partitions over. On PostgreSQL their commit also
    /// does not wait for the disk (`synchronous_commit`): losing such a commit in a crash of the database only
    /// moves the cursor back, so its events are published again (at-least-once allows it; order is kept), while
    /// waiting for the disk held each partition 3.5-4 ms per batch on this machine.
    pub(crate) bound_settle: Option<&'static str>,
    /// Run once those transactions ended, on their connection: puts the session's own settings back where
    /// [`bound_settle`](Self::bound_settle) changed them for the session (MariaDB), before the connection returns
    /// to the pool (see `mysql.rs`'s `end_bounded`).
    pub(crate) unbound_settle: Option<&'static str>,
    /// How the claim timeout is given to the bounds.
    pub(crate) bounds: Bounds,
    /// Pending rows stored before the cursor's columns existed (or by an older writer): `(id, aggregate_type,
    /// aggregate_id)`, at most `?`.
    pub(crate) legacy: &'static str,
    /// Gives such rows their partition (ids, partitions) and this transaction's id.
    pub(crate) adopt: &'static str,
    /// Creates the missing cursor rows (partition count, twice), each starting below its oldest pending event.
    pub(crate) create: &'static str,
    /// Gathers the cursor table's statistics once its rows are there. Without them the planner guessed 300
    /// cursors, costed the pending count at millions and compiled it with JIT first (410 of its 524 ms).
    pub(crate) analyze: &'static str,
    /// Takes free or expired partitions for owner `?`, leased for `?` µs, up to `?`. MySQL returns nothing from
    /// an UPDATE: the relay reads its partitions back ([`MINE`]).
    pub(crate) acquire: &'static str,
    /// Extends the lease (`?` µs) of owner `?`'s partitions, locking their rows in ascending partition order, the
    /// order in which a batch's settle moves its cursors ([`Cursors::settle_parts`]): in any other order the
    /// two waited for each other, which PostgreSQL finds only after `deadlock_timeout` (1 s without a publish).
    pub(crate) renew: &'static str,
    /// Opens the windows of several partitions in one statement: for each, the snapshot to read to (the one
    /// given, or the current one when it is empty), the lowest and highest event in the window after the snapshot
    /// read to, and whether the partition has parked events. The values are lists, in the form
    /// [`CursorSql::windows`] makes: partition, snapshot read to, snapshot to read to (`''`: none), and whether to
    /// open the window (a partition part-way through one only asks about its parked events). One statement for
    /// every partition a batch may read: opening them in turn cost a round trip per empty partition, most of a
    /// batch's time at low rates (p50 4.7 ms against 2.1 ms with one partition, at 200 events/s).
    pub(crate) open: &'static str,
    /// Up to `?` events of a window: partition, after, up to, S2, S1, limit; with `behind` (its aggregate has
    /// parked events) and `pos`, the event's place in the window (its id, or its sequence number on MySQL).
    pub(crate) read: &'static str,
    /// Parked events whose turn has come, the oldest of each aggregate: partition, limit.
    pub(crate) parked: &'static str,
    /// Gives rows (ids) that have no partition theirs (partitions), leaving their transaction id alone: dead
    /// letters stored before the upgrade, when they are replayed.
    pub(crate) repartition: &'static str,
    /// Parks events (ids, in order), unless parked already.
    pub(crate) park: &'static str,
    /// Ends parked events (ids).
    pub(crate) unpark: &'static str,
    /// Events not yet published (behind a cursor, parked, not adopted yet, or all pending ones before any
    /// cursor exists), and when the oldest behind a cursor occurred.
    pub(crate) pending: &'static str,
    /// The condition that event `o` of cursor `c`'s partition is not yet published by it: after the window's
    /// events read so far, or after the snapshot it has read to. What lag figures count.
    pub(crate) ahead: &'static str,
    /// Up to `?` events every relay is done with, that occurred before `?`: below their partition's cursor (the
    /// snapshot it has read to, not the window it reads now) and not parked. Retention deletes them.
    pub(crate) delivered: &'static str,
}

/// How a backend's bounding statements take the claim timeout.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bounds {
    /// Milliseconds, as text (PostgreSQL's `set_config`).
    MillisText,
    /// Whole seconds, at least one, rounded up (MariaDB's session variables).
    Seconds,
}

/// The start of a backend's window read: every column of a stored event (as `sql::COLUMNS`) and `behind`, whether
/// its aggregate has parked events; the backend adds which events of `{t} o` are in the window.
macro_rules! window_read {
    (pos = $pos:literal; $($condition:tt)*) => {
        concat!(
            "SELECT id, event_id, event_type, data_version, aggregate_type, aggregate_id, payload, correlation_id, \
               causation_id, traceparent, tracestate, occurred_at, status, attempts, last_error, published_at, \
               EXISTS (SELECT 1 FROM {t}_parked p WHERE p.partition_no = o.partition_no \
                 AND p.aggregate_type = o.aggregate_type AND p.aggregate_id = o.aggregate_id) AS behind, ",
            $pos,
            " AS pos FROM {t} o WHERE status = 0 AND ",
            $($condition)*
        )
    };
}

/// A backend's read of parked events whose turn has come on its clock `now` (an SQL expression), the oldest of
/// each aggregate, with the attempts and error the parked row keeps: partition, limit.
macro_rules! parked_heads {
    ($($now:tt)*) => {
        concat!(
            "SELECT o.id, o.event_id, o.event_type, o.data_version, o.aggregate_type, o.aggregate_id, o.payload, \
               o.correlation_id, o.causation_id, o.traceparent, o.tracestate, o.occurred_at, o.status, p.attempts, \
               p.last_error, o.published_at \
             FROM {t}_parked p JOIN {t} o ON o.id = p.id \
             WHERE p.partition_no = ? AND p.next_attempt_at <= ",
            $($now)*,
            " AND p.seq = (SELECT MIN(q.seq) FROM {t}_parked q WHERE q.partition_no = p.partition_no \
               AND q.aggregate_type = p.aggregate_type AND q.aggregate_id = p.aggregate_id) \
             ORDER BY p.seq LIMIT ?"
        )
    };
}

pub(super) use {parked_heads, window_read};

// The statements every backend shares, with `{now}` for the backend's clock.

/// How many cursor rows there are, and the lowest and highest partition count they were made for.
const PARTITIONS: &str =
    "SELECT COUNT(*) AS n, MIN(partitions) AS low, MAX(partitions) AS high FROM {t}_cursors";
/// Owner `?`'s partitions, with their epochs and positions: read after a backend's `renew` and `acquire` (an
/// UPDATE that returns nothing on MySQL). Nobody else writes `owner` to this one, so it reads no stale row.
const MINE: &str =
    "SELECT partition_no, epoch, snap_from, snap_to, after_id FROM {t}_cursors WHERE owner = ?";
/// Gives a partition back: partition, owner, epoch.
const RELEASE: &str = "UPDATE {t}_cursors SET owner = NULL, lease_until = NULL \
     WHERE partition_no = ? AND owner = ? AND epoch = ?";
/// Owners other than `?` holding a live lease.
const OWNERS: &str = "SELECT COUNT(DISTINCT owner) FROM {t}_cursors \
     WHERE owner IS NOT NULL AND owner <> ? AND lease_until >= {now}";
/// Relays whose heartbeat is at or after `?` (µs, their clocks).
const RELAYS: &str = "SELECT COUNT(*) FROM {t}_relays WHERE heartbeat_at >= ?";
/// Moves a cursor: snap_from, snap_to, after_id, lease µs, partition, owner, epoch.
const ADVANCE: &str = "UPDATE {t}_cursors SET snap_from = ?, snap_to = ?, after_id = ?, \
     lease_until = {now} + ? WHERE partition_no = ? AND owner = ? AND epoch = ?";
/// Renews one partition's lease if it is still owned: lease µs, partition, owner, epoch.
const FENCE: &str = "UPDATE {t}_cursors SET lease_until = {now} + ? \
     WHERE partition_no = ? AND owner = ? AND epoch = ?";
/// Schedules a parked event again: attempts, error, delay µs, id.
const RETRY: &str =
    "UPDATE {t}_parked SET attempts = ?, last_error = ?, next_attempt_at = {now} + ? WHERE id = ?";
/// Makes an event a dead letter: attempts, error, id.
const DEAD: &str = "UPDATE {t} SET status = 2, attempts = ?, last_error = ? WHERE id = ?";

impl CursorSql {
    /// A shared statement on this backend's clock.
    fn shared(&self, statement: &str) -> String {
        statement.replace("{now}", self.now)
    }

    /// One of this backend's statements, for a table of `partitions` partitions.
    pub(crate) fn statement(&self, statement: &str, partitions: u16) -> String {
        if !statement.contains("{partitions}") {
            return statement.to_owned();
        }
        let list: Vec<String> = (0..partitions).map(|p| p.to_string()).collect();
        statement.replace("{partitions}", &list.join(","))
    }

    /// The values of [`open`](Self::open) for `partitions`: each one's number, position, and whether its window is
    /// to be opened. PostgreSQL takes four arrays (a snapshot's text holds commas, so elements are quoted), the
    /// others one JSON array of `[partition, from, to, fresh]`.
    fn windows(&self, partitions: &[(i16, &Position, bool)]) -> Vec<Value> {
        let to = |at: &Position| at.snap_to.clone().unwrap_or_default();
        if self.json_arrays {
            let list: Vec<serde_json::Value> = partitions
                .iter()
                .map(|(p, at, fresh)| {
                    serde_json::json!([p, at.snap_from, to(at), u8::from(*fresh)])
                })
                .collect();
            return vec![serde_json::Value::Array(list).to_string().into()];
        }
        let texts = |text: &dyn Fn(&Position) -> String| -> Value {
            let quoted: Vec<String> = partitions
                .iter()
                .map(|(_, at, _)| format!("\"{}\"", text(at)))
                .collect();
            format!("{{{}}}", quoted.join(",")).into()
        };
        let numbers: Vec<i16> = partitions.iter().map(|(p, _, _)| *p).collect();
        let fresh: Vec<&str> = partitions
            .iter()
            .map(|(_, _, fresh)| if *fresh { "t" } else { "f" })
            .collect();
        vec![
            self.array(&numbers),
            texts(&|at| at.snap_from.clone()),
            texts(&to),
            self.array(&fresh),
        ]
    }

    /// The values of a bounding statement: the claim timeout for each `?`.
    fn bounds(&self, statement: &str, timeout: Duration) -> Vec<Value> {
        let value: Value = match self.bounds {
            Bounds::MillisText => timeout.as_millis().to_string().into(),
            Bounds::Seconds => (timeout.as_millis().div_ceil(1000).max(1) as u64).into(),
        };
        vec![value; statement.matches('?').count()]
    }

    /// Numbers as one array parameter, in this backend's form.
    pub(crate) fn array<T: ToString>(&self, items: &[T]) -> Value {
        let list: Vec<String> = items.iter().map(ToString::to_string).collect();
        if self.json_arrays {
            format!("[{}]", list.join(","))
        } else {
            format!("{{{}}}", list.join(","))
        }
        .into()
    }
}

/// How many parked or legacy rows one statement handles.
const CHUNK: u32 = 10_000;

/// How often a relay looks for events stored without a place in commit order (by a writer of an older version,
/// or on MySQL one not set to the cursor) once its cursors exist.
const ADOPT_EVERY: Duration = Duration::from_secs(5);

/// Outcomes kept for the `fail` and `release` calls that follow a batch's `acknowledge`.
const SETTLED_KEPT: usize = 64;

/// One relay's cursors on one table.
#[derive(Debug)]
pub(crate) struct Cursors {
    owner: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    prepared: bool,
    owned: BTreeMap<i16, Owned>,
    /// Batches read and not yet acknowledged, by token.
    reading: HashMap<i64, Batch>,
    /// Batches acknowledged, by token: each part's partition, epoch and events, for their failures.
    settled: VecDeque<(i64, Vec<Settled>)>,
    next_token: i64,
    next_refresh: Option<Instant>,
    next_adoption: Option<Instant>,
    /// Where the next round of partitions starts.
    turn: usize,
}

#[derive(Clone, Debug)]
struct Owned {
    epoch: i64,
    at: Position,
    /// The highest id of the open window, once known.
    window_end: Option<i64>,
    /// When a batch of it is out, since when.
    busy: Option<Instant>,
}

impl Owned {
    /// Whether its next batch opens a window (none is open, or the open one's end is not known).
    fn fresh(&self) -> bool {
        self.at.snap_to.is_none() || self.window_end.is_none()
    }
}

/// What [`CursorSql::open`] said of one partition.
#[derive(Debug)]
struct Opened {
    /// Whether it has parked events (due or not).
    parked: bool,
    /// The window it opened, when one was asked for.
    window: Option<Window>,
}

impl Opened {
    /// Whether the partition `owned` has anything to read: parked events, the rest of a window in hand, or a
    /// window just opened that is not empty.
    fn has_events(&self, owned: &Owned) -> bool {
        self.parked || !owned.fresh() || self.window.as_ref().is_some_and(|w| w.ends.is_some())
    }
}

/// A window as opened: the snapshot it reads to, and its lowest and highest event (none: it is empty).
#[derive(Debug)]
struct Window {
    snapshot: String,
    ends: Option<(i64, i64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    snap_from: String,
    snap_to: Option<String>,
    after_id: i64,
}

/// One partition's part of an acknowledged batch: the epoch it was read under, and its events.
#[derive(Clone, Debug)]
struct Settled {
    partition: i16,
    epoch: i64,
    ids: Vec<i64>,
}

/// A batch: what it read of each partition it took.
#[derive(Debug)]
struct Batch {
    parts: Vec<Part>,
}

/// What a batch read of one partition, and where that partition's cursor goes once the batch is settled.
#[derive(Clone, Debug)]
struct Part {
    partition: i16,
    epoch: i64,
    to: Position,
    window_end: Option<i64>,
    /// Rows read from the window, in order, and whether each was handed out (`false`: behind a parked aggregate).
    window: Vec<(i64, bool)>,
    /// Parked rows handed out.
    parked: Vec<i64>,
}

impl Cursors {
    pub(crate) fn new() -> Self {
        Self {
            owner: uuid::Uuid::new_v4().to_string(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many batches may be out at once: one per owned partition, up to `most`.
    pub(crate) fn batches_in_flight(&self, most: usize) -> usize {
        self.state().owned.len().clamp(1, most)
    }

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
        let (candidates, busy): (Vec<(i16, Owned)>, bool) = {
            let mut state = self.state();
            let abandoned = repo.inner.config.lease_duration;
            // A batch whose outcome never came (its task failed before marking) frees its partition after a
            // lease: it is read again from the cursor, a duplicate rather than a stuck partition.
            let mut dropped = Vec::new();
            for (partition, owned) in &mut state.owned {
                if owned.busy.is_some_and(|at| at.elapsed() > abandoned) {
                    owned.busy = None;
                    owned.window_end = None;
                    dropped.push(*partition);
                }
            }
            state
                .reading
                .retain(|_, batch| !batch.parts.iter().any(|p| dropped.contains(&p.partition)));
            let free: Vec<(i16, Owned)> = state
                .owned
                .iter()
                .filter(|(_, o)| o.busy.is_none())
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
        // Up to half the partitions per batch, so the next batch in flight has its own to read.
        let most_parts = self.state().owned.len().div_ceil(2).max(1);
        let txn = repo.begin(db).await?;
        let read = self
            .read_parts(&txn, repo, sql, candidates, most_parts, limit)
            .await;
        let (parts, rows, more) = match read {
            Ok(read) => read,
            Err((error, taken)) => {
                for partition in taken {
                    self.put_back(partition);
                }
                return Err(error);
            }
        };
        if let Err(error) = repo.commit(txn).await {
            for part in &parts {
                self.put_back(part.partition);
            }
            return Err(error);
        }
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
            state.reading.insert(token, Batch { parts });
            token
        };
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
    /// what committed before it), until the batch is full or `most` partitions gave events. Returns
    /// the parts, their rows, and whether partitions with events were left unread. On an error, the partitions it
    /// had taken, to put back.
    async fn read_parts<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        repo: &OutboxRepository,
        sql: &CursorSql,
        candidates: Vec<(i16, Owned)>,
        most: usize,
        limit: u32,
    ) -> std::result::Result<(Vec<Part>, Vec<QueryResult>, bool), (RepositoryError, Vec<i16>)> {
        let (mut parts, mut rows, mut more) = (Vec::new(), Vec::new(), false);
        if let Some(bound) = sql.bound_read {
            let values = sql.bounds(bound, repo.inner.config.claim_timeout);
            repo.query(txn, "bounding the reads", bound, values)
                .await
                .map_err(|e| (e, Vec::new()))?;
        }
        let taken: Vec<(i16, Owned)> = candidates
            .into_iter()
            .filter(|(partition, owned)| self.take(*partition, owned.epoch))
            .collect();
        let mut out: Vec<i16> = taken.iter().map(|(partition, _)| *partition).collect();
        if taken.is_empty() {
            return Ok((parts, rows, more));
        }
        let asked: Vec<(i16, &Position, bool)> = taken
            .iter()
            .map(|(partition, owned)| (*partition, &owned.at, owned.fresh()))
            .collect();
        let mut opened = match self.open(txn, repo, sql, &asked).await {
            Ok(opened) => opened,
            Err(error) => return Err((error, out)),
        };
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
                let error = no_row(repo, "opening windows", "a partition asked for is missing");
                return Err((error, out));
            };
            if rows.len() >= limit as usize || parts.len() >= most {
                more |= found.has_events(&owned);
                self.put_back(partition);
                out.retain(|p| *p != partition);
                continue;
            }
            let missing = u64::from(limit)
                .saturating_sub(rows.len() as u64)
                .min(share);
            match self
                .read(txn, repo, sql, partition, owned, found, missing)
                .await
            {
                Ok(Some((part, part_rows))) => {
                    // Read up to its share: it may have more.
                    more |= (part.window.len() + part.parked.len()) as u64 >= missing;
                    parts.push(part);
                    rows.extend(part_rows);
                }
                Ok(None) => {
                    self.put_back(partition);
                    out.retain(|p| *p != partition);
                }
                Err(error) => return Err((error, out)),
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

    /// Marks an owned partition out; false if it is gone or out already.
    fn take(&self, partition: i16, epoch: i64) -> bool {
        let mut state = self.state();
        match state.owned.get_mut(&partition) {
            Some(owned) if owned.epoch == epoch && owned.busy.is_none() => {
                owned.busy = Some(Instant::now());
                true
            }
            _ => false,
        }
    }

    fn put_back(&self, partition: i16) {
        if let Some(owned) = self.state().owned.get_mut(&partition) {
            owned.busy = None;
        }
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
        // Parked heads, then the window in commit order: an aggregate is in one or the other, never both (its
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

impl Cursors {
    /// Prepares the table once (see [`prepare`](Self::prepare)); a relay calls it before it starts, so that a
    /// partition count that disagrees with the table's stops it there.
    pub(crate) async fn ready(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
    ) -> Result<()> {
        if self.state().prepared {
            return Ok(());
        }
        if Dialect::of(db).cursor.sequenced {
            repo.check_sequenced(db).await?;
        }
        self.prepare(db, repo, Dialect::of(db).cursor).await?;
        let mut state = self.state();
        state.prepared = true;
        state.next_adoption = Some(Instant::now() + ADOPT_EVERY);
        Ok(())
    }

    /// Once per relay, before its first batch: adopts the pending events stored without a place in commit order
    /// (see [`adopt`](Self::adopt)), then creates the cursor rows, each starting below its partition's oldest
    /// pending event, and checks they were made for as many partitions as configured.
    async fn prepare(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
        sql: &CursorSql,
    ) -> Result<()> {
        let partitions = repo.inner.config.partitions;
        let txn = repo.begin(db).await?;
        if let Some(lock) = sql.first_start_lock {
            repo.query(
                &txn,
                "waiting for other relays' first start",
                lock,
                Vec::new(),
            )
            .await?;
        }
        self.adopt(&txn, repo, sql).await?;
        // The cursors are made in the adoption's transaction where the first start is serialized; elsewhere in one
        // of their own, as an SQLite transaction that read before it writes fails when another relay wrote
        // meanwhile. Never in autocommit: on MySQL an INSERT ... SELECT runs there under REPEATABLE READ and locks
        // the rows it reads, so it waited for every writer holding a partition's counter.
        let txn = match sql.first_start_lock {
            Some(_) => txn,
            None => {
                repo.commit(txn).await?;
                repo.begin(db).await?
            }
        };
        let count = i32::from(partitions);
        repo.execute(
            &txn,
            "creating the cursors",
            &sql.statement(sql.create, partitions),
            vec![count.into(), count.into()],
        )
        .await?;
        repo.commit(txn).await?;
        repo.execute(db, "analyzing the cursors", sql.analyze, Vec::new())
            .await?;
        let rows = repo
            .query(db, "counting the cursors", PARTITIONS, Vec::new())
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| no_row(repo, "counting the cursors", "no answer"))?;
        let n: i64 = get(repo, row, "n")?;
        let low: Option<i16> = get(repo, row, "low")?;
        let high: Option<i16> = get(repo, row, "high")?;
        let expected = i16::try_from(partitions).unwrap_or(i16::MAX);
        if n != i64::from(partitions) || low != Some(expected) || high != Some(expected) {
            return Err(RepositoryError::PartitionMismatch {
                table: repo.table().to_owned(),
                configured: partitions,
                stored: high.map_or(0, |p| u16::try_from(p).unwrap_or_default()),
            });
        }
        Ok(())
    }

    /// Gives the pending events stored without a partition or a place in commit order (before the upgrade, by a
    /// writer of an older version, or on MySQL by one not set to the cursor) both, in one transaction of this
    /// relay's (`txn`) and in id order, so they are delivered together in the next window. Returns how many.
    async fn adopt<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        repo: &OutboxRepository,
        sql: &CursorSql,
    ) -> Result<u64> {
        let partitions = repo.inner.config.partitions;
        let legacy_sql = sql.statement(sql.legacy, partitions);
        let mut adopted = 0;
        loop {
            let legacy = repo
                .query(
                    txn,
                    "finding events to adopt",
                    &legacy_sql,
                    vec![i64::from(CHUNK).into()],
                )
                .await?;
            if legacy.is_empty() {
                break;
            }
            let (mut ids, mut parts) = (Vec::new(), Vec::new());
            for row in &legacy {
                let id: i64 = get_at(repo, row, 0)?;
                let aggregate_type: String = get_at(repo, row, 1)?;
                let aggregate_id: String = get_at(repo, row, 2)?;
                ids.push(id);
                parts.push(partition_of(&aggregate_type, &aggregate_id, partitions));
            }
            let mut values = vec![sql.array(&ids), sql.array(&parts)];
            if sql.sequenced {
                let parts: Vec<i16> = parts
                    .iter()
                    .map(|p| i16::try_from(*p).unwrap_or_default())
                    .collect();
                values.push(sql.array(&repo.sequence(txn, &parts).await?));
            }
            adopted += repo
                .execute(txn, "adopting events", sql.adopt, values)
                .await?;
            if legacy.len() < CHUNK as usize {
                break;
            }
        }
        if adopted > 0 {
            tracing::info!(
                target: "outbox",
                table = repo.table(),
                events = adopted,
                "adopted pending events stored without a place in commit order"
            );
        }
        Ok(adopted)
    }

    /// Renews this relay's leases, drops the partitions it lost, and takes or gives back partitions until it holds
    /// its share: the partition count over the live relays, rounded up.
    async fn refresh(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
        sql: &CursorSql,
    ) -> Result<()> {
        let config = &repo.inner.config;
        let due = self
            .state()
            .next_refresh
            .is_none_or(|at| Instant::now() >= at);
        if !due {
            return Ok(());
        }
        if sql.adopts_late
            && self
                .state()
                .next_adoption
                .is_none_or(|at| Instant::now() >= at)
        {
            let txn = repo.begin(db).await?;
            self.adopt(&txn, repo, sql).await?;
            repo.commit(txn).await?;
            self.state().next_adoption = Some(Instant::now() + ADOPT_EVERY);
        }
        let lease = micros(config.lease_duration);
        repo.execute(
            db,
            "renewing partition leases",
            sql.renew,
            vec![lease.into(), self.owner.clone().into()],
        )
        .await?;
        self.read_mine(db, repo).await?;
        let others = count(
            repo,
            db,
            "counting relays",
            &sql.shared(OWNERS),
            vec![self.owner.clone().into()],
        )
        .await?;
        // Relays that signed on but hold nothing yet count too, so the others make room for them.
        let alive_since = now_micros() - micros(super::ALIVE_WITHIN);
        let signed_on = count(
            repo,
            db,
            "counting relays",
            RELAYS,
            vec![alive_since.into()],
        )
        .await
        .unwrap_or(0);
        let relays = (others + 1).max(signed_on).max(1);
        let partitions = u64::from(config.partitions);
        let share = usize::try_from(partitions.div_ceil(relays)).unwrap_or(usize::MAX);
        let owned = self.state().owned.len();
        if owned < share {
            repo.execute(
                db,
                "taking partitions",
                sql.acquire,
                vec![
                    self.owner.clone().into(),
                    lease.into(),
                    i64::try_from(share - owned).unwrap_or(i64::MAX).into(),
                ],
            )
            .await?;
            self.read_mine(db, repo).await?;
        } else if owned > share {
            let extra: Vec<(i16, i64)> = {
                let state = self.state();
                state
                    .owned
                    .iter()
                    .rev()
                    .filter(|(_, o)| o.busy.is_none())
                    .take(owned - share)
                    .map(|(p, o)| (*p, o.epoch))
                    .collect()
            };
            for (partition, epoch) in extra {
                self.give_back(db, repo, partition, epoch).await?;
            }
        }
        let every =
            (config.lease_duration / 10).clamp(Duration::from_millis(100), Duration::from_secs(3));
        self.state().next_refresh = Some(Instant::now() + every);
        Ok(())
    }

    /// Holds what the cursor table says this relay holds: drops the partitions taken over (or taken over and
    /// back, under a new epoch) and takes in those it just acquired, whose parked events are looked for first.
    async fn read_mine(&self, db: &DatabaseConnection, repo: &OutboxRepository) -> Result<()> {
        let rows = repo
            .query(
                db,
                "reading this relay's partitions",
                MINE,
                vec![self.owner.clone().into()],
            )
            .await?;
        let mut held = HashMap::new();
        for row in rows {
            let at = Position {
                snap_from: get(repo, &row, "snap_from")?,
                snap_to: get(repo, &row, "snap_to")?,
                after_id: get(repo, &row, "after_id")?,
            };
            held.insert(
                get::<i16>(repo, &row, "partition_no")?,
                (get::<i64>(repo, &row, "epoch")?, at),
            );
        }
        let mut state = self.state();
        state.owned.retain(|partition, owned| {
            let kept = held
                .get(partition)
                .is_some_and(|(epoch, _)| *epoch == owned.epoch);
            if !kept {
                tracing::warn!(target: "outbox", partition, "partition taken over by another relay");
            }
            kept
        });
        for (partition, (epoch, at)) in held {
            if state.owned.contains_key(&partition) {
                continue;
            }
            tracing::info!(target: "outbox", partition, epoch, "partition taken");
            state.owned.insert(
                partition,
                Owned {
                    epoch,
                    at,
                    window_end: None,
                    busy: None,
                },
            );
        }
        Ok(())
    }

    /// Gives one partition back, with the cursor where its last batch left it.
    async fn give_back(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
        partition: i16,
        epoch: i64,
    ) -> Result<()> {
        self.state().owned.remove(&partition);
        repo.execute(
            db,
            "giving a partition back",
            RELEASE,
            vec![partition.into(), self.owner.clone().into(), epoch.into()],
        )
        .await?;
        tracing::info!(target: "outbox", partition, "partition given back");
        Ok(())
    }

    /// Gives every partition back (a clean stop, once the batches in flight are settled).
    pub(crate) async fn hand_over(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
    ) -> Result<()> {
        let owned: Vec<(i16, i64)> = self
            .state()
            .owned
            .iter()
            .map(|(p, o)| (*p, o.epoch))
            .collect();
        for (partition, epoch) in owned {
            self.give_back(db, repo, partition, epoch).await?;
        }
        Ok(())
    }

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
        let Some(parts) = self
            .state()
            .reading
            .get(&token.0)
            .map(|batch| batch.parts.clone())
        else {
            return Ok(0);
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
                owned.busy = None;
            }
        }
        state.settled.push_back((token.0, settled));
        while state.settled.len() > SETTLED_KEPT {
            state.settled.pop_front();
        }
        Ok(counted)
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
            counted += (part.window.len() - unpublished.len() + unparked.len()) as u64;
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

async fn count<C: sea_orm::ConnectionTrait>(
    repo: &OutboxRepository,
    db: &C,
    operation: &'static str,
    statement: &str,
    values: Vec<Value>,
) -> Result<u64> {
    let rows = repo.query(db, operation, statement, values).await?;
    Ok(rows
        .first()
        .and_then(|row| row.try_get_by_index::<i64>(0).ok())
        .map_or(0, |n| u64::try_from(n).unwrap_or_default()))
}

fn get<T: sea_orm::TryGetable>(
    repo: &OutboxRepository,
    row: &QueryResult,
    column: &str,
) -> Result<T> {
    row.try_get("", column)
        .map_err(|e| no_row(repo, "reading the cursor", &e.to_string()))
}

/// A yes/no column: a boolean, or on MySQL (whose `EXISTS` is a number) an integer. Read strictly: taking an
/// unreadable `behind` for "no" would publish an event ahead of its aggregate's parked ones.
fn flag(repo: &OutboxRepository, row: &QueryResult, column: &str) -> Result<bool> {
    row.try_get::<bool>("", column)
        .or_else(|_| row.try_get::<i64>("", column).map(|n| n != 0))
        .or_else(|_| row.try_get::<i32>("", column).map(|n| n != 0))
        .map_err(|e| no_row(repo, "reading the cursor", &e.to_string()))
}

fn get_at<T: sea_orm::TryGetable>(
    repo: &OutboxRepository,
    row: &QueryResult,
    index: usize,
) -> Result<T> {
    row.try_get_by_index(index)
        .map_err(|e| no_row(repo, "reading the cursor", &e.to_string()))
}

fn no_row(repo: &OutboxRepository, operation: &'static str, why: &str) -> RepositoryError {
    RepositoryError::Database {
        operation,
        table: repo.table().to_owned(),
        source: sea_orm::DbErr::Custom(why.to_owned()),
    }
}
