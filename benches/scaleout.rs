//! Scale-out when publishing is the bottleneck: each relay publishes through a connection of its own that
//! takes 1 ms per event (a slow broker, a remote hop: one publish slot per millisecond, however many are
//! waiting), so one relay drains at most 1,000 events/s and more relays can only help if they share the work. 1, 2 and 4 relays, rows and the commit-order cursor, 8,000
//! events over 100 aggregates.

use std::sync::Arc;
use std::time::Duration;

use outbox::publisher::{InMemoryPublisher, PublishError, Publisher};
use outbox::sea_orm::DatabaseConnection;
use outbox::{Delivery, Message, OutboxConfig};

use crate::Result;
use crate::drain::{PARTITIONS, Shape, timed_drain_each};
use crate::report::Row;
use crate::workload::{drop_tables, fresh, prefill};

const EVENTS: usize = 8_000;

pub async fn run(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for delivery in [Delivery::Rows, Delivery::Cursor] {
        for relays in [1, 2, 4] {
            let design = match delivery {
                Delivery::Cursor => "commit-order cursor",
                _ => "rows",
            };
            let mut row = Row::new(
                format!("scale-out, 1 ms per publish per relay, {relays} relay(s), {design}"),
                "events/s",
            );
            for _ in 0..runs {
                let mut config = OutboxConfig::default();
                config.batch_size = 100;
                config.delivery = delivery;
                config.partitions = PARTITIONS;
                let outbox = fresh(db, config).await?;
                prefill(db, &outbox, EVENTS, true).await?;
                let shape = Shape {
                    relays,
                    ..Shape::one()?
                };
                let sink = InMemoryPublisher::new();
                row.values.push(
                    timed_drain_each(db, &outbox, shape, |_| {
                        Arc::new(Slow {
                            inner: sink.clone(),
                            next_slot: std::sync::Mutex::new(tokio::time::Instant::now()),
                        })
                    })
                    .await?,
                );
                drop_tables(db, &outbox).await?;
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A connection that takes 1 ms per publish: each publish gets the next free millisecond and is answered then.
/// Slots rather than a 1 ms sleep each, so the timer's granularity does not change the rate.
struct Slow {
    inner: InMemoryPublisher,
    next_slot: std::sync::Mutex<tokio::time::Instant>,
}

#[async_trait::async_trait]
impl Publisher for Slow {
    async fn publish(&self, message: &Message) -> std::result::Result<(), PublishError> {
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + Duration::from_millis(1);
            slot
        };
        tokio::time::sleep_until(slot + Duration::from_millis(1)).await;
        self.inner.publish(message).await
    }
    fn name(&self) -> &str {
        "slow"
    }
}
