//! [`MqttTransport`]: the connection, publishing, subscriptions and reconnection.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use aether_core::kit::Gate;
use aether_core::{
    Bytes, Capabilities, ConsumeOptions, Consumer, DeadLetter, Error, Result, Subscription, Topic,
    TopicFilter, Transport, WorkQueue,
};
use async_trait::async_trait;
use paho_mqtt as paho;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::config::{MqttConfig, MqttVersion};
use crate::connection::{self, Link};
use crate::dead_letter::{self, RetainBudget};
use crate::error::{MqttError, is_disconnect, paho as paho_err};
use crate::queue::{ConsumerGuard, Slot};
use crate::router::{Local, Router};

/// The MQTT transport: broadcast over plain subscriptions, work queues over shared
/// subscriptions (`$share/{union}_{job}_{workgroup}/...`, the topics Python AetherMagic
/// uses), QoS 1, on one paho-mqtt connection that reconnects and restores its
/// subscriptions by itself. See the [crate docs](crate) for the guarantees.
#[derive(Clone)]
pub struct MqttTransport {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    client: paho::AsyncClient,
    config: MqttConfig,
    client_id: String,
    router: Arc<Router>,
    /// Closed/oversize checks; closed by `close` or `Drop`.
    gate: Gate,
    /// Permits for publishes awaiting the broker's acknowledgement.
    inflight: Semaphore,
    /// Dead letters that may still be retained in the current expiry window.
    retain_budget: RetainBudget,
    link: Arc<watch::Sender<Link>>,
}

impl MqttTransport {
    /// Connects to the broker a `mqtt://` or `mqtts://` URL names (see
    /// [`MqttConfig::from_url`]). Fails if the broker cannot be reached.
    pub async fn connect(url: &str) -> Result<MqttTransport> {
        MqttTransport::connect_with(MqttConfig::from_url(url)?).await
    }

    /// Connects with `config`. Fails if the broker cannot be reached within
    /// [`MqttConfig::connect_timeout`].
    pub async fn connect_with(config: MqttConfig) -> Result<MqttTransport> {
        config.validate()?;
        let client_id = config.client_id.clone().unwrap_or_else(|| {
            format!(
                "aether-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            )
        });
        let router = Arc::new(Router::new());
        let link = Arc::new(watch::channel(Link::default()).0);
        let client = connection::create(&config, &client_id, &router, &link)?;

        let options = match connection::connect_options(&config, &client_id) {
            Ok(o) => o,
            Err(e) => {
                connection::retire(client, None, false);
                return Err(e);
            }
        };
        let uri = config.server_uri();
        let token = client.connect(options);
        let pending = token.clone();
        let failure = match tokio::time::timeout(
            config.connect_timeout + Duration::from_secs(1),
            token,
        )
        .await
        {
            Ok(Ok(_)) => None,
            Ok(Err(source)) => Some(
                MqttError::Connect {
                    uri: uri.clone(),
                    source,
                }
                .into(),
            ),
            Err(_) => Some(Error::Timeout("mqtt connect")),
        };
        if let Some(e) = failure {
            connection::retire(client, Some(pending), false);
            return Err(e);
        }
        // paho may run the connected callback just after completing the connect token.
        let mut up = link.subscribe();
        let _ = tokio::time::timeout(config.connect_timeout, up.wait_for(|l| l.connects > 0)).await;
        tracing::debug!(%uri, %client_id, "mqtt connected");
        tokio::spawn(count_gaps(link.subscribe(), Arc::downgrade(&router)));
        Ok(MqttTransport {
            inner: Arc::new(Inner {
                inflight: Semaphore::new(config.max_inflight),
                retain_budget: RetainBudget::new(&config),
                gate: Gate::new(config.max_payload),
                client,
                config,
                client_id,
                router,
                link,
            }),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &MqttConfig {
        &self.inner.config
    }

    /// The MQTT client id in use.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// Whether the connection is up right now (it reconnects by itself when it is not).
    pub fn is_connected(&self) -> bool {
        self.inner.link.borrow().up
    }

    /// Connections established so far, the first one included: one more after each
    /// reconnection.
    pub fn connections(&self) -> u64 {
        self.inner.link.borrow().connects
    }

    /// Waits until a connection later than number `after` (see
    /// [`connections`](Self::connections)) is up and every subscription has been restored
    /// on it; returns its number. Fails only when the transport is closed.
    pub async fn wait_restored(&self, after: u64) -> Result<u64> {
        let mut rx = self.inner.link.subscribe();
        let gate = &self.inner.gate;
        let link = rx
            .wait_for(|l| {
                gate.is_closed() || (l.up && l.connects > after && l.restored == l.connects)
            })
            .await
            .map_err(|_| Error::Closed)?;
        let n = link.connects;
        drop(link);
        self.inner.check_open()?;
        Ok(n)
    }

    /// Messages dropped because a local subscription or consumer had
    /// [`MqttConfig::subscription_capacity`] messages waiting already.
    pub fn overflowed(&self) -> u64 {
        self.inner.router.overflowed()
    }
}

impl fmt::Debug for MqttTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttTransport")
            .field("client_id", &self.inner.client_id)
            .field("config", &self.inner.config)
            .field("link", &*self.inner.link.borrow())
            .finish_non_exhaustive()
    }
}

/// How a message is published.
pub(crate) struct Publish<'a> {
    pub(crate) topic: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) retain: bool,
    /// MQTT 5 user properties.
    pub(crate) user: &'a [(&'a str, &'a str)],
    /// MQTT 5 message expiry, in seconds.
    pub(crate) expiry: Option<u32>,
}

