//! Who holds a claimed event: a claim's token, and the relay (lease owner) that made the claim.
//!
//! A token is a 64-bit integer: its top 40 bits name the owner, its low 24 bits count the owner's claims. So
//! "leased by this owner" is one range test in SQL, on every backend, without a column of its own.

use std::sync::atomic::{AtomicU32, Ordering};

/// Claims an owner can make before its counter wraps; a token only has to differ from the few claims of the same
/// owner still in flight.
const CLAIMS_PER_OWNER: i64 = 1 << 24;

/// Identifies one claim. Marking requires it, so a relay whose lease expired (and whose events another relay
/// claimed since) cannot overwrite the other relay's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClaimToken(pub(super) i64);

/// The holder of leases: one relay, which claims again before its earlier batches are done.
///
/// A claim made with [`OutboxRepository::claim_as`](super::OutboxRepository::claim_as) treats the owner's own
/// unexpired leases as its own queue: the events of an aggregate waiting behind an event this owner holds are
/// claimable by this owner (and only by it), which then must publish them after the held one and give them back
/// if it fails. That is what lets a relay claim its next batch while the current one is being published. Every
/// other claimant sees them held, as usual.
///
/// Owners are random (40 bits): two relays drawing the same one, which would each take the other's leases for
/// their own, is a one-in-a-trillion event per pair of relays.
#[derive(Debug)]
pub struct LeaseOwner {
    base: i64,
    claims: AtomicU32,
}

impl LeaseOwner {
    /// A new, random owner.
    pub fn new() -> Self {
        Self {
            base: fastrand::i64(..) & !(CLAIMS_PER_OWNER - 1),
            claims: AtomicU32::new(0),
        }
    }

    /// The token of this owner's next claim.
    pub(super) fn next_token(&self) -> ClaimToken {
        let n = self.claims.fetch_add(1, Ordering::Relaxed);
        ClaimToken(self.base + i64::from(n) % CLAIMS_PER_OWNER)
    }

    /// The lowest and highest token this owner issues.
    pub(super) fn tokens(&self) -> (i64, i64) {
        (self.base, self.base + (CLAIMS_PER_OWNER - 1))
    }
}

impl Default for LeaseOwner {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_stay_in_the_owners_range_and_differ_from_other_owners() {
        let owner = LeaseOwner::new();
        let (low, high) = owner.tokens();
        assert_eq!(high - low, CLAIMS_PER_OWNER - 1);
        let first = owner.next_token();
        let second = owner.next_token();
        assert_ne!(first, second);
        for token in [first, second] {
            assert!(
                (low..=high).contains(&token.0),
                "{token:?} outside {low}..={high}"
            );
        }
        owner
            .claims
            .store(u32::MAX, std::sync::atomic::Ordering::Relaxed);
        let wrapped = owner.next_token();
        assert!(
            (low..=high).contains(&wrapped.0),
            "a wrapped counter stays in range"
        );
        let (other_low, other_high) = LeaseOwner::new().tokens();
        assert!(
            other_high < low || other_low > high,
            "owners are disjoint ranges"
        );
    }
}
