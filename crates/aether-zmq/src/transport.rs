//! [`ZmqTransport`]: the [`Transport`] over one DEALER connection to a device, which this
//! process may host itself (`bind=true`).

use std::fmt;
use std::sync::Arc;

use aether_core::kit::{Outlet, Settle};
use aether_core::{
    Bytes, Capabilities, ConsumeOptions, Consumer, DeadLetter, Error, Result, Subscription, Topic,
    TopicFilter, Transport, WorkQueue,
};
use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::config::ZmqConfig;
use crate::device::Device;
use crate::link::{Link, Local, Out, lock};
use crate::wire::ToDevice;

/// A connection to an aether-zmq device.
///
/// ```no_run
/// # async fn demo() -> aether_core::Result<()> {
/// use aether_zmq::ZmqTransport;
///
/// // This process hosts the device; other processes connect with zmq://this-host:5555.
/// let host = ZmqTransport::connect("zmq://0.0.0.0:5555?bind=true").await?;
/// # drop(host); Ok(()) }
/// ```
pub struct ZmqTransport {
    link: Arc<Link>,
    /// The device this process hosts, for `bind=true`.
    host: Option<Arc<Device>>,
}

impl ZmqTransport {
    /// Connects as a `zmq://` URL says (see [`ZmqConfig`]).
    pub async fn connect(url: &str) -> Result<ZmqTransport> {
        ZmqTransport::connect_with(ZmqConfig::from_url(url)?).await
    }

    /// Connects with `config`: to the device at `host:port`, or, with `bind`, to the
    /// device this process hosts there (started by the first such transport, stopped
    /// with the last).
    pub async fn connect_with(config: ZmqConfig) -> Result<ZmqTransport> {
        config.validate()?;
        let (endpoint, host) = if config.bind {
            let device = Device::host(&config)?;
            (device.inproc().to_owned(), Some(device))
        } else {
            (config.endpoint(), None)
        };
        let link = Link::connect(&endpoint, config).await?;
        Ok(ZmqTransport { link, host })
    }

    /// The device this transport hosts (`bind=true`), for its stats and dead letters.
    pub fn device(&self) -> Option<&Device> {
        self.host.as_deref()
    }

