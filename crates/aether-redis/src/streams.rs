//! The work queue in streams mode.
//!
//! One stream per queue (`{prefix}:{u:j:t:x}:stream`), one consumer group per workgroup.
//! `enqueue` is `XADD`, refused with `Error::QueueFull` at `max_len` entries. A consumer reads with `XREADGROUP ... COUNT n BLOCK`
//! on a connection of its own, `n` being its free prefetch credit; `ack` is `XACK`. Every
//! half lease a consumer claims entries idle longer than the lease from consumers that
//! died (`XAUTOCLAIM`), dead-letters those delivered too often, trims what every group has
//! acknowledged (`XTRIM MINID`) and forgets consumers long gone. A running handler keeps
//! its entry fresh with `XCLAIM ... JUSTID` to itself. `nack(requeue)` acknowledges the
//! entry and adds it again, marked for its group only, in one script.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aether_core::kit::{Credit, CreditUnit, Outlet, Settle, SettleOnce};
use aether_core::{
    Bytes, ConsumeOptions, Consumer, DeadLetter, Delivery, Error, Result, Topic, WorkQueue,
};
use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::RedisConfig;
use crate::connect::{Connector, is_nogroup, is_timeout, redis_err};
use crate::error::rerouted;
use crate::keys::{QueueKeys, consumer_name};
use crate::pubsub::value_bytes;
use crate::reader::{Halt, RawTid, StopGuard, perform_topic, read_retry, reclaim_interval, refuse};
use crate::scripts;

/// Puts a perform on its queue's stream, or refuses it with [`Error::QueueFull`] when the
/// stream holds `max_len` entries: trimming there would drop performs no workgroup has
/// consumed yet (the housekeeping trims what every group has acknowledged).
pub(crate) async fn enqueue(
    client: &Client,
    config: &RedisConfig,
    topic: &Topic,
    payload: Bytes,
) -> Result<()> {
    let keys = QueueKeys::of_topic(&config.prefix, topic);
    let added = scripts::STREAM_ENQUEUE
        .run::<i64>(
            client,
            vec![keys.stream()],
            vec![
                (config.max_len as i64).into(),
                topic.tid().into(),
                Value::Bytes(payload),
            ],
        )
        .await
        .map_err(redis_err)?;
    if added < 0 {
        return Err(Error::QueueFull {
            limit: config.max_len,
        });
    }
    Ok(())
}

/// What a consumer and the deliveries it handed out share.
struct Shared {
    client: Client,
    stream: String,
    dead: String,
    group: String,
    name: String,
    topic_prefix: String,
    queue: WorkQueue,
    dead_max_len: u64,
    /// To the task that acknowledges in batches.
    acks: mpsc::Sender<(String, oneshot::Sender<Result<(), fred::error::Error>>)>,
}

/// Acknowledges in batches: the acks that arrive while one `XACK` is in flight go out
/// together in the next, so a busy consumer sends one `XACK` per batch, an idle one
/// acknowledges at once.
async fn ack_loop(
    client: Client,
    stream: String,
    group: String,
    mut rx: mpsc::Receiver<(String, oneshot::Sender<Result<(), fred::error::Error>>)>,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        let done =
            rerouted(|| client.xack::<i64, _, _, _>(stream.as_str(), group.as_str(), ids.clone()))
                .await
                .map(drop);
        for (_, tx) in batch.drain(..) {
            let _ = tx.send(done.clone());
        }
    }
}

