//! The relay's pulse and wake-up handle, shared with health checks and writers.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;

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
    last_beat_micros: AtomicI64,
    state: AtomicU8,
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

    /// How long ago the loop last went round, if it ever did.
    pub fn since_last_beat(&self) -> Option<Duration> {
        let last = self.shared.last_beat_micros.load(Ordering::Relaxed);
        (last > 0).then(|| {
            Duration::from_micros(u64::try_from(Utc::now().timestamp_micros() - last).unwrap_or(0))
        })
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

    /// Whether the relay behind this handle was ever started (a relay never run is not "stopped").
    pub fn was_started(&self) -> bool {
        self.shared.state.load(Ordering::Relaxed) != NOT_STARTED
    }
}
