//! A publisher that prints each message as one structured CloudEvent JSON line.

use std::io::Write;

use super::{PublishError, Publisher};
use crate::cloudevents;
use crate::message::Message;

/// Prints every message to standard output as one structured CloudEvent per line (JSON Lines), for demos and
/// for piping into other tools.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdoutPublisher;

#[async_trait::async_trait]
impl Publisher for StdoutPublisher {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        let mut line = cloudevents::to_structured(message);
        line.push(b'\n');
        // One write of the whole line under the lock, so concurrent publishes never interleave within a line.
        let mut out = std::io::stdout().lock();
        out.write_all(&line)
            .and_then(|()| out.flush())
            .map_err(PublishError::unavailable)
    }

    fn name(&self) -> &str {
        "stdout"
    }
}
