//! The relays at work on a table, as each last reported itself in `<table>_relays`: one row per running relay,
//! written at its start, refreshed by its heartbeat, deleted when it stops cleanly. A row left behind is a relay
//! that stopped without signing off (killed, or cut off from the database); it shows as not alive, and relays
//! starting later delete it once it is a day old.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Value};

use super::{OutboxRepository, Result, micros, now_micros};

/// How long a relay may go without a heartbeat and still count as alive: three missed heartbeats at the
/// default interval.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(15);

/// How long the row of a relay that never signed off is kept, for an operator to see that it went.
const FORGOTTEN_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A relay as it last reported itself: see [`OutboxRepository::relays`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayInfo {
    /// Unique per run of a relay.
    pub relay_id: String,
    /// The name it was given (`RelayBuilder::name`), by default `host:pid`.
    pub name: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When its loop last went round, as of its last heartbeat: a loop that is stuck shows an old heartbeat
    /// even while the process lives.
    pub heartbeat_at: DateTime<Utc>,
    /// Events it has published since it started.
    pub published: u64,
    /// Events it has made dead letters since it started.
    pub dead_lettered: u64,
    /// On PostgreSQL, whether it sleeps until a writer's `NOTIFY` wakes it (`true`), or polls and has asked
    /// writers not to notify (`false`: a relay under load, or one that does not listen). `None` where the
    /// database wakes no relay, or its table predates the column.
    pub wants_notify: Option<bool>,
}

impl RelayInfo {
    /// How long ago its last heartbeat was.
    pub fn since_heartbeat(&self) -> Duration {
        (Utc::now() - self.heartbeat_at)
            .to_std()
            .unwrap_or_default()
    }

    /// Whether it reported within [`ALIVE_WITHIN`].
    pub fn is_alive(&self) -> bool {
        self.since_heartbeat() <= ALIVE_WITHIN
    }

    /// What an operator reads of it: `gone` (no heartbeat within [`ALIVE_WITHIN`]), `alive`, or `alive,
    /// polling` when it has asked writers not to wake it.
    pub fn state(&self) -> &'static str {
        match (self.is_alive(), self.wants_notify) {
            (false, _) => "gone",
            (true, Some(false)) => "alive, polling",
            (true, _) => "alive",
        }
    }
}

/// What a relay reports of itself at each heartbeat.
#[derive(Clone, Debug)]
pub(crate) struct Heartbeat<'a> {
    pub(crate) relay_id: &'a str,
    pub(crate) name: &'a str,
    pub(crate) started_at: i64,
    /// When its loop last went round (Unix microseconds).
    pub(crate) loop_at: i64,
    pub(crate) published: u64,
    pub(crate) dead_lettered: u64,
}

impl OutboxRepository {
    /// The relays that reported on this table, oldest first; those that stopped cleanly are gone, those that did
    /// not stay a day, with [`RelayInfo::is_alive`] false.
    pub async fn relays<C: ConnectionTrait>(&self, db: &C) -> Result<Vec<RelayInfo>> {
        const OPERATION: &str = "reading the relays";
        let backend = db.get_database_backend();
        // Every column, read by name: `wants_notify` is there only on PostgreSQL, once migrated.
        self.query(
            db,
            OPERATION,
            "SELECT * FROM {t}_relays ORDER BY started_at, relay_id",
            Vec::new(),
        )
        .await?
        .iter()
        .map(|row| {
            let time = |column| {
                row.try_get::<i64>("", column)
                    .map(|micros| DateTime::from_timestamp_micros(micros).unwrap_or_default())
            };
            let count = |column| {
                row.try_get::<i64>("", column)
                    .map(|n| u64::try_from(n).unwrap_or(0))
            };
            Ok(RelayInfo {
                relay_id: row.try_get("", "relay_id")?,
                name: row.try_get("", "name")?,
                started_at: time("started_at")?,
                heartbeat_at: time("heartbeat_at")?,
                published: count("published")?,
                dead_lettered: count("dead_lettered")?,
                wants_notify: row.try_get::<bool>("", "wants_notify").ok(),
            })
        })
        .collect::<std::result::Result<_, sea_orm::DbErr>>()
        .map_err(|e| self.db_error(OPERATION, backend, e))
    }

    /// A relay starts: its row, and the rows of relays gone for a day are deleted.
    pub(crate) async fn sign_on<C: ConnectionTrait>(
        &self,
        db: &C,
        beat: &Heartbeat<'_>,
    ) -> Result<()> {
        self.execute(
            db,
            "forgetting relays long gone",
            "DELETE FROM {t}_relays WHERE heartbeat_at < ?",
            vec![(now_micros() - micros(FORGOTTEN_AFTER)).into()],
        )
        .await?;
        self.execute(
            db,
            "recording a relay",
            "INSERT INTO {t}_relays (relay_id, name, started_at, heartbeat_at, published, dead_lettered) \
             VALUES (?, ?, ?, ?, ?, ?)",
            vec![
                beat.relay_id.into(),
                beat.name.into(),
                beat.started_at.into(),
                beat.loop_at.into(),
                count(beat.published),
                count(beat.dead_lettered),
            ],
        )
        .await
        .map(drop)
    }

    /// A relay's heartbeat.
    pub(crate) async fn heartbeat<C: ConnectionTrait>(
        &self,
        db: &C,
        beat: &Heartbeat<'_>,
    ) -> Result<()> {
        self.execute(
            db,
            "recording a relay's heartbeat",
            "UPDATE {t}_relays SET heartbeat_at = ?, published = ?, dead_lettered = ? WHERE relay_id = ?",
            vec![
                beat.loop_at.into(),
                count(beat.published),
                count(beat.dead_lettered),
                beat.relay_id.into(),
            ],
        )
        .await
        .map(drop)
    }

    /// A relay stops cleanly: its row goes.
    pub(crate) async fn sign_off<C: ConnectionTrait>(&self, db: &C, relay_id: &str) -> Result<()> {
        self.execute(
            db,
            "removing a stopped relay",
            "DELETE FROM {t}_relays WHERE relay_id = ?",
            vec![relay_id.into()],
        )
        .await
        .map(drop)
    }
}

fn count(n: u64) -> Value {
    i64::try_from(n).unwrap_or(i64::MAX).into()
}
