//! The error policy (python-outbox-core's `OutboxErrorHandler`): retry or give up, per failed publish.

use crate::publisher::PublishError;
use crate::repository::ClaimedEvent;

/// Decides what happens to an event whose publish failed.
///
/// A broker that is unreachable never reaches the handler: the relay backs off as a whole and counts no
/// attempt. The handler sees per-event failures only.
pub trait ErrorHandler: Send + Sync + 'static {
    /// Called for every per-event failure, before the decision: a hook for alerting. The relay logs it already.
    fn handle(&self, event: &ClaimedEvent, error: &PublishError) {
        let _ = (event, error);
    }

    /// Whether a retry of this error can succeed. Default: every rejection the broker did not call permanent.
    fn is_transient_error(&self, error: &PublishError) -> bool {
        !error.is_permanent()
    }

    /// Whether to try again; `attempt` counts this failed attempt (1 for the first). Default: transient errors
    /// while `attempt <= max_retries()`. A `false` makes the event a dead letter now.
    fn should_retry(&self, event: &ClaimedEvent, error: &PublishError, attempt: u32) -> bool {
        let _ = event;
        self.is_transient_error(error) && attempt <= self.max_retries()
    }

    /// How many retries an event gets after its first failure.
    fn max_retries(&self) -> u32;
}

/// Retries transient failures up to `max_retries` times (the config's `max_retry_count` by default).
#[derive(Clone, Copy, Debug)]
pub struct DefaultErrorHandler {
    max_retries: u32,
}

impl DefaultErrorHandler {
    /// A handler allowing `max_retries` retries.
    pub fn new(max_retries: u32) -> Self {
        Self { max_retries }
    }
}

impl ErrorHandler for DefaultErrorHandler {
    fn max_retries(&self) -> u32 {
        self.max_retries
    }
}
