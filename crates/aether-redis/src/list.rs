//! The work queue in list mode: the Python library's `LPUSH`/`BRPOP`, made reliable.
//!
//! Workers register their workgroup in the queue's set (`{prefix}:{u:j:t:x}:groups`); a
//! perform is pushed to every registered workgroup's list in one script, or to a backlog
//! that the first workgroup to register takes over. A consumer moves elements into a
//! processing list of its own (`BLMOVE`, or a script taking several when it has the credit),
//! removes them on ack (`LREM`), and keeps a presence entry fresh (a sorted set scored by
//! expiry, refreshed every third of the lease). Every half lease a consumer reaps the
//! processing lists of consumers whose presence expired back into the workgroup's list,
//! counting a delivery; past `max_deliveries` they go to the dead-letter stream.
//!
//! An element is `{redeliveries}:#{tid length}:{tid}{payload}`.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use aether_core::kit::{Credit, CreditUnit, Outlet, Settle, SettleOnce};
use aether_core::{
    Bytes, ConsumeOptions, Consumer, DeadLetter, Delivery, Error, Result, Topic, WorkQueue,
};
use async_trait::async_trait;
use bytes::BytesMut;
use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, ListInterface};
use fred::types::Value;
use fred::types::lists::LMoveDirection;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::RedisConfig;
use crate::connect::{Connector, is_timeout, redis_err};
use crate::error::rerouted;
use crate::keys::{QueueKeys, consumer_name};
use crate::pubsub::value_bytes;
use crate::reader::{Halt, RawTid, StopGuard, perform_topic, read_retry, reclaim_interval, refuse};
use crate::scripts;

