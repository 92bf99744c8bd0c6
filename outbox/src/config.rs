//! Relay configuration (python-outbox-core's `OutboxConfig`), from code or from `OUTBOX_*` environment variables.
//!
//! | variable | field | default | allowed |
//! |---|---|---|---|
//! | `OUTBOX_BATCH_SIZE` | [`batch_size`](OutboxConfig::batch_size) | 100 | 1 to 10000 |
//! | `OUTBOX_POLL_INTERVAL_SECONDS` | [`poll_interval`](OutboxConfig::poll_interval) | 5 | 1 to 3600 (seconds, may be fractional) |
//! | `OUTBOX_POLL_INTERVAL` | [`poll_interval`](OutboxConfig::poll_interval) | `5s` | `1ms` to `1h`, with unit (`250ms`, `2s`, `1m`) |
//! | `OUTBOX_MAX_RETRY_COUNT` | [`max_retry_count`](OutboxConfig::max_retry_count) | 3 | 0 to 100 |
//! | `OUTBOX_RETRY_BACKOFF_MULTIPLIER` | [`retry_backoff_multiplier`](OutboxConfig::retry_backoff_multiplier) | 2.0 | 1.0 to 10.0 |
//! | `OUTBOX_RETRY_INITIAL_DELAY` | [`retry_initial_delay`](OutboxConfig::retry_initial_delay) | `1s` | `1ms` to `1h` |
//! | `OUTBOX_RETRY_MAX_DELAY` | [`retry_max_delay`](OutboxConfig::retry_max_delay) | `5m` | `1ms` to `24h`, at least the initial delay |
//! | `OUTBOX_LEASE_DURATION` | [`lease_duration`](OutboxConfig::lease_duration) | `30s` | `1s` to `1h` |
//! | `OUTBOX_CLAIM_TIMEOUT` | [`claim_timeout`](OutboxConfig::claim_timeout) | `5s` | `100ms` to `1m` |
//! | `OUTBOX_MAX_PAYLOAD_BYTES` | [`max_payload_bytes`](OutboxConfig::max_payload_bytes) | 1048576 (1 MiB) | 1024 to 268435456 (256 MiB) |
//! | `OUTBOX_DELETE_ON_PUBLISH` | [`delete_on_publish`](OutboxConfig::delete_on_publish) | false | `true`/`false` |
//! | `OUTBOX_DELIVERY` | [`delivery`](OutboxConfig::delivery) | `rows` | `rows` or `cursor` |
//! | `OUTBOX_PARTITIONS` | [`partitions`](OutboxConfig::partitions) | 8 | 1 to 1024 |
//! | `OUTBOX_ENABLE_METRICS` | [`enable_metrics`](OutboxConfig::enable_metrics) | true | `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`) |
//! | `OUTBOX_ENABLE_HEALTH_CHECK` | [`enable_health_check`](OutboxConfig::enable_health_check) | true | as above |
//!
//! (One file of about 500 lines on purpose: the settings, their parsing and their validation are one table that
//! must agree with itself.)
//!
//! A bad value is an error naming the variable, the value and what is allowed; an `OUTBOX_*` variable this
//! crate does not know is an error too (with the closest known name, and without its value, which may be a
//! secret), so a typo never passes silently.
//! Variables of your own that share the prefix are declared with [`ConfigLoader::allow`].
//!
//! ```
//! use outbox::OutboxConfig;
//! use std::time::Duration;
//!
//! let config = OutboxConfig::from_vars([("OUTBOX_BATCH_SIZE", "500"), ("OUTBOX_POLL_INTERVAL", "250ms")])?;
//! assert_eq!(config.batch_size, 500);
//! assert_eq!(config.poll_interval, Duration::from_millis(250));
//!
//! let err = OutboxConfig::from_vars([("OUTBOX_BATCH_SIZE", "0")]).unwrap_err();
//! assert_eq!(err.to_string(), "OUTBOX_BATCH_SIZE=0: must be between 1 and 10000");
//! # Ok::<(), outbox::ConfigError>(())
//! ```

