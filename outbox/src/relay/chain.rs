//! One aggregate's run of events within a batch: sent in order, up to `unacknowledged_per_aggregate` ahead of their
//! acknowledgements, each bounded by its deadline, each answer settled into the run's outcome.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tracing::Instrument;

use super::order::Link;
use super::{Relay, observe};
use crate::publisher::{Acknowledgement, PublishError, Reason};
use crate::repository::ClaimedEvent;

/// The outcome of one aggregate's run of events within a batch.
#[derive(Default)]
pub(super) struct ChainOutcome {
    pub(super) published: Vec<usize>,
    pub(super) failed: Option<(usize, PublishError)>,
    /// The event whose destination is held: why, and for how long.
    pub(super) held: Option<(usize, String, Duration)>,
    pub(super) released: Vec<usize>,
    pub(super) unavailable: Option<String>,
    /// The rest was given back because the lease would have expired during its publishes.
    pub(super) lease_ran_out: bool,
}

/// When one publish must be answered by, and whether that bound is the lease's (see `Relay::publish_deadline`).
#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    lease: bool,
}

/// A permanent failure for the event whose publish panicked, with the panic's message.
fn panicked(doing: &str, panic: &(dyn std::any::Any + Send)) -> PublishError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    PublishError::permanent(Reason(format!("panicked while {doing}: {message}")))
}

/// A publish cut at the lease's margin: no relay may still be publishing an event once another may claim it.
#[derive(Debug)]
struct LeaseRanOut;

impl std::fmt::Display for LeaseRanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the lease ran out before the broker answered")
    }
}

impl std::error::Error for LeaseRanOut {}

impl Relay {
    /// How long one publish may take: past the lease another relay takes the event over anyway, so waiting
    /// longer only stalls this one.
    fn publish_timeout(&self) -> Duration {
        self.publish_timeout
            .unwrap_or(self.config().lease_duration / 2)
    }

    /// When a publish that starts now must be answered by: within the publish timeout, and before the lease's
    /// margin (a fifth of the lease), which leaves the batch time to be marked before another relay may claim its
    /// events. Past the margin the publish is abandoned and its event given back: a duplicate if the broker took
    /// it after all, never two relays publishing one event at once.
    fn publish_deadline(&self, lease_end: Instant) -> Deadline {
        let margin = self.config().lease_duration / 5;
        let by_lease = lease_end.checked_sub(margin).unwrap_or(lease_end);
        let by_timeout = Instant::now() + self.publish_timeout();
        Deadline {
            at: by_lease.min(by_timeout),
            lease: by_lease <= by_timeout,
        }
    }