    /// Messages from the device that did not decode, dropped.
    pub fn malformed(&self) -> u64 {
        self.link
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl fmt::Debug for ZmqTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZmqTransport")
            .field("config", &self.link.config)
            .field("hosts_device", &self.host.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for ZmqTransport {
    fn drop(&mut self) {
        if self.link.gate.close() {
            self.link.send_soon(ToDevice::Bye);
            self.link.stop();
        }
    }
}

#[async_trait]
impl Transport for ZmqTransport {
    fn name(&self) -> &'static str {
        "zmq"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            // The device keeps performs for a workgroup with no worker (not across its own
            // restart, which the clients' lease covers).
            .durable(true)
            .redelivers_on_crash(true)
            .multi_level_wildcards(true)
            // One connection, dispatched in arrival order.
            .ordered(true)
            .max_payload(self.link.config.max_payload)
            .dead_letters(true)
            .shared_between_processes(true)
            .gap_signals(true)
    }

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.link.gate.check_publish(&payload)?;
        let msg = ToDevice::Publish {
            topic: topic.to_string(),
            payload,
        };
        self.link.send(msg).await
    }

    async fn subscribe(&self, filter: &TopicFilter) -> Result<Subscription> {
        self.link.gate.check_open()?;
        let sub = self.link.next_id();
        let (rx, gaps) = {
            let mut state = lock(&self.link.state);
            state.subs.insert(sub, filter.clone());
            let capacity = self.link.config.subscription_capacity;
            state.fanout.subscribe(sub, 0, filter.clone(), capacity)
        };
        let guard = SubGuard {
            link: self.link.clone(),
            sub,
        };
        let text = filter.as_str().to_owned();
        self.link
            .request(|req| ToDevice::Subscribe {
                req,
                sub,
                filter: text,
            })
            .await?;
        Ok(Subscription::new(rx, Some(Box::new(guard))).with_gaps(gaps))
    }

    async fn enqueue(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.link.gate.check_enqueue(topic, &payload)?;
        let topic = topic.to_string();
        self.link
            .request(|req| ToDevice::Enqueue {
                req,
                topic,
                payload,
            })
            .await
    }

    async fn consume(&self, queue: &WorkQueue, options: ConsumeOptions) -> Result<Consumer> {
        self.link.gate.check_open()?;
        let consumer = self.link.next_id();
        let prefetch = u32::try_from(options.prefetch).unwrap_or(u32::MAX);
        let (outlet, rx) = Outlet::new(options.prefetch);
        let queue = format!("{}/{}", queue.key('/'), queue.workgroup());
        let local = Local {
            queue: queue.clone(),
            prefetch,
            outlet,
        };
        lock(&self.link.state).consumers.insert(consumer, local);
        let guard = ConsumerGuard {
            link: self.link.clone(),
            consumer,
        };
        self.link
            .request(|req| ToDevice::Ready {
                req,
                consumer,
                prefetch,
                queue,
            })
            .await?;
        Ok(Consumer::new(rx, Some(Box::new(guard))))
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.link.gate.check_open()?;
        self.link
            .request(|req| ToDevice::DeadLetter {
                req,
                topic: letter.topic,
                payload: letter.payload,
                reason: letter.reason,
            })
            .await
    }

    async fn close(&self) -> Result<()> {
        if self.link.gate.close() {
            let _ = self.link.send(ToDevice::Bye).await;
            self.link.stop();
        }
        Ok(())
    }
}

/// Ends a subscription here and on the device.
struct SubGuard {
    link: Arc<Link>,
    sub: u64,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.link.state);
        state.fanout.remove(self.sub);
        if state.subs.remove(&self.sub).is_some() && !self.link.gate.is_closed() {
            drop(state);
            self.link.send_soon(ToDevice::Unsubscribe { sub: self.sub });
        }
    }
}

/// Ends a consumer here and on the device; what it had not handed out goes back.
struct ConsumerGuard {
    link: Arc<Link>,
    consumer: u64,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        let removed = lock(&self.link.state).consumers.remove(&self.consumer);
        if removed.is_some() && !self.link.gate.is_closed() {
            self.link.send_soon(ToDevice::Cancel {
                consumer: self.consumer,
            });
        }
    }
}

/// Settles a delivery on the device: ack, nack or reject frames naming its session and
/// id; one dropped unsettled is given back (requeued).
#[derive(Debug)]
pub(crate) struct ZmqSettle {
    out: mpsc::Sender<Out>,
    session: u64,
    delivery: u64,
}

impl ZmqSettle {
    pub(crate) fn new(out: mpsc::Sender<Out>, session: u64, delivery: u64) -> ZmqSettle {
        ZmqSettle {
            out,
            session,
            delivery,
        }
    }

    async fn send(&self, msg: ToDevice) -> Result<()> {
        self.out
            .send(Out::Msg(msg))
            .await
            .map_err(|_| Error::Closed)
    }
}

#[async_trait]
impl Settle for ZmqSettle {
    async fn ack(&mut self) -> Result<()> {
        let (session, delivery) = (self.session, self.delivery);
        self.send(ToDevice::Ack { session, delivery }).await
    }

    async fn nack(&mut self, requeue: bool) -> Result<()> {
        let (session, delivery) = (self.session, self.delivery);
        self.send(ToDevice::Nack {
            session,
            delivery,
            requeue,
        })
        .await
    }

    async fn reject(&mut self, letter: DeadLetter) -> Result<()> {
        let (session, delivery) = (self.session, self.delivery);
        self.send(ToDevice::Reject {
            session,
            delivery,
            reason: letter.reason,
        })
        .await
    }

    fn give_back(&mut self) {
        let msg = ToDevice::Nack {
            session: self.session,
            delivery: self.delivery,
            requeue: true,
        };
        if let Err(mpsc::error::TrySendError::Full(frames)) = self.out.try_send(Out::Msg(msg)) {
            let out = self.out.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { out.send(frames).await });
            }
        }
    }
}
