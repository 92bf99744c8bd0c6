//! What can go wrong in the repository, each error saying what to do about it.

use sea_orm::DbErr;

use crate::envelope::EncodeError;

/// An error from the outbox repository.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError {
    /// The outbox table does not exist in the database the repository was given.
    #[error(
        "the outbox table `{table}` does not exist: run the outbox migration first \
         (`outbox::migration::OutboxMigrator::up(&db, None)`, `outbox::migration::create_table`, or the SQL in \
         outbox/sql/{backend}.sql)"
    )]
    MissingTable {
        /// The table that was looked for.
        table: String,
        /// `postgres`, `mysql` or `sqlite`.
        backend: &'static str,
    },
    /// A database operation failed.
    #[error("outbox database error while {operation} (table `{table}`): {source}")]
    Database {
        /// What the repository was doing.
        operation: &'static str,
        /// The outbox table.
        table: String,
        /// The driver's error.
        #[source]
        source: DbErr,
    },
    /// An event could not be serialized for storage.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// An event holds a value no broker could carry (see [`crate::limits`]); nothing was stored.
    #[error(transparent)]
    InvalidEvent(#[from] crate::limits::InvalidEvent),
    /// The claim lock row of the table is missing and could not be put back.
    #[error(
        "the claim lock row of `{0}_lock` is missing and could not be recreated: run the outbox migration again"
    )]
    MissingLockRow(String),
    /// `add_event` outside a transaction under `OUTBOX_DELIVERY=cursor` on a MariaDB table migrated before its
    /// sequence trigger existed: the writer takes the event's place in its partition's commit order with a
    /// statement of its own, which must commit with the event; nothing was stored. Running the migration again
    /// adds the trigger, which numbers events as they are inserted, in a transaction or not.
    #[error(
        "outbox table `{table}`: under OUTBOX_DELIVERY=cursor, this MariaDB table (migrated before its `_seq` \
         trigger existed) needs add_event inside a transaction (the event and its place in its partition's \
         commit order are stored together): run the outbox migration again, or pass a transaction \
         (`db.begin()`), not the connection"
    )]
    CursorNeedsTransaction {
        /// The outbox table.
        table: String,
    },
    /// `OUTBOX_DELIVERY=cursor` on MySQL, where it is not built (it is on MariaDB).
    #[error(
        "outbox table `{table}`: the commit-order cursor (OUTBOX_DELIVERY=cursor) runs on MariaDB 10.6+, \
         PostgreSQL and SQLite, not on MySQL (it tells a transaction by MariaDB's @@in_transaction): use \
         OUTBOX_DELIVERY=rows"
    )]
    CursorUnsupported {
        /// The outbox table.
        table: String,
    },
    /// A call of the rows design (`OUTBOX_DELIVERY=rows`) on a repository that delivers with the commit-order
    /// cursor. There, published events stay pending in place and only the cursors say what was published, so a
    /// claim would hand out every event the cursors passed, and a mark would change what no cursor reads. Nothing
    /// was changed.
    #[error(
        "outbox table `{table}`: `{operation}` is the rows design's (OUTBOX_DELIVERY=rows), and this repository \
         delivers with OUTBOX_DELIVERY=cursor, where only the cursors know what was published: publish with a \
         Relay, read what waits with get_unpublished or stats, and end a poison event with the dead-letter calls"
    )]
    RowsDesignOnly {
        /// The outbox table.
        table: String,
        /// The call refused.
        operation: &'static str,
    },
    /// A relay set to the rows design on a table the commit-order cursor has been delivering (its cursor rows
    /// exist). The events the cursors published are still pending in place there, so the relay would publish the
    /// table's history again; it does not start. A claim and `published_between` of the rows design are refused
    /// the same way.
    #[error(
        "outbox table `{table}` is delivered by the commit-order cursor (`{table}_cursors` has rows), and this relay \
         is set to OUTBOX_DELIVERY=rows, under which every event the cursors published would go out again: set \
         OUTBOX_DELIVERY=cursor, with the table's OUTBOX_PARTITIONS, on every relay of the table, or return the \
         table to the rows design first (OutboxRepository::return_to_rows)"
    )]
    DeliveredByCursor {
        /// The outbox table.
        table: String,
    },
    /// [`OutboxRepository::return_to_rows`](super::OutboxRepository::return_to_rows) while relays still hold
    /// partitions of the table. Nothing was changed.
    #[error(
        "outbox table `{table}`: {partitions} partition(s) are held by a running cursor relay: stop every relay of \
         the table before returning it to the rows design (a killed relay's partitions are free once its lease, \
         OUTBOX_LEASE_DURATION, has run out)"
    )]
    CursorsInUse {
        /// The outbox table.
        table: String,
        /// How many partitions are held.
        partitions: u64,
    },
    /// The table's cursors were made for another number of partitions than the configuration says.
    #[error(
        "outbox table `{table}` is split into {stored} partitions but OUTBOX_PARTITIONS is {configured}: every writer \
         and relay of a table must use the same count (changing it needs every relay stopped and the table's \
         `{table}_cursors` rows recreated)"
    )]
    PartitionMismatch {
        /// The outbox table.
        table: String,
        /// The configured partition count.
        configured: u16,
        /// The partition count its cursors were made for (0: incomplete).
        stored: u16,
    },
    /// The configured table name cannot be used in SQL.
    #[error(
        "invalid outbox table name {0:?}: use 1 to 49 lowercase ASCII letters, digits or underscores, not starting with a digit \
         (49 leaves room for the index names within every backend's identifier limit)"
    )]
    InvalidTableName(String),
    /// A consumer name or message id the inbox cannot key on.
    #[error("invalid inbox {what}: {reason}; expected 1 to 255 bytes without control characters")]
    InvalidInboxKey {
        /// `consumer name` or `message id`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A database URL that cannot be used.
    #[error("cannot use database URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database could not be reached.
    #[error("cannot connect to the database at `{url}`: {source}")]
    Connect {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// The driver's error.
        #[source]
        source: DbErr,
    },
}

