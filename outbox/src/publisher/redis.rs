//! Redis Streams publisher, in FastStream's binary message envelope.

use redis::aio::ConnectionManager;

use super::{ConnectError, Encoding, PublishError, Publisher, Reason};
use crate::cloudevents::BinaryMode;
use crate::message::Message;

/// The magic bytes that open FastStream's `BinaryMessageFormatV1`.
const MAGIC: [u8; 8] = [0x89, b'B', b'I', b'N', 0x0D, 0x0A, 0x1A, 0x0A];

/// Appends each message to a Redis stream (`XADD <stream> [MAXLEN ~ n] * __data__ <envelope>`).
///
/// FastStream 0.6+ reads only the `__data__` field, as its binary envelope: headers (`content-type`,
/// `message_id`, `correlation_id`, the `ce_*` attributes) and the body. The stream is the message's destination
/// (one per aggregate type by default: a stream is ordered, so an aggregate's events stay in order). The
/// connection manager reconnects by itself.
///
/// A server that takes no writes at all (`LOADING`, `READONLY`, `MASTERDOWN`, `OOM`, `CLUSTERDOWN`, `TRYAGAIN`,
/// `BUSY`, `NOREPLICAS`, `MISCONF`, `NOPERM`) is the broker being unavailable: the relay backs off without
/// counting an attempt against any event. A key that holds something other than a stream (`WRONGTYPE`) holds
/// that destination only.
#[derive(Clone)]
pub struct RedisPublisher {
    connection: ConnectionManager,
    max_len: Option<u64>,
    encoding: Encoding,
}

impl std::fmt::Debug for RedisPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPublisher")
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl RedisPublisher {
    /// Connects to `url` (`redis://host:6379`); fails at once with the cause if the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        let client = redis::Client::open(url).map_err(|e| ConnectError::new("redis", url, e))?;
        let connection = ConnectionManager::new(client)
            .await
            .map_err(|e| ConnectError::new("redis", url, e))?;
        Ok(Self {
            connection,
            max_len: None,
            encoding: Encoding::Binary,
        })
    }

    /// Trims each stream to about `max_len` entries (`MAXLEN ~`): consumers that fall further behind lose
    /// messages, so size it for the longest consumer outage.
    #[must_use]
    pub fn max_len(mut self, max_len: u64) -> Self {
        self.max_len = Some(max_len);
        self
    }

    /// Sends structured-mode CloudEvents instead of binary mode.
    #[must_use]
    pub fn structured(mut self) -> Self {
        self.encoding = Encoding::Structured;
        self
    }
}

/// FastStream's `BinaryMessageFormatV1`: magic, u16 version 1, u32 headers offset (18), u32 data offset, u16
/// header count, then each header as u16 length + key + u16 length + value (UTF-8, big-endian lengths), then the
/// body.
pub fn faststream_envelope(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let headers_len: usize = headers.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
    let data_offset = 18 + 2 + headers_len;
    let mut out = Vec::with_capacity(data_offset + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&18u32.to_be_bytes());
    out.extend_from_slice(&(data_offset as u32).to_be_bytes());
    out.extend_from_slice(&(headers.len() as u16).to_be_bytes());
    for (key, value) in headers {
        // Header names and values are short strings; anything longer than u16 is cut rather than corrupt the
        // envelope.
        for part in [key.as_bytes(), value.as_bytes()] {
            let part = &part[..part.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(body);
    out
}

/// An envelope's headers, as (name, value) pairs.
pub(crate) type Headers = Vec<(String, String)>;

/// The headers and body of a FastStream binary envelope (the inverse of [`faststream_envelope`]), or `None` when
/// `bytes` is not a well-formed one.
pub(crate) fn read_faststream_envelope(bytes: &[u8]) -> Option<(Headers, &[u8])> {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok())
    };
    if bytes.get(..8)? != MAGIC || u16_at(8)? != 1 {
        return None;
    }
    let (headers_at, data_at) = (u32_at(10)?, u32_at(14)?);
    let count = u16_at(headers_at)?;
    let mut at = headers_at + 2;
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let mut part = || {
            let len = u16_at(at)?;
            let text = std::str::from_utf8(bytes.get(at + 2..at + 2 + len)?)
                .ok()?
                .to_owned();
            at += 2 + len;
            Some(text)
        };
        let name = part()?;
        let value = part()?;
        headers.push((name, value));
    }
    Some((headers, bytes.get(data_at..)?))
}