impl Shared {
    async fn ensure_group(&self) -> Result<()> {
        scripts::STREAM_ENSURE_GROUP
            .run::<i64>(
                &self.client,
                vec![self.stream.clone()],
                vec![self.group.as_str().into()],
            )
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn ack(&self, id: &str) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.acks
            .send((id.to_owned(), tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?.map_err(redis_err)
    }

    async fn requeue(&self, id: &str, redeliveries: u32) -> Result<()> {
        scripts::STREAM_REQUEUE
            .run::<i64>(
                &self.client,
                vec![self.stream.clone()],
                vec![
                    self.group.as_str().into(),
                    self.name.as_str().into(),
                    id.into(),
                    (redeliveries as i64).into(),
                ],
            )
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn reject(&self, id: &str, letter: DeadLetter) -> Result<()> {
        scripts::STREAM_REJECT
            .run::<i64>(
                &self.client,
                vec![self.stream.clone(), self.dead.clone()],
                vec![
                    self.group.as_str().into(),
                    id.into(),
                    (self.dead_max_len as i64).into(),
                    letter.topic.into(),
                    Value::Bytes(letter.payload),
                    letter.reason.to_string().into(),
                ],
            )
            .await
            .map_err(redis_err)?;
        Ok(())
    }
}

/// Starts a consumer of `queue` on a connection of its own.
pub(crate) async fn consume(
    connector: &Connector,
    client: &Client,
    config: &RedisConfig,
    queue: &WorkQueue,
    options: ConsumeOptions,
    closed: watch::Receiver<bool>,
) -> Result<Consumer> {
    let keys = QueueKeys::new(&config.prefix, queue);
    let prefetch = options.prefetch.max(1);
    let (acks, acks_rx) = mpsc::channel(prefetch);
    tokio::spawn(ack_loop(
        client.clone(),
        keys.stream(),
        queue.workgroup().to_owned(),
        acks_rx,
    ));
    let shared = Arc::new(Shared {
        client: client.clone(),
        stream: keys.stream(),
        dead: keys.dead(),
        group: queue.workgroup().to_owned(),
        name: consumer_name(),
        topic_prefix: keys.topic_prefix.clone(),
        queue: queue.clone(),
        dead_max_len: config.dead_letter_capacity,
        acks,
    });
    shared.ensure_group().await?;
    let blocking = connector.blocking_client(config.block).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (outlet, rx) = Outlet::new(prefetch);
    let reader = Reader {
        shared,
        blocking,
        outlet,
        credit: Credit::new(prefetch),
        lease: options.lease,
        max_deliveries: options.max_deliveries.max(1),
        block: config.block,
        cursor: "0-0".to_owned(),
    };
    tokio::spawn(reader.run(Halt::new(stop_rx, closed)));
    Ok(Consumer::new(
        rx,
        Some(Box::new(StopGuard { _stop: stop_tx })),
    ))
}

/// The loop that reads from the stream and hands out deliveries.
struct Reader {
    shared: Arc<Shared>,
    blocking: Client,
    outlet: Outlet,
    credit: Credit,
    lease: Duration,
    max_deliveries: u32,
    block: Duration,
    cursor: String,
}

impl Reader {
    async fn run(mut self, mut halt: Halt) {
        let interval = reclaim_interval(self.lease);
        let mut next_reclaim = Instant::now();
        let mut backoff = read_retry();
        loop {
            let Some(mut permits) = halt.credit(&self.credit).await else {
                break;
            };
            if Instant::now() >= next_reclaim {
                next_reclaim = Instant::now() + interval;
                self.reclaim(&mut permits).await;
                if permits.is_empty() {
                    continue;
                }
            }
            let block = next_reclaim
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), self.block);
            let read = tokio::select! {
                r = self.blocking.xreadgroup::<Value, _, _, _, _>(
                    self.shared.group.as_str(),
                    self.shared.name.as_str(),
                    Some(permits.len() as u64),
                    Some(block.as_millis() as u64),
                    false,
                    self.shared.stream.as_str(),
                    ">",
                ) => r,
                _ = halt.wait() => break,
            };
            match read {
                Ok(Value::Null) => {}
                Ok(v) => {
                    backoff.reset();
                    for entry in stream_entries(v) {
                        self.hand_out(entry, None, &mut permits);
                    }
                }
                Err(e) if is_nogroup(&e) => {
                    tracing::info!(stream = %self.shared.stream, group = %self.shared.group, "redis: consumer group missing (server restarted?); creating it again");
                    if let Err(e) = self.shared.ensure_group().await {
                        tracing::warn!(error = %e, "redis: cannot create the consumer group");
                        if halt.pause(&mut backoff).await {
                            break;
                        }
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, stream = %self.shared.stream, "redis: reading the stream failed; retrying");
                    if halt.pause(&mut backoff).await {
                        break;
                    }
                }
            }
        }
        // Stopped: close the blocking connection (the server drops the read), and forget
        // this consumer unless deliveries of it are still out.
        let _ = self.blocking.quit().await;
        let _ = scripts::STREAM_FORGET_CONSUMER
            .run::<i64>(
                &self.shared.client,
                vec![self.shared.stream.clone()],
                vec![
                    self.shared.group.as_str().into(),
                    self.shared.name.as_str().into(),
                ],
            )
            .await;
    }

    /// Claims entries idle past the lease (up to the free credit), and tidies the stream.
    async fn reclaim(&mut self, permits: &mut Vec<CreditUnit>) {
        let s = &self.shared;
        let claimed = scripts::STREAM_RECLAIM
            .run::<Value>(
                &s.client,
                vec![s.stream.clone(), s.dead.clone()],
                vec![
                    s.group.as_str().into(),
                    s.name.as_str().into(),
                    (self.lease.as_millis() as i64).into(),
                    (permits.len() as i64).into(),
                    self.cursor.as_str().into(),
                    (self.max_deliveries as i64).into(),
                    (s.dead_max_len as i64).into(),
                    s.topic_prefix.as_str().into(),
                ],
            )
            .await;
        match claimed {
            Ok(Value::Array(items)) => {
                let mut items = items.into_iter();
                if let Some(cursor) = items.next().and_then(|c| c.as_string()) {
                    self.cursor = cursor;
                }
                for item in items {
                    let Value::Array(parts) = item else { continue };
                    let mut parts = parts.into_iter();
                    let (Some(id), Some(redeliveries), Some(fields)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let Some(id) = id.as_string() else { continue };
                    let redeliveries = redeliveries.as_u64().unwrap_or(0) as u32;
                    tracing::info!(stream = %s.stream, group = %s.group, %id, redeliveries, "redis: reclaimed an entry idle past its lease");
                    self.hand_out((id, fields), Some(redeliveries), permits);
                }
            }
            Ok(other) => tracing::warn!(?other, "redis: unexpected reclaim answer"),
            Err(e) if is_nogroup(&e) => {
                let _ = self.shared.ensure_group().await;
            }
            Err(e) => tracing::warn!(error = %e, "redis: reclaiming idle entries failed"),
        }
        let stale = (self.lease * 4)
            .max(self.block * 4)
            .max(Duration::from_secs(60));
        if let Err(e) = scripts::STREAM_HOUSEKEEPING
            .run::<i64>(
                &self.shared.client,
                vec![self.shared.stream.clone()],
                vec![(stale.as_millis() as i64).into()],
            )
            .await
        {
            tracing::debug!(error = %e, "redis: stream housekeeping failed");
        }
    }

    /// Hands one entry out with a unit of credit. `redeliveries` is known for reclaimed
    /// entries; fresh ones carry it in their `r` field.
    fn hand_out(
        &self,
        (id, fields): (String, Value),
        redeliveries: Option<u32>,
        permits: &mut Vec<CreditUnit>,
    ) {
        let s = &self.shared;
        let fields = Fields::parse(fields);
        if fields.group.as_deref().is_some_and(|g| g != s.group) {
            // Requeued by another workgroup, for itself only.
            let shared = s.clone();
            tokio::spawn(async move { shared.ack(&id).await });
            return;
        }
        let Some(permit) = permits.pop() else {
            // More than asked for cannot happen; leave it pending for the reclaimer.
            return;
        };
        let redeliveries = redeliveries.unwrap_or(fields.redeliveries);
        let topic = perform_topic(&s.queue, &fields.tid);
        let settle = StreamSettle {
            shared: s.clone(),
            id,
            redeliveries,
        };
        let acker = SettleOnce::new(settle, Some(permit));
        let item = match topic {
            Ok(topic) => Ok(Delivery::new(
                topic,
                fields.payload,
                redeliveries,
                Box::new(acker),
            )),
            Err(error) => Err(refuse(
                acker,
                &s.topic_prefix,
                &fields.tid,
                fields.payload,
                error,
            )),
        };
        match item {
            Ok(delivery) => self.outlet.deliver(delivery),
            Err(invalid) => self.outlet.report(invalid),
        };
    }
}

/// The fields of a stream entry aether wrote.
struct Fields {
    tid: RawTid,
    payload: Bytes,
    redeliveries: u32,
    group: Option<String>,
}

impl Fields {
    fn parse(v: Value) -> Fields {
        let mut f = Fields {
            tid: RawTid::Missing,
            payload: Bytes::new(),
            redeliveries: 0,
            group: None,
        };
        let Value::Array(items) = v else { return f };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match k.as_str().as_deref() {
                Some("t") => f.tid = RawTid::from_bytes(&value_bytes(v)),
                Some("p") => f.payload = value_bytes(v),
                Some("r") => f.redeliveries = v.as_u64().unwrap_or(0) as u32,
                Some("g") => f.group = v.as_string(),
                _ => {}
            }
        }
        f
    }
}

/// The entries of an `XREADGROUP` answer for one stream: `[[key, [[id, fields]...]]]`.
fn stream_entries(v: Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let Value::Array(streams) = v else { return out };
    for s in streams {
        let Value::Array(pair) = s else { continue };
        let Some(Value::Array(entries)) = pair.into_iter().nth(1) else {
            continue;
        };
        out.reserve(entries.len());
        for e in entries {
            let Value::Array(e) = e else { continue };
            let mut e = e.into_iter();
            if let (Some(id), Some(fields)) = (e.next(), e.next())
                && let Some(id) = id.as_string()
            {
                out.push((id, fields));
            }
        }
    }
    out
}

/// Settles one stream entry.
struct StreamSettle {
    shared: Arc<Shared>,
    id: String,
    redeliveries: u32,
}

impl fmt::Debug for StreamSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSettle")
            .field("stream", &self.shared.stream)
            .field("group", &self.shared.group)
            .field("id", &self.id)
            .finish()
    }
}

