//! Redis Streams: a consumer group, acknowledged with XACK once a message is committed or kept, with the stale
//! entries of crashed consumers claimed back (XAUTOCLAIM).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::delivery::Delivery;
use super::subscriber::{Received, Settle, SubscribeError, Subscriber};
use crate::publisher::redis::read_faststream_envelope;

/// Reads Redis streams as one consumer of a consumer group (created at the start of each stream if missing),
/// in FastStream's binary envelope as [`RedisPublisher`](crate::publisher::RedisPublisher) writes it.
///
/// It first reads back its own pending entries (those it received before a crash and never acknowledged), then
/// new ones; entries another consumer of the group left pending for longer than [`claim_after`](Self::claim_after)
/// (default 60 s) are claimed and handled here. A message given back stays pending and is read again after a
/// restart or claimed by another consumer. An entry whose XACK fails (its connection cut) may still be pending, so
/// the next read goes through this consumer's pending list again and hands it out once more, as a duplicate for
/// the inbox; so does a read that fails, since Redis may have delivered entries whose reply was lost.
pub struct RedisSubscriber {
    reads: ConnectionManager,
    acks: ConnectionManager,
    streams: Vec<String>,
    group: String,
    consumer: String,
    claim_after: Duration,
    /// While reading back this consumer's own pending entries (left by an earlier run), the last id read per
    /// stream; `None` once they are all read and new ones (`>`) come.
    own_pending: Option<Vec<String>>,
    buffer: VecDeque<(String, StreamId)>,
    /// Entries handed out by this subscriber; see [`Handed`].
    in_hand: Arc<Mutex<Handed>>,
    /// The read in flight, kept across a dropped `receive`.
    reading: Option<tokio::task::JoinHandle<Result<Read, redis::RedisError>>>,
}

/// The entries this subscriber handed out, as `stream id`: those not yet settled, and the last ones acknowledged.
///
/// XAUTOCLAIM also returns this consumer's own idle entries, and a read of its own pending list returns the ones
/// it is still handling; both are left out. A read's reply is a snapshot: an entry acknowledged after the read
/// but before its reply is taken is no longer in hand yet was pending when read, so the recently acknowledged
/// are left out too.
#[derive(Default)]
struct Handed {
    in_hand: HashSet<String>,
    acknowledged: HashSet<String>,
    acknowledged_order: VecDeque<String>,
    /// An XACK failed: its entry may still be pending at the server, where only this consumer's own pending
    /// list (or another consumer's claim, after `claim_after`) would hand it out again, so the next read starts
    /// with that list.
    read_own_pending: bool,
}

impl Handed {
    /// How many acknowledged entries are remembered: far more than a read (100) can return from before an ack.
    const REMEMBERED: usize = 10_000;

    fn seen(&self, key: &str) -> bool {
        self.in_hand.contains(key) || self.acknowledged.contains(key)
    }

    fn acknowledged(&mut self, key: String) {
        self.in_hand.remove(&key);
        if self.acknowledged.insert(key.clone()) {
            self.acknowledged_order.push_back(key);
        }
        while self.acknowledged_order.len() > Self::REMEMBERED {
            if let Some(oldest) = self.acknowledged_order.pop_front() {
                self.acknowledged.remove(&oldest);
            }
        }
    }
}

/// How long a read for new entries waits on the server: short, so a shutdown or a claim is never far away.
const BLOCK: Duration = Duration::from_secs(1);

fn entry_key(stream: &str, id: &str) -> String {
    format!("{stream} {id}")
}

