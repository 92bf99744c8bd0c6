//! Owning partitions: the table prepared once, events without a place adopted, partitions shared between the
//! live relays, taken over when their lease ran out, and given back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;

use super::sql::{MINE, OWNERS, PARTITIONS, RELAYS, RELEASE};
use super::{ADOPT_EVERY, CHUNK, CursorSql, Cursors, Owned, Position, count, get, get_at, no_row};
use crate::repository::{
    Dialect, OutboxRepository, RepositoryError, Result, micros, now_micros, partition_of,
};

impl Cursors {
    /// Prepares the table once (see [`prepare`](Self::prepare)); a relay calls it before it starts, so that a
    /// partition count that disagrees with the table's stops it there.
    pub(crate) async fn ready(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
    ) -> Result<()> {
        if self.state().prepared {
            return Ok(());
        }
        if Dialect::of(db).cursor.sequenced {
            repo.check_sequenced(db).await?;
        }
        self.prepare(db, repo, Dialect::of(db).cursor).await?;
        let mut state = self.state();
        state.prepared = true;
        state.next_adoption = Some(Instant::now() + ADOPT_EVERY);
        Ok(())
    }

    /// Once per relay, before its first batch: adopts the pending events stored without a place in commit order
    /// (see [`adopt`](Self::adopt)), then creates the cursor rows, each starting below its partition's oldest
    /// pending event, and checks they were made for as many partitions as configured.
    async fn prepare(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
        sql: &CursorSql,
    ) -> Result<()> {
        let partitions = repo.inner.config.partitions;
        let txn = repo.begin(db).await?;
        if let Some(lock) = sql.first_start_lock {
            repo.query(
                &txn,
                "waiting for other relays' first start",
                lock,
                Vec::new(),
            )
            .await?;
        }
        self.adopt(&txn, repo, sql).await?;
        // The cursors are made in the adoption's transaction where the first start is serialized; elsewhere in one
        // of their own, as an SQLite transaction that read before it writes fails when another relay wrote
        // meanwhile. Never in autocommit: on MySQL an INSERT ... SELECT runs there under REPEATABLE READ and locks
        // the rows it reads, so it waited for every writer holding a partition's counter.
        let txn = match sql.first_start_lock {
            Some(_) => txn,
            None => {
                repo.commit(txn).await?;
                repo.begin(db).await?
            }
        };
        let count = i32::from(partitions);
        repo.execute(
            &txn,
            "creating the cursors",
            &sql.statement(sql.create, partitions),
            vec![count.into(), count.into()],
        )
        .await?;
        repo.commit(txn).await?;
        repo.execute(db, "analyzing the cursors", sql.analyze, Vec::new())
            .await?;
        let rows = repo
            .query(db, "counting the cursors", PARTITIONS, Vec::new())
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| no_row(repo, "counting the cursors", "no answer"))?;
        let n: i64 = get(repo, row, "n")?;
        let low: Option<i16> = get(repo, row, "low")?;
        let high: Option<i16> = get(repo, row, "high")?;
        let expected = i16::try_from(partitions).unwrap_or(i16::MAX);
        if n != i64::from(partitions) || low != Some(expected) || high != Some(expected) {
            return Err(RepositoryError::PartitionMismatch {
                table: repo.table().to_owned(),
                configured: partitions,
                stored: high.map_or(0, |p| u16::try_from(p).unwrap_or_default()),
            });
        }
        Ok(())
    }

    /// Gives the pending events stored without a partition or a place in commit order (before the upgrade, by a
    /// writer of an older version, or on MySQL by one not set to the cursor) both, in one transaction of this
    /// relay's (`txn`) and in id order, so they are delivered together in the next window. Returns how many.
    async fn adopt<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        repo: &OutboxRepository,
        sql: &CursorSql,
    ) -> Result<u64> {
        let partitions = repo.inner.config.partitions;
        let legacy_sql = sql.statement(sql.legacy, partitions);
        let mut adopted = 0;
        loop {
            let legacy = repo
                .query(
                    txn,
                    "finding events to adopt",
                    &legacy_sql,
                    vec![i64::from(CHUNK).into()],
                )
                .await?;
            if legacy.is_empty() {
                break;
            }
            let (mut ids, mut parts) = (Vec::new(), Vec::new());
            for row in &legacy {
                let id: i64 = get_at(repo, row, 0)?;
                let aggregate_type: String = get_at(repo, row, 1)?;
                let aggregate_id: String = get_at(repo, row, 2)?;
                ids.push(id);
                parts.push(partition_of(&aggregate_type, &aggregate_id, partitions));
            }
            let mut values = vec![sql.array(&ids), sql.array(&parts)];
            if sql.sequenced {
                let parts: Vec<i16> = parts
                    .iter()
                    .map(|p| i16::try_from(*p).unwrap_or_default())
                    .collect();
                values.push(sql.array(&repo.sequence(txn, &parts).await?));
            }
            adopted += repo
                .execute(txn, "adopting events", sql.adopt, values)
                .await?;
            if legacy.len() < CHUNK as usize {
                break;
            }
        }
        if adopted > 0 {
            tracing::info!(
                target: "outbox",
                table = repo.table(),
                events = adopted,
                "adopted pending events stored without a place in commit order"
            );
        }
        Ok(adopted)
    }

    /// Renews this relay's leases, drops the partitions it lost, and takes or gives back partitions until it holds
    /// its share: the partition count over the live relays, rounded up.
    pub(super) async fn refresh(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
        sql: &CursorSql,
    ) -> Result<()> {
        let config = &repo.inner.config;
        let due = self
            .state()
            .next_refresh
            .is_none_or(|at| Instant::now() >= at);
        if !due {
            return Ok(());
        }
        if sql.adopts_late
            && self
                .state()
                .next_adoption
                .is_none_or(|at| Instant::now() >= at)
        {
            let txn = repo.begin(db).await?;
            self.adopt(&txn, repo, sql).await?;
            repo.commit(txn).await?;
            self.state().next_adoption = Some(Instant::now() + ADOPT_EVERY);
        }
        let lease = micros(config.lease_duration);
        repo.execute(
            db,
            "renewing partition leases",
            sql.renew,
            vec![lease.into(), self.owner.clone().into()],
        )
        .await?;
        self.read_mine(db, repo).await?;
        let others = count(
            repo,
            db,
            "counting relays",
            &sql.shared(OWNERS),
            vec![self.owner.clone().into()],
        )
        .await?;
        // Relays that signed on but hold nothing yet count too, so the others make room for them.
        let alive_since = now_micros() - micros(crate::repository::ALIVE_WITHIN);
        let signed_on = count(
            repo,
            db,
            "counting relays",
            RELAYS,
            vec![alive_since.into()],
        )
        .await
        .unwrap_or(0);
        let relays = (others + 1).max(signed_on).max(1);
        let partitions = u64::from(config.partitions);
        let share = usize::try_from(partitions.div_ceil(relays)).unwrap_or(usize::MAX);
        let owned = self.state().owned.len();
        if owned < share {
            repo.execute(
                db,
                "taking partitions",
                sql.acquire,
                vec![
                    self.owner.clone().into(),
                    lease.into(),
                    i64::try_from(share - owned).unwrap_or(i64::MAX).into(),
                ],
            )
            .await?;
            self.read_mine(db, repo).await?;
        } else if owned > share {
            let extra: Vec<(i16, i64)> = {
                let state = self.state();
                state
                    .owned
                    .iter()
                    .rev()
                    .filter(|(_, o)| !o.busy)
                    .take(owned - share)
                    .map(|(p, o)| (*p, o.epoch))
                    .collect()
            };
            for (partition, epoch) in extra {
                self.give_back(db, repo, partition, epoch).await?;
            }
        }
        let every =
            (config.lease_duration / 10).clamp(Duration::from_millis(100), Duration::from_secs(3));
        self.state().next_refresh = Some(Instant::now() + every);
        Ok(())
    }

    /// Holds what the cursor table says this relay holds: drops the partitions taken over (or taken over and
    /// back, under a new epoch) and takes in those it just acquired, whose parked events are looked for first.
    async fn read_mine(&self, db: &DatabaseConnection, repo: &OutboxRepository) -> Result<()> {
        let rows = repo
            .query(
                db,
                "reading this relay's partitions",
                MINE,
                vec![self.owner.clone().into()],
            )
            .await?;
        let mut held = HashMap::new();
        for row in rows {
            let at = Position {
                snap_from: get(repo, &row, "snap_from")?,
                snap_to: get(repo, &row, "snap_to")?,
                after_id: get(repo, &row, "after_id")?,
            };
            held.insert(
                get::<i16>(repo, &row, "partition_no")?,
                (get::<i64>(repo, &row, "epoch")?, at),
            );
        }
        let mut state = self.state();
        state.owned.retain(|partition, owned| {
            let kept = held
                .get(partition)
                .is_some_and(|(epoch, _)| *epoch == owned.epoch);
            if !kept {
                tracing::warn!(target: "outbox", partition, "partition taken over by another relay");
            }
            kept
        });
        for (partition, (epoch, at)) in held {
            if state.owned.contains_key(&partition) {
                continue;
            }
            tracing::info!(target: "outbox", partition, epoch, "partition taken");
            state.owned.insert(
                partition,
                Owned {
                    epoch,
                    at,
                    window_end: None,
                    busy: false,
                },
            );
        }
        Ok(())
    }

    /// Gives one partition back, with the cursor where its last batch left it.
    async fn give_back(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
        partition: i16,
        epoch: i64,
    ) -> Result<()> {
        self.state().owned.remove(&partition);
        repo.execute(
            db,
            "giving a partition back",
            RELEASE,
            vec![partition.into(), self.owner.clone().into(), epoch.into()],
        )
        .await?;
        tracing::info!(target: "outbox", partition, "partition given back");
        Ok(())
    }

    /// Gives every partition back (a clean stop, once the batches in flight are settled).
    pub(crate) async fn hand_over(
        &self,
        db: &DatabaseConnection,
        repo: &OutboxRepository,
    ) -> Result<()> {
        let owned: Vec<(i16, i64)> = self
            .state()
            .owned
            .iter()
            .map(|(p, o)| (*p, o.epoch))
            .collect();
        for (partition, epoch) in owned {
            self.give_back(db, repo, partition, epoch).await?;
        }
        Ok(())
    }
}
