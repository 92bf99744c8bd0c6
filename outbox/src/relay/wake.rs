//! When a relay sleeps until a writer wakes it, and when it polls instead (PostgreSQL; see
//! `repository/wake.rs`).
//!
//! Asleep, the relay waits for a `NOTIFY` (or its poll interval) after each batch that was not full, and every
//! writer's commit sends one. That is the lowest latency at a low rate, but a transaction that notifies holds a
//! database-wide lock through its commit, so at a high rate the writers commit one at a time. Once the relay
//! claims [`BUSY`] events in a second it polls every [`POLL_EVERY`] instead and tells the writers to stop
//! notifying; below [`QUIET`] events a second it asks them to notify again, and keeps polling until every
//! transaction that may have missed the request has ended. Then it sleeps.

use std::time::{Duration, Instant};

use crate::repository::{Since, Store};

/// Events claimed in a [`WINDOW`] from which the relay polls. As many one-event commits wake it about as often
/// as polling makes it claim; below it, a writer's notification is cheaper than polling.
pub(super) const BUSY: u64 = 400;

/// Events claimed in a [`WINDOW`] below which a polling relay goes back to sleep. Below [`BUSY`], so that a rate
/// near the threshold does not switch at every window.
pub(super) const QUIET: u64 = 100;

/// How often a polling relay claims when its last batch was not full: the added latency at a high rate.
pub(super) const POLL_EVERY: Duration = Duration::from_millis(3);

/// The span over which claims are counted.
const WINDOW: Duration = Duration::from_secs(1);

/// A relay's way of learning of new events, and the claims counted towards the next decision.
pub(super) struct Wakeups {
    /// The relay's row in `<table>_relays`, where writers read its wish; `None` when it has no say (not
    /// PostgreSQL, not listening, or not recorded): it then sleeps after every batch that was not full.
    relay_id: Option<String>,
    state: State,
    window_start: Instant,
    claimed: u64,
    /// Whether each switch is counted in `outbox_relay_wakeup_switches_total`.
    metrics: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Waits for a notification or the poll interval; writers notify.
    Asleep,
    /// Claims every [`POLL_EVERY`]; writers were asked not to notify.
    Polling,
    /// Writers were asked to notify again: polls until every transaction of this snapshot has ended, since
    /// those may have read the old request.
    Settling(Since),
}

impl State {
    /// The label of `outbox_relay_wakeup_switches_total` for a switch to this state.
    fn label(&self) -> &'static str {
        match self {
            Self::Asleep => "asleep",
            Self::Polling => "polling",
            Self::Settling(_) => "settling",
        }
    }
}

impl Wakeups {
    /// How the relay `relay_id` (its row, if it has one) learns of new events when it starts. A relay that
    /// listens starts by asking to be woken, then settles; one that does not listen says it needs no
    /// notifications, so that writers do not send them for it.
    pub(super) async fn start(
        store: &Store,
        relay_id: Option<&str>,
        listen: bool,
        metrics: bool,
    ) -> Self {
        let mut wakeups = Self {
            relay_id: None,
            state: State::Asleep,
            window_start: Instant::now(),
            claimed: 0,
            metrics,
        };
        let Some(relay_id) = relay_id.filter(|_| store.wakes_on_demand()) else {
            return wakeups;
        };
        if let Err(error) = store.forget_wishes_of_gone_relays().await {
            tracing::warn!(
                target: "outbox",
                %error,
                "writers notify relays on every commit, busy or not; run the outbox migration \
                 (WakeOnDemandMigration) so that busy relays can ask them not to"
            );
            return wakeups;
        }
        let asked = if listen {
            store.ask_to_be_woken(relay_id).await
        } else {
            store.ask_not_to_be_woken(relay_id).await.map(|()| None)
        };
        match asked {
            Ok(Some(since)) => {
                wakeups.relay_id = Some(relay_id.to_owned());
                wakeups.state = State::Settling(since);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(target: "outbox", %error, "cannot record whether this relay waits to be woken");
            }
        }
        wakeups
    }

    /// How long the relay waits after a batch that was not full, unless woken.
    pub(super) fn pause(&self, poll_interval: Duration) -> Duration {
        match self.state {
            State::Asleep => poll_interval,
            State::Polling | State::Settling(_) => POLL_EVERY.min(poll_interval),
        }
    }

    /// Counts a claim of `events` events; once a window is over, decides how the relay goes on, recording it
    /// in its row. Returns whether the relay should claim again at once: it just went to sleep, and a claim from
    /// now on sees everything the transactions it waited out stored.
    pub(super) async fn claimed(&mut self, store: &Store, events: usize) -> bool {
        let Some(relay_id) = &self.relay_id else {
            return false;
        };
        self.claimed += events as u64;
        if self.window_start.elapsed() < WINDOW {
            return false;
        }
        let claimed = std::mem::replace(&mut self.claimed, 0);
        self.window_start = Instant::now();
        let next = match (&self.state, claimed) {
            (State::Asleep | State::Settling(_), n) if n >= BUSY => {
                match store.ask_not_to_be_woken(relay_id).await {
                    Ok(()) => Some(State::Polling),
                    Err(error) => {
                        tracing::warn!(target: "outbox", %error, "cannot ask writers to stop waking this relay");
                        None
                    }
                }
            }
            (State::Polling, n) if n < QUIET => match store.ask_to_be_woken(relay_id).await {
                Ok(Some(since)) => Some(State::Settling(since)),
                // No row: writers cannot learn the wish, so polling goes on.
                Ok(None) => None,
                Err(error) => {
                    tracing::warn!(target: "outbox", %error, "cannot ask writers to wake this relay again");
                    None
                }
            },
            (State::Settling(since), _) => match store.settled(since).await {
                Ok(true) => Some(State::Asleep),
                Ok(false) => None,
                Err(error) => {
                    tracing::warn!(target: "outbox", %error, "cannot tell whether older transactions ended");
                    None
                }
            },
            _ => None,
        };
        match next {
            Some(state) => {
                tracing::debug!(target: "outbox", from = ?self.state, to = ?state, claimed, "relay wake-ups");
                if self.metrics {
                    metrics::counter!("outbox_relay_wakeup_switches_total", "to" => state.label())
                        .increment(1);
                }
                let asleep = state == State::Asleep;
                self.state = state;
                asleep
            }
            None => false,
        }
    }
}