impl RedisSubscriber {
    /// Connects to `url` and joins `group` on `streams` as `consumer` (a name stable across restarts, so that
    /// its pending entries come back to it).
    pub async fn connect(
        url: &str,
        streams: &[&str],
        group: &str,
        consumer: &str,
    ) -> Result<Self, SubscribeError> {
        let client =
            redis::Client::open(url).map_err(|e| SubscribeError(format!("bad Redis URL: {e}")))?;
        // The reads block for up to BLOCK: a response timeout shorter than that (the connection manager's default
        // is 500 ms) would drop replies whose entries Redis has already put in this consumer's pending list.
        let reads_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(BLOCK + Duration::from_secs(10)));
        let connect = |config: ConnectionManagerConfig| {
            let client = client.clone();
            async move {
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|e| SubscribeError(format!("cannot connect to Redis: {e}")))
            }
        };
        let mut reads = connect(reads_config).await?;
        let acks = connect(ConnectionManagerConfig::new()).await?;
        for stream in streams {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut reads)
                .await;
            if let Err(error) = created
                && error.code() != Some("BUSYGROUP")
            {
                return Err(SubscribeError(format!(
                    "cannot create group `{group}` on stream `{stream}`: {error}"
                )));
            }
        }
        Ok(Self {
            reads,
            acks,
            streams: streams.iter().map(|s| (*s).to_owned()).collect(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            claim_after: Duration::from_secs(60),
            own_pending: Some(vec!["0".to_owned(); streams.len()]),
            buffer: VecDeque::new(),
            in_hand: Arc::default(),
            reading: None,
        })
    }

    /// How long another consumer's entry may stay unacknowledged before this one claims it (default 60 s): longer
    /// than any handler takes, or a slow handler's message runs twice (the inbox keeps that to once).
    pub fn claim_after(mut self, idle: Duration) -> Self {
        self.claim_after = idle;
        self
    }

    /// Makes the next reads go through this consumer's pending list from its start before new entries.
    fn read_own_pending_again(&mut self) {
        self.own_pending = Some(vec!["0".to_owned(); self.streams.len()]);
    }

    /// What the next read asks for.
    fn plan(&self) -> Plan {
        Plan {
            streams: self.streams.clone(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            claim_after: self.claim_after,
            own_pending: self.own_pending.clone(),
        }
    }

    /// Takes a read's entries into the buffer, leaving out those in hand, and moves the own-pending cursors.
    fn absorb(&mut self, read: Result<Read, redis::RedisError>) -> Result<(), SubscribeError> {
        let read = match read {
            Ok(read) => read,
            Err(error) => {
                // The server may have delivered entries whose reply was lost: they are in this consumer's
                // pending list, older than anything newer, so read that list again before new entries.
                self.read_own_pending_again();
                return Err(SubscribeError(format!("reading Redis streams: {error}")));
            }
        };
        if let (Some(cursors), false) = (&mut self.own_pending, read.claimed) {
            if read.entries.is_empty() {
                self.own_pending = None;
            } else {
                for (stream, entry) in &read.entries {
                    if let Some(i) = self.streams.iter().position(|s| s == stream) {
                        cursors[i].clone_from(&entry.id);
                    }
                }
            }
        }
        let in_hand = self.in_hand.lock().unwrap_or_else(PoisonError::into_inner);
        self.buffer.extend(
            read.entries
                .into_iter()
                .filter(|(stream, entry)| !in_hand.seen(&entry_key(stream, &entry.id))),
        );
        Ok(())
    }
}

/// The parameters of one read, owned so the read can run as a task of its own.
struct Plan {
    streams: Vec<String>,
    group: String,
    consumer: String,
    claim_after: Duration,
    own_pending: Option<Vec<String>>,
}

/// What one read got: claimed entries (then nothing was read) or read ones.
struct Read {
    entries: Vec<(String, StreamId)>,
    claimed: bool,
}

/// Claims idle entries of the group (XAUTOCLAIM); if there are none, reads this consumer's own pending entries
/// after the cursors, or new entries (XREADGROUP).
async fn read(mut connection: ConnectionManager, plan: Plan) -> Result<Read, redis::RedisError> {
    let mut claimed = Vec::new();
    for stream in &plan.streams {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(&plan.group)
            .arg(&plan.consumer)
            .arg(u64::try_from(plan.claim_after.as_millis()).unwrap_or(u64::MAX))
            .arg("0-0")
            .arg("COUNT")
            .arg(100)
            .query_async(&mut connection)
            .await?;
        claimed.extend(
            reply
                .claimed
                .into_iter()
                .map(|entry| (stream.clone(), entry)),
        );
    }
    if !claimed.is_empty() {
        return Ok(Read {
            entries: claimed,
            claimed: true,
        });
    }
    let mut command = redis::cmd("XREADGROUP");
    command
        .arg("GROUP")
        .arg(&plan.group)
        .arg(&plan.consumer)
        .arg("COUNT")
        .arg(100);
    if plan.own_pending.is_none() {
        command
            .arg("BLOCK")
            .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(1000));
    }
    command.arg("STREAMS").arg(&plan.streams);
    match &plan.own_pending {
        Some(cursors) => command.arg(cursors),
        None => command.arg(vec![">"; plan.streams.len()]),
    };
    let reply: Option<StreamReadReply> = command.query_async(&mut connection).await?;
    let entries = reply
        .into_iter()
        .flat_map(|reply| reply.keys)
        .flat_map(|key| {
            let stream = key.key;
            key.ids
                .into_iter()
                .map(move |entry| (stream.clone(), entry))
        })
        .collect();
    Ok(Read {
        entries,
        claimed: false,
    })
}

