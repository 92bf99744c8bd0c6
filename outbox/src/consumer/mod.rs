//! The consumer side: applying what the relay published, once, in the receiving service.
//!
//! - [`Delivery`]: a received message as a CloudEvent, from the headers of any binding (binary mode) or its body
//!   (structured mode), decoded into its Rust type through the [registry](crate::registry).
//! - [`Consumer`] (feature `sea-orm`): typed handlers per event type, each run in a transaction that also records
//!   the message in the [`Inbox`](crate::repository::Inbox), so a redelivered message is acknowledged without
//!   running again; a failing handler is retried with backoff, then the message is kept as a dead letter (with
//!   [`Consumer::replay_dead_letters`]); a message is acknowledged only once committed or kept. One aggregate's
//!   messages are handled one at a time in the order received, other aggregates concurrently.
//! - [`Subscriber`]: where messages come from: `KafkaSubscriber` (feature `kafka`, a consumer group that
//!   commits each partition up to its lowest unsettled message), `NatsSubscriber` (feature `nats`, a JetStream
//!   durable pull consumer), `RabbitMqSubscriber` (feature `rabbitmq`, manual acks and a prefetch), `RedisSubscriber` (feature `redis`, a consumer group with XAUTOCLAIM of stale entries) and
//!   [`InMemorySubscription`], the in-process one; [`from_url`] picks one by URL.
//!
//! ```no_run
//! # use outbox::consumer::{Consumer, Context, HandlerError, InMemorySubscription};
//! # use outbox::repository::Inbox;
//! # use outbox::OutboxEvent;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize, OutboxEvent)]
//! # #[outbox(type = "com.example.user.created", source = "/users")]
//! # struct UserCreated { #[outbox(aggregate_id)] user_id: u64 }
//! # async fn example(db: outbox::sea_orm::DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
//! let inbox = Inbox::new("mailer")?;
//! inbox.create_table(&db).await?;
//! let consumer = Consumer::builder(db, inbox)
//!     .handle(|event: UserCreated, ctx: Context| async move {
//!         // apply `event` with `ctx.txn()`; returning Ok commits it together with the inbox record
//!         Ok::<_, HandlerError>(())
//!     })
//!     .build();
//! let subscription = InMemorySubscription::new();
//! consumer.run(subscription.subscriber(), tokio::signal::ctrl_c().map(|_| ())).await;
//! # Ok(())
//! # }
//! # use futures_util::FutureExt;
//! ```

mod delivery;
#[cfg(feature = "sea-orm")]
mod handler;
#[cfg(feature = "sea-orm")]
mod health;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
#[cfg(feature = "redis")]
mod redis;
mod subscriber;
mod url;
#[cfg(feature = "sea-orm")]
mod worker;

pub use delivery::{Delivery, DeliveryError, PlainMessage};
#[cfg(feature = "sea-orm")]
pub use handler::{Context, Handler, HandlerError};
#[cfg(feature = "sea-orm")]
pub use health::{ConsumerHealth, ConsumerThresholds, SubscriptionHealth};
#[cfg(feature = "kafka")]
pub use kafka::KafkaSubscriber;
#[cfg(feature = "nats")]
pub use nats::NatsSubscriber;
#[cfg(feature = "rabbitmq")]
pub use rabbitmq::RabbitMqSubscriber;
#[cfg(feature = "redis")]
pub use redis::RedisSubscriber;
pub use subscriber::{
    InMemorySubscriber, InMemorySubscription, Received, Settle, SubscribeError, Subscriber,
};
pub use url::from_url;
#[cfg(feature = "sea-orm")]
pub use worker::{Consumer, ConsumerBuilder, ConsumerCounts};