    /// One step of a publish (sending, or waiting for the acknowledgement), bounded by the publish's deadline; a
    /// panic in it is this event's permanent failure, never the relay's.
    async fn timed<T>(
        &self,
        deadline: Deadline,
        step: impl Future<Output = Result<T, PublishError>>,
    ) -> Result<T, PublishError> {
        let step = AssertUnwindSafe(step).catch_unwind();
        match tokio::time::timeout_at(deadline.at.into(), step).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(panic)) => Err(panicked("publishing", &*panic)),
            Err(_) if deadline.lease => Err(PublishError::unavailable(LeaseRanOut)),
            Err(_) => Err(PublishError::unavailable(Reason(format!(
                "{} did not answer within {:?}",
                self.publisher.name(),
                self.publish_timeout()
            )))),
        }
    }

    /// Publishes one aggregate's events in order, once its run in the batch before published everything, and
    /// stops at the first failure: the rest wait for it.
    pub(super) async fn publish_chain(
        &self,
        events: &[ClaimedEvent],
        chain: Vec<usize>,
        link: Link,
        lease_end: Instant,
        stop: &AtomicBool,
        halt: &AtomicBool,
    ) -> ChainOutcome {
        let mut outcome = ChainOutcome::default();
        if let Some(after) = link.after
            && !after.published_all().await
        {
            outcome.released = chain;
            let _ = link.report.send(false);
            return outcome;
        }
        let holds = &self.handle.shared.holds;
        // Up to `unacknowledged_per_aggregate` events are sent ahead of the oldest unanswered one. Trouble (a
        // refusal, an outage, a held destination, shutdown, the lease running out) stops the sending; what was sent
        // is still waited for, since it may have arrived, and the events not sent are given back.
        let window = self.unacknowledged_per_aggregate;
        let mut waiting: VecDeque<(usize, Deadline, Acknowledgement, tracing::Span)> =
            VecDeque::new();
        let (mut next, mut sending) = (0, true);
        loop {
            if sending && next < chain.len() && waiting.len() < window {
                let deadline = self.publish_deadline(lease_end);
                outcome.lease_ran_out = deadline.at <= Instant::now();
                if stop.load(Ordering::Relaxed)
                    || halt.load(Ordering::Relaxed)
                    || outcome.lease_ran_out
                {
                    sending = false;
                    continue;
                }
                let i = chain[next];
                next += 1;
                if let Some((left, reason)) = holds.remaining(destination(&events[i])) {
                    outcome.held = Some((i, reason, left));
                    sending = false;
                    continue;
                }
                // A publisher that answers at once (in memory, stdout) never makes this loop wait; counting each
                // send against tokio's budget lets the claim and the service's own tasks run in between.
                tokio::task::consume_budget().await;
                let rendered =
                    std::panic::catch_unwind(AssertUnwindSafe(|| events[i].envelope.to_message()));
                let sent = match rendered {
                    Ok(Ok(mut message)) => {
                        self.describe(&mut message);
                        let span = observe::publish_span(&message, self.publisher.name());
                        #[cfg(feature = "otel")]
                        crate::otel::carry(&span, &mut message);
                        self.timed(deadline, self.publisher.send(&message))
                            .instrument(span.clone())
                            .await
                            .map(|ack| (ack, span))
                    }
                    Ok(Err(error)) => Err(PublishError::permanent(error)),
                    Err(panic) => Err(panicked("rendering the message", &*panic)),
                };
                match sent {
                    Ok((ack, span)) => waiting.push_back((i, deadline, ack, span)),
                    Err(error) => sending = self.settle(&mut outcome, events, i, Err(error), halt),
                }
                continue;
            }
            let Some((i, deadline, ack, span)) = waiting.pop_front() else {
                break;
            };
            let answer = self.timed(deadline, ack).instrument(span).await;
            sending &= self.settle(&mut outcome, events, i, answer, halt);
        }
        outcome.released.extend_from_slice(&chain[next..]);
        // The next batch's run of this aggregate may go as soon as this one is published, before it is marked:
        // a mark that fails later makes this run's events duplicates, never late.
        let _ = link.report.send(outcome.published.len() == chain.len());
        outcome
    }

    /// Records the broker's answer for event `i` of a chain; whether the chain may go on sending. The first
    /// trouble of the event's own (a refusal, a held destination) is the chain's, retried or held; a later one,
    /// of an event sent before the first was answered, is given back with the rest.
    /// Adds what the relay's configuration adds to every message: the `dataschema` URL of a type with a schema.
    fn describe(&self, message: &mut crate::Message) {
        if let Some(base) = &self.dataschema_base
            && message.dataschema.is_none()
            && self
                .store
                .repository()
                .registry()
                .has_schema(&message.event_type, &message.data_version)
        {
            message.dataschema = Some(crate::contract::dataschema_url(
                base,
                &message.event_type,
                &message.data_version,
            ));
        }
    }

    fn settle(
        &self,
        outcome: &mut ChainOutcome,
        events: &[ClaimedEvent],
        i: usize,
        answer: Result<(), PublishError>,
        halt: &AtomicBool,
    ) -> bool {
        let holds = &self.handle.shared.holds;
        let first_trouble = outcome.failed.is_none() && outcome.held.is_none();
        match answer {
            Ok(()) => {
                outcome.published.push(i);
                holds.lift(destination(&events[i]));
                true
            }
            Err(PublishError::Unavailable(cause)) if cause.is::<LeaseRanOut>() => {
                outcome.lease_ran_out = true;
                outcome.released.push(i);
                false
            }
            Err(PublishError::Unavailable(cause)) => {
                // Nothing is wrong with the event: give it back with the rest, and stop the whole batch.
                halt.store(true, Ordering::Relaxed);
                outcome.unavailable.get_or_insert(cause.to_string());
                outcome.released.push(i);
                false
            }
            Err(error @ PublishError::DestinationUnavailable { .. }) => {
                // Keyed by the destination the event names: a publisher that renames destinations reports
                // its own name, which no later event could be matched with.
                let reason = error.to_string();
                let left = holds.hold(destination(&events[i]), reason.clone(), self.config());
                if first_trouble {
                    outcome.held = Some((i, reason, left));
                } else {
                    outcome.released.push(i);
                }
                false
            }
            Err(error) => {
                if first_trouble {
                    outcome.failed = Some((i, error));
                } else {
                    outcome.released.push(i);
                }
                false
            }
        }
    }
}

/// Where the event is published: the name holds are kept by.
fn destination(event: &ClaimedEvent) -> &'static str {
    event.envelope.event().meta().destination
}
