//! Health checks (python-outbox-core's `OutboxHealthCheck` and `HealthStatus`): database, broker, outbox lag and relay
//! liveness, combined into one status an HTTP endpoint can serve as JSON.
//!
//! ```no_run
//! # use outbox::health::{HealthCheck, HealthStatus};
//! # async fn example(check: HealthCheck) {
//! let report = check.check_health().await;
//! let body = serde_json::to_string(&report).unwrap();
//! let http_status = report.http_status(); // 200 for healthy and degraded, 503 for unhealthy
//! # let _ = (body, http_status);
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::Serialize;

use crate::publisher::Publisher;
use crate::relay::{HeldDestination, RelayHandle};
use crate::repository::{OutboxRepository, Store};

/// Overall or per-component health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Everything works.
    Healthy,
    /// Working, but lagging or holding dead letters: look soon.
    Degraded,
    /// Not working: the database or broker is unreachable, or the relay is not running.
    Unhealthy,
}

/// When lag turns the status degraded or unhealthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthThresholds {
    /// Pending events at which the outbox is degraded (default 1,000).
    pub pending_degraded: u64,
    /// Pending events at which it is unhealthy (default 10,000).
    pub pending_unhealthy: u64,
    /// Age of the oldest pending event at which it is degraded (default 1 min).
    pub oldest_degraded: Duration,
    /// Age of the oldest pending event at which it is unhealthy (default 5 min).
    pub oldest_unhealthy: Duration,
    /// Dead letters at which it is degraded (default 1: any dead letter wants a look).
    pub dead_letters_degraded: u64,
    /// A relay whose loop has not gone round for this long is considered stuck (default 2 min; set it above the
    /// poll interval and the longest backoff).
    pub relay_stale_after: Duration,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            pending_degraded: 1_000,
            pending_unhealthy: 10_000,
            oldest_degraded: Duration::from_secs(60),
            oldest_unhealthy: Duration::from_secs(300),
            dead_letters_degraded: 1,
            relay_stale_after: Duration::from_secs(120),
        }
    }
}

/// One component's health.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ComponentHealth {
    /// Its status.
    pub status: HealthStatus,
    /// Round-trip time of the check, in milliseconds.
    pub latency_ms: f64,
    /// What went wrong, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outbox's lag.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LagHealth {
    /// Its status.
    pub status: HealthStatus,
    /// Events not yet published.
    pub pending: u64,
    /// Age of the oldest of them, in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Dead letters waiting.
    pub dead_letters: u64,
    /// What went wrong reading the lag, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The relay loop's liveness.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RelayHealth {
    /// Its status: unhealthy when the loop stopped or is stuck, degraded while a destination is held.
    pub status: HealthStatus,
    /// Whether the loop is running.
    pub running: bool,
    /// Seconds since the loop last went round.
    pub since_last_beat_seconds: Option<f64>,
    /// Why the relay stopped, when it stopped on an error or a panic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Destinations the broker said cannot take messages: their events wait, the others flow.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_destinations: Vec<HeldDestination>,
}

/// Everything [`HealthCheck::check_health`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The worst of the parts.
    pub status: HealthStatus,
    /// The database.
    pub database: ComponentHealth,
    /// The broker.
    pub broker: ComponentHealth,
    /// The outbox's lag.
    pub outbox: LagHealth,
    /// The relay, when one is attached to the check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayHealth>,
    /// When the check ran.
    pub checked_at: DateTime<Utc>,
}

impl HealthReport {
    /// The HTTP status to answer with: 200 when healthy or degraded, 503 when unhealthy.
    pub fn http_status(&self) -> u16 {
        self.status.http_status()
    }
}

impl HealthStatus {
    /// The HTTP status a health endpoint answers with: 200 when healthy or degraded, 503 when unhealthy.
    pub fn http_status(self) -> u16 {
        if self == HealthStatus::Unhealthy {
            503
        } else {
            200
        }
    }
}

/// Checks the database, the broker, the outbox's lag and (optionally) a relay.
#[derive(Clone)]
pub struct HealthCheck {
    store: Store,
    publisher: Arc<dyn Publisher>,
    thresholds: HealthThresholds,
    relay: Option<RelayHandle>,
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheck")
            .field("table", &self.store.repository().table())
            .field("publisher", &self.publisher.name())
            .field("thresholds", &self.thresholds)
            .finish_non_exhaustive()
    }
}

