//! The in-memory transport: a broker inside the process, with the same semantics as the
//! networked ones (one-of-N per workgroup, ack/nack, redelivery of unacknowledged work),
//! for tests, examples and single-process deployments. The embedded default.
//!
//! Its work queues are the adapter kit's [`QueueEngine`], which
//! a hub or device process can host for remote workers too; broadcasts go to the
//! subscriptions of the broker whose filter matches.
//!
//! Brokers are named: every `memory://name` transport in a process talks to the same
//! broker (`memory://` is the broker named `default`), which lives while any transport
//! for it does.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::kit::{Gate, QueueEngine};
use crate::topic::{Topic, TopicFilter, WorkQueue};
use crate::transport::{
    Capabilities, ConsumeOptions, Consumer, DeadLetter, Subscription, Transport,
};
use crate::url::BrokerUrl;

mod broker;

use broker::{Broker, SubGuard, lock};

crate::settings! {
    /// Settings of an in-memory broker.
    #[derive(Clone, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct MemoryConfig {
        /// Performs a workgroup may hold before `enqueue` waits for room. Default 65,536.
        [key] queue_capacity: usize = 65_536,
        /// Messages a subscription buffers before `publish` waits for it. Default 1,024.
        [key] subscription_capacity: usize = 1024,
        /// Largest payload, in bytes. Default 64 MiB.
        [key] max_payload: usize = 64 << 20,
        /// Whether an unacknowledged delivery comes back when dropped. Default true; false
        /// makes the broker behave like MQTT or Redis pub/sub, to exercise the client's
        /// lease-based redispatch.
        [key] redeliver: bool = true,
        /// Dead letters kept; the oldest are dropped past this. Default 1,024.
        [key] dead_letter_capacity: usize = 1024,
    }
}

impl MemoryConfig {
    /// Parses `memory://[name][?key=value&...]` (keys in the table above), returning the
    /// broker name too.
    pub fn from_url(url: &str) -> Result<(String, MemoryConfig)> {
        let u = BrokerUrl::parse(url)?;
        if u.scheme != "memory" {
            return Err(Error::Config(format!(
                "not a memory:// URL: scheme {}",
                u.scheme
            )));
        }
        if u.port.is_some() || u.username.is_some() || u.password.is_some() || !u.path.is_empty() {
            return Err(Error::Config(
                "a memory:// URL is memory://[name][?options]".into(),
            ));
        }
        let mut c = MemoryConfig::default();
        u.apply_query(MemoryConfig::KEYS, &mut c)?;
        let name = if u.host.is_empty() {
            "default".to_owned()
        } else {
            u.host
        };
        Ok((name, c))
    }
}

/// A transport on an in-process broker. Each `MemoryTransport` is one "connection":
/// closing it ends its own subscriptions and consumers only.
///
/// ```
/// # async fn demo() -> aether_core::Result<()> {
/// use aether_core::{MemoryTransport, Transport};
///
/// let a = MemoryTransport::connect("memory://demo")?;
/// let b = MemoryTransport::connect("memory://demo")?; // same broker
/// assert_eq!(b.capabilities().durable, true);
/// # drop((a, b)); Ok(()) }
/// ```
pub struct MemoryTransport {
    broker: Arc<Broker>,
    conn: u64,
    gate: Gate,
}

impl MemoryTransport {
    /// Connects to the broker named by a `memory://[name][?options]` URL, creating it with
    /// the URL's options if no transport for it exists.
    pub fn connect(url: &str) -> Result<MemoryTransport> {
        let (name, config) = MemoryConfig::from_url(url)?;
        Ok(MemoryTransport::named(&name, config))
    }

    /// Connects to the broker `name`, creating it with `config` if it does not exist.
    pub fn named(name: &str, config: MemoryConfig) -> MemoryTransport {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<Broker>>>> = OnceLock::new();
        let mut reg = REGISTRY
            .get_or_init(Default::default)
            .lock()
            .expect("registry lock");
        reg.retain(|_, b| b.strong_count() > 0);
        let broker = match reg.get(name).and_then(Weak::upgrade) {
            Some(b) => b,
            None => {
                let b = Arc::new(Broker::new(config));
                reg.insert(name.to_owned(), Arc::downgrade(&b));
                b
            }
        };
        MemoryTransport::on(broker)
    }

    /// A transport on a new private broker.
    pub fn new(config: MemoryConfig) -> MemoryTransport {
        MemoryTransport::on(Arc::new(Broker::new(config)))
    }

    /// Another connection to the same broker.
    pub fn reconnect(&self) -> MemoryTransport {
        MemoryTransport::on(self.broker.clone())
    }

    fn on(broker: Arc<Broker>) -> MemoryTransport {
        let conn = broker.ids.fetch_add(1, Ordering::Relaxed);
        MemoryTransport {
            gate: Gate::new(broker.config.max_payload),
            broker,
            conn,
        }
    }

