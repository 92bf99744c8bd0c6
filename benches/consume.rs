//! The consumer side: 20,000 of the workload's events (100 aggregates) applied by one `outbox::consumer::Consumer`
//! with its inbox on the machine's PostgreSQL, a no-op handler (so what is measured is the consumer: one
//! transaction with the inbox row per event, then the ack), 64 messages in flight. Read from the in-process
//! subscription and from NATS JetStream (a durable pull consumer), beside the rate at which the same stream is
//! only received and acknowledged, with no database.

use std::time::{Duration, Instant};

use outbox::consumer::{
    Consumer, Context, HandlerError, InMemorySubscription, NatsSubscriber, Subscriber,
};
use outbox::publisher::{NatsPublisher, Publisher};
use outbox::repository::Inbox;
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection};
use outbox::{EventEnvelope, Message};

use crate::Result;
use crate::report::Row;
use crate::workload::{UserCreated, event};

const EVENTS: usize = 20_000;
const NATS_URL: &str = "nats://127.0.0.1:4222";

pub async fn run(db: &DatabaseConnection, runs: usize) -> Result<Vec<Row>> {
    let messages: Vec<Message> = (0..EVENTS)
        .map(|i| EventEnvelope::new(event(i)).to_message())
        .collect::<std::result::Result<_, _>>()?;
    let mut memory = Row::new(
        format!("consume {EVENTS}, in-process, inbox on PostgreSQL"),
        "events/s",
    );
    let mut nats = Row::new(
        format!("consume {EVENTS}, NATS JetStream, inbox on PostgreSQL"),
        "events/s",
    );
    let mut raw = Row::new(
        format!("receive + ack {EVENTS}, NATS JetStream, no database"),
        "events/s",
    );
    for run in 0..runs {
        let subscription = InMemorySubscription::new();
        for message in &messages {
            subscription.send(message);
        }
        subscription.close();
        memory
            .values
            .push(consume(db, subscription.subscriber(), run).await?);

        let stream = format!("CONSUMEBENCH{}", uuid::Uuid::new_v4().simple());
        let publisher = NatsPublisher::connect(NATS_URL).await?;
        publisher
            .ensure_stream(&stream, vec!["com.example.user".to_owned()])
            .await?;
        for message in &messages {
            publisher.send(message).await?.await?;
        }
        raw.values.push(receive_and_ack(&stream).await?);
        let subscriber = NatsSubscriber::connect(NATS_URL, &stream, "bench").await?;
        nats.values.push(consume(db, subscriber, run).await?);
        let js = async_nats::jetstream::new(async_nats::connect(NATS_URL).await?);
        js.delete_stream(&stream).await?;
    }
    Ok(vec![memory, raw, nats])
}

/// Events per second for a consumer to apply all of `subscriber`'s messages.
async fn consume(db: &DatabaseConnection, subscriber: impl Subscriber, run: usize) -> Result<f64> {
    let inbox = Inbox::new(format!("bench-{run}"))?
        .table(&format!("bench_inbox_{}", uuid::Uuid::new_v4().simple()))?;
    inbox.create_table(db).await?;
    let consumer = Consumer::builder(db.clone(), inbox.clone())
        .handle(|_: UserCreated, _: Context| async { Ok::<_, HandlerError>(()) })
        .build();
    let started = Instant::now();
    let done = async {
        while consumer.counts().applied() < EVENTS as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    consumer.run(subscriber, done).await;
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    for table in [
        format!("{}_dead_letters", inbox.table_name()),
        inbox.table_name().to_owned(),
    ] {
        db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
            .await?;
    }
    Ok(rate)
}

/// Events per second for a durable pull consumer to receive and acknowledge the stream, with nothing else.
async fn receive_and_ack(stream: &str) -> Result<f64> {
    let mut subscriber = NatsSubscriber::connect(NATS_URL, stream, "raw").await?;
    let started = Instant::now();
    for _ in 0..EVENTS {
        let received = subscriber
            .receive()
            .await?
            .ok_or("the stream ended early")?;
        received.settle.ack().await?;
    }
    Ok(EVENTS as f64 / started.elapsed().as_secs_f64())
}
