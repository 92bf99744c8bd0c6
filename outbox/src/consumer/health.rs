//! The consumer's health: is it running, does its subscription deliver, does its database answer, how far
//! behind is it. Served as JSON by an HTTP endpoint, like the relay's [`HealthReport`](crate::health::HealthReport).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::health::{ComponentHealth, HealthStatus};

/// When the consumer's health turns degraded or unhealthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerThresholds {
    /// The subscription failing (every receive an error) for this long is unhealthy (default 30 s); any failure
    /// at all is degraded.
    pub receive_failing_unhealthy: Duration,
    /// Lag of the last applied message (its event time to its commit) at which the consumer is degraded
    /// (default 1 min).
    pub lag_degraded: Duration,
    /// ... and unhealthy (default 5 min).
    pub lag_unhealthy: Duration,
}

impl Default for ConsumerThresholds {
    fn default() -> Self {
        Self {
            receive_failing_unhealthy: Duration::from_secs(30),
            lag_degraded: Duration::from_secs(60),
            lag_unhealthy: Duration::from_secs(300),
        }
    }
}

/// What [`Consumer::check_health`](super::Consumer::check_health) found.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConsumerHealth {
    /// The worst of the parts.
    pub status: HealthStatus,
    /// The consumer's database (inbox and handlers' changes).
    pub database: ComponentHealth,
    /// The subscription and the run loop.
    pub subscription: SubscriptionHealth,
    /// Lag of the last applied message, in seconds (event time to commit here); none before the first.
    pub last_lag_seconds: Option<f64>,
    /// What the consumer did since it was built.
    pub applied: u64,
    /// Duplicates acknowledged without running a handler.
    pub duplicates: u64,
    /// Messages kept as dead letters.
    pub dead_lettered: u64,
    /// When the check ran.
    pub checked_at: DateTime<Utc>,
}

impl ConsumerHealth {
    /// The HTTP status to answer with: 200 when healthy or degraded, 503 when unhealthy.
    pub fn http_status(&self) -> u16 {
        self.status.http_status()
    }
}

/// The run loop and its subscription.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SubscriptionHealth {
    /// Unhealthy when the consumer is not running or its subscription has failed for too long; degraded while
    /// it fails.
    pub status: HealthStatus,
    /// Whether [`Consumer::run`](super::Consumer::run) is running.
    pub running: bool,
    /// Seconds since a message last arrived; none before the first.
    pub since_last_message_seconds: Option<f64>,
    /// Seconds the subscription has failed for (every receive since then an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_for_seconds: Option<f64>,
    /// The last receive error, while it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Messages being handled.
    pub in_flight: usize,
    /// Messages waiting behind their aggregate's.
    pub waiting: usize,
}

/// What the run loop tells the health check.
#[derive(Default)]
pub(super) struct Liveness {
    state: Mutex<LivenessState>,
}

#[derive(Default)]
struct LivenessState {
    running: bool,
    last_message: Option<Instant>,
    failing_since: Option<Instant>,
    error: Option<String>,
    in_flight: usize,
    waiting: usize,
    last_lag: Option<Duration>,
}

impl Liveness {
    fn with<T>(&self, f: impl FnOnce(&mut LivenessState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(super) fn running(&self, running: bool) {
        self.with(|s| s.running = running);
    }

    pub(super) fn received(&self) {
        self.with(|s| {
            s.last_message = Some(Instant::now());
            s.failing_since = None;
            s.error = None;
        });
    }

    pub(super) fn receive_failed(&self, error: &str) {
        self.with(|s| {
            s.failing_since.get_or_insert_with(Instant::now);
            s.error = Some(error.to_owned());
        });
    }

    pub(super) fn load(&self, in_flight: usize, waiting: usize) {
        self.with(|s| {
            s.in_flight = in_flight;
            s.waiting = waiting;
        });
    }

    pub(super) fn lag(&self, lag: Duration) {
        self.with(|s| s.last_lag = Some(lag));
    }

    /// The subscription's part of the report, and the last lag.
    pub(super) fn report(
        &self,
        thresholds: &ConsumerThresholds,
    ) -> (SubscriptionHealth, Option<Duration>) {
        self.with(|s| {
            let failing_for = s.failing_since.map(|since| since.elapsed());
            let status = if !s.running
                || failing_for.is_some_and(|f| f >= thresholds.receive_failing_unhealthy)
            {
                HealthStatus::Unhealthy
            } else if failing_for.is_some() {
                HealthStatus::Degraded
            } else {
                HealthStatus::Healthy
            };
            let subscription = SubscriptionHealth {
                status,
                running: s.running,
                since_last_message_seconds: s.last_message.map(|at| at.elapsed().as_secs_f64()),
                failing_for_seconds: failing_for.map(|f| f.as_secs_f64()),
                error: s.error.clone(),
                in_flight: s.in_flight,
                waiting: s.waiting,
            };
            (subscription, s.last_lag)
        })
    }
}

/// The status of a lag against the thresholds.
pub(super) fn lag_status(lag: Option<Duration>, thresholds: &ConsumerThresholds) -> HealthStatus {
    match lag {
        Some(lag) if lag >= thresholds.lag_unhealthy => HealthStatus::Unhealthy,
        Some(lag) if lag >= thresholds.lag_degraded => HealthStatus::Degraded,
        _ => HealthStatus::Healthy,
    }
}