    /// The dead letters the broker holds, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.broker.engine.dead_letters()
    }

    /// Performs waiting in `queue`'s workgroup (not yet delivered).
    pub fn pending(&self, queue: &WorkQueue) -> usize {
        self.broker.engine.pending(queue)
    }

    /// The work-queue engine of this transport's broker.
    pub fn engine(&self) -> &Arc<QueueEngine> {
        &self.broker.engine
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("conn", &self.conn)
            .field("config", &self.broker.config)
            .finish_non_exhaustive()
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        self.broker.disconnect(self.conn);
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .durable(true)
            .redelivers_on_crash(self.broker.config.redeliver)
            .multi_level_wildcards(true)
            .ordered(true)
            .max_payload(self.broker.config.max_payload)
            .dead_letters(true)
            .shared_between_processes(false)
            // In one process nothing is lost between publisher and subscriber.
            .gap_signals(true)
    }

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.gate.check_publish(&payload)?;
        let targets = lock(&self.broker.subs).senders(topic);
        for tx in targets {
            // A receiver that is gone has unsubscribed; its guard removes the entry.
            let _ = tx
                .send(Ok(crate::transport::Message {
                    topic: topic.clone(),
                    payload: payload.clone(),
                }))
                .await;
        }
        Ok(())
    }

    async fn subscribe(&self, filter: &TopicFilter) -> Result<Subscription> {
        self.gate.check_open()?;
        let id = self.broker.ids.fetch_add(1, Ordering::Relaxed);
        let capacity = self.broker.config.subscription_capacity;
        // Nothing is lost in one process: no gap counter.
        let (rx, _gaps) =
            lock(&self.broker.subs).subscribe(id, self.conn, filter.clone(), capacity);
        let guard = SubGuard {
            broker: Arc::downgrade(&self.broker),
            id,
        };
        // In one process nothing is lost, so the gap counter never moves; it is there
        // because the transport reports `gap_signals`.
        let (gaps_tx, gaps) = tokio::sync::watch::channel(0);
        Ok(Subscription::new(rx, Some(Box::new((guard, gaps_tx)))).with_gaps(gaps))
    }

    async fn enqueue(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.gate.check_enqueue(topic, &payload)?;
        self.broker.engine.enqueue(topic, payload, &self.gate).await
    }

    async fn consume(&self, queue: &WorkQueue, options: ConsumeOptions) -> Result<Consumer> {
        self.gate.check_open()?;
        Ok(self
            .broker
            .engine
            .consume(queue, options.prefetch, self.conn))
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.gate.check_open()?;
        self.broker.engine.dead_letter(letter);
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        if self.gate.close() {
            self.broker.disconnect(self.conn);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;
    use std::time::Duration;

    fn topic(tid: &str) -> Topic {
        Topic::new("u", "j", "t", "x", tid, Action::Perform).unwrap()
    }

    #[tokio::test]
    async fn unacked_delivery_comes_back_to_another_consumer() {
        let t = MemoryTransport::new(MemoryConfig::default());
        let q = WorkQueue::new("u", "j", "t", "x", "g").unwrap();
        let mut c1 = t
            .consume(&q, ConsumeOptions::new().prefetch(1))
            .await
            .unwrap();
        t.enqueue(&topic("1"), Bytes::from_static(b"a"))
            .await
            .unwrap();
        let d = c1.next().await.unwrap().unwrap();
        assert_eq!(d.redeliveries, 0);
        let mut c2 = t
            .consume(&q, ConsumeOptions::new().prefetch(1))
            .await
            .unwrap();
        drop(d); // crashed handler
        drop(c1);
        let d = tokio::time::timeout(Duration::from_secs(1), c2.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.topic.tid(), "1");
        assert_eq!(d.redeliveries, 1);
        d.ack().await.unwrap();
        assert_eq!(t.pending(&q), 0);
    }

    #[tokio::test]
    async fn prefetch_bounds_outstanding_and_backlog_goes_to_first_group() {
        let t = MemoryTransport::new(MemoryConfig::default());
        for i in 0..5 {
            t.enqueue(&topic(&i.to_string()), Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let q = WorkQueue::new("u", "j", "t", "x", "g").unwrap();
        let mut c = t
            .consume(&q, ConsumeOptions::new().prefetch(2))
            .await
            .unwrap();
        let a = c.next().await.unwrap().unwrap();
        let _b = c.next().await.unwrap().unwrap();
        assert_eq!(t.pending(&q), 3);
        a.ack().await.unwrap();
        let _c = c.next().await.unwrap().unwrap();
        assert_eq!(t.pending(&q), 2);
    }

    // Paused time: the sleep below lets every runnable task run before it ends, so "still
    // blocked" is exact rather than a guess about 50 ms of a loaded machine.
    #[tokio::test(start_paused = true)]
    async fn full_queue_applies_backpressure() {
        let config = MemoryConfig {
            queue_capacity: 2,
            ..MemoryConfig::default()
        };
        let t = Arc::new(MemoryTransport::new(config));
        let q = WorkQueue::new("u", "j", "t", "x", "g").unwrap();
        let mut c = t
            .consume(&q, ConsumeOptions::new().prefetch(1))
            .await
            .unwrap();
        for i in 0..3 {
            // one in flight, two pending
            t.enqueue(&topic(&i.to_string()), Bytes::new())
                .await
                .unwrap();
        }
        let t2 = t.clone();
        let blocked = tokio::spawn(async move { t2.enqueue(&topic("9"), Bytes::new()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished());
        c.next().await.unwrap().unwrap().ack().await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), blocked)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn close_ends_subscriptions_and_refuses_calls() {
        let t = MemoryTransport::new(MemoryConfig::default());
        let mut s = t.subscribe(&"u/#".parse().unwrap()).await.unwrap();
        t.close().await.unwrap();
        assert!(s.next().await.is_none());
        assert!(matches!(
            t.publish(&topic("1"), Bytes::new()).await,
            Err(Error::Closed)
        ));
    }

    #[test]
    fn url_options() {
        let (name, c) =
            MemoryConfig::from_url("memory://x?redeliver=false&queue_capacity=5").unwrap();
        assert_eq!(name, "x");
        assert!(!c.redeliver);
        assert_eq!(c.queue_capacity, 5);
        assert!(MemoryConfig::from_url("memory://x?nope=1").is_err());
        assert_eq!(MemoryConfig::from_url("memory://").unwrap().0, "default");
    }
}
