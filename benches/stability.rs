//! Stability: the sustained load (100-event transactions, one relay, batch 1000) with and without an idle
//! transaction held open on another connection for the whole run. A transaction that has taken a transaction
//! id pins the xmin horizon: no row version that died after it began can be vacuumed, so the dead versions
//! left by every claim and mark pile up in the table and its indexes. Throughput is reported per time slice;
//! it should not decay by more than 10% from the first slice to the last. The publisher is the in-memory one
//! (emptied after every slice), so that what is measured is the database, not a broker.
//!
//! The offered rate (`BENCH_STABILITY_RATE`, default 10,000 events/s) is about half of what one relay drains,
//! so the relay keeps up at the start and a decay shows as publishing falling behind writing. Offered above the
//! relay's capacity, the growing backlog would slow the claim by itself (its statistics go stale, see
//! BENCHMARKS.md) and mix that effect with the one measured here.

use std::sync::Arc;
use std::time::Duration;

use outbox::publisher::InMemoryPublisher;
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};

use crate::load::{Load, Record};
use crate::report::Table;
use crate::service::InService;
use crate::sustained::{SLICES, config};
use crate::{Result, Settings};

pub async fn run(db: &DatabaseConnection, settings: &Settings) -> Result<Table> {
    let duration = settings.seconds.unwrap_or(Duration::from_secs(60));
    let rate = settings.stability_rate;
    let slice = duration / SLICES;
    let mut table = Table {
        header: vec![
            "idle transaction",
            "offered events/s",
            "written events/s",
            "published events/s per slice",
            "last slice vs first",
            "backlog at end",
            "n_dead_tup start → end (autovacuums)",
        ],
        rows: Vec::new(),
    };
    // `BENCH_PINNED_ONLY=1`: only the run with the idle transaction (for a long run, the one that matters).
    let pinned_only = crate::env::<u8>("BENCH_PINNED_ONLY")?.is_some_and(|v| v > 0);
    for idle in [false, true] {
        if pinned_only && !idle {
            continue;
        }
        let broker = InMemoryPublisher::new();
        let service = InService::start(db, config(), true, Arc::new(broker.clone())).await?;
        let table_name = service.outbox.table().to_owned();
        let before = dead_tuples(db, &table_name).await?;
        let pin = if idle {
            let txn = db.begin().await?;
            txn.execute_unprepared("SELECT txid_current()").await?;
            Some(txn)
        } else {
            None
        };
        let load = Load {
            rate,
            txn_size: 100,
            writers: 4,
        };
        let (samples, _) = load
            .sampled(db, &service.outbox, duration, SLICES, Record::None, || {
                broker.clear()
            })
            .await?;
        let after = dead_tuples(db, &table_name).await?;
        if let Some(txn) = pin {
            txn.rollback().await?;
        }
        service.stop(db).await?;
        let published: Vec<f64> = samples
            .windows(2)
            .map(|w| w[1].published_rate(&w[0]))
            .collect();
        let (first, last) = (published[0], published[published.len() - 1]);
        let (start, end) = (&samples[0], &samples[samples.len() - 1]);
        table.rows.push(vec![
            format!(
                "{}, {} s slices",
                if idle { "held open" } else { "none" },
                (slice.as_secs_f64() * 10.0).round() / 10.0
            ),
            format!("{rate:.0}"),
            format!("{:.0}", end.written_rate(start)),
            published
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            format!("{:+.0}%", (last / first - 1.0) * 100.0),
            end.pending.to_string(),
            format!("{} → {} ({})", before.0, after.0, after.1 - before.1),
        ]);
    }
    Ok(table)
}

/// `n_dead_tup` and `autovacuum_count` of `table` from `pg_stat_user_tables` (statistics are flushed by each
/// backend within about a second, so this lags slightly).
async fn dead_tuples(db: &DatabaseConnection, table: &str) -> Result<(i64, i64)> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT n_dead_tup, autovacuum_count FROM pg_stat_user_tables WHERE relname = '{table}'"
            ),
        ))
        .await?
        .ok_or_else(|| format!("{table} is not in pg_stat_user_tables"))?;
    Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?))
}
