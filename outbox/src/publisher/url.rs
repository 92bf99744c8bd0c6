//! Choosing a publisher by URL, so an application selects its broker by configuration alone.

use super::{ConnectError, InMemoryPublisher, Publisher, Reason, StdoutPublisher};
use crate::broker_url::BrokerUrl;

/// The publisher for `url`:
///
/// | URL | publisher | options (query parameters) |
/// |---|---|---|
/// | `memory://` | [`InMemoryPublisher`] | |
/// | `stdout://` | [`StdoutPublisher`] | |
/// | `nats://host:4222` | `NatsPublisher` (feature `nats`) | `stream=NAME&subjects=a.>,b.>`: create the stream if missing; `connections=N` (default 1): spread aggregates over N connections |
/// | `amqp://user:pass@host:5672/%2f` | `RabbitMqPublisher` (feature `rabbitmq`) | `exchange=NAME`, `prefix=ce-` |
/// | `redis://host:6379` | `RedisPublisher` (feature `redis`) | `maxlen=N` |
/// | `kafka://host:9092[,host2:9092]` | `KafkaPublisher` (feature `kafka`) | `partitions=N&replication=N` |
///
/// Every option also accepts `encoding=structured`. An unknown scheme, a scheme whose feature is off, a bad
/// option, or a broker that does not answer is an error that says which.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let publisher = outbox::publisher::from_url("memory://").await.unwrap();
/// assert_eq!(publisher.name(), "memory");
/// let Err(err) = outbox::publisher::from_url("carrier-pigeon://coop").await else { unreachable!() };
/// assert!(err.to_string().contains("expected one of"));
/// # });
/// ```
pub async fn from_url(url: &str) -> Result<Box<dyn Publisher>, ConnectError> {
    let parsed = BrokerUrl::parse(url);
    let option = |name: &str| parsed.option(name);
    // Validated for every scheme, used by the broker publishers compiled in.
    #[cfg_attr(
        not(any(
            feature = "nats",
            feature = "rabbitmq",
            feature = "redis",
            feature = "kafka"
        )),
        allow(unused_variables)
    )]
    let structured = match option("encoding") {
        None | Some("binary") => false,
        Some("structured") => true,
        Some(other) => {
            return Err(bad(
                url,
                format!("encoding={other}: expected binary or structured"),
            ));
        }
    };
    let publisher: Box<dyn Publisher> = match parsed.scheme.as_str() {
        "memory" => Box::new(InMemoryPublisher::new()),
        "stdout" => Box::new(StdoutPublisher),
        #[cfg(feature = "nats")]
        "nats" => {
            let connections = parsed
                .number("connections", 1)
                .and_then(|n| {
                    std::num::NonZeroU16::new(n)
                        .ok_or_else(|| "connections=0: expected at least 1".to_owned())
                })
                .map_err(|e| bad(url, e))?;
            let mut nats = super::NatsPublisher::connect_many(parsed.base, connections).await?;
            if let Some(stream) = option("stream") {
                let subjects = parsed.list("subjects").map_or_else(
                    || vec![">".to_owned()],
                    |s| s.into_iter().map(str::to_owned).collect(),
                );
                nats.ensure_stream(stream, subjects)
                    .await
                    .map_err(|e| ConnectError::new("nats", url, e))?;
            }
            if structured {
                nats = nats.structured();
            }
            Box::new(nats)
        }
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => {
            let mut rabbit = super::RabbitMqPublisher::connect(parsed.base).await?;
            if let Some(exchange) = option("exchange") {
                rabbit = rabbit.exchange(exchange);
            }
            match option("prefix") {
                None | Some("cloudEvents_") => {}
                Some("ce-") => rabbit = rabbit.prefix("ce-"),
                Some(other) => {
                    return Err(bad(
                        url,
                        format!("prefix={other}: expected cloudEvents_ or ce-"),
                    ));
                }
            }
            if structured {
                rabbit = rabbit.structured();
            }
            Box::new(rabbit)
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            let mut redis = super::RedisPublisher::connect(parsed.base).await?;
            if option("maxlen").is_some() {
                redis = redis.max_len(parsed.number("maxlen", 0).map_err(|e| bad(url, e))?);
            }
            if structured {
                redis = redis.structured();
            }
            Box::new(redis)
        }
        #[cfg(feature = "kafka")]
        "kafka" => {
            let partitions = parsed.number("partitions", 3).map_err(|e| bad(url, e))?;
            let replication = parsed.number("replication", 1).map_err(|e| bad(url, e))?;
            let mut kafka = super::KafkaPublisher::connect(parsed.address())
                .await?
                .create_topics(true, partitions, replication);
            if structured {
                kafka = kafka.structured();
            }
            Box::new(kafka)
        }
        _ => {
            return Err(bad(
                url,
                parsed.unsupported(
                    "publisher",
                    "memory://, stdout://, nats://, amqp://, redis://, kafka://",
                ),
            ));
        }
    };
    Ok(publisher)
}

fn bad(url: &str, reason: String) -> ConnectError {
    ConnectError::new("publisher", url, Reason(reason))
}
