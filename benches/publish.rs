//! The brokers' own ceiling: 100,000 of the workload's messages sent straight to each broker through the
//! library's publisher by 100 concurrent senders (the drains' 100 aggregates), each with `BENCH_UNACKNOWLEDGED`
//! (default 4) awaiting their acknowledgement at once. No database and no relay, so what the broker drains
//! (`brokers`) reads against what the broker and its client take on this machine when nothing else runs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use outbox::publisher::{Acknowledgement, Publisher, from_url};
use outbox::{EventEnvelope, Message};
use tokio::task::JoinSet;

use crate::Result;
use crate::brokers::{BROKERS, NATS_TWO_CONNECTIONS, prepare};
use crate::report::Row;
use crate::workload::event;

const MESSAGES: usize = 100_000;
const SENDERS: usize = 100;

pub async fn run(runs: usize) -> Result<Vec<Row>> {
    let ahead: usize = crate::env("BENCH_UNACKNOWLEDGED")?.unwrap_or(4).max(1);
    // One list of messages per sender, as one aggregate's events.
    let mut messages: Vec<Vec<Message>> = vec![Vec::new(); SENDERS];
    for i in 0..MESSAGES {
        messages[i % SENDERS].push(EventEnvelope::new(event(i)).to_message()?);
    }
    let messages = Arc::new(messages);
    // BENCH_BROKERS_ONLY keeps the rows whose label contains it, as in `brokers`.
    let only = std::env::var("BENCH_BROKERS_ONLY").ok();
    let mut rows = Vec::new();
    for (name, url) in BROKERS.into_iter().chain([NATS_TWO_CONNECTIONS]) {
        if url.starts_with("kafka") && std::env::var_os("BENCH_SKIP_KAFKA").is_some() {
            eprintln!("BENCH_SKIP_KAFKA is set: no Kafka publish");
            continue;
        }
        let label = format!(
            "publish {}k to {name}, no database, {SENDERS} senders, {ahead} unacknowledged each",
            MESSAGES / 1000
        );
        if only.as_deref().is_some_and(|only| !label.contains(only)) {
            continue;
        }
        let mut row = Row::new(label, "messages/s");
        for _ in 0..runs {
            prepare(url).await?;
            let publisher: Arc<dyn Publisher> = Arc::from(from_url(url).await?);
            let started = Instant::now();
            let mut senders = JoinSet::new();
            for sender in 0..SENDERS {
                let (publisher, messages) = (publisher.clone(), messages.clone());
                senders.spawn(async move {
                    let mut pending: VecDeque<Acknowledgement> = VecDeque::with_capacity(ahead);
                    for message in &messages[sender] {
                        if pending.len() == ahead
                            && let Some(oldest) = pending.pop_front()
                        {
                            oldest.await?;
                        }
                        pending.push_back(publisher.send(message).await?);
                    }
                    for acknowledgement in pending {
                        acknowledgement.await?;
                    }
                    Ok::<_, outbox::publisher::PublishError>(())
                });
            }
            while let Some(sent) = senders.join_next().await {
                sent??;
            }
            row.values
                .push(MESSAGES as f64 / started.elapsed().as_secs_f64());
        }
        prepare(url).await?;
        rows.push(row);
    }
    Ok(rows)
}
