//! Which partition an event belongs to: a stable hash of its aggregate, so that every event of an aggregate lands
//! in the same partition and is read by the same relay, in order.
//!
//! The hash is part of the stored data (`partition_no`, written by `add_event`): it must never change between
//! versions, or an aggregate's new events would land beside a different cursor than its old ones. The unit test
//! pins it with fixed values. `NatsPublisher::connect_many` chooses an aggregate's connection with it too.

/// The partition of the aggregate `(aggregate_type, aggregate_id)` among `partitions` (at least 1): FNV-1a (64 bit)
/// of the type, a `0xFF` byte (which no UTF-8 text contains, so no two aggregates hash the same bytes), and the id,
/// modulo `partitions`.
///
/// ```
/// use outbox::repository::partition_of;
///
/// let p = partition_of("order", "42", 8);
/// assert!(p < 8);
/// assert_eq!(p, partition_of("order", "42", 8), "stable");
/// assert_eq!(partition_of("order", "42", 1), 0);
/// ```
pub fn partition_of(aggregate_type: &str, aggregate_id: &str, partitions: u16) -> u16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let bytes = aggregate_type
        .bytes()
        .chain(std::iter::once(0xFF))
        .chain(aggregate_id.bytes());
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // Lossless: the remainder is below `partitions`, a u16.
    (hash % u64::from(partitions.max(1))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_never_changes() {
        // Pinned (computed by an independent FNV-1a): a change here moves stored aggregates to other partitions (see the module docs).
        assert_eq!(partition_of("", "", 1024), 878);
        assert_eq!(partition_of("order", "42", 1024), 130);
        assert_eq!(partition_of("order", "42", 8), 2);
        assert_eq!(partition_of("user", "7f1c", 1000), 190);
    }

    #[test]
    fn type_and_id_are_not_run_together() {
        let spread: std::collections::HashSet<u16> = (0..64)
            .map(|i| partition_of(&format!("order{i}"), &format!("{i}"), 1024))
            .collect();
        assert!(spread.len() > 50, "{spread:?}");
        assert_ne!(partition_of("ab", "c", 1024), partition_of("a", "bc", 1024));
    }
}
