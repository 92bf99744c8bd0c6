//! SQLite's claim: one `UPDATE ... RETURNING`, atomic under its single writer.

use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::claim::Lease;
use super::{OutboxRepository, Result, sql};

impl OutboxRepository {
    /// SQLite: one UPDATE ... RETURNING, atomic under its single writer.
    pub(super) async fn claim_sqlite<C: ConnectionTrait>(
        &self,
        db: &C,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<QueryResult>> {
        let update = format!(
            "UPDATE {{t}} SET claim_token = ?, locked_until = ? WHERE status = {} AND id IN (SELECT o.id {}) \
             RETURNING {}",
            sql::PENDING,
            sql::CLAIMABLE,
            sql::COLUMNS
        );
        let mut values: Vec<Value> = vec![lease.token.0.into(), lease.until.into()];
        values.extend(lease.claimable_values(limit));
        self.query(db, "claiming events", &update, values).await
    }
}
