//! The SQL the repository runs, written once with `?` placeholders; each backend's [`Dialect`](super::dialect::Dialect)
//! adapts it (placeholders, id lists), and a statement whose form differs by backend lives in that backend's module.
//!
//! Hand-written rather than built with sea-query so that every statement is readable in one place and the
//! claim query is exactly the one `docs/design.md` explains.

use super::error::RepositoryError;

/// Row states. Stored as a small integer so the partial indexes stay tiny.
pub const PENDING: i16 = 0;
pub const PUBLISHED: i16 = 1;
pub const DEAD: i16 = 2;

/// Ends a row's lease: what every mark, failure, release and replay sets.
pub const END_LEASE: &str = "locked_until = NULL, claim_token = NULL";

/// Every column a stored event is read back with, in the order `row::StoredEvent::from_row` expects.
pub const COLUMNS: &str = "id, event_id, event_type, data_version, aggregate_type, aggregate_id, payload, \
     correlation_id, causation_id, traceparent, tracestate, occurred_at, status, attempts, last_error, published_at";

/// The longest suffix the schema adds to the table's name (`_published_idx`, `_aggregate_idx`).
pub(super) const LONGEST_SUFFIX: usize = "_published_idx".len();

/// The outbox table's name, validated so it can be spliced into SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName(String);

impl TableName {
    /// The default table name.
    pub const DEFAULT: &'static str = "outbox_events";

    /// The longest name: the schema names indexes `<table>_published_idx` and `<table>_aggregate_idx` (14 more
    /// bytes), and PostgreSQL cuts identifiers at 63 bytes (so two long index names could become one, silently)
    /// while MySQL refuses them over 64. One limit for every backend, so a table can move between them.
    pub const MAX_LEN: usize = 63 - LONGEST_SUFFIX;

    /// Accepts names of 1 to [`MAX_LEN`](Self::MAX_LEN) (49) lowercase ASCII letters, digits and underscores, not
    /// starting with a digit; lowercase keeps the name PostgreSQL folds it to equal to the LISTEN channel.
    pub fn new(name: &str) -> Result<Self, RepositoryError> {
        let valid = (1..=Self::MAX_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(RepositoryError::InvalidTableName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TableName {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

/// Rows per INSERT, per UPDATE of failures and per id list where ids are one placeholder each: well under every backend's limit
/// on bound parameters.
pub const CHUNK: usize = 500;

/// `?, ?, ?` for `n` values.
pub fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// Deletes published rows older than `?`, at most `?` of them, oldest first (MySQL's form is `mysql.rs`'s: it
/// refuses a subquery on the table it deletes from).
pub const PURGE_PUBLISHED: &str = "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE status = 1 \
     AND published_at < ? ORDER BY id LIMIT ?)";

/// Pending rows that may be claimed now, oldest first: not leased, due, and with no earlier pending event of the
/// same aggregate that is leased by another owner or waiting for a retry (so an aggregate's events are handed out
/// in order, and a failing event holds back only its own aggregate). Events behind the claiming owner's own leases
/// are claimable: the owner publishes them after the leased ones (see `LeaseOwner`). Preceded by the columns to
/// select. Values: now, now, now, owner's first token, owner's last token, now, limit.
pub const CLAIMABLE: &str = "FROM {t} o \
     WHERE o.status = 0 \
       AND (o.locked_until IS NULL OR o.locked_until < ?) \
       AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= ?) \
       AND NOT EXISTS ( \
         SELECT 1 FROM {t} p \
         WHERE p.status = 0 AND p.aggregate_type = o.aggregate_type AND p.aggregate_id = o.aggregate_id \
           AND p.id < o.id \
           AND ((p.locked_until >= ? AND p.claim_token NOT BETWEEN ? AND ?) OR p.next_attempt_at > ?)) \
     ORDER BY o.id LIMIT ?";

/// Records a message in the inbox unless it is there (PostgreSQL, SQLite 3.24+). A concurrent transaction that
/// recorded the same key first makes this one wait for its outcome: nothing when it commits, a row when it rolls
/// back.
pub(super) const INBOX_RECORD: &str =
    "INSERT INTO {t} (consumer, message_id, processed_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING";

/// Keeps a consumer dead letter, replacing one of the same message (PostgreSQL, SQLite 3.24+).
pub(super) const INBOX_DEAD_LETTER: &str = "INSERT INTO {t} (consumer, message_id, event_type, cloudevent, reason, \
     attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (consumer, message_id) DO UPDATE SET \
     event_type = excluded.event_type, cloudevent = excluded.cloudevent, reason = excluded.reason, \
     attempts = excluded.attempts, failed_at = excluded.failed_at";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_listed() {
        assert_eq!(placeholders(3), "?, ?, ?");
        assert_eq!(placeholders(0), "");
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(TableName::new("outbox_events").is_ok());
        assert!(TableName::new("outbox2").is_ok());
        for bad in [
            "",
            "2outbox",
            "outbox-events",
            "outbox; DROP TABLE users",
            "o\"x",
            &"x".repeat(50),
            "Outbox",
        ] {
            assert!(TableName::new(bad).is_err(), "{bad}");
        }
        assert!(TableName::new(&"x".repeat(49)).is_ok());
    }
}