impl<'a> Publish<'a> {
    /// A plain message: not retained, no user properties.
    pub(crate) fn plain(topic: &'a str, payload: &'a [u8]) -> Self {
        Publish {
            topic,
            payload,
            retain: false,
            user: &[],
            expiry: None,
        }
    }
}

impl Inner {
    fn v5(&self) -> bool {
        self.config.version == MqttVersion::V5
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.gate.is_closed()
    }

    fn check_open(&self) -> Result<()> {
        self.gate.check_open()
    }

    fn message(&self, p: &Publish<'_>) -> Result<paho::Message> {
        let mut m = paho::MessageBuilder::new()
            .topic(p.topic)
            .payload(p.payload)
            .qos(1)
            .retained(p.retain);
        if self.v5() && (!p.user.is_empty() || p.expiry.is_some()) {
            let mut props = paho::Properties::new();
            for (k, v) in p.user {
                props
                    .push_string_pair(paho::PropertyCode::UserProperty, k, v)
                    .map_err(paho_err)?;
            }
            if let Some(secs) = p.expiry {
                let secs = i32::try_from(secs).unwrap_or(i32::MAX);
                props
                    .push_int(paho::PropertyCode::MessageExpiryInterval, secs)
                    .map_err(paho_err)?;
            }
            m = m.properties(props);
        }
        Ok(m.finalize())
    }

    /// Publishes at QoS 1 and waits for the broker's acknowledgement. Waits out a
    /// reconnection (a message in flight when the connection dropped is sent again), up to
    /// [`MqttConfig::operation_timeout`].
    pub(crate) async fn publish(&self, p: Publish<'_>) -> Result<()> {
        self.gate.check_publish(p.payload)?;
        let deadline = Instant::now() + self.config.operation_timeout;
        let _permit = tokio::time::timeout_at(deadline, self.inflight.acquire())
            .await
            .map_err(|_| Error::Timeout("mqtt publish"))?
            .map_err(|_| Error::Closed)?;
        loop {
            let connects = self.link.borrow().connects;
            let token: paho::Token = self.client.publish(self.message(&p)?).into();
            let rsp = tokio::time::timeout_at(deadline, token)
                .await
                .map_err(|_| Error::Timeout("mqtt publish"))?;
            match rsp {
                Ok(_) => return Ok(()),
                Err(e) if is_disconnect(&e) && !self.is_closed() => {
                    tracing::debug!(topic = p.topic, error = %e, "publish interrupted; sending again after reconnecting");
                    self.reconnected(connects, deadline).await?;
                }
                Err(e) => return Err(paho_err(e)),
            }
        }
    }

