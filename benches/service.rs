//! An outbox table in service with its relay running in the background (`Relay::run`), as the steady-load
//! scenarios need it: created fresh, given a history of 10,000 events that were published and analyzed (so
//! the planner has statistics, as autovacuum gives a table in service), then left to the relay.

use std::sync::Arc;

use outbox::OutboxConfig;
use outbox::publisher::Publisher;
use outbox::relay::{Relay, RelayError, RelayHandle};
use outbox::repository::OutboxRepository;
use outbox::sea_orm::DatabaseConnection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::Result;
use crate::drain::until_empty;
use crate::workload::{drop_tables, fresh, prefill};

const HISTORY: usize = 10_000;

pub struct InService {
    pub outbox: OutboxRepository,
    /// Wakes the running relay in-process (`RelayHandle::wake`).
    pub handle: RelayHandle,
    stop: oneshot::Sender<()>,
    relay: JoinHandle<std::result::Result<(), RelayError>>,
}

impl InService {
    /// A fresh table with its history published to `publisher`, and one relay running on it: woken by
    /// LISTEN/NOTIFY when `listen`, by its `poll_interval` otherwise.
    pub async fn start(
        db: &DatabaseConnection,
        config: OutboxConfig,
        listen: bool,
        publisher: Arc<dyn Publisher>,
    ) -> Result<Self> {
        let batch = config.batch_size;
        let outbox = fresh(db, config).await?;
        prefill(db, &outbox, HISTORY, true).await?;
        let relay = Relay::builder(db.clone(), outbox.clone(), publisher)
            .listen(listen)
            .max_batches_in_flight(batches_in_flight()?)
            .build();
        until_empty(&relay, batch).await?;
        let handle = relay.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let relay = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));
        // The relay's start-up check and LISTEN connection, before any load is offered.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        Ok(Self {
            outbox,
            handle,
            stop,
            relay,
        })
    }

    /// Stops the relay (it finishes its batch in hand) and drops the tables.
    pub async fn stop(self, db: &DatabaseConnection) -> Result<()> {
        let _ = self.stop.send(());
        self.relay.await??;
        drop_tables(db, &self.outbox).await
    }
}

/// `BENCH_BATCHES_IN_FLIGHT` (default 2, the library's): the running relays' `max_batches_in_flight`, to compare
/// the pipeline with one batch at a time.
pub fn batches_in_flight() -> Result<usize> {
    match std::env::var("BENCH_BATCHES_IN_FLIGHT") {
        Ok(n) => Ok(n
            .parse()
            .map_err(|_| format!("BENCH_BATCHES_IN_FLIGHT={n}: expected a number of batches"))?),
        Err(_) => Ok(2),
    }
}
