//! Where a PostgreSQL claim starts reading the pending index.
//!
//! Every claim and mark leaves dead entries at the head of the pending index, and PostgreSQL cannot remove them
//! (nor let scans skip them) while any transaction older than them is open: a long idle transaction anywhere in
//! the database makes every claim that starts at the head walk every event published since it began. So the claim
//! starts at an id below which nothing is pending, and a full scan from the head every [`FULL_SCAN_EVERY`] finds
//! what no claim can tell about: a dead letter replayed by another process.
//!
//! The start is the lower of two bounds:
//! - the oldest pending id the last claim saw (pending rows below it were all gone then);
//! - the newest id of an earlier claim's window once every transaction that could still add a row at or below it
//!   has ended ([`Observation`]): until then a row of such a transaction (a *straggler*, which took its id before
//!   newer events committed and went out) may still become visible, and the claim must read from below it.
//!
//! A transaction that stores an event holds a `RowExclusiveLock` on the outbox table from before it takes the
//! event's id until it ends. So after a claim's window statement saw the newest id N, the transactions holding
//! that lock (read in the same statement, after its snapshot) include every transaction that took an id at or
//! below N and had not committed when the snapshot was taken. Once a later read of the lock holders finds none of
//! them any more, they have all ended, and nothing at or below N can appear: N is settled. That later read must
//! come before the snapshot of the claim whose window the start is then judged with; the previous claim's window
//! statement is such a read, so each claim reads the lock holders once. Only transactions that wrote to the
//! outbox table count, so a long transaction elsewhere (one that pins the vacuum horizon) does not hold the start
//! back, and a slow writer holds it exactly as long as it is open.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a claim reads the pending index from its head.
pub(crate) const FULL_SCAN_EVERY: Duration = Duration::from_secs(10);

/// Observations kept waiting for their writers to end. Dropping newer ones while a slow writer is open only delays
/// how far the start may move once it ends; the observations already kept are enough to move it then.
const MAX_WAITING: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct ScanStart {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The id the next claim starts at.
    from: i64,
    /// The highest newest id known to be settled.
    settled: i64,
    /// (newest id, writers) of observations whose writers had not all ended at the last read, oldest first.
    waiting: VecDeque<(i64, Vec<String>)>,
    /// When the lock holders were last read.
    writers_read: Option<Instant>,
    /// The writers of the latest observation: read after every observation in `waiting`, and before the snapshot
    /// of any claim still to come.
    latest_writers: Option<Vec<String>>,
    last_full: Option<Instant>,
}

/// What one claim's window statement saw: its oldest pending and newest ids, and the transactions (virtual
/// transaction ids, as `pg_locks` names them) that held a write lock on the outbox table just after its snapshot,
/// when it read them ([`ScanStart::wants_writers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observation {
    pub(crate) oldest_pending: i64,
    pub(crate) newest: i64,
    pub(crate) writers: Option<Vec<String>>,
}

/// How often a claim reads the lock holders (about 0.1 ms each): often enough that the start follows the head
/// within a fraction of a second, rarely enough that a one-event claim at low load does not pay it every time.
const WRITERS_EVERY: Duration = Duration::from_millis(100);

impl ScanStart {
    /// The id the next claim reads from: 0 when a full scan is due.
    pub(crate) fn next(&self, now: Instant) -> i64 {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let full_due = state
            .last_full
            .is_none_or(|at| now.duration_since(at) >= FULL_SCAN_EVERY);
        if full_due { 0 } else { state.from }
    }

