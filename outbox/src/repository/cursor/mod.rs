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

use sea_orm::{QueryResult, Value};

use super::{OutboxRepository, RepositoryError, Result};

mod leave;
mod partitions;
mod read;
mod settle;
mod sql;

pub(crate) use sql::{Bounds, CursorSql};
pub(super) use sql::{parked_runs, window_read};

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
    /// Whether a batch of it is out (being read, published or settled): one at a time, so that batches of a
    /// partition settle in the order they were read.
    busy: bool,
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
    /// When it was read: one whose outcome has not started to come a lease later is abandoned (see
    /// [`Cursors::abandon`]).
    read_at: Instant,
    /// Whether its outcome is being written: such a batch is never abandoned.
    settling: bool,
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

impl OutboxRepository {
    /// Refuses a table the commit-order cursor delivers (see [`RepositoryError::DeliveredByCursor`]): what a relay
    /// of the rows design asks before its first claim, and the rows design's own calls that read what is
    /// published from the rows (a claim, `published_between`) ask each time. A schema older than the cursor has
    /// no cursor table, and no cursor ever delivered it.
    pub(crate) async fn refuse_cursor_table<C: sea_orm::ConnectionTrait>(
        &self,
        db: &C,
    ) -> Result<()> {
        const OPERATION: &str = "checking that no cursor delivers the table";
        let cursors = format!("{}_cursors", self.table());
        let made = crate::migration::exists(db, crate::repository::SchemaObject::Table, &cursors)
            .await
            .map_err(|e| self.db_error(OPERATION, db.get_database_backend(), e))?;
        if !made {
            return Ok(());
        }
        let rows = "SELECT COUNT(*) FROM {t}_cursors";
        match count(self, db, OPERATION, rows, Vec::new()).await? {
            0 => Ok(()),
            _ => Err(RepositoryError::DeliveredByCursor {
                table: self.table().to_owned(),
            }),
        }
    }
}

#[cfg(all(test, feature = "derive", feature = "sqlite"))]
mod tests;
