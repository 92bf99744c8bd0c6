//! The relay's row in `<table>_relays`, for operators (`outbox status`, the ops dashboard): written when it
//! starts, refreshed at every heartbeat with when its loop last went round and what it has done, deleted when it
//! stops cleanly.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::Utc;

use super::Relay;
use crate::repository::Heartbeat;

/// The relay's row while it runs; see [`Relay::sign_on`].
pub(super) struct Presence {
    relay: Arc<Relay>,
    relay_id: String,
    beats: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Records this relay in `<table>_relays` and keeps the row fresh every `heartbeat_interval` until the
    /// returned presence is dropped or signed off. A table without the relays table (a schema older than it)
    /// still gets its events delivered: the relay says once what is missing and carries on unrecorded.
    pub(super) async fn sign_on(self: &Arc<Self>) -> Option<Presence> {
        let relay_id = uuid::Uuid::new_v4().to_string();
        let started_at = Utc::now().timestamp_micros();
        if let Err(error) = self
            .store
            .sign_on(&self.heartbeat(&relay_id, started_at))
            .await
        {
            tracing::warn!(
                target: "outbox",
                %error,
                "this relay is not recorded for operators (outbox status, the ops dashboard); run the outbox \
                 migration to create the relays table"
            );
            return None;
        }
        let relay = self.clone();
        let id = relay_id.clone();
        let beats = tokio::spawn(async move {
            let mut every = tokio::time::interval(relay.heartbeat_interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let beat = relay.heartbeat(&id, started_at);
                if let Err(error) = relay.store.heartbeat(&beat).await {
                    tracing::warn!(target: "outbox", %error, "cannot record the relay's heartbeat");
                }
                // A relay killed while it waited to be woken would keep writers notifying (see `wake.rs`).
                if let Err(error) = relay.store.forget_wishes_of_gone_relays().await {
                    tracing::debug!(target: "outbox", %error, "cannot withdraw the wake-up wishes of relays gone");
                }
            }
        });
        Some(Presence {
            relay: self.clone(),
            relay_id,
            beats,
        })
    }
}

impl Relay {
    fn heartbeat<'a>(&'a self, relay_id: &'a str, started_at: i64) -> Heartbeat<'a> {
        let shared = &self.handle.shared;
        Heartbeat {
            relay_id,
            name: &self.name,
            started_at,
            loop_at: self.handle.last_beat_micros(),
            published: shared.published.load(Ordering::Relaxed),
            dead_lettered: shared.dead_lettered.load(Ordering::Relaxed),
        }
    }
}

impl Presence {
    /// The relay's id in its row.
    pub(super) fn relay_id(&self) -> &str {
        &self.relay_id
    }

    /// The relay stopped cleanly: its row goes.
    pub(super) async fn sign_off(self) {
        self.beats.abort();
        if let Err(error) = self.relay.store.sign_off(&self.relay_id).await {
            tracing::warn!(target: "outbox", %error, "cannot remove the stopped relay's row");
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.beats.abort();
    }
}