    /// Whether the next claim should read the lock holders.
    pub(crate) fn wants_writers(&self, now: Instant) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .writers_read
            .is_none_or(|at| now.duration_since(at) >= WRITERS_EVERY)
    }

    /// What a committed claim that read from `from` saw (`None` when it claimed nothing, or its writers could
    /// not be read). A claim that failed reports nothing, so a full scan it was to make is not counted as made.
    pub(crate) fn saw(&self, now: Instant, from: i64, window: Option<Observation>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if from == 0 {
            state.last_full = Some(now);
        }
        // Settled by the latest writers, read before this claim's snapshot. A writer still running when they were
        // read was running when each later observation was made, so the observations settle in order: the first
        // one that does not settle stops the rest.
        if let Some(latest) = state.latest_writers.take() {
            while let Some((newest, writers)) = state.waiting.front() {
                if writers.iter().any(|w| latest.contains(w)) {
                    break;
                }
                state.settled = state.settled.max(*newest);
                state.waiting.pop_front();
            }
            state.latest_writers = Some(latest);
        }
        let Some(window) = window else {
            return;
        };
        // Never above a pending row this claim saw: the ordering rule needs an aggregate's older pending events
        // inside the window, so a row found below the start (by a full scan) pulls the start down.
        state.from = window.oldest_pending.min(state.settled);
        if let Some(writers) = window.writers {
            state.writers_read = Some(now);
            state.latest_writers = Some(writers.clone());
            if state.waiting.len() < MAX_WAITING {
                state.waiting.push_back((window.newest, writers));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(oldest_pending: i64, newest: i64, writers: &[&str]) -> Option<Observation> {
        Some(Observation {
            oldest_pending,
            newest,
            writers: Some(writers.iter().map(|w| (*w).to_owned()).collect()),
        })
    }

    /// A committed claim at `at` and its window's observation.
    fn claim(scan: &ScanStart, at: Instant, window: Option<Observation>) -> i64 {
        let from = scan.next(at);
        scan.saw(at, from, window);
        from
    }

    #[test]
    fn follows_what_settled_once_its_writers_ended() {
        let scan = ScanStart::default();
        let t0 = Instant::now();
        assert_eq!(claim(&scan, t0, seen(100, 1_000, &["3/7"])), 0);
        assert_eq!(scan.next(t0), 0, "1,000 is not settled while 3/7 writes");
        claim(&scan, t0, seen(600, 2_000, &["3/7", "4/9"]));
        assert_eq!(scan.next(t0), 0, "3/7 still writes");
        claim(&scan, t0, seen(1_500, 3_000, &["4/9"]));
        assert_eq!(scan.next(t0), 0, "3/7 was still writing at the last read");
        claim(&scan, t0, seen(1_800, 3_500, &[]));
        assert_eq!(
            scan.next(t0),
            1_000,
            "3/7 ended before the last read: ids up to 1,000 settled, 2,000 waits for 4/9"
        );
        claim(&scan, t0, seen(2_500, 4_000, &[]));
        assert_eq!(
            scan.next(t0),
            2_500,
            "everything up to 3,500 settled; 2,500 is pending"
        );
        let later = t0 + FULL_SCAN_EVERY;
        assert_eq!(scan.next(later), 0, "a full scan is due");
    }

    #[test]
    fn a_slow_writer_holds_the_start_for_as_long_as_it_is_open() {
        let scan = ScanStart::default();
        let t0 = Instant::now();
        claim(&scan, t0, seen(10, 20, &[]));
        claim(&scan, t0, seen(30, 40, &["slow"]));
        for i in 0..1_000 {
            claim(&scan, t0, seen(50 + i, 60 + i, &["slow"]));
            assert_eq!(scan.next(t0), 20, "the slow writer may hold an id above 20");
        }
        claim(&scan, t0, seen(2_000, 3_000, &[]));
        claim(&scan, t0, seen(3_000, 4_000, &[]));
        assert!(
            scan.next(t0) > 40,
            "the slow writer ended: {}",
            scan.next(t0)
        );
    }

    #[test]
    fn a_pending_row_found_below_the_start_pulls_it_down() {
        let scan = ScanStart::default();
        let t0 = Instant::now();
        claim(&scan, t0, seen(500, 1_000, &[]));
        claim(&scan, t0, seen(1_500, 2_000, &[]));
        assert_eq!(scan.next(t0), 1_000, "up to 1,000 settled");
        let t1 = t0 + FULL_SCAN_EVERY;
        assert_eq!(claim(&scan, t1, seen(40, 2_500, &[])), 0);
        assert_eq!(
            scan.next(t1),
            40,
            "a replayed row at 40 is pending: start below it"
        );
    }

    #[test]
    fn a_claim_that_read_no_writers_moves_the_start_within_what_settled() {
        let scan = ScanStart::default();
        let t0 = Instant::now();
        claim(&scan, t0, seen(500, 1_000, &[]));
        let unread = |oldest_pending, newest| {
            Some(Observation {
                oldest_pending,
                newest,
                writers: None,
            })
        };
        claim(&scan, t0, unread(1_500, 2_000));
        assert_eq!(
            scan.next(t0),
            1_000,
            "1,000 settled; 2,000 was seen without its writers"
        );
        claim(&scan, t0, unread(600, 2_500));
        assert_eq!(
            scan.next(t0),
            600,
            "a pending row below still pulls it down"
        );
        assert!(!scan.wants_writers(t0), "read at t0");
        assert!(scan.wants_writers(t0 + WRITERS_EVERY));
    }

    #[test]
    fn an_empty_window_changes_nothing() {
        let scan = ScanStart::default();
        let t0 = Instant::now();
        claim(&scan, t0, seen(10, 20, &["w"]));
        claim(&scan, t0, None);
        assert_eq!(scan.next(t0), 0);
    }

    #[test]
    fn a_failed_full_scan_is_still_due() {
        let scan = ScanStart::default();
        let t0 = Instant::now();
        claim(&scan, t0, seen(500, 1_000, &[]));
        let due = t0 + FULL_SCAN_EVERY;
        assert_eq!(scan.next(due), 0);
        // That claim failed: it reports nothing, so the next one still reads from the head.
        assert_eq!(scan.next(due + Duration::from_secs(1)), 0);
    }
}
