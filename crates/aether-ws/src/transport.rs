//! [`WsTransport`]: the [`Transport`] over one WebSocket to a hub.

use std::fmt;
use std::sync::Arc;

use aether_core::kit::{Outlet, Settle};
use aether_core::{
    Bytes, Capabilities, ConsumeOptions, Consumer, DeadLetter, Error, Result, Subscription, Topic,
    TopicFilter, Transport, WorkQueue,
};
use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use crate::config::WsConfig;
use crate::link::{Link, LocalConsumer, LocalSub, lock};
use crate::wire::{QueueSpec, ToHub, WireReason};

/// A connection to an aether-ws hub.
///
/// ```no_run
/// # async fn demo() -> aether_core::Result<()> {
/// use aether_ws::WsTransport;
///
/// let t = WsTransport::connect("ws://127.0.0.1:8080/ws?token=s3cret").await?;
/// # drop(t); Ok(()) }
/// ```
pub struct WsTransport {
    link: Arc<Link>,
}

impl WsTransport {
    /// Connects as a `ws://` or `wss://` URL says (see [`WsConfig`]).
    pub async fn connect(url: &str) -> Result<WsTransport> {
        WsTransport::connect_with(WsConfig::from_url(url)?).await
    }

    /// Connects with `config`, waiting for the hub's welcome up to its operation timeout.
    pub async fn connect_with(config: WsConfig) -> Result<WsTransport> {
        Ok(WsTransport {
            link: Link::connect(config).await?,
        })
    }

    /// Frames from the hub that did not decode, and error frames the hub sent back.
    pub fn malformed(&self) -> u64 {
        self.link
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connections made to the hub: 1, plus one per reconnection.
    pub fn connections(&self) -> u64 {
        self.link
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsTransport")
            .field("config", &self.link.config)
            .finish_non_exhaustive()
    }
}

impl Drop for WsTransport {
    fn drop(&mut self) {
        self.link.stop();
    }
}

#[async_trait]
impl Transport for WsTransport {
    fn name(&self) -> &'static str {
        "ws"
    }

    fn capabilities(&self) -> Capabilities {
        let caps = self.link.caps().unwrap_or(crate::wire::WireCaps {
            durable: false,
            redelivers_on_crash: false,
            multi_level_wildcards: false,
            max_payload: 0,
            dead_letters: false,
        });
        let max = (caps.max_payload as usize).min(self.link.config.max_payload);
        Capabilities::new()
            // What the hub's backend keeps and redelivers, the hub keeps and redelivers.
            .durable(caps.durable)
            .redelivers_on_crash(caps.redelivers_on_crash)
            .multi_level_wildcards(caps.multi_level_wildcards)
            // Each subscription is forwarded on its own by the hub.
            .ordered(false)
            .max_payload(max)
            .dead_letters(caps.dead_letters)
            .shared_between_processes(true)
            .gap_signals(true)
    }

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.check_payload(&payload)?;
        self.link.gate.check_publish(&payload)?;
        let topic = topic.to_string();
        self.link
            .request(|req| ToHub::Publish {
                req,
                topic,
                payload: payload.to_vec(),
            })
            .await
    }

    async fn subscribe(&self, filter: &TopicFilter) -> Result<Subscription> {
        self.link.gate.check_open()?;
        let sub = self.link.next_id();
        let (tx, rx) = mpsc::channel(self.link.config.subscription_capacity);
        let (gaps_tx, gaps) = watch::channel(0);
        let text = filter.as_str().to_owned();
        lock(&self.link.state).subs.insert(
            sub,
            LocalSub {
                filter: text.clone(),
                tx,
                gaps: gaps_tx,
            },
        );
        let guard = SubGuard {
            link: self.link.clone(),
            sub,
        };
        self.link
            .request(|req| ToHub::Subscribe {
                req,
                sub,
                filter: text,
            })
            .await?;
        Ok(Subscription::new(rx, Some(Box::new(guard))).with_gaps(gaps))
    }

    async fn enqueue(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.check_payload(&payload)?;
        self.link.gate.check_enqueue(topic, &payload)?;
        let topic = topic.to_string();
        self.link
            .request(|req| ToHub::Enqueue {
                req,
                topic,
                payload: payload.to_vec(),
            })
            .await
    }

    async fn consume(&self, queue: &WorkQueue, options: ConsumeOptions) -> Result<Consumer> {
        self.link.gate.check_open()?;
        let consumer = self.link.next_id();
        let prefetch = u32::try_from(options.prefetch).unwrap_or(u32::MAX);
        let (outlet, rx) = Outlet::new(options.prefetch);
        let spec = QueueSpec {
            union: queue.union().to_owned(),
            job: queue.job().to_owned(),
            task: queue.task().to_owned(),
            context: queue.context().to_owned(),
            workgroup: queue.workgroup().to_owned(),
        };
        let lease_ms = options.lease.as_millis() as u64;
        let local = LocalConsumer {
            queue: spec.clone(),
            prefetch,
            lease_ms,
            max_deliveries: options.max_deliveries,
            outlet,
        };
        lock(&self.link.state).consumers.insert(consumer, local);
        let guard = ConsumerGuard {
            link: self.link.clone(),
            consumer,
        };
        self.link
            .request(|req| ToHub::Consume {
                req,
                consumer,
                queue: spec,
                prefetch,
                lease_ms,
                max_deliveries: options.max_deliveries,
            })
            .await?;
        Ok(Consumer::new(rx, Some(Box::new(guard))))
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.link.gate.check_open()?;
        let reason = WireReason::from(&letter.reason);
        self.link
            .request(|req| ToHub::DeadLetter {
                req,
                topic: letter.topic,
                payload: letter.payload.to_vec(),
                reason,
            })
            .await
    }

    async fn close(&self) -> Result<()> {
        self.link.stop();
        Ok(())
    }
}