impl RepositoryError {
    /// Whether the database aborted the statement because of a conflict with a concurrent transaction (a
    /// deadlock, a serialization failure, a busy SQLite file): running it again is the expected remedy.
    pub fn is_conflict(&self) -> bool {
        let Self::Database { source, .. } = self else {
            return false;
        };
        let text = source.to_string().to_ascii_lowercase();
        ["deadlock", "40001", "40p01", "1213", "database is locked"]
            .iter()
            .any(|needle| text.contains(needle))
    }

    /// Whether a statement ran into the claim timeout ([`OutboxConfig::claim_timeout`](crate::OutboxConfig)):
    /// waiting for the claim lock, or running. The statement took effect nowhere; trying again later is the
    /// remedy.
    pub fn is_timeout(&self) -> bool {
        let Self::Database { source, .. } = self else {
            return false;
        };
        let text = source.to_string().to_ascii_lowercase();
        [
            "canceling statement due to lock timeout",
            "canceling statement due to statement timeout",
            "lock wait timeout exceeded",
        ]
        .iter()
        .any(|needle| text.contains(needle))
    }

    /// Whether running the operation again later can succeed: anything but a missing table, a bad name or URL,
    /// or an event that cannot be encoded or is invalid.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Database { .. } | Self::Connect { .. })
    }

    /// Wraps a driver error, recognising a missing outbox table by the backend's message so the error can say to
    /// run the migration.
    pub(crate) fn db(
        operation: &'static str,
        table: &str,
        backend: sea_orm::DbBackend,
        source: DbErr,
    ) -> Self {
        let dialect = super::dialect::Dialect::for_backend(backend);
        let missing = (dialect.missing_table)(&source.to_string(), table);
        if missing {
            Self::MissingTable {
                table: table.to_owned(),
                backend: dialect.name,
            }
        } else {
            Self::Database {
                operation,
                table: table.to_owned(),
                source,
            }
        }
    }
}