    /// Publishes without waiting (from `Drop`): paho queues it and sends it when it can.
    pub(crate) fn publish_detached(&self, p: Publish<'_>) {
        if self.is_closed() {
            return;
        }
        match self.message(&p) {
            Ok(m) => drop(self.client.publish(m)),
            Err(e) => tracing::warn!(topic = p.topic, error = %e, "message not given back"),
        }
    }

    /// Waits until a connection newer than number `after` is up.
    async fn reconnected(&self, after: u64, deadline: Instant) -> Result<()> {
        let mut rx = self.link.subscribe();
        let wait = rx.wait_for(|l| l.up && l.connects > after);
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(_)) => self.check_open(),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout("mqtt reconnect")),
        }
    }

    /// Sends the SUBSCRIBE of a broker subscription and waits for the broker's answer.
    async fn subscribe(&self, filter: &str, id: u32) -> Result<()> {
        let deadline = Instant::now() + self.config.operation_timeout;
        loop {
            let connects = self.link.borrow().connects;
            let token = connection::subscribe_token(&self.client, filter, id, self.v5());
            let rsp = tokio::time::timeout_at(deadline, token)
                .await
                .map_err(|_| Error::Timeout("mqtt subscribe"))?;
            match rsp {
                Err(e) if is_disconnect(&e) && !self.is_closed() => {
                    self.reconnected(connects, deadline).await?;
                }
                other => return connection::check_suback(filter, other),
            }
        }
    }

    /// Undoes a local subscription or consumer; unsubscribes at the broker with the last.
    pub(crate) fn remove(&self, local: Local) {
        if let Some(filter) = self.router.remove(local)
            && !self.is_closed()
        {
            // Answered or not, the routing entry is gone: nothing more reaches this receiver.
            drop(self.client.unsubscribe(filter));
        }
    }

    /// Publishes a dead letter on `{dead_letter_topic}/{topic}`, bounded as
    /// [`dead_letter`](crate::dead_letter) says.
    pub(crate) async fn dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let l = dead_letter::prepare(&self.config, &self.retain_budget, letter)?;
        tracing::warn!(topic = %l.topic, reason = %letter.reason, "dead letter");
        self.publish(Publish {
            topic: &l.topic,
            payload: &l.payload,
            retain: l.retain,
            user: &l.user_pairs(),
            expiry: l.expiry,
        })
        .await
    }

    /// Publishes a dead letter without waiting (from paho's callback thread).
    pub(crate) fn dead_letter_detached(&self, letter: &DeadLetter) {
        match dead_letter::prepare(&self.config, &self.retain_budget, letter) {
            Ok(l) => {
                tracing::warn!(topic = %l.topic, reason = %letter.reason, "dead letter");
                self.publish_detached(Publish {
                    topic: &l.topic,
                    payload: &l.payload,
                    retain: l.retain,
                    user: &l.user_pairs(),
                    expiry: l.expiry,
                });
            }
            Err(_) => {
                tracing::warn!(topic = %letter.topic, reason = %letter.reason, "dead letter dropped: no dead_letter_topic");
            }
        }
    }
}

impl Drop for Inner {
    /// Disconnects (if not closed) and destroys the client on a thread of its own: this may
    /// run on any thread, paho's included, where touching the client would deadlock.
    fn drop(&mut self) {
        let disconnect = self.gate.close();
        if disconnect {
            self.router.close();
        }
        connection::retire(self.client.clone(), None, disconnect);
    }
}

/// Unsubscribes when a [`Subscription`] is dropped.
struct SubscriptionGuard {
    inner: Weak<Inner>,
    local: Local,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.remove(self.local);
        }
    }
}

