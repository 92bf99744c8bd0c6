//! The order of an aggregate's events across the batches one relay has in flight.
//!
//! The relay claims its next batch while the current one is still publishing, and that claim may hand it the
//! events queued behind its own leases (see [`LeaseOwner`](crate::repository::LeaseOwner)). So a batch's run of
//! events of an aggregate waits here for the run of the batch before it, and is given back unpublished unless
//! that run published every event.

use std::collections::{BTreeSet, HashMap};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::oneshot;

use crate::repository::LeasedRow;

/// An aggregate: its type and id.
type Key = (String, String);

/// Resolves to whether a run published all its events. A run dropped unfinished (a relay stopped past its
/// shutdown deadline) counts as not.
#[derive(Clone)]
pub(super) struct Done(Shared<BoxFuture<'static, bool>>);

impl Done {
    pub(super) async fn published_all(self) -> bool {
        self.0.await
    }
}

/// What one run of a batch waits for before publishing, and where it reports.
pub(super) struct Link {
    pub(super) after: Option<Done>,
    pub(super) report: oneshot::Sender<bool>,
}

/// The last run of each aggregate in flight, with the batch it belongs to. Batches are numbered from 1.
#[derive(Default)]
pub(super) struct Order {
    last: HashMap<Key, (u64, Done)>,
    /// Batches settled out of turn, waiting for an earlier one.
    settled: BTreeSet<u64>,
    /// Every batch up to this one is settled and forgotten.
    forgotten: u64,
}

impl Order {
    /// Links batch `batch`'s runs, one per aggregate, in the order given: each waits for the aggregate's run of an
    /// earlier batch still known here.
    pub(super) fn link<'a>(
        &mut self,
        batch: u64,
        aggregates: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<Link> {
        aggregates
            .into_iter()
            .map(|(kind, id)| {
                let (report, done) = oneshot::channel();
                let done = Done(done.map(|r| r.unwrap_or(false)).boxed().shared());
                let after = self
                    .last
                    .insert((kind.to_owned(), id.to_owned()), (batch, done))
                    .map(|(_, done)| done);
                Link { after, report }
            })
            .collect()
    }

    /// Batch `batch`'s outcome is in the database (or its owner retired), where later claims see it. Its runs are
    /// forgotten once every earlier batch's are: a run given back because an earlier batch's run failed must keep
    /// holding later claims back until that failure is written too (until then the database shows the failed
    /// event leased by this relay, which does not hold the aggregate back for it). Call it only while no claim is
    /// running: a claim that read the database before an outcome was written must still find the run here.
    pub(super) fn settled(&mut self, batch: u64) {
        self.settled.insert(batch);
        while self.settled.remove(&(self.forgotten + 1)) {
            self.forgotten += 1;
            let forgotten = self.forgotten;
            self.last.retain(|_, (b, _)| *b != forgotten);
        }
    }

    /// Aggregates with a run still known.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.last.len()
    }
}

/// The batch's runs (see [`chains`]), each linked in `order` to its aggregate's run in the batch before.
pub(super) fn runs(order: &mut Order, batch: u64, events: &[LeasedRow]) -> Vec<(Vec<usize>, Link)> {
    let chains = chains(events);
    let aggregates = chains.iter().map(|chain| {
        let first = &events[chain[0]];
        (first.aggregate_type.as_str(), first.aggregate_id.as_str())
    });
    let links = order.link(batch, aggregates);
    chains.into_iter().zip(links).collect()
}

/// The batch's events grouped by aggregate, each group in write order; groups ordered by their first event.
fn chains(events: &[LeasedRow]) -> Vec<Vec<usize>> {
    let mut index: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::new();
    let mut chains: Vec<Vec<usize>> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let key = (event.aggregate_type.as_str(), event.aggregate_id.as_str());
        match index.get(&key) {
            Some(&chain) => chains[chain].push(i),
            None => {
                index.insert(key, chains.len());
                chains.push(vec![i]);
            }
        }
    }
    chains
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_run_waits_for_the_same_aggregates_run_in_the_batch_before() {
        let mut order = Order::default();
        let mut first = order.link(1, [("user", "1"), ("user", "2")]);
        assert!(first.iter().all(|l| l.after.is_none()));
        let mut second = order.link(2, [("user", "2"), ("user", "3")]);
        assert!(
            second[1].after.is_none(),
            "a new aggregate waits for nothing"
        );
        let after = second[0].after.take().expect("user 2 waits for batch 1");

        let failed = first.remove(1);
        failed.report.send(false).unwrap();
        assert!(!after.published_all().await);
        let ok = first.remove(0);
        drop(ok.report);
        let third = order.link(3, [("user", "1")]);
        let after = third.into_iter().next().unwrap().after.unwrap();
        assert!(
            !after.published_all().await,
            "a dropped run did not publish"
        );
    }

    #[tokio::test]
    async fn a_settled_batch_is_forgotten_only_after_every_earlier_one() {
        let mut order = Order::default();
        let first = order.link(1, [("user", "1"), ("user", "2")]);
        let second = order.link(2, [("user", "2")]);
        order.settled(2);
        assert_eq!(
            order.len(),
            2,
            "batch 1 is not settled yet: batch 2's run of user 2 stays"
        );
        order.settled(1);
        assert_eq!(order.len(), 0);
        let link = order.link(3, [("user", "2"), ("user", "1")]);
        assert!(link.iter().all(|l| l.after.is_none()));
        drop((first, second));
    }

    #[tokio::test]
    async fn settling_a_batch_keeps_later_batches_runs() {
        let mut order = Order::default();
        let _first = order.link(1, [("user", "1"), ("user", "2")]);
        let _second = order.link(2, [("user", "2")]);
        order.settled(1);
        assert_eq!(order.len(), 1, "user 2's run of batch 2 stays");
        let link = order.link(3, [("user", "2"), ("user", "1")]);
        assert!(link[0].after.is_some() && link[1].after.is_none());
    }
}
