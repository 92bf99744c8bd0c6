//! The relay's pulse and wake-up handle, shared with health checks and writers.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;

use super::hold::{HeldDestination, Holds};

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

/// A handle on a running relay: wake it, and see whether it is alive. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RelayHandle {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) wake: Notify,
    pub(crate) holds: Holds,
    last_beat_micros: AtomicI64,
    /// What the relay has done since it started, for its row in the relays table.
    pub(crate) published: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    state: AtomicU8,
    failure: Mutex<Option<String>>,
}

impl RelayHandle {
    /// Wakes the relay now instead of at its next poll: call it right after committing events when the writer
    /// and the relay share a process (on PostgreSQL, LISTEN/NOTIFY does this across processes).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Whether the relay's loop is running.
    pub fn is_running(&self) -> bool {
        self.shared.state.load(Ordering::Relaxed) == RUNNING
    }

    /// Whether the relay's loop has returned.
    pub fn has_stopped(&self) -> bool {
        self.shared.state.load(Ordering::Relaxed) == STOPPED
    }

    /// Whether the relay behind this handle was ever started (a relay never run is not "stopped").
    pub fn was_started(&self) -> bool {
        self.shared.state.load(Ordering::Relaxed) != NOT_STARTED
    }

    /// Why the relay stopped, if it stopped on an error or a panic rather than on shutdown.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The destinations the relay holds now because the broker said they cannot take messages; their events
    /// wait while the others flow.
    pub fn held_destinations(&self) -> Vec<HeldDestination> {
        self.shared.holds.list()
    }

    /// How long ago the loop last went round, if it ever did.
    pub fn since_last_beat(&self) -> Option<Duration> {
        let last = self.shared.last_beat_micros.load(Ordering::Relaxed);
        (last > 0).then(|| {
            Duration::from_micros(u64::try_from(Utc::now().timestamp_micros() - last).unwrap_or(0))
        })
    }

    pub(crate) fn last_beat_micros(&self) -> i64 {
        self.shared.last_beat_micros.load(Ordering::Relaxed)
    }

    /// Counts a finished batch's outcome.
    pub(crate) fn count(&self, report: &super::BatchReport) {
        let shared = &self.shared;
        shared
            .published
            .fetch_add(report.published, Ordering::Relaxed);
        shared
            .dead_lettered
            .fetch_add(report.dead_lettered, Ordering::Relaxed);
    }

    pub(crate) fn beat(&self) {
        self.shared
            .last_beat_micros
            .store(Utc::now().timestamp_micros(), Ordering::Relaxed);
    }

    pub(crate) fn set_running(&self) {
        self.shared.state.store(RUNNING, Ordering::Relaxed);
        self.beat();
    }

    pub(crate) fn set_stopped(&self) {
        self.shared.state.store(STOPPED, Ordering::Relaxed);
    }

    /// Marks the relay stopped when dropped: on return, on an error, and while a panic unwinds, so health reports
    /// a dead relay at once rather than when its heartbeat goes stale. A stop without [`Stopped::returned`] first
    /// is recorded as a panic.
    pub(crate) fn stopped_guard(&self) -> Stopped {
        Stopped {
            handle: self.clone(),
            failure: Some("the relay task panicked".to_owned()),
        }
    }
}

/// See [`RelayHandle::stopped_guard`].
pub(crate) struct Stopped {
    handle: RelayHandle,
    failure: Option<String>,
}

impl Stopped {
    /// The relay returned: cleanly, or with `error`.
    pub(crate) fn returned(&mut self, error: Option<String>) {
        self.failure = error;
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(failure) = self.failure.take() {
            *self
                .handle
                .shared
                .failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(failure);
        }
        self.handle.set_stopped();
    }
}
