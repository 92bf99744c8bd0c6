//! Wake-ups on demand (PostgreSQL): each relay's row in `<table>_relays` says whether it sleeps until a writer
//! wakes it (`wants_notify`), and the table's insert trigger sends `NOTIFY` only while one does. A relay under
//! load polls instead and says so, because a transaction that notifies holds a database-wide lock from its
//! commit until the commit is on disk: writers that notify commit one at a time, however many there are.
//!
//! A writer decides when its insert runs, so one that read "nobody waits" may commit after a relay started to
//! wait. Such a writer's transaction was in progress when the relay's wish became visible; the relay keeps
//! polling until every transaction of that snapshot has ended ([`OutboxRepository::settled`]), so no commit is
//! left for the poll interval. See `docs/design.md`, "Wake-ups".

use std::time::Duration;

use sea_orm::{ConnectionTrait, DbErr, TryGetable, Value};

use super::{Dialect, OutboxRepository, Result, micros, now_micros};

/// The statements of wake-ups on demand, where the database has them.
#[derive(Debug)]
pub(crate) struct WakeSql {
    /// Records the relay's wish: `(wants_notify, relay_id)`.
    pub(crate) want: &'static str,
    /// The current snapshot, as text.
    pub(crate) snapshot: &'static str,
    /// Whether every transaction in progress in the snapshot `?` has ended.
    pub(crate) settled: &'static str,
    /// Withdraws the wish of relays whose last heartbeat is older than `?`: a killed relay's row must not make
    /// writers notify for the day it is kept.
    pub(crate) forget: &'static str,
}

/// A snapshot taken after a relay asked to be woken: the transactions in progress in it may have decided not to
/// notify. Opaque outside the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Since(String);

/// How old a relay's heartbeat may be before its wish is withdrawn: four missed heartbeats at the default
/// interval, and room for clocks that disagree.
const WISH_KEPT_FOR: Duration = Duration::from_secs(60);

impl OutboxRepository {
    /// Whether this table's database wakes relays on demand.
    pub(crate) fn wakes_on_demand(&self, db: &impl ConnectionTrait) -> bool {
        Dialect::of(db).wake.is_some()
    }

    /// Records that the relay `relay_id` sleeps until woken, and returns the snapshot to wait out before it
    /// sleeps ([`settled`](Self::settled)); `Ok(None)` when the relay has no row (it was not recorded, so writers
    /// cannot know its wish) or the database has no wake-ups on demand.
    pub(crate) async fn ask_to_be_woken<C: ConnectionTrait>(
        &self,
        db: &C,
        relay_id: &str,
    ) -> Result<Option<Since>> {
        let Some(sql) = Dialect::of(db).wake else {
            return Ok(None);
        };
        if !self.want_notify(db, relay_id, true).await? {
            return Ok(None);
        }
        // Taken after the wish committed: every writer that read the old wish is in progress in it or done.
        let snapshot = self
            .value(db, "reading the snapshot", sql.snapshot, Vec::new())
            .await?;
        Ok(Some(Since(snapshot)))
    }

    /// Records that the relay `relay_id` polls and needs no notification.
    pub(crate) async fn ask_not_to_be_woken<C: ConnectionTrait>(
        &self,
        db: &C,
        relay_id: &str,
    ) -> Result<()> {
        self.want_notify(db, relay_id, false).await.map(drop)
    }

    /// Records the relay's wish; whether it has a row to record it in.
    async fn want_notify<C: ConnectionTrait>(
        &self,
        db: &C,
        relay_id: &str,
        wants: bool,
    ) -> Result<bool> {
        let Some(sql) = Dialect::of(db).wake else {
            return Ok(false);
        };
        let recorded = self
            .execute(
                db,
                "recording whether a relay waits to be woken",
                sql.want,
                vec![wants.into(), relay_id.into()],
            )
            .await?;
        Ok(recorded > 0)
    }

    /// Whether every transaction in progress at `since` has ended, so that a claim from now on sees all they
    /// stored.
    pub(crate) async fn settled<C: ConnectionTrait>(&self, db: &C, since: &Since) -> Result<bool> {
        let Some(sql) = Dialect::of(db).wake else {
            return Ok(true);
        };
        self.value(
            db,
            "asking whether older transactions ended",
            sql.settled,
            vec![since.0.clone().into()],
        )
        .await
    }

    /// The one value a query answers; a missing row or a value of another type is an error that names the
    /// operation, not a default that would keep a relay polling without saying why.
    async fn value<C: ConnectionTrait, T: TryGetable>(
        &self,
        db: &C,
        operation: &'static str,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<T> {
        let rows = self.query(db, operation, sql, values).await?;
        rows.first()
            .ok_or_else(|| DbErr::RecordNotFound(format!("{sql}: no row")))
            .and_then(|row| row.try_get_by_index::<T>(0))
            .map_err(|e| self.db_error(operation, db.get_database_backend(), e))
    }

    /// Withdraws the wish of relays that stopped reporting (see [`WakeSql::forget`]).
    pub(crate) async fn forget_wishes_of_gone_relays<C: ConnectionTrait>(
        &self,
        db: &C,
    ) -> Result<()> {
        let Some(sql) = Dialect::of(db).wake else {
            return Ok(());
        };
        self.execute(
            db,
            "withdrawing the wake-up wishes of relays gone",
            sql.forget,
            vec![(now_micros() - micros(WISH_KEPT_FOR)).into()],
        )
        .await
        .map(drop)
    }
}
