//! Destinations held after the broker said they cannot take messages ([`PublishError::DestinationUnavailable`]):
//! no stream captures a NATS subject, a Kafka topic is missing or cannot be created.
//!
//! One destination's trouble must not stop the others, nor burn its events' retry budgets. While a destination
//! is held, the relay sends nothing to it: an event bound for it is given back with a retry time at the end of
//! the hold and no attempt counted (which holds its aggregate back, as a retrying event does), and every other
//! destination flows. When the hold ends, the next event for the destination tries it again; a success lifts the
//! hold, a failure holds it again, for longer each time in a row (the retry schedule of the configuration).
//!
//! [`PublishError::DestinationUnavailable`]: crate::publisher::PublishError::DestinationUnavailable

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::OutboxConfig;

/// A destination the relay holds now, as its health reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HeldDestination {
    /// The topic, subject, stream or routing key.
    pub destination: String,
    /// What the broker said.
    pub reason: String,
    /// When the hold began (the first refusal in a row).
    pub since: DateTime<Utc>,
    /// Seconds until the destination is tried again.
    pub retry_in_seconds: f64,
}

#[derive(Debug, Default)]
pub(crate) struct Holds {
    map: Mutex<HashMap<String, Hold>>,
    /// How many destinations are in the map, so the common case (none) costs no lock per event.
    held: AtomicUsize,
}

#[derive(Debug)]
struct Hold {
    until: Instant,
    since: DateTime<Utc>,
    reason: String,
    streak: u32,
}

impl Holds {
    /// How much longer `destination` is held, and why; `None` when it may be tried.
    pub(crate) fn remaining(&self, destination: &str) -> Option<(Duration, String)> {
        if self.held.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let map = self.lock();
        let hold = map.get(destination)?;
        let left = hold.until.checked_duration_since(Instant::now())?;
        Some((left, hold.reason.clone()))
    }

    /// The broker refused `destination`: holds it, for the configuration's retry delay after as many refusals in
    /// a row (with jitter), unless a refusal of another event already did. Returns how long it stays held.
    pub(crate) fn hold(
        &self,
        destination: &str,
        reason: String,
        config: &OutboxConfig,
    ) -> Duration {
        let now = Instant::now();
        let mut map = self.lock();
        if let Some(hold) = map.get(destination)
            && let Some(left) = hold.until.checked_duration_since(now)
        {
            return left;
        }
        let streak = map.get(destination).map_or(1, |h| h.streak + 1);
        let delay = config.retry_delay_jittered(streak);
        if streak == 1 {
            tracing::error!(
                name: "outbox.destination_unavailable",
                target: "outbox",
                destination,
                reason = %reason,
                retry_in = ?delay,
                "outbox.destination_unavailable: its events wait, the other destinations flow"
            );
        }
        let since = map.get(destination).map_or_else(Utc::now, |h| h.since);
        map.insert(
            destination.to_owned(),
            Hold {
                until: now + delay,
                since,
                reason,
                streak,
            },
        );
        self.held.store(map.len(), Ordering::Relaxed);
        delay
    }

    /// A message reached `destination`: it is held no more.
    pub(crate) fn lift(&self, destination: &str) {
        if self.held.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = self.lock();
        if let Some(hold) = map.remove(destination) {
            tracing::info!(
                target: "outbox",
                destination,
                held_for = ?(Utc::now() - hold.since).to_std().unwrap_or_default(),
                "destination available again"
            );
        }
        self.held.store(map.len(), Ordering::Relaxed);
    }

    /// Every destination held now, by name.
    pub(crate) fn list(&self) -> Vec<HeldDestination> {
        let now = Instant::now();
        let mut held: Vec<HeldDestination> = self
            .lock()
            .iter()
            .map(|(destination, hold)| HeldDestination {
                destination: destination.clone(),
                reason: hold.reason.clone(),
                since: hold.since,
                retry_in_seconds: hold.until.saturating_duration_since(now).as_secs_f64(),
            })
            .collect();
        held.sort_by(|a, b| a.destination.cmp(&b.destination));
        held
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hold>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OutboxConfig {
        OutboxConfig {
            retry_initial_delay: Duration::from_millis(40),
            retry_max_delay: Duration::from_secs(10),
            ..OutboxConfig::default()
        }
    }

    #[test]
    fn a_hold_lasts_its_delay_and_grows_while_refusals_go_on() {
        let holds = Holds::default();
        assert!(holds.remaining("a").is_none());
        let first = holds.hold("a", "no stream".into(), &config());
        assert!(first <= Duration::from_millis(40), "{first:?}");
        let (left, reason) = holds.remaining("a").expect("held");
        assert!(left <= first);
        assert_eq!(reason, "no stream");
        assert!(
            holds.remaining("b").is_none(),
            "other destinations are free"
        );
        // A second refusal while held (another event of the same batch) does not extend the hold.
        assert!(holds.hold("a", "no stream".into(), &config()) <= first);
        std::thread::sleep(first);
        assert!(holds.remaining("a").is_none(), "the hold ended");
        let second = holds.hold("a", "still no stream".into(), &config());
        assert!(second >= Duration::from_millis(40), "{second:?}");
        assert_eq!(holds.list()[0].reason, "still no stream");
        holds.lift("a");
        assert!(holds.list().is_empty());
        assert!(holds.remaining("a").is_none());
    }
}
