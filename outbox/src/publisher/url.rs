//! Choosing a publisher by URL, so an application selects its broker by configuration alone.

use super::{ConnectError, InMemoryPublisher, Publisher, Reason, StdoutPublisher};

/// The publisher for `url`:
///
/// | URL | publisher | options (query parameters) |
/// |---|---|---|
/// | `memory://` | [`InMemoryPublisher`] | |
/// | `stdout://` | [`StdoutPublisher`] | |
/// | `nats://host:4222` | `NatsPublisher` (feature `nats`) | `stream=NAME&subjects=a.>,b.>`: create the stream if missing |
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
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let options: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let option = |name: &str| options.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
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
    let scheme = base
        .split("://")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let publisher: Box<dyn Publisher> = match scheme.as_str() {
        "memory" => Box::new(InMemoryPublisher::new()),
        "stdout" => Box::new(StdoutPublisher),
        #[cfg(feature = "nats")]
        "nats" => {
            let mut nats = super::NatsPublisher::connect(base).await?;
            if let Some(stream) = option("stream") {
                let subjects = option("subjects").map_or_else(
                    || vec![">".to_owned()],
                    |s| s.split(',').map(str::to_owned).collect(),
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
            let mut rabbit = super::RabbitMqPublisher::connect(base).await?;
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
            let mut redis = super::RedisPublisher::connect(base).await?;
            if let Some(max_len) = option("maxlen") {
                let max_len = max_len
                    .parse()
                    .map_err(|_| bad(url, format!("maxlen={max_len}: expected a number")))?;
                redis = redis.max_len(max_len);
            }
            if structured {
                redis = redis.structured();
            }
            Box::new(redis)
        }
        #[cfg(feature = "kafka")]
        "kafka" => {
            let servers = base.trim_start_matches("kafka://").trim_end_matches('/');
            let number = |name: &str, default: i32| -> Result<i32, ConnectError> {
                option(name).map_or(Ok(default), |v| {
                    v.parse()
                        .map_err(|_| bad(url, format!("{name}={v}: expected a number")))
                })
            };
            let (partitions, replication) = (number("partitions", 3)?, number("replication", 1)?);
            let mut kafka = super::KafkaPublisher::connect(servers)
                .await?
                .create_topics(true, partitions, replication);
            if structured {
                kafka = kafka.structured();
            }
            Box::new(kafka)
        }
        other => {
            let feature = match other {
                "nats" => Some("nats"),
                "amqp" | "amqps" => Some("rabbitmq"),
                "redis" | "rediss" => Some("redis"),
                "kafka" => Some("kafka"),
                _ => None,
            };
            let reason = match feature {
                Some(feature) => format!(
                    "this build has no {other} publisher: enable the `{feature}` feature of outbox"
                ),
                None => format!(
                    "unsupported scheme `{other}`: expected one of memory://, stdout://, nats://, amqp://, redis://, kafka://"
                ),
            };
            return Err(bad(url, reason));
        }
    };
    Ok(publisher)
}

fn bad(url: &str, reason: String) -> ConnectError {
    ConnectError::new("publisher", url, Reason(reason))
}