#[async_trait]
impl Settle for StreamSettle {
    async fn ack(&mut self) -> Result<()> {
        self.shared.ack(&self.id).await
    }

    async fn nack(&mut self, requeue: bool) -> Result<()> {
        if requeue {
            self.shared.requeue(&self.id, self.redeliveries + 1).await
        } else {
            self.shared.ack(&self.id).await
        }
    }

    async fn reject(&mut self, letter: DeadLetter) -> Result<()> {
        self.shared.reject(&self.id, letter).await
    }

    async fn keep_alive(&mut self) -> Result<()> {
        let s = &self.shared;
        let owned = scripts::STREAM_KEEP_ALIVE
            .run::<i64>(
                &s.client,
                vec![s.stream.clone()],
                vec![
                    s.group.as_str().into(),
                    s.name.as_str().into(),
                    self.id.as_str().into(),
                ],
            )
            .await
            .map_err(redis_err)?;
        if owned == 1 {
            Ok(())
        } else {
            Err(Error::transport(
                crate::connect::BACKEND,
                "the delivery was reclaimed by another consumer after its lease",
            ))
        }
    }

    /// Back to the workgroup now. If that fails, the entry stays pending and is reclaimed
    /// after the lease.
    fn give_back(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            let (id, redeliveries) = (std::mem::take(&mut self.id), self.redeliveries + 1);
            rt.spawn(async move {
                if let Err(e) = shared.requeue(&id, redeliveries).await {
                    tracing::debug!(error = %e, "redis: requeue of a dropped delivery failed; it comes back after the lease");
                }
            });
        }
    }
}
