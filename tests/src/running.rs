//! A relay on a task of its own, for tests that run it in-process.

use std::time::Duration;

use outbox::relay::Relay;
use tokio::sync::oneshot;

/// A relay running on a task of its own, stopped through a channel.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), outbox::relay::RelayError>>,
}

impl Running {
    pub fn start(relay: Relay) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Asks the relay to stop and waits for it to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("relay stops within its deadline")
            .expect("relay task did not panic")
            .expect("relay returned cleanly");
    }
}