use std::fmt;
use std::time::Duration;

const PREFIX: &str = "OUTBOX_";
const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// How a relay batches, polls and retries. Build it with [`Default`] and set fields, or load it with
/// [`from_env`](Self::from_env); check a hand-built one with [`validate`](Self::validate) (the relay does).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// Events claimed and published per batch. 1 to [`MAX_BATCH_SIZE`](Self::MAX_BATCH_SIZE) (10,000); default
    /// 100. A claim has a fixed cost (round trips, planning, commit) that a bigger batch spreads over more events:
    /// a 100k backlog drained 2-32% faster at 4,000 than at 1,000, depending on the run (BENCHMARKS.md). Keep a
    /// batch publishable well within [`lease_duration`](Self::lease_duration).
    pub batch_size: u32,
    /// How long an idle relay waits before looking again (a fallback where a notification wakes it sooner).
    /// 1 ms to 1 h; default 5 s.
    pub poll_interval: Duration,
    /// Retries after an event's first failed attempt: an event is tried at most `max_retry_count + 1` times,
    /// and the failure after the last retry makes it a dead letter (0: the first failure does). 0 to 100;
    /// default 3.
    pub max_retry_count: u32,
    /// Each retry waits this many times longer than the last. 1.0 to 10.0; default 2.0.
    pub retry_backoff_multiplier: f64,
    /// Wait before the first retry. 1 ms to 1 h; default 1 s.
    pub retry_initial_delay: Duration,
    /// Upper bound of the wait between retries. 1 ms to 24 h, at least `retry_initial_delay`; default 5 min.
    pub retry_max_delay: Duration,
    /// How long a relay owns the events it claimed. A relay that dies mid-batch loses nothing: once the lease
    /// expires another relay claims the events again (a duplicate publish, never a loss). Choose it well above the
    /// time a batch takes to publish. 1 s to 1 h; default 30 s.
    pub lease_duration: Duration,
    /// How long a claim may wait for the claim lock, run one statement, or sit idle inside its transaction
    /// (PostgreSQL; MySQL and MariaDB bound the lock wait, MariaDB also the idle transaction, in whole seconds).
    /// A relay frozen inside its claim has its session ended by the database after this long, so the other
    /// relays go on; a claim that times out is tried again at once. 100 ms to 1 min; default 5 s.
    pub claim_timeout: Duration,
    /// The largest event payload (its stored JSON, in bytes) `add_event` accepts: a larger one is refused at write
    /// time, in the caller's transaction, rather than dead-lettered by the broker later. 1 KiB to 256 MiB; default
    /// 1 MiB, what NATS and Kafka take by default. Raise it together with your broker's limit.
    pub max_payload_bytes: usize,
    /// Delete events once published instead of marking them (no retention cleanup needed, no history kept).
    /// Default false. Not with [`Delivery::Cursor`], which writes nothing per published event.
    pub delete_on_publish: bool,
    /// How relays find and keep track of what to publish: [`Delivery::Rows`] (the default) or
    /// [`Delivery::Cursor`]. See [`Delivery`].
    pub delivery: Delivery,
    /// How many partitions the table's events are spread over, by a stable hash of their aggregate
    /// ([`partition_of`](crate::repository::partition_of)). With [`Delivery::Cursor`], each partition is read
    /// by one relay at a time, so this is how many relays can share the work. Every writer and relay of a table
    /// must agree on it (a relay refuses to start on a table whose partitions say otherwise). 1 to
    /// [`MAX_PARTITIONS`](Self::MAX_PARTITIONS); default 8.
    pub partitions: u16,
    /// Emit metrics through the `metrics` crate. Default true.
    pub enable_metrics: bool,
    /// Whether the application serves health checks (python-outbox-core's setting). The library only carries it: an
    /// application reads it to mount its health endpoint or not, as the example service does with `/health`.
    /// Default true.
    pub enable_health_check: bool,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_secs(5),
            max_retry_count: 3,
            retry_backoff_multiplier: 2.0,
            retry_initial_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(300),
            lease_duration: Duration::from_secs(30),
            claim_timeout: Duration::from_secs(5),
            max_payload_bytes: 1 << 20,
            delete_on_publish: false,
            delivery: Delivery::Rows,
            partitions: 8,
            enable_metrics: true,
            enable_health_check: true,
        }
    }
}

