//! [`MqttTransport`]: the connection, publishing, subscriptions and reconnection.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use aether_core::{
    Action, Bytes, Capabilities, ConsumeOptions, Consumer, DeadLetter, Error, Result, Subscription,
    Topic, TopicFilter, Transport, WorkQueue,
};
use async_trait::async_trait;
use paho_mqtt as paho;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::config::{MqttConfig, MqttVersion};
use crate::error::{MqttError, is_disconnect, paho as paho_err};
use crate::queue;
use crate::router::{Arrival, Local, REDELIVERIES, Router};

/// The MQTT transport: broadcast over plain subscriptions, work queues over shared
/// subscriptions (`$share/{union}_{job}_{workgroup}/...`, the topics Python AetherMagic
/// uses), QoS 1, on one paho-mqtt connection that reconnects and restores its
/// subscriptions by itself. See the [crate docs](crate) for the guarantees.
#[derive(Clone)]
pub struct MqttTransport {
    inner: Arc<Inner>,
}

/// The state of the connection, as the paho callbacks report it.
#[derive(Clone, Copy, Debug, Default)]
struct Link {
    up: bool,
    /// Connections established so far (the first one included).
    connects: u64,
    /// The latest connection on which every subscription has been restored.
    restored: u64,
}

pub(crate) struct Inner {
    client: paho::AsyncClient,
    config: MqttConfig,
    client_id: String,
    router: Arc<Router>,
    closed: AtomicBool,
    /// Permits for publishes awaiting the broker's acknowledgement.
    inflight: Semaphore,
    link: Arc<watch::Sender<Link>>,
}

impl MqttTransport {
    /// Connects to the broker a `mqtt://` or `mqtts://` URL names (see
    /// [`MqttConfig::from_url`]). Fails if the broker cannot be reached.
    pub async fn connect(url: &str) -> Result<MqttTransport> {
        MqttTransport::with_config(MqttConfig::from_url(url)?).await
    }