/// Encodes a list element: `{redeliveries}:#{tid length}:{tid}{payload}`. The length makes
/// it unambiguous whatever the tid holds (`{r}:{tid}:{payload}` took a tid holding `:` for
/// a shorter tid and a longer payload).
fn element(redeliveries: u32, tid: &str, payload: &[u8]) -> Bytes {
    let head = format!("{redeliveries}:#{}:{tid}", tid.len());
    let mut b = BytesMut::with_capacity(head.len() + payload.len());
    b.extend_from_slice(head.as_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

/// Decodes a list element: redeliveries, tid, payload; `None` if it is not in the form
/// [`element`] writes.
fn parse_element(e: &Bytes) -> Option<(u32, RawTid, Bytes)> {
    let number = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<usize>().ok();
    let first = e.iter().position(|&c| c == b':')?;
    let r = u32::try_from(number(&e[..first])?).ok()?;
    let rest = e[first + 1..].strip_prefix(b"#")?;
    let colon = rest.iter().position(|&c| c == b':')?;
    let len = number(&rest[..colon])?;
    let start = first + 2 + colon + 1;
    let end = start.checked_add(len).filter(|&end| end <= e.len())?;
    Some((r, RawTid::from_bytes(&e[start..end]), e.slice(end..)))
}

/// Pushes a perform to every workgroup of its queue, or to the backlog; refuses it with
/// [`Error::QueueFull`] when one of those lists holds `max_len` performs.
pub(crate) async fn enqueue(
    client: &Client,
    config: &RedisConfig,
    topic: &Topic,
    payload: Bytes,
) -> Result<()> {
    let keys = QueueKeys::of_topic(&config.prefix, topic);
    let groups = scripts::LIST_ENQUEUE
        .run::<i64>(
            client,
            vec![keys.groups(), keys.backlog()],
            vec![
                keys.group_list_prefix().into(),
                Value::Bytes(element(0, topic.tid(), &payload)),
                (config.max_len as i64).into(),
            ],
        )
        .await
        .map_err(redis_err)?;
    if groups < 0 {
        return Err(Error::QueueFull {
            limit: config.max_len,
        });
    }
    Ok(())
}

/// What a consumer, its presence task and its deliveries share. When the last of them
/// is gone, whatever is still in the processing list goes back to the workgroup.
struct Shared {
    client: Client,
    keys: QueueKeys,
    group: String,
    name: String,
    group_list: String,
    processing: String,
    consumers: String,
    dead: String,
    queue: WorkQueue,
    lease: Duration,
    max_deliveries: u32,
    dead_max_len: u64,
}

impl Shared {
    /// Registers the workgroup and refreshes this consumer's presence.
    async fn register(&self) -> Result<()> {
        scripts::LIST_REGISTER
            .run::<i64>(
                &self.client,
                vec![
                    self.keys.groups(),
                    self.keys.backlog(),
                    self.group_list.clone(),
                    self.consumers.clone(),
                ],
                vec![
                    self.group.as_str().into(),
                    self.name.as_str().into(),
                    (self.lease.as_millis() as i64).into(),
                ],
            )
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    /// Returns the elements of consumers whose presence expired, or all of `only`'s.
    async fn reap(&self, only: &str) -> Result<i64> {
        let (keys, args) = self.reap_args(only);
        scripts::LIST_REAP
            .run::<i64>(&self.client, keys, args)
            .await
            .map_err(redis_err)
    }

    fn reap_args(&self, only: &str) -> (Vec<String>, Vec<Value>) {
        (
            vec![
                self.consumers.clone(),
                self.group_list.clone(),
                self.dead.clone(),
            ],
            vec![
                self.keys.processing_prefix(&self.group).into(),
                (self.max_deliveries as i64).into(),
                (self.dead_max_len as i64).into(),
                self.keys.topic_prefix.as_str().into(),
                self.group.as_str().into(),
                only.into(),
            ],
        )
    }

    async fn remove(&self, element: &Bytes) -> Result<()> {
        rerouted(|| {
            self.client.lrem::<i64, _, _>(
                self.processing.as_str(),
                1,
                Value::Bytes(element.clone()),
            )
        })
        .await
        .map_err(redis_err)?;
        Ok(())
    }

    async fn requeue(&self, element: &Bytes) -> Result<()> {
        let Some((r, RawTid::Text(tid), payload)) = parse_element(element) else {
            return self.remove(element).await;
        };
        scripts::LIST_REQUEUE
            .run::<i64>(
                &self.client,
                vec![self.processing.clone(), self.group_list.clone()],
                vec![
                    Value::Bytes(element.clone()),
                    Value::Bytes(self::element(r + 1, &tid, &payload)),
                ],
            )
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn reject(&self, element: &Bytes, letter: DeadLetter) -> Result<()> {
        scripts::LIST_REJECT
            .run::<i64>(
                &self.client,
                vec![self.processing.clone(), self.dead.clone()],
                vec![
                    Value::Bytes(element.clone()),
                    (self.dead_max_len as i64).into(),
                    letter.topic.into(),
                    Value::Bytes(letter.payload),
                    letter.reason.to_string().into(),
                    self.group.as_str().into(),
                ],
            )
            .await
            .map_err(redis_err)?;
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Nothing of this consumer is running any more: give back what its processing
        // list still holds, and drop its presence.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (keys, args) = self.reap_args(&self.name);
            let client = self.client.clone();
            rt.spawn(async move {
                if let Err(e) = scripts::LIST_REAP.run::<i64>(&client, keys, args).await {
                    tracing::debug!(error = %e, "redis: returning a stopped consumer's list failed; the reaper will");
                }
            });
        }
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
    let group = queue.workgroup().to_owned();
    let name = consumer_name();
    let shared = Arc::new(Shared {
        client: client.clone(),
        group_list: keys.group_list(&group),
        processing: format!("{}{name}", keys.processing_prefix(&group)),
        consumers: keys.consumers(&group),
        dead: keys.dead(),
        keys,
        group,
        name,
        queue: queue.clone(),
        lease: options.lease.max(Duration::from_millis(30)),
        max_deliveries: options.max_deliveries.max(1),
        dead_max_len: config.dead_letter_capacity,
    });
    shared.register().await?;
    let blocking = connector.blocking_client(config.block).await?;
    tokio::spawn(presence_loop(
        Arc::downgrade(&shared),
        blocking.reconnect_rx(),
        closed.clone(),
    ));
    let prefetch = options.prefetch.max(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (outlet, rx) = Outlet::new(prefetch);
    let reader = Reader {
        shared,
        blocking,
        outlet,
        credit: Credit::new(prefetch),
        block: config.block,
    };
    tokio::spawn(reader.run(Halt::new(stop_rx, closed)));
    Ok(Consumer::new(
        rx,
        Some(Box::new(StopGuard { _stop: stop_tx })),
    ))
}

/// Refreshes the consumer's presence every third of the lease, and registers the
/// workgroup again at once after a reconnection (a restarted server may have lost it),
/// for as long as the consumer or any delivery of it lives.
async fn presence_loop(
    shared: Weak<Shared>,
    mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    mut closed: watch::Receiver<bool>,
) {
    let Some(lease) = shared.upgrade().map(|s| s.lease) else {
        return;
    };
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = reconnects.recv() => {
                if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    // The blocking connection was closed; keep refreshing on the timer.
                    reconnects = tokio::sync::broadcast::channel(1).1;
                }
            }
            _ = closed.changed() => return,
        }
        let Some(s) = shared.upgrade() else { return };
        if let Err(e) = s.register().await {
            tracing::warn!(error = %e, list = %s.group_list, "redis: refreshing consumer presence failed");
        }
    }
}

/// The loop that moves elements into the processing list and hands out deliveries.
struct Reader {
    shared: Arc<Shared>,
    blocking: Client,
    outlet: Outlet,
    credit: Credit,
    block: Duration,
}

impl Reader {
    async fn run(self, mut halt: Halt) {
        let interval = reclaim_interval(self.shared.lease);
        let mut next_reap = Instant::now();
        let mut backoff = read_retry();
        loop {
            let Some(mut permits) = halt.credit(&self.credit).await else {
                break;
            };
            if Instant::now() >= next_reap {
                next_reap = Instant::now() + interval;
                match self.shared.reap("").await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(list = %self.shared.group_list, returned = n, "redis: reaped the work of consumers whose presence expired")
                    }
                    Err(e) => tracing::warn!(error = %e, "redis: reaping failed"),
                }
            }
            // Without blocking, as many as the credit allows.
            let taken = scripts::LIST_TAKE
                .run::<Value>(
                    &self.shared.client,
                    vec![
                        self.shared.group_list.clone(),
                        self.shared.processing.clone(),
                    ],
                    vec![(permits.len() as i64).into()],
                )
                .await;
            match taken {
                Ok(Value::Array(items)) if !items.is_empty() => {
                    backoff.reset();
                    for item in items {
                        self.hand_out(value_bytes(item), &mut permits);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "redis: taking from the list failed; retrying");
                    if halt.pause(&mut backoff).await {
                        break;
                    }
                    continue;
                }
            }
            // Nothing there: wait for one.
            let block = next_reap
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(10), self.block);
            let moved = tokio::select! {
                r = self.blocking.blmove::<Value, _, _>(
                    self.shared.group_list.as_str(),
                    self.shared.processing.as_str(),
                    LMoveDirection::Right,
                    LMoveDirection::Left,
                    block.as_secs_f64(),
                ) => r,
                _ = halt.wait() => break,
            };
            match moved {
                Ok(Value::Null) => {}
                Ok(v) => {
                    backoff.reset();
                    self.hand_out(value_bytes(v), &mut permits);
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "redis: BLMOVE failed; retrying");
                    if halt.pause(&mut backoff).await {
                        break;
                    }
                }
            }
        }
        let _ = self.blocking.quit().await;
    }

    fn hand_out(&self, element: Bytes, permits: &mut Vec<CreditUnit>) {
        let s = &self.shared;
        let Some(permit) = permits.pop() else {
            // Cannot happen (never more than the credit is taken); the element stays in
            // the processing list and comes back with it.
            return;
        };
        let (redeliveries, tid, payload) = match parse_element(&element) {
            Some((r, tid, payload)) => (r, tid, payload),
            None => (0, RawTid::Missing, element.clone()),
        };
        let acker = SettleOnce::new(
            ListSettle {
                shared: s.clone(),
                element,
            },
            Some(permit),
        );
        let item = match perform_topic(&s.queue, &tid) {
            Ok(topic) => Ok(Delivery::new(topic, payload, redeliveries, Box::new(acker))),
            Err(error) => Err(refuse(acker, &s.keys.topic_prefix, &tid, payload, error)),
        };
        match item {
            Ok(delivery) => self.outlet.deliver(delivery),
            Err(invalid) => self.outlet.report(invalid),
        };
    }
}