impl WsTransport {
    /// Refuses a payload above the hub's limit (the gate holds this side's own).
    fn check_payload(&self, payload: &[u8]) -> Result<()> {
        let limit = self.capabilities().max_payload;
        if payload.len() > limit {
            return Err(Error::PayloadTooLarge {
                size: payload.len(),
                limit,
            });
        }
        Ok(())
    }
}

/// Ends a subscription here and on the hub.
struct SubGuard {
    link: Arc<Link>,
    sub: u64,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        let removed = lock(&self.link.state).subs.remove(&self.sub);
        if removed.is_some() && !self.link.gate.is_closed() {
            self.link
                .send_soon(None, &ToHub::Unsubscribe { sub: self.sub });
        }
    }
}

/// Ends a consumer here and on the hub; what it had not handed out goes back.
struct ConsumerGuard {
    link: Arc<Link>,
    consumer: u64,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        let removed = lock(&self.link.state).consumers.remove(&self.consumer);
        if removed.is_some() && !self.link.gate.is_closed() {
            self.link.send_soon(
                None,
                &ToHub::Cancel {
                    consumer: self.consumer,
                },
            );
        }
    }
}

/// Settles a delivery on the hub, on the connection it came by; after a reconnection the
/// hub has given it back already, and settling it is a no-op.
#[derive(Debug)]
pub(crate) struct WsSettle {
    link: Arc<Link>,
    epoch: u64,
    tag: u64,
}

impl WsSettle {
    pub(crate) fn new(link: Arc<Link>, epoch: u64, tag: u64) -> WsSettle {
        WsSettle { link, epoch, tag }
    }

    async fn send(&self, frame: ToHub) -> Result<()> {
        if self.link.epoch() != self.epoch {
            return Ok(());
        }
        self.link.send(Some(self.epoch), &frame).await
    }
}

#[async_trait]
impl Settle for WsSettle {
    async fn ack(&mut self) -> Result<()> {
        self.send(ToHub::Ack { tag: self.tag }).await
    }

    async fn nack(&mut self, requeue: bool) -> Result<()> {
        self.send(ToHub::Nack {
            tag: self.tag,
            requeue,
        })
        .await
    }

    async fn reject(&mut self, letter: DeadLetter) -> Result<()> {
        let reason = WireReason::from(&letter.reason);
        self.send(ToHub::Reject {
            tag: self.tag,
            reason,
        })
        .await
    }

    async fn keep_alive(&mut self) -> Result<()> {
        self.send(ToHub::KeepAlive { tag: self.tag }).await
    }

    fn give_back(&mut self) {
        if self.link.gate.is_closed() {
            return;
        }
        let frame = ToHub::Nack {
            tag: self.tag,
            requeue: true,
        };
        self.link.send_soon(Some(self.epoch), &frame);
    }
}