#[async_trait::async_trait]
impl Subscriber for RedisSubscriber {
    async fn receive(&mut self) -> Result<Option<Received>, SubscribeError> {
        // Cancellation-safe: the read runs as a task of its own and stays in `self.reading` if this future is
        // dropped (the consumer's loop does so whenever a message finishes first), so the entries Redis delivers
        // to it are never lost; the next `receive` takes them.
        while self.buffer.is_empty() {
            if self.reading.is_none() {
                let failed_ack = std::mem::take(
                    &mut self
                        .in_hand
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .read_own_pending,
                );
                if failed_ack {
                    self.read_own_pending_again();
                }
                self.reading = Some(tokio::spawn(read(self.reads.clone(), self.plan())));
            }
            let Some(reading) = &mut self.reading else {
                continue;
            };
            let outcome = reading.await;
            self.reading = None;
            let outcome =
                outcome.map_err(|e| SubscribeError(format!("the Redis read task failed: {e}")))?;
            self.absorb(outcome)?;
        }
        let Some((stream, entry)) = self.buffer.pop_front() else {
            return Ok(None);
        };
        self.in_hand
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_hand
            .insert(entry_key(&stream, &entry.id));
        let data: Option<Vec<u8>> = entry
            .map
            .get("__data__")
            .and_then(|value| redis::from_redis_value(value.clone()).ok());
        let (delivery, raw) = match data.as_deref().map(|d| (d, read_faststream_envelope(d))) {
            Some((_, Some((headers, body)))) => (
                Delivery::from_headers(&headers, body),
                String::from_utf8_lossy(body).into_owned(),
            ),
            Some((data, None)) => (
                Err(super::DeliveryError::Body(
                    "the `__data__` field is not a FastStream binary envelope".to_owned(),
                )),
                String::from_utf8_lossy(data).into_owned(),
            ),
            None => (
                Err(super::DeliveryError::Body(
                    "the entry has no `__data__` field".to_owned(),
                )),
                format!("{:?}", entry.map.keys().collect::<Vec<_>>()),
            ),
        };
        Ok(Some(Received {
            delivery,
            raw,
            settle: Box::new(RedisSettle {
                acks: self.acks.clone(),
                in_hand: self.in_hand.clone(),
                stream,
                group: self.group.clone(),
                id: entry.id,
            }),
        }))
    }
}

struct RedisSettle {
    acks: ConnectionManager,
    in_hand: Arc<Mutex<Handed>>,
    stream: String,
    group: String,
    id: String,
}

impl RedisSettle {
    fn handed(&self) -> std::sync::MutexGuard<'_, Handed> {
        self.in_hand.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Settle for RedisSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), SubscribeError> {
        let acked = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.id)
            .query_async::<u64>(&mut self.acks)
            .await;
        // Moved out of hand only once the XACK is answered: until then the entry is still pending, and a claim
        // or a read of pending entries in between would hand it out again.
        let key = entry_key(&self.stream, &self.id);
        match acked {
            Ok(_) => {
                self.handed().acknowledged(key);
                Ok(())
            }
            Err(error) => {
                // Still pending, or not: the next read of this consumer's own pending list tells.
                let mut handed = self.handed();
                handed.in_hand.remove(&key);
                handed.read_own_pending = true;
                Err(SubscribeError(format!("XACK failed: {error}")))
            }
        }
    }

    async fn give_back(self: Box<Self>) -> Result<(), SubscribeError> {
        let key = entry_key(&self.stream, &self.id);
        self.handed().in_hand.remove(&key);
        // Redis has no negative acknowledgement: the entry stays pending, for this consumer's next start or for
        // another consumer's claim.
        Ok(())
    }
}