fn envelope_headers(message: &Message, encoding: Encoding) -> Vec<(String, String)> {
    let mut headers = encoding.headers(message, &BinaryMode::REDIS);
    headers.push(("message_id".to_owned(), message.id.to_string()));
    headers.push((
        "correlation_id".to_owned(),
        message.effective_correlation_id(),
    ));
    headers
}

#[async_trait::async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        let body = self.encoding.body(message);
        let headers = envelope_headers(message, self.encoding);
        // The envelope stores lengths in 16 bits: a longer header would be cut, which no consumer could tell.
        if let Some((name, value)) = headers
            .iter()
            .find(|(k, v)| k.len().max(v.len()) > usize::from(u16::MAX))
        {
            return Err(PublishError::permanent(Reason(format!(
                "FastStream's envelope cannot carry header `{}…` of {} bytes (at most 65535)",
                name.chars().take(40).collect::<String>(),
                name.len().max(value.len())
            ))));
        }
        let envelope = faststream_envelope(&headers, &body);
        let mut command = redis::cmd("XADD");
        command.arg(&message.destination);
        if let Some(max_len) = self.max_len {
            command.arg("MAXLEN").arg("~").arg(max_len);
        }
        command.arg("*").arg("__data__").arg(envelope);
        let mut connection = self.connection.clone();
        command
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| classify(&message.destination, e))
    }

    async fn check(&self) -> Result<(), PublishError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(PublishError::unavailable)
    }

    fn name(&self) -> &str {
        "redis"
    }
}

/// Server states in which Redis takes no write at all, whatever the message: the broker is unavailable, not
/// the event (loading its data set, a read-only replica, a primary without its replicas or out of memory, a
/// cluster that is down, a script that runs too long, a failed background save that blocks writes, a user
/// without the right).
const BROKER_WIDE: [&str; 10] = [
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "OOM",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "BUSY",
    "NOREPLICAS",
    "MISCONF",
    "NOPERM",
];

fn classify(destination: &str, error: redis::RedisError) -> PublishError {
    if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.code().is_some_and(|code| BROKER_WIDE.contains(&code))
    {
        PublishError::unavailable(error)
    } else if error.code() == Some("WRONGTYPE") {
        // The key holds something other than a stream: every message for it will fail the same way.
        PublishError::destination_unavailable(destination, error)
    } else {
        // The server refused this command for a reason of its own.
        PublishError::transient(error)
    }
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind, make_extension_error};

    use super::*;

    #[test]
    fn server_states_that_refuse_every_write_are_the_broker_unavailable() {
        let kinds = [
            ServerErrorKind::BusyLoading,
            ServerErrorKind::ReadOnly,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ClusterDown,
            ServerErrorKind::TryAgain,
            ServerErrorKind::NoPerm,
        ];
        for kind in kinds {
            let error = RedisError::from((ErrorKind::Server(kind), "refused"));
            assert!(classify("s", error).is_unavailable(), "{kind:?}");
        }
        for code in ["OOM", "BUSY", "NOREPLICAS", "MISCONF"] {
            let error = make_extension_error(code.to_owned(), Some("refused".to_owned()));
            assert!(classify("s", error).is_unavailable(), "{code}");
        }
        let wrong = make_extension_error("WRONGTYPE".to_owned(), None);
        assert!(classify("s", wrong).is_destination_unavailable());
        let other = RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "nope"));
        let other = classify("s", other);
        assert!(!other.is_unavailable() && !other.is_permanent(), "{other}");
    }

    #[test]
    fn an_envelope_reads_back_as_its_headers_and_body() {
        let headers = vec![
            ("ce_type".to_owned(), "com.example.x".to_owned()),
            ("correlation_id".to_owned(), "r ü".to_owned()),
        ];
        let envelope = faststream_envelope(&headers, br#"{"a":1}"#);
        let (read, body) = read_faststream_envelope(&envelope).expect("well-formed");
        assert_eq!((read, body), (headers, &br#"{"a":1}"#[..]));
        assert!(
            read_faststream_envelope(br#"{"a":1}"#).is_none(),
            "plain JSON is no envelope"
        );
        assert!(
            read_faststream_envelope(&envelope[..20]).is_none(),
            "a cut envelope is refused"
        );
    }
}
