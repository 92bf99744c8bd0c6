//! Where a PostgreSQL claim starts reading the pending index.
//!
//! Every claim and mark leaves dead entries at the head of the pending index, and PostgreSQL cannot remove them
//! (nor let scans skip them) while any transaction older than them is open: a long idle transaction anywhere in
//! the database makes every claim that starts at the head walk every event published since it began. So the claim
//! starts at an id below which nothing is pending, as far as this process can tell, and a full scan from the head
//! every [`FULL_SCAN_EVERY`] catches what it cannot tell: a transaction that allocated its ids long ago and
//! committed only now (a straggler), or a dead letter replayed by another process.
//!
//! The start is the lower of two bounds, both safe for everything but stragglers older than [`GUARD`]:
//! - the oldest pending id the last claim saw (pending rows below it were all gone then);
//! - the newest id seen at least [`GUARD`] ago: ids above it were allocated within the guard, so a transaction
//!   still holding one has been open for less than that and is covered by the claims.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How old a transaction must be to be found only by the next full scan.
pub(crate) const GUARD: Duration = Duration::from_secs(5);

/// How often a claim reads the pending index from its head.
pub(crate) const FULL_SCAN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(crate) struct ScanStart {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The id the next claim starts at.
    from: i64,
    /// (when, the newest id a claim saw then), oldest first; one kept from beyond the guard.
    seen: VecDeque<(Instant, i64)>,
    last_full: Option<Instant>,
}

impl ScanStart {
    /// The id the next claim reads from: 0 when a full scan is due.
    pub(crate) fn next(&self, now: Instant) -> i64 {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let full_due = state
            .last_full
            .is_none_or(|at| now.duration_since(at) >= FULL_SCAN_EVERY);
        if full_due { 0 } else { state.from }
    }

    /// What a committed claim that read from `from` saw: its window's oldest pending id and newest id (`None` when
    /// the window came back empty). A claim that failed reports nothing, so a full scan it was to make is not
    /// counted as made.
    pub(crate) fn saw(&self, now: Instant, from: i64, window: Option<(i64, i64)>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if from == 0 {
            state.last_full = Some(now);
        }
        let Some((oldest_pending, newest)) = window else {
            return;
        };
        state.seen.push_back((now, newest));
        while state
            .seen
            .get(1)
            .is_some_and(|&(at, _)| now.duration_since(at) >= GUARD)
        {
            state.seen.pop_front();
        }
        let settled = state
            .seen
            .front()
            .filter(|&&(at, _)| now.duration_since(at) >= GUARD)
            .map_or(state.from, |&(_, id)| id);
        // Never above a pending row this claim saw: the ordering rule needs an aggregate's older pending events
        // inside the window, so a row found below the start (by a full scan) pulls the start down.
        state.from = oldest_pending.min(settled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committed claim at `at` whose window held `window`.
    fn claim(scan: &ScanStart, at: Instant, window: Option<(i64, i64)>) {
        let from = scan.next(at);
        scan.saw(at, from, window);
    }

    #[test]
    fn starts_at_the_head_then_follows_what_settled() {
        let scan = ScanStart::default();
        let t0 = Instant::now();
        assert_eq!(scan.next(t0), 0, "the first claim reads from the head");
        claim(&scan, t0, Some((100, 1_000)));
        assert_eq!(scan.next(t0), 0, "nothing is older than the guard yet");
        let t1 = t0 + GUARD;
        claim(&scan, t1, Some((600, 2_000)));
        assert_eq!(
            scan.next(t1),
            600,
            "ids up to 1,000 settled; 600 is still pending"
        );
        let t2 = t1 + FULL_SCAN_EVERY;
        assert_eq!(scan.next(t2), 0, "a full scan is due");
        claim(&scan, t2, Some((1_900, 3_000)));
        assert_eq!(scan.next(t2), 1_900, "up to 2,000 settled");
    }

    #[test]
    fn a_pending_row_found_below_the_start_pulls_it_down() {
        let scan = ScanStart::default();
        let t0 = Instant::now();
        claim(&scan, t0, Some((500, 1_000)));
        let t1 = t0 + GUARD;
        claim(&scan, t1, Some((1_500, 2_000)));
        assert_eq!(scan.next(t1), 1_000);
        let t2 = t1 + FULL_SCAN_EVERY;
        assert_eq!(scan.next(t2), 0);
        claim(&scan, t2, Some((40, 2_500)));
        assert_eq!(
            scan.next(t2),
            40,
            "a straggler at 40 is pending: start below it"
        );
    }

    #[test]
    fn an_empty_window_changes_nothing() {
        let scan = ScanStart::default();
        let t0 = Instant::now();
        claim(&scan, t0, Some((10, 20)));
        claim(&scan, t0 + GUARD, None);
        assert_eq!(scan.next(t0 + GUARD), 0);
    }

    #[test]
    fn a_failed_full_scan_is_still_due() {
        let scan = ScanStart::default();
        let t0 = Instant::now();
        claim(&scan, t0, Some((500, 1_000)));
        claim(&scan, t0 + GUARD, Some((1_500, 2_000)));
        let due = t0 + GUARD + FULL_SCAN_EVERY;
        assert_eq!(scan.next(due), 0);
        // That claim failed: it reports nothing, so the next one still reads from the head.
        assert_eq!(scan.next(due + GUARD), 0);
    }
}