/// Settles one list element.
struct ListSettle {
    shared: Arc<Shared>,
    element: Bytes,
}

impl fmt::Debug for ListSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListSettle")
            .field("list", &self.shared.processing)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Settle for ListSettle {
    async fn ack(&mut self) -> Result<()> {
        self.shared.remove(&self.element).await
    }

    async fn nack(&mut self, requeue: bool) -> Result<()> {
        if requeue {
            self.shared.requeue(&self.element).await
        } else {
            self.shared.remove(&self.element).await
        }
    }

    async fn reject(&mut self, letter: DeadLetter) -> Result<()> {
        self.shared.reject(&self.element, letter).await
    }

    async fn keep_alive(&mut self) -> Result<()> {
        let s = &self.shared;
        scripts::LIST_TOUCH
            .run::<i64>(
                &s.client,
                vec![s.consumers.clone()],
                vec![s.name.as_str().into(), (s.lease.as_millis() as i64).into()],
            )
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    /// Back to the workgroup now; if that fails, the reaper returns it.
    fn give_back(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            let element = std::mem::take(&mut self.element);
            rt.spawn(async move {
                if let Err(e) = shared.requeue(&element).await {
                    tracing::debug!(error = %e, "redis: requeue of a dropped delivery failed; the reaper returns it");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_round_trip() {
        let e = element(3, "abc123", b"{\"x\":\"a:b\"}\n\0");
        assert_eq!(&e[..11], b"3:#6:abc123");
        let (r, tid, payload) = parse_element(&e).unwrap();
        assert_eq!((r, tid), (3, RawTid::Text("abc123".into())));
        assert_eq!(&payload[..], b"{\"x\":\"a:b\"}\n\0");
        assert!(parse_element(&Bytes::from_static(b"garbage")).is_none());
        assert!(parse_element(&Bytes::from_static(b"x:t:p")).is_none());
        // The form before the tid's length, and lengths past the end.
        for bad in [
            &b"0:bad:tid:{}"[..],
            b"0:#9:abc",
            b"0:#:abc",
            b"0:#99999999999999999999999:x",
        ] {
            assert!(
                parse_element(&Bytes::copy_from_slice(bad)).is_none(),
                "{bad:?}"
            );
        }
        let (_, tid, payload) = parse_element(&Bytes::from_static(b"0:#7:bad:tid{}")).unwrap();
        assert_eq!(
            (tid, &payload[..]),
            (RawTid::Text("bad:tid".into()), &b"{}"[..])
        );
        let (_, tid, payload) = parse_element(&element(0, "", b"p")).unwrap();
        assert_eq!(
            (tid, &payload[..]),
            (RawTid::Text(String::new()), &b"p"[..])
        );
    }
}
