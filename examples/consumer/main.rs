//! A consumer for the service's events on NATS JetStream: decodes each message back into its Rust type through
//! the registry (by `ce-type` and `ce-dataversion`), handles the two event types, and drops duplicates by event
//! id (at-least-once delivery means a message can come twice).
//!
//! ```text
//! cargo run --example consumer -- nats://127.0.0.1:4222 USERS
//! ```
//!
//! Reads the stream from its start and stops after 5 idle seconds.

#[path = "../service/events.rs"]
mod events;

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;
use outbox::Registry;

use events::{UserCreated, UserDeleted};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let stream_name = args.next().unwrap_or_else(|| "USERS".into());
    let jetstream = jetstream::new(async_nats::connect(&url).await?);
    let stream = jetstream.get_stream(&stream_name).await?;
    let consumer = stream.create_consumer(pull::Config::default()).await?;
    let mut messages = consumer.messages().await?;

    let registry = Registry::global();
    let mut seen = HashSet::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(5), messages.next()).await
    {
        let message = message?;
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.to_string())
        };
        let (Some(id), Some(event_type)) = (header("ce-id"), header("ce-type")) else {
            eprintln!("skipping a message without CloudEvents headers");
            message.ack().await?;
            continue;
        };
        if !seen.insert(id.clone()) {
            println!("duplicate {id}: already handled");
            message.ack().await?;
            continue;
        }
        let version = header("ce-dataversion").unwrap_or_else(|| "1.0".into());
        match registry.decode(
            &event_type,
            &version,
            std::str::from_utf8(&message.payload)?,
        ) {
            Ok(event) => {
                if let Some(created) = event.downcast_ref::<UserCreated>() {
                    println!("user {} signed up with {}", created.user_id, created.email);
                } else if let Some(deleted) = event.downcast_ref::<UserDeleted>() {
                    println!("user {} left", deleted.user_id);
                }
            }
            // A type this consumer does not know: log it and move on rather than block the stream.
            Err(error) => eprintln!("cannot handle {id}: {error}"),
        }
        message.ack().await?;
    }
    println!("{} distinct events handled", seen.len());
    Ok(())
}