    /// Connects with `config`. Fails if the broker cannot be reached within
    /// [`MqttConfig::connect_timeout`].
    pub async fn with_config(config: MqttConfig) -> Result<MqttTransport> {
        config.check()?;
        let client_id = config.client_id.clone().unwrap_or_else(|| {
            format!(
                "aether-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            )
        });
        let version = match config.version {
            MqttVersion::V5 => paho::MQTT_VERSION_5,
            MqttVersion::V3_1_1 => paho::MQTT_VERSION_3_1_1,
        };
        // Publishes wait for a permit before reaching paho, so its buffer never overflows;
        // the margin is for the few it gets without one (give-backs from dropped consumers).
        let buffered = i32::try_from(config.max_inflight * 2 + 4096).unwrap_or(i32::MAX);
        let create = paho::CreateOptionsBuilder::new()
            .server_uri(config.server_uri())
            .client_id(&client_id)
            .persistence(paho::PersistenceType::None)
            .mqtt_version(version)
            .max_buffered_messages(buffered)
            .send_while_disconnected(true)
            .finalize();
        let client = paho::AsyncClient::new(create).map_err(paho_err)?;
        let router = Arc::new(Router::new());
        let link = Arc::new(watch::channel(Link::default()).0);
        let v5 = config.version == MqttVersion::V5;

        let r = router.clone();
        client.set_message_callback(move |_cli, msg| {
            if let Some(msg) = msg {
                dispatch(&r, &msg, v5);
            }
        });
        let (r, l) = (router.clone(), link.clone());
        let runtime = tokio::runtime::Handle::try_current().ok();
        client.set_connected_callback(move |cli| {
            // Restore the subscriptions first: on a clean session the broker forgot them.
            let n = l.borrow().connects + 1;
            let pending = restore(cli, &r, v5, n, &l, runtime.as_ref());
            l.send_modify(|l| {
                l.up = true;
                l.connects = n;
                if !pending {
                    l.restored = n;
                }
            });
        });
        let l = link.clone();
        client.set_connection_lost_callback(move |_cli| {
            tracing::warn!("mqtt connection lost; reconnecting");
            l.send_modify(|l| l.up = false);
        });
        let l = link.clone();
        client.set_disconnected_callback(move |_cli, _props, reason| {
            tracing::warn!(%reason, "the mqtt broker disconnected us; reconnecting");
            l.send_modify(|l| l.up = false);
        });

        let options = match connect_options(&config, &client_id) {
            Ok(o) => o,
            Err(e) => {
                retire(client, None);
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
            retire(client, Some(pending));
            return Err(e);
        }
        tracing::debug!(%uri, %client_id, "mqtt connected");
        Ok(MqttTransport {
            inner: Arc::new(Inner {
                inflight: Semaphore::new(config.max_inflight),
                client,
                config,
                client_id,
                router,
                closed: AtomicBool::new(false),
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
        let closed = &self.inner.closed;
        let link = rx
            .wait_for(|l| {
                closed.load(Ordering::Acquire)
                    || (l.up && l.connects > after && l.restored == l.connects)
            })
            .await
            .map_err(|_| Error::Closed)?;
        let n = link.connects;
        drop(link);
        self.inner.check_open()?;
        Ok(n)
    }

    /// Messages dropped because a local subscription or consumer had
    /// [`MqttConfig::buffer`] messages waiting already.
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

/// Drops a client whose first connection failed, off paho's threads. The connect token
/// holds a clone of the client and paho drops it inside its failure callback, with its
/// global lock held: were that the last clone, destroying the client there would wait on
/// that lock forever. So wait for the token (on a thread of its own), then take paho's lock
/// once (`is_connected`) so its callback has returned, and only then drop the client here.
fn retire(client: paho::AsyncClient, token: Option<paho::Token>) {
    let retired = std::thread::Builder::new()
        .name("aether-mqtt-retire".into())
        .spawn(move || {
            if let Some(token) = token {
                let _ = token.wait();
            }
            let _ = client.is_connected();
            drop(client);
        });
    if let Err(e) = retired {
        tracing::warn!(error = %e, "could not start a thread to drop a failed mqtt client");
    }
}

fn connect_options(config: &MqttConfig, client_id: &str) -> Result<paho::ConnectOptions> {
    let mut b = match config.version {
        MqttVersion::V5 => paho::ConnectOptionsBuilder::new_v5(),
        MqttVersion::V3_1_1 => paho::ConnectOptionsBuilder::new_v3(),
    };
    b.keep_alive_interval(config.keep_alive)
        .connect_timeout(config.connect_timeout)
        .automatic_reconnect(config.reconnect_min, config.reconnect_max);
    match config.version {
        MqttVersion::V5 => {
            b.clean_start(config.clean_session);
            if !config.clean_session {
                let mut props = paho::Properties::new();
                let secs = u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX);
                props
                    .push_u32(paho::PropertyCode::SessionExpiryInterval, secs)
                    .map_err(paho_err)?;
                b.properties(props);
            }
        }
        MqttVersion::V3_1_1 => {
            b.clean_session(config.clean_session);
        }
    }
    if let Some(user) = &config.username {
        b.user_name(user.as_str());
    }
    if let Some(password) = &config.password {
        b.password(password.expose());
    }
    if let Some(presence) = &config.presence {
        let (topic, payload) = presence.will(client_id)?;
        b.will_message(paho::Message::new(topic.as_str(), payload, 1));
    }
    if let Some(tls) = &config.tls {
        let mut s = paho::SslOptionsBuilder::new();
        for (what, path) in [
            ("ca_file", &tls.ca_file),
            ("cert_file", &tls.cert_file),
            ("key_file", &tls.key_file),
        ] {
            if let Some(path) = path
                && let Err(e) = std::fs::metadata(path)
            {
                return Err(Error::Config(format!("TLS {what} {}: {e}", path.display())));
            }
        }
        let bad_path = |what: &str, e: paho::Error| Error::Config(format!("TLS {what}: {e}"));
        if let Some(ca) = &tls.ca_file {
            s.trust_store(ca).map_err(|e| bad_path("ca_file", e))?;
        }
        if let Some(cert) = &tls.cert_file {
            s.key_store(cert).map_err(|e| bad_path("cert_file", e))?;
        }
        if let Some(key) = &tls.key_file {
            s.private_key(key).map_err(|e| bad_path("key_file", e))?;
        }
        if let Some(pw) = &tls.key_password {
            s.private_key_password(pw.expose());
        }
        s.enable_server_cert_auth(true).verify(tls.verify_hostname);
        b.ssl_options(s.finalize());
    }
    Ok(b.finalize())
}

/// Routes one message from paho's callback thread.
fn dispatch(router: &Router, msg: &paho::Message, v5: bool) {
    let mut ids = [0u32; 4];
    let mut n = 0;
    let mut redeliveries = 0;
    if v5 {
        let props = msg.properties();
        for p in props.iter(paho::PropertyCode::SubscriptionIdentifier) {
            if let (Some(id), true) = (p.get_int(), n < ids.len()) {
                ids[n] = id as u32;
                n += 1;
            }
        }
        if let Some(r) = props.find_user_property(REDELIVERIES) {
            redeliveries = r.parse().unwrap_or(0);
        }
    }
    router.dispatch(Arrival {
        topic: msg.topic(),
        payload: Bytes::copy_from_slice(msg.payload()),
        subscriptions: &ids[..n],
        redeliveries,
    });
}

/// The SUBSCRIBE of one broker subscription: QoS 1, tagged with its identifier on MQTT 5.
fn subscribe_token(client: &paho::AsyncClient, filter: &str, id: u32, v5: bool) -> paho::Token {
    if v5 {
        let mut props = paho::Properties::new();
        if props
            .push_int(paho::PropertyCode::SubscriptionIdentifier, id as i32)
            .is_err()
        {
            // Cannot happen: the identifier is an integer property. Fails the SUBSCRIBE.
            return paho::Token::from_error(-1);
        }
        client.subscribe_with_options(filter, 1, paho::SubscribeOptions::default(), props)
    } else {
        client.subscribe(filter, 1)
    }
}

/// Re-subscribes everything after connection number `n` is up, from paho's callback
/// thread. Returns whether answers are pending (`link` is marked restored when they come).
fn restore(
    client: &paho::AsyncClient,
    router: &Router,
    v5: bool,
    n: u64,
    link: &Arc<watch::Sender<Link>>,
    runtime: Option<&tokio::runtime::Handle>,
) -> bool {
    let subs = router.subscriptions();
    if subs.is_empty() {
        return false;
    }
    tracing::info!(
        count = subs.len(),
        "mqtt connected; restoring subscriptions"
    );
    let tokens: Vec<(String, paho::Token)> = subs
        .into_iter()
        .map(|(filter, id)| {
            let tok = subscribe_token(client, &filter, id, v5);
            (filter, tok)
        })
        .collect();
    // Wait for the answers where a runtime can; paho completes the tokens either way.
    let Some(rt) = runtime else { return false };
    let link = link.clone();
    rt.spawn(async move {
        for (filter, tok) in tokens {
            if let Err(e) = check_suback(&filter, tok.await) {
                tracing::error!(%filter, error = %e, "could not restore a subscription");
            }
        }
        link.send_modify(|l| l.restored = l.restored.max(n));
    });
    true
}

fn check_suback(filter: &str, rsp: paho::Result<paho::ServerResponse>) -> Result<()> {
    match rsp {
        Ok(rsp) => match rsp.subscribe_response() {
            Some(code) if code >= 0x80 => Err(MqttError::SubscribeRefused {
                filter: filter.to_owned(),
                code,
            }
            .into()),
            _ => Ok(()),
        },
        Err(paho::Error::ReasonCode(code, _)) => Err(MqttError::SubscribeRefused {
            filter: filter.to_owned(),
            code: code as i32,
        }
        .into()),
        Err(e) => Err(paho_err(e)),
    }
}

/// How a message is published.
pub(crate) struct Publish<'a> {
    pub(crate) topic: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) retain: bool,
    /// MQTT 5 user properties.
    pub(crate) user: &'a [(&'a str, &'a str)],
}

impl Inner {
    fn v5(&self) -> bool {
        self.config.version == MqttVersion::V5
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn check_size(&self, len: usize) -> Result<()> {
        let limit = self.config.max_payload;
        if len > limit {
            return Err(Error::PayloadTooLarge { size: len, limit });
        }
        Ok(())
    }

    fn message(&self, p: &Publish<'_>) -> Result<paho::Message> {
        let mut m = paho::MessageBuilder::new()
            .topic(p.topic)
            .payload(p.payload)
            .qos(1)
            .retained(p.retain);
        if self.v5() && !p.user.is_empty() {
            let mut props = paho::Properties::new();
            for (k, v) in p.user {
                props
                    .push_string_pair(paho::PropertyCode::UserProperty, k, v)
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
        self.check_open()?;
        self.check_size(p.payload.len())?;
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
            let token = subscribe_token(&self.client, filter, id, self.v5());
            let rsp = tokio::time::timeout_at(deadline, token)
                .await
                .map_err(|_| Error::Timeout("mqtt subscribe"))?;
            match rsp {
                Err(e) if is_disconnect(&e) && !self.is_closed() => {
                    self.reconnected(connects, deadline).await?;
                }
                other => return check_suback(filter, other),
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

    /// Publishes a dead letter on `{dead_letter_topic}/{topic}`.
    pub(crate) async fn dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let Some(prefix) = &self.config.dead_letter_topic else {
            return Err(Error::unsupported(
                "mqtt",
                "a dead-letter place (dead_letter_topic is off)",
            ));
        };
        let tail: String = letter
            .topic
            .chars()
            .map(|c| {
                if matches!(c, '+' | '#' | '\0') {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let topic = format!("{prefix}/{tail}");
        let reason = letter.reason.to_string();
        tracing::warn!(%topic, %reason, "dead letter");
        self.publish(Publish {
            topic: &topic,
            payload: &letter.payload,
            retain: self.config.dead_letter_retain,
            user: &[("aether-reason", &reason), ("aether-topic", &letter.topic)],
        })
        .await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.router.close();
            drop(self.client.disconnect(None));
        }
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

    /// Not durable (a perform with no worker subscribed is lost), no redelivery after a crash (the client's lease redispatches), wildcards,
    /// ordered per topic, dead letters as retained messages when `dead_letter_topic` is set.
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .durable(false)
            .redelivers_on_crash(false)
            .wildcards(true)
            .ordered(true)
            .max_payload(self.inner.config.max_payload)
            .dead_letters(self.inner.config.dead_letter_topic.is_some())
            .shared_between_processes(true)
    }

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.inner
            .publish(Publish {
                topic: topic.as_str(),
                payload: &payload,
                retain: false,
                user: &[],
            })
            .await
    }

    async fn subscribe(&self, filter: &TopicFilter) -> Result<Subscription> {
        self.inner.check_open()?;
        let (tx, rx) = mpsc::channel(self.inner.config.buffer);
        let (local, broker_filter) = self
            .inner
            .router
            .add_subscription(filter, tx)
            .ok_or(Error::Closed)?;
        let guard = SubscriptionGuard {
            inner: Arc::downgrade(&self.inner),
            local,
        };
        self.inner.subscribe(&broker_filter, local.sub).await?;
        Ok(Subscription::new(rx, Some(Box::new(guard))))
    }

    /// Publishes the perform on its topic at QoS 1. With no worker subscribed the broker
    /// drops it: Mosquitto says so in its PUBACK ("no matching subscribers", MQTT 5), but
    /// paho's C library does not pass that code on, so this succeeds and the client's lease
    /// redispatch is what re-sends the task.
    async fn enqueue(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        if topic.action() != Action::Perform {
            return Err(Error::Config(format!(
                "enqueue takes a perform topic, not {topic}"
            )));
        }
        self.inner
            .publish(Publish {
                topic: topic.as_str(),
                payload: &payload,
                retain: false,
                user: &[],
            })
            .await
    }

    /// Subscribes to the queue's shared subscription
    /// `$share/{union}_{job}_{workgroup}/{union}/{job}/{task}/{context}/+/perform`.
    async fn consume(&self, queue: &WorkQueue, options: ConsumeOptions) -> Result<Consumer> {
        self.inner.check_open()?;
        let (tx, rx) = mpsc::channel(self.inner.config.buffer);
        let (local, broker_filter) = self
            .inner
            .router
            .add_consumer(queue, tx)
            .ok_or(Error::Closed)?;
        let guard = queue::ConsumerGuard::new(Arc::downgrade(&self.inner), local);
        self.inner.subscribe(&broker_filter, local.sub).await?;
        Ok(queue::consumer(
            Arc::downgrade(&self.inner),
            rx,
            options.prefetch,
            guard,
        ))
    }

    /// Publishes the letter's payload on `{dead_letter_topic}/{topic}` (retained by
    /// default), with the reason and original topic as MQTT 5 user properties
    /// `aether-reason` and `aether-topic`.
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
                .publish(Publish {
                    topic: topic.as_str(),
                    payload: &payload,
                    retain: false,
                    user: &[],
                })
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "offline presence not sent");
            }
        }
        if inner.closed.swap(true, Ordering::AcqRel) {
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
