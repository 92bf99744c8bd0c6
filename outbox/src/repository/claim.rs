//! Claiming: leasing a batch of events under the claim lock, each backend its own way, and decoding them.

use sea_orm::{ConnectionTrait, QueryResult, TransactionTrait, Value};

use super::{
    ClaimToken, Failure, LeaseOwner, OutboxRepository, RepositoryError, Result, StoredEvent,
    micros, now_micros, row,
};
use crate::envelope::EventEnvelope;
use crate::event::DynEvent;

/// Events claimed for publishing: leased to this claim until the lease expires.
#[derive(Debug)]
#[must_use = "claimed events are leased: publish and mark them, or release them"]
#[non_exhaustive]
pub struct Claim {
    /// The fence to pass to `mark_published`, `mark_failed` and `release`.
    pub token: ClaimToken,
    /// Decoded events, in write order. Events of one aggregate are consecutive in that order and must be
    /// published one after the other.
    pub events: Vec<ClaimedEvent>,
    /// Rows that could not be decoded (unknown type or version, JSON that no longer fits): already dead letters.
    pub dead_lettered: Vec<DeadLettered>,
}

/// Rows a claim leased, in write order, not decoded yet (see `OutboxRepository::lease_as`).
pub(crate) struct Leased {
    pub(crate) token: ClaimToken,
    pub(crate) rows: Vec<LeasedRow>,
    /// Whether more may be waiting though the batch is not full: under a cursor, other partitions were not read.
    pub(crate) more: bool,
    /// Under a cursor, whether partitions of this relay's were out in batches in flight, so not read: events may
    /// wait there, and the next claim should come as soon as a batch is settled rather than after an idle wait.
    pub(crate) busy: bool,
}

/// One leased row: its id and aggregate, read at once for the ordering, and the row to decode later.
pub(crate) struct LeasedRow {
    pub(crate) id: i64,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    /// Whether the aggregate could be read (else it is empty here, and decoding dead-letters the row).
    keyed: bool,
    row: QueryResult,
}

impl LeasedRow {
    /// A row read with [`sql::COLUMNS`](super::sql::COLUMNS) first, keyed by its id and aggregate.
    pub(crate) fn new(row: QueryResult) -> Self {
        let (id, aggregate) = row::lease_key(&row);
        let keyed = aggregate.is_some();
        let (aggregate_type, aggregate_id) = aggregate.unwrap_or_default();
        Self {
            id,
            aggregate_type,
            aggregate_id,
            keyed,
            row,
        }
    }
}

/// A claimed, decoded event.
#[derive(Debug)]
#[non_exhaustive]
pub struct ClaimedEvent {
    /// Row id.
    pub id: i64,
    /// Failed attempts before this claim.
    pub attempts: u32,
    /// Aggregate type (with the id, the ordering key).
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// The event with its recorded metadata; `to_message()` renders what to publish.
    pub envelope: EventEnvelope<Box<dyn DynEvent>>,
}

/// A row the claim turned into a dead letter because it could not be decoded.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLettered {
    /// Row id.
    pub id: i64,
    /// Event type of the row.
    pub event_type: String,
    /// Why it could not be decoded.
    pub reason: String,
}

