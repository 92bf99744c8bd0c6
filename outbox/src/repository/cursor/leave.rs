//! Going back from the commit-order cursor to the rows design, in place: the events the cursors passed become
//! published rows, the rest stay pending, and the cursors go.

use chrono::Utc;
use sea_orm::{TransactionSession, TransactionTrait};

use super::count;
use crate::repository::{Dialect, OutboxRepository, RepositoryError, Result, sql};

impl OutboxRepository {
    /// Hands a table the commit-order cursor delivered back to the rows design (`OUTBOX_DELIVERY=rows`): every
    /// event a cursor passed is marked published, parked and later events stay pending (the rows design retries
    /// the parked ones with a fresh budget), dead letters stay dead letters, and the cursor and parked rows are
    /// deleted. Returns how many events were marked published. Run it with every cursor relay stopped, then
    /// start relays set to `rows`; until then a `rows` relay refuses the table
    /// ([`RepositoryError::DeliveredByCursor`]).
    ///
    /// One transaction, so a failure changes nothing. Refused while a relay still holds a partition
    /// ([`RepositoryError::CursorsInUse`]): a stopped relay gives its partitions back, a killed one holds them
    /// until its lease ends.
    ///
    /// ```no_run
    /// # async fn f(db: outbox::sea_orm::DatabaseConnection) -> Result<(), outbox::repository::RepositoryError> {
    /// let outbox = outbox::repository::OutboxRepository::new();
    /// let marked = outbox.return_to_rows(&db).await?;
    /// # Ok(()) }
    /// ```
    pub async fn return_to_rows<C>(&self, db: &C) -> Result<u64>
    where
        C: sea_orm::ConnectionTrait + TransactionTrait,
    {
        const OPERATION: &str = "returning the table to the rows design";
        let backend = db.get_database_backend();
        let txn = self.begin(db).await?;
        let dialect = Dialect::of(db);
        let cursor = dialect.cursor;
        let held = count(
            self,
            &txn,
            OPERATION,
            &cursor.shared(
                "SELECT COUNT(*) FROM {t}_cursors WHERE owner IS NOT NULL AND lease_until >= {now}",
            ),
            Vec::new(),
        )
        .await?;
        if held > 0 {
            return Err(RepositoryError::CursorsInUse {
                table: self.table().to_owned(),
                partitions: held,
            });
        }
        // In chunks of ids, so that each statement stays within every backend's limits; MySQL cannot update a
        // table from a subquery of the same table.
        let passed = format!(
            "SELECT o.id FROM {{t}}_cursors c JOIN {{t}} o ON o.partition_no = c.partition_no \
               AND o.status = {pending} AND NOT ({ahead}) \
             WHERE NOT EXISTS (SELECT 1 FROM {{t}}_parked p WHERE p.id = o.id) LIMIT {chunk}",
            pending = sql::PENDING,
            ahead = cursor.ahead,
            chunk = sql::CHUNK,
        );
        let now = Utc::now();
        let mut marked = 0;
        loop {
            let rows = self.query(&txn, OPERATION, &passed, Vec::new()).await?;
            let ids = rows
                .iter()
                .map(|row| row.try_get_by_index::<i64>(0))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| self.db_error(OPERATION, backend, e))?;
            if ids.is_empty() {
                break;
            }
            let (within, mut values) = dialect.id_in(&ids);
            values.insert(0, now.into());
            let mark = format!(
                "UPDATE {{t}} SET status = {}, published_at = ? WHERE status = {} AND {within}",
                sql::PUBLISHED,
                sql::PENDING
            );
            marked += self.execute(&txn, OPERATION, &mark, values).await?;
        }
        for statement in ["DELETE FROM {t}_parked", "DELETE FROM {t}_cursors"] {
            self.execute(&txn, OPERATION, statement, Vec::new()).await?;
        }
        txn.commit()
            .await
            .map_err(|e| self.db_error(OPERATION, backend, e))?;
        tracing::info!(
            target: "outbox",
            table = self.table(),
            marked,
            "returned the table to the rows design"
        );
        Ok(marked)
    }
}
