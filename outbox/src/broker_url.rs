//! A broker URL as the publisher and subscriber factories read it: scheme, address and query options.

/// `scheme://address?name=value&...`, split once and read by name.
pub(crate) struct BrokerUrl<'a> {
    /// The URL without its query.
    pub(crate) base: &'a str,
    /// Lower-cased.
    pub(crate) scheme: String,
    options: Vec<(&'a str, &'a str)>,
}

impl<'a> BrokerUrl<'a> {
    pub(crate) fn parse(url: &'a str) -> Self {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        Self {
            base,
            scheme: base
                .split("://")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase(),
            options: query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect(),
        }
    }

    /// The address after `scheme://`, without a trailing slash.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(crate) fn address(&self) -> &'a str {
        self.base
            .split_once("://")
            .map_or(self.base, |(_, address)| address)
            .trim_end_matches('/')
    }

    pub(crate) fn option(&self, name: &str) -> Option<&'a str> {
        self.options
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
    }

    /// A comma-separated option, without empty items.
    #[cfg_attr(
        not(any(feature = "nats", feature = "kafka", feature = "redis")),
        allow(dead_code)
    )]
    pub(crate) fn list(&self, name: &str) -> Option<Vec<&'a str>> {
        self.option(name)
            .map(|value| value.split(',').filter(|s| !s.is_empty()).collect())
    }

    /// A numeric option, `default` when absent; `Err` names the option and what was expected.
    #[cfg_attr(
        not(any(
            feature = "nats",
            feature = "rabbitmq",
            feature = "kafka",
            feature = "redis"
        )),
        allow(dead_code)
    )]
    pub(crate) fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        self.option(name).map_or(Ok(default), |value| {
            value
                .parse()
                .map_err(|_| format!("{name}={value}: expected a number"))
        })
    }

    /// Why a URL of this scheme cannot be served by this build: the feature to enable, or the schemes there are.
    pub(crate) fn unsupported(&self, what: &str, schemes: &str) -> String {
        let feature = match self.scheme.as_str() {
            "nats" => Some("nats"),
            "amqp" | "amqps" => Some("rabbitmq"),
            "redis" | "rediss" => Some("redis"),
            "kafka" => Some("kafka"),
            _ => None,
        };
        match feature {
            Some(feature) => format!(
                "this build has no {} {what}: enable the `{feature}` feature of outbox",
                self.scheme
            ),
            None => format!(
                "unsupported scheme `{}`: expected one of {schemes}",
                self.scheme
            ),
        }
    }
}