impl OutboxRepository {
    /// Claims up to `limit` events for publishing, leased for [`OutboxConfig::lease_duration`](crate::OutboxConfig::lease_duration).
    ///
    /// Safe with any number of relays at once: claims are serialized per table (a row lock on PostgreSQL and
    /// MySQL, SQLite's single writer), and an event is only handed out when every earlier pending event of its
    /// aggregate is handed out with it or already done. Rows that cannot be decoded become dead letters here,
    /// with the reason, and are reported in [`Claim::dead_lettered`]; the other events are not held up.
    ///
    /// The rows design's (`OUTBOX_DELIVERY=rows`, the default): under the cursor it is refused with
    /// [`RepositoryError::RowsDesignOnly`](super::RepositoryError::RowsDesignOnly), as are
    /// [`mark_event_published`](Self::mark_event_published) and [`mark_event_failed`](Self::mark_event_failed);
    /// on a table the cursor delivers, whatever this repository is set to, with
    /// [`RepositoryError::DeliveredByCursor`](super::RepositoryError::DeliveredByCursor) (one look at the
    /// catalog and the cursor table per call).
    pub async fn claim<C>(&self, db: &C, limit: u32) -> Result<Claim>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        self.claim_as(db, &LeaseOwner::new(), limit).await
    }

    /// [`claim`](Self::claim) on behalf of `owner`, which may then also receive the events queued behind its own
    /// unexpired leases: see [`LeaseOwner`] for the promise that comes with them.
    pub async fn claim_as<C>(&self, db: &C, owner: &LeaseOwner, limit: u32) -> Result<Claim>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        self.rows_design_only("claim")?;
        self.refuse_cursor_table(db).await?;
        let leased = self.lease_as(db, owner, limit).await?;
        self.decode_leased(db, leased).await
    }

    /// The first half of [`claim_as`](Self::claim_as): leases the rows and reads their ids and aggregates, leaving
    /// the events undecoded. The relay decodes them with [`decode_leased`](Self::decode_leased) while its next
    /// claim runs, so that decoding is off the path that claims follow one another on.
    pub(crate) async fn lease_as<C>(&self, db: &C, owner: &LeaseOwner, limit: u32) -> Result<Leased>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let now = now_micros();
        let lease = Lease {
            token: owner.next_token(),
            owner: owner.tokens(),
            now,
            until: now + micros(self.inner.config.lease_duration),
        };
        let rows = self.claim_rows(db, &lease, limit).await?;
        let mut rows: Vec<LeasedRow> = rows.into_iter().map(LeasedRow::new).collect();
        rows.sort_by_key(|row| row.id);
        Ok(Leased {
            token: lease.token,
            rows,
            more: false,
            busy: false,
        })
    }

    /// The second half of [`claim_as`](Self::claim_as): decodes leased rows and makes the rows that cannot be
    /// decoded dead letters.
    pub(crate) async fn decode_leased<C: ConnectionTrait>(
        &self,
        db: &C,
        leased: Leased,
    ) -> Result<Claim> {
        let claim = self.decode(leased).await;
        if !claim.dead_lettered.is_empty() {
            log_undecodable(&claim.dead_lettered);
            let failures: Vec<Failure> = claim
                .dead_lettered
                .iter()
                .map(Failure::undecodable)
                .collect();
            self.mark_failed(db, claim.token, &failures).await?;
        }
        Ok(claim)
    }

    /// Decodes leased rows into events, in write order, and sets aside the rows that cannot be decoded (unknown
    /// type or version, JSON that no longer fits the struct) with the reason, in
    /// [`Claim::dead_lettered`]. Writes nothing: what becomes of those rows is the caller's to decide (the relay
    /// marks them dead letters with the rest of the batch's outcome).
    pub(crate) async fn decode(&self, leased: Leased) -> Claim {
        let Leased { token, rows, .. } = leased;
        let mut claim = Claim {
            token,
            events: Vec::with_capacity(rows.len()),
            dead_lettered: Vec::new(),
        };
        for row in rows {
            // Decoding a batch takes milliseconds: yield to the runtime's other tasks (the relay's next claim, the
            // service) when tokio's budget says so.
            tokio::task::consume_budget().await;
            match self.decode_claimed(row) {
                Ok(event) => claim.events.push(event),
                Err(dead) => claim.dead_lettered.push(dead),
            }
        }
        claim
    }

    /// Takes the claim lock with `lock`, putting the lock row back with `recreate` first if it was deleted (an
    /// empty lock table would silently stop serializing the claims). Returns the lock statement's row.
    pub(super) async fn lock<C: ConnectionTrait>(
        &self,
        txn: &C,
        lock: &str,
        recreate: &str,
        values: Vec<Value>,
    ) -> Result<QueryResult> {
        for attempt in 0..2 {
            let row = self
                .query(txn, "taking the claim lock", lock, values.clone())
                .await?
                .into_iter()
                .next();
            match row {
                Some(row) => return Ok(row),
                None if attempt == 0 => {
                    tracing::warn!(
                        target: "outbox",
                        table = %self.inner.table.as_str(),
                        "the claim lock row was missing: recreating it"
                    );
                    self.execute(txn, "recreating the claim lock row", recreate, Vec::new())
                        .await?;
                }
                None => {}
            }
        }
        Err(RepositoryError::MissingLockRow(
            self.inner.table.as_str().to_owned(),
        ))
    }

    fn decode_claimed(&self, leased: LeasedRow) -> std::result::Result<ClaimedEvent, DeadLettered> {
        let LeasedRow {
            id,
            aggregate_type,
            aggregate_id,
            keyed,
            row,
        } = leased;
        let stored =
            StoredEvent::from_row_with(&row, keyed.then_some((aggregate_type, aggregate_id)))
                .map_err(|e| DeadLettered {
                    id,
                    event_type: row.try_get_by_index::<String>(2).unwrap_or_default(),
                    reason: format!("unreadable row: {e}"),
                })?;
        match stored.decode_with(self.inner.registry) {
            Ok(envelope) => Ok(ClaimedEvent {
                id: stored.id,
                attempts: stored.attempts,
                aggregate_type: stored.aggregate_type,
                aggregate_id: stored.aggregate_id,
                envelope,
            }),
            Err(error) => Err(DeadLettered {
                id: stored.id,
                event_type: stored.event_type,
                reason: error.to_string(),
            }),
        }
    }
}

/// Logs each row that no longer decodes, as it becomes a dead letter.
pub(crate) fn log_undecodable(dead: &[DeadLettered]) {
    for row in dead {
        tracing::error!(
            target: "outbox.dead_letter",
            id = row.id,
            event_type = %row.event_type,
            reason = %row.reason,
            "undecodable event moved to the dead letters"
        );
    }
}

/// One claim's lease: its token, its owner's token range, the time it is judged at and when it expires.
#[derive(Clone, Copy)]
pub(super) struct Lease {
    pub(super) token: ClaimToken,
    pub(super) owner: (i64, i64),
    pub(super) now: i64,
    pub(super) until: i64,
}

impl Lease {
    /// The same lease judged at `now` on the database's clock, so that relays on hosts whose clocks disagree
    /// agree on when a lease ends. `None` (the clock could not be read) keeps the relay's own.
    pub(super) fn on_clock(self, now: Option<i64>) -> Self {
        match now {
            Some(now) => Self {
                until: now + (self.until - self.now),
                now,
                ..self
            },
            None => self,
        }
    }

    /// The values of [`sql::CLAIMABLE`](super::sql::CLAIMABLE).
    pub(super) fn claimable_values(&self, limit: u32) -> Vec<Value> {
        let (now, (mine_from, mine_to)) = (self.now, self.owner);
        vec![
            now.into(),
            now.into(),
            now.into(),
            mine_from.into(),
            mine_to.into(),
            now.into(),
            limit.into(),
        ]
    }
}