#[async_trait]
impl Transport for MqttTransport {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    /// Not durable (a perform with no worker subscribed is lost), no redelivery after a
    /// crash (the client's lease redispatches), wildcards, ordered across subscriptions (one
    /// connection, dispatched in arrival order), dead letters
    /// when `dead_letter_topic` is set (bounded; see [`Transport::dead_letter`]).
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .durable(false)
            .redelivers_on_crash(false)
            .multi_level_wildcards(true)
            .ordered(true)
            .max_payload(self.inner.config.max_payload)
            .dead_letters(self.inner.config.dead_letter_topic.is_some())
            .shared_between_processes(true)
            .gap_signals(true)
    }

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.inner
            .publish(Publish::plain(topic.as_str(), &payload))
            .await
    }

    async fn subscribe(&self, filter: &TopicFilter) -> Result<Subscription> {
        self.inner.check_open()?;
        let (tx, rx) = mpsc::channel(self.inner.config.subscription_capacity);
        let (local, broker_filter) = self
            .inner
            .router
            .add_subscription(filter, tx)
            .ok_or(Error::Closed)?;
        let guard = SubscriptionGuard {
            inner: Arc::downgrade(&self.inner),
            local,
        };
        let gaps = self.inner.router.gaps(local).ok_or(Error::Closed)?;
        self.inner.subscribe(&broker_filter, local.sub).await?;
        Ok(Subscription::new(rx, Some(Box::new(guard))).with_gaps(gaps))
    }

    /// Publishes the perform on its topic at QoS 1. With no worker subscribed the broker
    /// drops it: Mosquitto says so in its PUBACK ("no matching subscribers", MQTT 5), but
    /// paho's C library does not pass that code on, so this succeeds and the client's lease
    /// redispatch is what re-sends the task.
    async fn enqueue(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.inner.gate.check_enqueue(topic, &payload)?;
        self.inner
            .publish(Publish::plain(topic.as_str(), &payload))
            .await
    }

    /// Subscribes to the queue's shared subscription
    /// `$share/{union}_{job}_{workgroup}/{union}/{job}/{task}/{context}/+/perform`.
    async fn consume(&self, queue: &WorkQueue, options: ConsumeOptions) -> Result<Consumer> {
        self.inner.check_open()?;
        let weak = Arc::downgrade(&self.inner);
        let (slot, rx) = Slot::new(
            weak.clone(),
            options.prefetch,
            self.inner.config.subscription_capacity,
        );
        let (local, broker_filter) = self
            .inner
            .router
            .add_consumer(queue, slot.clone())
            .ok_or(Error::Closed)?;
        let guard = ConsumerGuard::new(weak, local, slot);
        self.inner.subscribe(&broker_filter, local.sub).await?;
        Ok(Consumer::new(rx, Some(Box::new(guard))))
    }

    /// Publishes the letter's payload, cut to `dead_letter_max_payload`, on
    /// `{dead_letter_topic}/{topic}` (retained by default, up to `dead_letter_capacity`
    /// per `dead_letter_expiry`, with that message expiry on MQTT 5), with the reason,
    /// original topic and size as MQTT 5 user properties `aether-reason`, `aether-topic`,
    /// `aether-size` (and `aether-truncated` when cut).
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.inner.check_open()?;
        self.inner.dead_letter(&letter).await
    }

    /// Publishes the presence's offline message if one is configured, then disconnects.
    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.is_closed() {
            return Ok(());
        }
        if let Some(presence) = &inner.config.presence
            && let Ok((topic, payload)) = presence.will(&inner.client_id)
        {
            let sent = inner
                .publish(Publish::plain(topic.as_str(), &payload))
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "offline presence not sent");
            }
        }
        if !inner.gate.close() {
            return Ok(());
        }
        inner.inflight.close();
        inner.router.close();
        // Wakes whoever waits for the link, to see the transport closed.
        inner.link.send_modify(|l| l.up = false);
        let bye = inner.client.disconnect(
            paho::DisconnectOptionsBuilder::new()
                .timeout(Duration::from_secs(1))
                .finalize(),
        );
        match tokio::time::timeout(Duration::from_secs(2), bye).await {
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "mqtt disconnect"),
        }
        Ok(())
    }
}

/// Counts a gap each time a reconnection has its subscriptions restored: what the broker
/// routed meanwhile is lost on a clean session. (A persistent session keeps QoS 1 messages
/// up to the broker's queue limit; the gap is reported anyway, which only makes clients
/// dispatch again the tasks they have not heard of.)
async fn count_gaps(mut link: watch::Receiver<Link>, router: Weak<Router>) {
    // Restoring the first connection's subscriptions is not a gap.
    let mut seen = 1;
    while link.changed().await.is_ok() {
        let restored = link.borrow_and_update().restored;
        if restored > seen {
            seen = restored;
            let Some(router) = router.upgrade() else {
                return;
            };
            router.gap_all();
        }
    }
}
