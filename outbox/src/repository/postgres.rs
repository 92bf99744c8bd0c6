//! PostgreSQL's claim: a window of the oldest pending rows from where nothing older is pending (see
//! `scan.rs`), then the full statement for the rest, in one transaction under the claim lock.

use sea_orm::{ConnectionTrait, QueryResult, TransactionTrait};

use super::claim::Lease;
use super::{OutboxRepository, Result, scan, sql};

/// The PostgreSQL claim's windows, in multiples of the batch size: the first fits a backlog whose head is this
/// relay's own or free (a relay claims with at most one of its batches in flight by default, two at three in
/// flight), and every row it reads costs: 3x instead of 4x took a claim of 1,000 from 9.3 to 7.8 ms (`EXPLAIN
/// ANALYZE`, medians of 8). The second reaches past the batches other relays hold at the head (4 relays with 2
/// batches in flight each lease 8 batches there).
const WINDOWS: [i64; 2] = [3, 16];

impl OutboxRepository {
    /// PostgreSQL: the window of the oldest pending rows from where nothing older is pending (see
    /// [`sql::CLAIM_POSTGRES_WINDOW`] and `scan.rs`), then the full statement for the rest if the window was full
    /// and fell short; in one transaction under the claim lock.
    pub(super) async fn claim_postgres<C>(
        &self,
        db: &C,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<QueryResult>>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let txn = self.begin(db).await?;
        let timeout = self.inner.config.claim_timeout.as_millis().to_string();
        let locked = self
            .lock(
                &txn,
                sql::LOCK_POSTGRES,
                sql::LOCK_ROW_POSTGRES,
                vec![
                    timeout.as_str().into(),
                    timeout.as_str().into(),
                    timeout.into(),
                ],
            )
            .await?;
        let lease = lease.on_clock(locked.try_get::<i64>("", "now_micros").ok());
        let started = std::time::Instant::now();
        let read_writers = self.inner.scan.wants_writers(started);
        let claim = format!(
            "{} RETURNING {}, {}",
            sql::CLAIM_POSTGRES_WINDOW,
            sql::COLUMNS,
            if read_writers {
                sql::WINDOW_RETURNING_WRITERS
            } else {
                sql::WINDOW_RETURNING
            }
        );
        let from = self.inner.scan.next(started);
        let (now, (mine_from, mine_to)) = (lease.now, lease.owner);
        let mut rows: Vec<QueryResult> = Vec::new();
        let mut observation = None;
        let mut missing = limit;
        // A window that was not full held every pending row from its start: nothing is left beyond it. One that
        // was full but short (its head leased by other relays or retrying) is tried once more, wider, before the
        // full statement, which reads every pending row.
        let mut window_full = true;
        for window in WINDOWS.map(|times| i64::from(limit) * times) {
            if missing == 0 || !window_full {
                break;
            }
            let values = vec![
                now.into(),
                now.into(),
                mine_from.into(),
                mine_to.into(),
                now.into(),
                from.into(),
                window.into(),
                lease.token.0.into(),
                lease.until.into(),
                missing.into(),
            ];
            let claimed = self.query(&txn, "claiming events", &claim, values).await?;
            if let Some(row) = claimed.first() {
                window_full = row
                    .try_get::<i64>("", "window_rows")
                    .is_ok_and(|n| n >= window);
                let start = row.try_get::<i64>("", "window_start");
                let end = row.try_get::<i64>("", "window_end");
                if let (Ok(oldest_pending), Ok(newest)) = (start, end) {
                    observation = Some(scan::Observation {
                        oldest_pending,
                        newest,
                        writers: read_writers.then(|| writers(row)).flatten(),
                    });
                }
            }
            missing = missing.saturating_sub(u32::try_from(claimed.len()).unwrap_or(missing));
            rows.extend(claimed);
        }
        if missing > 0 && window_full {
            self.query(&txn, "planning the claim", sql::FREE_PLANNER, Vec::new())
                .await?;
            let claim = format!("{} RETURNING {}", sql::CLAIM_POSTGRES, sql::COLUMNS);
            let values = vec![
                now.into(),
                mine_from.into(),
                mine_to.into(),
                now.into(),
                lease.token.0.into(),
                lease.until.into(),
                now.into(),
                now.into(),
                missing.into(),
            ];
            rows.extend(self.query(&txn, "claiming events", &claim, values).await?);
        }
        self.commit(txn).await?;
        // Only once committed: a claim rolled back saw nothing that lasts.
        self.inner.scan.saw(started, from, observation);
        Ok(rows)
    }
}

/// The `writers` column of [`sql::WINDOW_RETURNING_WRITERS`]: virtual transaction ids. `None` when it cannot be
/// read, which settles nothing.
fn writers(row: &QueryResult) -> Option<Vec<String>> {
    let list = row.try_get::<Option<String>>("", "writers").ok()?;
    Some(list.map_or_else(Vec::new, |list| {
        list.split(',').map(str::to_owned).collect()
    }))
}

/// Wake-ups from PostgreSQL: LISTEN on the outbox table's channel, which the table's insert trigger NOTIFYs.
/// PostgreSQL delivers a notification when the inserting transaction commits and folds duplicates within one
/// transaction, so a burst of commits costs at most one extra wake per batch. Reconnects by itself; while the
/// connection is down, `wake` is called once so that nothing committed meanwhile waits for the next poll.
#[cfg(feature = "postgres")]
pub(super) fn listen(
    pool: sea_orm::sqlx::PgPool,
    channel: String,
    wake: impl Fn() + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listen_once(&pool, &channel, &wake).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(target: "outbox", %error, "LISTEN connection lost; polling until it is back");
                    wake();
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    })
}

#[cfg(feature = "postgres")]
async fn listen_once(
    pool: &sea_orm::sqlx::PgPool,
    channel: &str,
    wake: &(impl Fn() + Send + Sync),
) -> std::result::Result<(), sea_orm::sqlx::Error> {
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    tracing::debug!(target: "outbox", channel, "listening for new outbox events");
    loop {
        // `try_recv` reports a lost connection as `None` (and reconnects on the next call) instead of hiding it;
        // either way there may be something to publish.
        listener.try_recv().await?;
        wake();
    }
}
