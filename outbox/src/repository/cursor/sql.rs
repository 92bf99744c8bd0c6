//! The statements of the commit-order cursor: what each backend writes for itself ([`CursorSql`]), and those
//! every backend shares, on the backend's clock.

use std::time::Duration;

use sea_orm::Value;

use super::Position;

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
    /// order in which a batch's settle moves its cursors ([`Cursors::settle_parts`](super::Cursors::settle_parts)): in any other order the
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
    /// Parked events whose turn has come: each aggregate's whose oldest is due, in order: partition, limit.
    pub(crate) parked: &'static str,
    /// Gives rows (ids) that have no partition theirs (partitions), leaving their transaction id alone: dead
    /// letters stored before the upgrade, when they are replayed.
    pub(crate) repartition: &'static str,
    /// Parks events (ids, in order), unless parked already.
    pub(crate) park: &'static str,
    /// Ends parked events (ids).
    pub(crate) unpark: &'static str,
    /// Events not yet published (behind a cursor, parked, not adopted yet, or all pending ones before any
    /// cursor exists), and when the oldest of them occurred; `{parked}` stands for the parked ones not counted
    /// by the other terms. Run through [`pending_statement`](Self::pending_statement), which fills it in.
    pub(crate) pending: &'static str,
    /// The condition that pending event `o` has no place in commit order yet (stored before the upgrade, or by
    /// an older writer): what the next adoption takes.
    pub(crate) unplaced: &'static str,
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

/// A backend's read of parked events whose turn has come on its clock `now` (an SQL expression): every parked
/// event of each aggregate whose oldest one is due, in the order they were parked, with the attempts and error
/// each parked row keeps: partition, limit. The rest of an aggregate follows its head in the same batch, as
/// window events do (a failure gives back what is behind it): reading only heads let an aggregate held for a
/// while drain at one event per batch.
macro_rules! parked_runs {
    ($($now:tt)*) => {
        concat!(
            "SELECT o.id, o.event_id, o.event_type, o.data_version, o.aggregate_type, o.aggregate_id, o.payload, \
               o.correlation_id, o.causation_id, o.traceparent, o.tracestate, o.occurred_at, o.status, p.attempts, \
               p.last_error, o.published_at \
             FROM {t}_parked p JOIN {t} o ON o.id = p.id \
             WHERE p.partition_no = ? AND (SELECT h.next_attempt_at FROM {t}_parked h \
               WHERE h.partition_no = p.partition_no AND h.aggregate_type = p.aggregate_type \
                 AND h.aggregate_id = p.aggregate_id ORDER BY h.seq LIMIT 1) <= ",
            $($now)*,
            " ORDER BY p.seq LIMIT ?"
        )
    };
}

pub(crate) use {parked_runs, window_read};

// The statements every backend shares, with `{now}` for the backend's clock.

/// How many cursor rows there are, and the lowest and highest partition count they were made for.
pub(super) const PARTITIONS: &str =
    "SELECT COUNT(*) AS n, MIN(partitions) AS low, MAX(partitions) AS high FROM {t}_cursors";
/// Owner `?`'s partitions, with their epochs and positions: read after a backend's `renew` and `acquire` (an
/// UPDATE that returns nothing on MySQL). Nobody else writes `owner` to this one, so it reads no stale row.
pub(super) const MINE: &str =
    "SELECT partition_no, epoch, snap_from, snap_to, after_id FROM {t}_cursors WHERE owner = ?";
/// Gives a partition back: partition, owner, epoch.
pub(super) const RELEASE: &str = "UPDATE {t}_cursors SET owner = NULL, lease_until = NULL \
     WHERE partition_no = ? AND owner = ? AND epoch = ?";
/// Owners other than `?` holding a live lease.
pub(super) const OWNERS: &str = "SELECT COUNT(DISTINCT owner) FROM {t}_cursors \
     WHERE owner IS NOT NULL AND owner <> ? AND lease_until >= {now}";
/// Relays whose heartbeat is at or after `?` (µs, their clocks).
pub(super) const RELAYS: &str = "SELECT COUNT(*) FROM {t}_relays WHERE heartbeat_at >= ?";
/// Moves a cursor: snap_from, snap_to, after_id, lease µs, partition, owner, epoch.
pub(super) const ADVANCE: &str = "UPDATE {t}_cursors SET snap_from = ?, snap_to = ?, after_id = ?, \
     lease_until = {now} + ? WHERE partition_no = ? AND owner = ? AND epoch = ?";
/// Renews one partition's lease if it is still owned: lease µs, partition, owner, epoch.
pub(super) const FENCE: &str = "UPDATE {t}_cursors SET lease_until = {now} + ? \
     WHERE partition_no = ? AND owner = ? AND epoch = ?";
/// Schedules a parked event again: attempts, error, delay µs, id.
pub(super) const RETRY: &str =
    "UPDATE {t}_parked SET attempts = ?, last_error = ?, next_attempt_at = {now} + ? WHERE id = ?";
/// Makes an event a dead letter: attempts, error, id.
pub(super) const DEAD: &str =
    "UPDATE {t} SET status = 2, attempts = ?, last_error = ? WHERE id = ?";

impl CursorSql {
    /// The condition that event `o` counts as pending in place: after its partition's cursor, not adopted yet, or
    /// pending before any cursor exists. A parked event can be that as well: a dead letter replayed before the
    /// first relay made the cursors is parked, and the new cursor starts below it. Delivery takes it once (its
    /// window copy is behind its own parked one), and so must every count: one that adds parked events to these
    /// subtracts the parked events this condition holds for (the parked table is small; the other terms are not).
    pub(crate) fn pending_in_place(&self) -> String {
        format!(
            "o.status = {pending} AND (({unplaced}) OR NOT EXISTS (SELECT 1 FROM {{t}}_cursors) \
               OR EXISTS (SELECT 1 FROM {{t}}_cursors c WHERE c.partition_no = o.partition_no AND {ahead}))",
            pending = crate::repository::sql::PENDING,
            unplaced = self.unplaced,
            ahead = self.ahead,
        )
    }

    /// [`pending`](Self::pending) for a table of `partitions` partitions, each pending event counted once.
    pub(crate) fn pending_statement(&self, partitions: u16) -> String {
        let parked = format!(
            "((SELECT COUNT(*) FROM {{t}}_parked) \
              - (SELECT COUNT(*) FROM {{t}}_parked p JOIN {{t}} o ON o.id = p.id WHERE {}))",
            self.pending_in_place()
        );
        self.statement(&self.pending.replace("{parked}", &parked), partitions)
    }

    /// A shared statement on this backend's clock.
    pub(super) fn shared(&self, statement: &str) -> String {
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
    pub(super) fn windows(&self, partitions: &[(i16, &Position, bool)]) -> Vec<Value> {
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
    pub(super) fn bounds(&self, statement: &str, timeout: Duration) -> Vec<Value> {
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