impl OutboxConfig {
    /// The largest [`batch_size`](Self::batch_size): a claim and its marks of this many events stay within every
    /// backend's limits on bound parameters (tested on all four).
    pub const MAX_BATCH_SIZE: u32 = 10_000;

    /// The most [`partitions`](Self::partitions) a table can have.
    pub const MAX_PARTITIONS: u16 = 1024;

    /// Loads the configuration from the process environment (`OUTBOX_*`); unset variables keep their defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        ConfigLoader::new().from_env()
    }

    /// Loads the configuration from key/value pairs, as if they were the environment (handy in tests).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        ConfigLoader::new().from_vars(vars)
    }

    /// Checks every field against its allowed range; reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.range_problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The wait before retry number `attempt` (1 for the first retry): `retry_initial_delay` times
    /// `retry_backoff_multiplier` to the power `attempt - 1`, capped at `retry_max_delay`. The relay adds jitter.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = outbox::OutboxConfig::default();
    /// assert_eq!(config.retry_delay(1), Duration::from_secs(1));
    /// assert_eq!(config.retry_delay(3), Duration::from_secs(4));
    /// assert_eq!(config.retry_delay(100), Duration::from_secs(300));
    /// ```
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
        let factor = self.retry_backoff_multiplier.powi(exponent);
        let delay = self.retry_initial_delay.as_secs_f64() * factor;
        if delay.is_finite() && delay < self.retry_max_delay.as_secs_f64() {
            Duration::from_secs_f64(delay)
        } else {
            self.retry_max_delay
        }
    }

    /// [`retry_delay`](Self::retry_delay) with jitter: 50% to 100% of it, so that what failed together does
    /// not retry together.
    #[cfg_attr(not(feature = "sea-orm"), allow(dead_code))] // used by the relay and the repository
    pub(crate) fn retry_delay_jittered(&self, attempt: u32) -> Duration {
        jittered(self.retry_delay(attempt))
    }

    fn range_problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut check = |var: &'static str, value: String, result: Result<(), String>| {
            if let Err(message) = result {
                problems.push(ConfigProblem::new(var, Some(value), message));
            }
        };
        check(
            "OUTBOX_BATCH_SIZE",
            self.batch_size.to_string(),
            in_range(self.batch_size, 1, Self::MAX_BATCH_SIZE),
        );
        check(
            "OUTBOX_POLL_INTERVAL",
            show(self.poll_interval),
            duration_in(self.poll_interval, MS, HOUR),
        );
        check(
            "OUTBOX_MAX_RETRY_COUNT",
            self.max_retry_count.to_string(),
            in_range(self.max_retry_count, 0, 100),
        );
        check(
            "OUTBOX_RETRY_BACKOFF_MULTIPLIER",
            self.retry_backoff_multiplier.to_string(),
            in_range(self.retry_backoff_multiplier, 1.0, 10.0),
        );
        check(
            "OUTBOX_RETRY_INITIAL_DELAY",
            show(self.retry_initial_delay),
            duration_in(self.retry_initial_delay, MS, HOUR),
        );
        check(
            "OUTBOX_RETRY_MAX_DELAY",
            show(self.retry_max_delay),
            duration_in(
                self.retry_max_delay,
                self.retry_initial_delay.max(MS),
                24 * HOUR,
            ),
        );
        check(
            "OUTBOX_CLAIM_TIMEOUT",
            show(self.claim_timeout),
            duration_in(self.claim_timeout, 100 * MS, Duration::from_secs(60)),
        );
        check(
            "OUTBOX_MAX_PAYLOAD_BYTES",
            self.max_payload_bytes.to_string(),
            in_range(self.max_payload_bytes, 1 << 10, 1 << 28),
        );
        check(
            "OUTBOX_LEASE_DURATION",
            show(self.lease_duration),
            duration_in(self.lease_duration, Duration::from_secs(1), HOUR),
        );
        check(
            "OUTBOX_PARTITIONS",
            self.partitions.to_string(),
            in_range(self.partitions, 1, Self::MAX_PARTITIONS),
        );
        if self.delete_on_publish && self.delivery == Delivery::Cursor {
            problems.push(ConfigProblem::new(
                "OUTBOX_DELETE_ON_PUBLISH",
                Some("true".into()),
                "cannot be used with OUTBOX_DELIVERY=cursor, which writes nothing per published event: delete \
                 old events with purge_published (`outbox purge-published`) instead"
                    .into(),
            ));
        }
        problems
    }
}

