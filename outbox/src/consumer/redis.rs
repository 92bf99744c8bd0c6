//! Redis Streams: a consumer group, acknowledged with XACK once a message is committed or kept, with the stale
//! entries of crashed consumers claimed back (XAUTOCLAIM).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionManager;
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
/// restart or claimed by another consumer.
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
    /// Entries received and not yet settled, as `stream id`: XAUTOCLAIM also returns this consumer's own idle
    /// entries, and one still being handled (or waiting behind its aggregate) must not be handed out twice.
    in_hand: Arc<Mutex<HashSet<String>>>,
}

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
        let connect = || async {
            ConnectionManager::new(client.clone())
                .await
                .map_err(|e| SubscribeError(format!("cannot connect to Redis: {e}")))
        };
        let (mut reads, acks) = (connect().await?, connect().await?);
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
        })
    }

    /// How long another consumer's entry may stay unacknowledged before this one claims it (default 60 s): longer
    /// than any handler takes, or a slow handler's message runs twice (the inbox keeps that to once).
    pub fn claim_after(mut self, idle: Duration) -> Self {
        self.claim_after = idle;
        self
    }

    async fn fill(&mut self) -> Result<(), SubscribeError> {
        let error = |e: redis::RedisError| SubscribeError(format!("reading Redis streams: {e}"));
        for stream in &self.streams {
            let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(u64::try_from(self.claim_after.as_millis()).unwrap_or(u64::MAX))
                .arg("0-0")
                .arg("COUNT")
                .arg(100)
                .query_async(&mut self.reads)
                .await
                .map_err(error)?;
            self.buffer.extend(
                claimed
                    .claimed
                    .into_iter()
                    .map(|entry| (stream.clone(), entry)),
            );
        }
        if !self.buffer.is_empty() {
            return Ok(());
        }
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(100);
        if self.own_pending.is_none() {
            // Short, so a shutdown or a claim is never far away.
            command.arg("BLOCK").arg(1000);
        }
        command.arg("STREAMS").arg(&self.streams);
        match &self.own_pending {
            Some(cursors) => command.arg(cursors),
            None => command.arg(vec![">"; self.streams.len()]),
        };
        let reply: Option<StreamReadReply> =
            command.query_async(&mut self.reads).await.map_err(error)?;
        let entries: Vec<(String, StreamId)> = reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| {
                let stream = key.key;
                key.ids
                    .into_iter()
                    .map(move |entry| (stream.clone(), entry))
            })
            .collect();
        if let Some(cursors) = &mut self.own_pending {
            if entries.is_empty() {
                self.own_pending = None;
            } else {
                for (stream, entry) in &entries {
                    if let Some(i) = self.streams.iter().position(|s| s == stream) {
                        cursors[i].clone_from(&entry.id);
                    }
                }
            }
        }
        let in_hand = self.in_hand.lock().unwrap_or_else(PoisonError::into_inner);
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|(stream, entry)| !in_hand.contains(&entry_key(stream, &entry.id)))
            .collect();
        drop(in_hand);
        self.buffer.extend(entries);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Subscriber for RedisSubscriber {
    async fn receive(&mut self) -> Result<Option<Received>, SubscribeError> {
        // Taken from the buffer only once complete: a dropped `receive` loses nothing (a read in flight leaves its
        // entries pending for this consumer, read again from `0`).
        while self.buffer.is_empty() {
            self.fill().await?;
        }
        let Some((stream, entry)) = self.buffer.pop_front() else {
            return Ok(None);
        };
        self.in_hand
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
    in_hand: Arc<Mutex<HashSet<String>>>,
    stream: String,
    group: String,
    id: String,
}

impl RedisSettle {
    fn release(&self) {
        self.in_hand
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&entry_key(&self.stream, &self.id));
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
        // Released only once the XACK is answered: until then the entry is still pending, and a claim or a read
        // of pending entries in between would hand it out again.
        self.release();
        acked
            .map(drop)
            .map_err(|e| SubscribeError(format!("XACK failed: {e}")))
    }

    async fn give_back(self: Box<Self>) -> Result<(), SubscribeError> {
        self.release();
        // Redis has no negative acknowledgement: the entry stays pending, for this consumer's next start or for
        // another consumer's claim.
        Ok(())
    }
}
