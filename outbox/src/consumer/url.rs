//! Choosing a subscriber by URL, so a consuming application selects its broker by configuration alone.

use super::subscriber::{SubscribeError, Subscriber};
use crate::broker_url::BrokerUrl;

/// The subscriber for `url`, reading as the consumer named `consumer` (the JetStream durable consumer, the Kafka
/// or Redis consumer group):
///
/// | URL | subscriber | options (query parameters) |
/// |---|---|---|
/// | `nats://host:4222?stream=USERS` | `NatsSubscriber` (feature `nats`) | `stream` (required) |
/// | `kafka://host:9092[,host2:9092]?topics=a,b` | `KafkaSubscriber` (feature `kafka`) | `topics` (required), `member=NAME` (static membership: one per process, stable across its restarts, so a restarted process gets its partitions back at once) |
/// | `amqp://user:pass@host:5672/%2f?queue=q` | `RabbitMqSubscriber` (feature `rabbitmq`) | `queue` (required), `prefetch=N` (default 64) |
/// | `redis://host:6379?streams=a,b` | `RedisSubscriber` (feature `redis`) | `streams` (required), `member=NAME` (default: `consumer`; one per process, stable across its restarts), `claim_after=SECONDS` (default 60) |
///
/// An unknown scheme, a scheme whose feature is off, a missing or bad option, or a broker that does not answer
/// is an error that says which. (The in-process [`InMemorySubscription`](super::InMemorySubscription) has no
/// URL: it is shared as a value.)
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let Err(err) = outbox::consumer::from_url("carrier-pigeon://coop", "mailer").await else { unreachable!() };
/// assert!(err.to_string().contains("expected one of"));
/// # });
/// ```
// RabbitMQ names no consumer: a queue is read by whoever consumes it.
#[cfg_attr(
    not(any(feature = "nats", feature = "redis", feature = "kafka")),
    allow(unused_variables)
)]
pub async fn from_url(url: &str, consumer: &str) -> Result<Box<dyn Subscriber>, SubscribeError> {
    let parsed = BrokerUrl::parse(url);
    let bad = |reason: String| {
        SubscribeError(format!(
            "cannot subscribe to `{}`: {reason}",
            crate::redact::password(url)
        ))
    };
    let required = |name: &str| {
        parsed
            .option(name)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| bad(format!("the `{name}` option is missing (`?{name}=...`)")))
    };
    match parsed.scheme.as_str() {
        #[cfg(feature = "nats")]
        "nats" => Ok(Box::new(
            super::NatsSubscriber::connect(parsed.base, required("stream")?, consumer)
                .await
                .map_err(|e| bad(e.0))?,
        )),
        #[cfg(feature = "kafka")]
        "kafka" => {
            required("topics")?;
            let topics = parsed.list("topics").unwrap_or_default();
            let mut config = rdkafka::ClientConfig::new();
            config
                .set("bootstrap.servers", parsed.address())
                .set("group.id", consumer);
            if let Some(member) = parsed.option("member") {
                config.set("group.instance.id", member);
            }
            Ok(Box::new(
                super::KafkaSubscriber::from_config(&config, &topics).map_err(|e| bad(e.0))?,
            ))
        }
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => {
            let prefetch = parsed.number("prefetch", 64).map_err(bad)?;
            Ok(Box::new(
                super::RabbitMqSubscriber::connect(parsed.base, required("queue")?, prefetch)
                    .await
                    .map_err(|e| bad(e.0))?,
            ))
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            required("streams")?;
            let streams = parsed.list("streams").unwrap_or_default();
            let member = parsed.option("member").unwrap_or(consumer);
            let claim_after = parsed.number("claim_after", 60u64).map_err(bad)?;
            Ok(Box::new(
                super::RedisSubscriber::connect(parsed.base, &streams, consumer, member)
                    .await
                    .map_err(|e| bad(e.0))?
                    .claim_after(std::time::Duration::from_secs(claim_after)),
            ))
        }
        _ => Err(bad(parsed.unsupported(
            "subscriber",
            "nats://, kafka://, amqp://, redis://",
        ))),
    }
}