impl HealthCheck {
    /// A check of `db`, the outbox in `repository`, and `publisher`'s broker.
    pub fn new(
        db: DatabaseConnection,
        repository: OutboxRepository,
        publisher: Arc<dyn Publisher>,
    ) -> Self {
        Self {
            store: Store::new(db, repository),
            publisher,
            thresholds: HealthThresholds::default(),
            relay: None,
        }
    }

    /// Replaces the lag thresholds.
    #[must_use]
    pub fn with_thresholds(mut self, thresholds: HealthThresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Also reports whether this relay is alive: a relay that stopped or is stuck turns the status unhealthy.
    #[must_use]
    pub fn with_relay(mut self, relay: RelayHandle) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Whether the database answers a trivial query.
    pub async fn check_database(&self) -> ComponentHealth {
        let started = Instant::now();
        component(started, self.store.ping().await.map_err(|e| e.to_string()))
    }

    /// Whether the broker answers the publisher's probe.
    pub async fn check_broker(&self) -> ComponentHealth {
        let started = Instant::now();
        component(
            started,
            self.publisher.check().await.map_err(|e| e.to_string()),
        )
    }

    /// Pending count, oldest pending age and dead letters against the thresholds.
    pub async fn check_outbox_lag(&self) -> LagHealth {
        let t = &self.thresholds;
        match self.store.stats().await {
            Ok(stats) => {
                let age = stats.oldest_pending_age();
                let status = if stats.pending >= t.pending_unhealthy
                    || age.is_some_and(|a| a >= t.oldest_unhealthy)
                {
                    HealthStatus::Unhealthy
                } else if stats.pending >= t.pending_degraded
                    || age.is_some_and(|a| a >= t.oldest_degraded)
                    || stats.dead_letters >= t.dead_letters_degraded
                {
                    HealthStatus::Degraded
                } else {
                    HealthStatus::Healthy
                };
                LagHealth {
                    status,
                    pending: stats.pending,
                    oldest_pending_age_seconds: age.map(|a| a.as_secs_f64()),
                    dead_letters: stats.dead_letters,
                    error: None,
                }
            }
            Err(error) => LagHealth {
                status: HealthStatus::Unhealthy,
                pending: 0,
                oldest_pending_age_seconds: None,
                dead_letters: 0,
                error: Some(error.to_string()),
            },
        }
    }

    /// Whether the attached relay's loop is running and went round recently, and which destinations it holds;
    /// `None` without a relay. A relay that stopped is unhealthy from that moment, with the error it stopped on.
    pub fn check_relay(&self) -> Option<RelayHealth> {
        let relay = self.relay.as_ref()?;
        let since = relay.since_last_beat();
        let alive =
            relay.is_running() && since.is_some_and(|s| s < self.thresholds.relay_stale_after);
        let held_destinations = relay.held_destinations();
        Some(RelayHealth {
            status: if !alive {
                HealthStatus::Unhealthy
            } else if !held_destinations.is_empty() {
                HealthStatus::Degraded
            } else {
                HealthStatus::Healthy
            },
            running: relay.is_running(),
            since_last_beat_seconds: since.map(|s| s.as_secs_f64()),
            error: relay.failure(),
            held_destinations,
        })
    }

    /// All checks, run concurrently, combined: the overall status is the worst of the parts.
    pub async fn check_health(&self) -> HealthReport {
        let (database, broker, outbox) = tokio::join!(
            self.check_database(),
            self.check_broker(),
            self.check_outbox_lag()
        );
        let relay = self.check_relay();
        let status = [database.status, broker.status, outbox.status]
            .into_iter()
            .chain(relay.as_ref().map(|r| r.status))
            .max()
            .unwrap_or(HealthStatus::Healthy);
        HealthReport {
            status,
            database,
            broker,
            outbox,
            relay,
            checked_at: Utc::now(),
        }
    }
}

pub(crate) fn component(started: Instant, result: Result<(), String>) -> ComponentHealth {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(()) => ComponentHealth {
            status: HealthStatus::Healthy,
            latency_ms,
            error: None,
        },
        Err(error) => ComponentHealth {
            status: HealthStatus::Unhealthy,
            latency_ms,
            error: Some(error),
        },
    }
}