/// How relays keep track of what is published.
///
/// - **`Rows`**: each event row carries its state. A claim leases rows (one write per event) and a mark records
///   the outcome (a second write); claims are serialized per table. Runs on every backend.
/// - **`Cursor`**: the table is read as an append-only log in commit order (on MySQL and MariaDB an order the
///   writer keeps: `add_event` must run in a transaction, see the README's guarantees). Each of the
///   [`partitions`](OutboxConfig::partitions) has a cursor row (the last transaction snapshot read to), owned by
///   one relay at a time under a lease with a fencing epoch; a batch is the events whose transactions committed
///   since, and publishing it costs one cursor write, however many events it holds. A failing event parks its
///   aggregate (the event and its successors move to a side table, retried there in order) while the rest of
///   the partition flows. Relays share the partitions between them. See `docs/design.md`, "The commit-order
///   cursor".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// Per-row state: leases and marks (the default).
    #[default]
    Rows,
    /// A commit-order cursor per partition (PostgreSQL).
    Cursor,
}

/// 50% to 100% of `delay`, drawn at random.
#[cfg_attr(not(feature = "sea-orm"), allow(dead_code))] // used by the relay and the repository
pub(crate) fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// Loads an [`OutboxConfig`] from the environment or from pairs, knowing which extra `OUTBOX_*` variables belong
/// to the application.
///
/// ```
/// use outbox::config::ConfigLoader;
///
/// let vars = [("OUTBOX_BROKER", "nats://127.0.0.1:4222"), ("OUTBOX_BATCH_SIZE", "200")];
/// let config = ConfigLoader::new().allow("OUTBOX_BROKER").from_vars(vars)?;
/// assert_eq!(config.batch_size, 200);
///
/// let typo = ConfigLoader::new().from_vars([("OUTBOX_BATCH_SIZ", "200")]).unwrap_err();
/// assert!(typo.to_string().contains("did you mean OUTBOX_BATCH_SIZE?"));
/// # Ok::<(), outbox::ConfigError>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct ConfigLoader {
    allowed: Vec<String>,
}

impl ConfigLoader {
    /// A loader that knows only the crate's own variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares an `OUTBOX_*` variable of the application's own, so it is not reported as unknown.
    pub fn allow(mut self, variable: impl Into<String>) -> Self {
        self.allowed.push(variable.into());
        self
    }

    /// Loads from the process environment. A variable that is not valid Unicode is reported, not skipped.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_env(&self) -> Result<OutboxConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut vars = Vec::new();
        for (key, value) in std::env::vars_os() {
            let Some(key) = key.to_str().filter(|k| k.starts_with(PREFIX)) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => vars.push((key.to_owned(), value)),
                // Not shown: the variable may be one of the application's, holding a secret.
                Err(_) => problems.push(ConfigProblem::new(key, None, "is not valid UTF-8".into())),
            }
        }
        self.load(vars, problems)
    }

    /// Loads from key/value pairs; keys without the `OUTBOX_` prefix are ignored.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_vars<I, K, V>(&self, vars: I) -> Result<OutboxConfig, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars = vars
            .into_iter()
            .filter(|(k, _)| k.as_ref().starts_with(PREFIX))
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        self.load(vars, Vec::new())
    }

    fn load(
        &self,
        mut vars: Vec<(String, String)>,
        mut problems: Vec<ConfigProblem>,
    ) -> Result<OutboxConfig, ConfigError> {
        // Sorted, so problems are reported in a stable order whatever the environment's order.
        vars.sort();
        let mut config = OutboxConfig::default();
        let is_set = |name: &str| vars.iter().any(|(k, _)| k == name);
        if is_set("OUTBOX_POLL_INTERVAL") && is_set("OUTBOX_POLL_INTERVAL_SECONDS") {
            problems.push(ConfigProblem::new(
                "OUTBOX_POLL_INTERVAL",
                None,
                "is set together with OUTBOX_POLL_INTERVAL_SECONDS: set only one of them".into(),
            ));
        }
        for (key, value) in &vars {
            let raw = value.trim();
            match SETTINGS.iter().find(|s| s.var == key) {
                Some(setting) => {
                    if let Err(message) = (setting.set)(&mut config, raw) {
                        problems.push(ConfigProblem::new(key, Some(value.clone()), message));
                    }
                }
                None if self.allowed.iter().any(|a| a == key) => {}
                // Named without its value: a misspelt variable of the application's may hold a secret.
                None => problems.push(ConfigProblem::new(
                    key,
                    None,
                    unknown_variable(key, &self.allowed),
                )),
            }
        }
        // Range problems of variables that failed to parse are already reported; defaults are always valid, so
        // what remains names a variable that was set.
        let range_problems: Vec<ConfigProblem> = config
            .range_problems()
            .into_iter()
            .filter(|p| !problems.iter().any(|q| q.variable == p.variable))
            .collect();
        problems.extend(range_problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }
}

struct Setting {
    var: &'static str,
    set: fn(&mut OutboxConfig, &str) -> Result<(), String>,
}

/// Each variable only parses its type here; ranges are checked once, in `range_problems`, for config built in
/// code and from the environment alike. The seconds form keeps python-outbox-core's own range.
const SETTINGS: &[Setting] = &[
    Setting {
        var: "OUTBOX_BATCH_SIZE",
        set: |c, v| parse_number(v, "a whole number").map(|x| c.batch_size = x),
    },
    Setting {
        var: "OUTBOX_POLL_INTERVAL_SECONDS",
        set: |c, v| {
            let seconds: f64 = parse_number(v, "a number of seconds")?;
            in_range(seconds, 1.0, 3600.0)?;
            c.poll_interval = Duration::from_secs_f64(seconds);
            Ok(())
        },
    },
    Setting {
        var: "OUTBOX_POLL_INTERVAL",
        set: |c, v| parse_duration(v).map(|x| c.poll_interval = x),
    },
    Setting {
        var: "OUTBOX_MAX_RETRY_COUNT",
        set: |c, v| parse_number(v, "a whole number").map(|x| c.max_retry_count = x),
    },
    Setting {
        var: "OUTBOX_RETRY_BACKOFF_MULTIPLIER",
        set: |c, v| parse_number(v, "a number").map(|x| c.retry_backoff_multiplier = x),
    },
    Setting {
        var: "OUTBOX_RETRY_INITIAL_DELAY",
        set: |c, v| parse_duration(v).map(|x| c.retry_initial_delay = x),
    },
    Setting {
        var: "OUTBOX_RETRY_MAX_DELAY",
        set: |c, v| parse_duration(v).map(|x| c.retry_max_delay = x),
    },
    Setting {
        var: "OUTBOX_LEASE_DURATION",
        set: |c, v| parse_duration(v).map(|x| c.lease_duration = x),
    },
    Setting {
        var: "OUTBOX_CLAIM_TIMEOUT",
        set: |c, v| parse_duration(v).map(|x| c.claim_timeout = x),
    },
    Setting {
        var: "OUTBOX_MAX_PAYLOAD_BYTES",
        set: |c, v| parse_number(v, "a whole number of bytes").map(|x| c.max_payload_bytes = x),
    },
    Setting {
        var: "OUTBOX_DELETE_ON_PUBLISH",
        set: |c, v| parse_bool(v).map(|x| c.delete_on_publish = x),
    },
    Setting {
        var: "OUTBOX_DELIVERY",
        set: |c, v| {
            c.delivery = match v.to_ascii_lowercase().as_str() {
                "rows" => Delivery::Rows,
                "cursor" => Delivery::Cursor,
                _ => return Err("must be rows or cursor".into()),
            };
            Ok(())
        },
    },
    Setting {
        var: "OUTBOX_PARTITIONS",
        set: |c, v| parse_number(v, "a whole number").map(|x| c.partitions = x),
    },
    Setting {
        var: "OUTBOX_ENABLE_METRICS",
        set: |c, v| parse_bool(v).map(|x| c.enable_metrics = x),
    },
    Setting {
        var: "OUTBOX_ENABLE_HEALTH_CHECK",
        set: |c, v| parse_bool(v).map(|x| c.enable_health_check = x),
    },
];

fn unknown_variable(key: &str, allowed: &[String]) -> String {
    let closest = SETTINGS
        .iter()
        .map(|s| s.var)
        .chain(allowed.iter().map(String::as_str))
        .map(|known| (strsim::jaro_winkler(key, known), known))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, known)) => format!("unknown setting; did you mean {known}?"),
        None => "unknown setting (declare variables of your own with ConfigLoader::allow)".into(),
    }
}

fn parse_number<T: std::str::FromStr>(value: &str, what: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("must be {what}"))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

/// A duration with a unit (`250ms`, `2s`, `1m 30s`); a bare number is seconds, as in python-outbox-core's variables.
fn parse_duration(value: &str) -> Result<Duration, String> {
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds)
            .map_err(|_| "must be a non-negative duration".to_owned());
    }
    humantime::parse_duration(value)
        .map_err(|_| "must be a duration such as 250ms, 5s or 1m".to_owned())
}

fn in_range<T: PartialOrd + fmt::Display>(value: T, min: T, max: T) -> Result<(), String> {
    // Written so that NaN is out of range.
    if value >= min && value <= max {
        Ok(())
    } else {
        Err(format!("must be between {min} and {max}"))
    }
}

fn duration_in(value: Duration, min: Duration, max: Duration) -> Result<(), String> {
    if value >= min && value <= max {
        Ok(())
    } else {
        Err(format!("must be between {} and {}", show(min), show(max)))
    }
}

fn show(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// One or more invalid settings, each naming its variable, value and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// Every problem found, in variable order.
    pub problems: Vec<ConfigProblem>,
}

/// One invalid setting.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigProblem {
    /// The environment variable, e.g. `OUTBOX_BATCH_SIZE`.
    pub variable: String,
    /// The offending value, if there is one.
    pub value: Option<String>,
    /// What is wrong, e.g. `must be between 1 and 10000`.
    pub message: String,
}

impl ConfigProblem {
    fn new(variable: &str, value: Option<String>, message: String) -> Self {
        Self {
            variable: variable.to_owned(),
            value,
            message,
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(
                f,
                "{}={}: {}",
                self.variable,
                value.escape_debug(),
                self.message
            ),
            None => write!(f, "{}: {}", self.variable, self.message),
        }
    }
}
