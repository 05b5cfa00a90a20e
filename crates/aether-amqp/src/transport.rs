//! [`AmqpTransport`]: the [`Transport`] on RabbitMQ, and the task that keeps it connected.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use aether_core::kit::{Gate, Retry};
use aether_core::{
    Capabilities, ConsumeOptions, Consumer, DeadLetter, Error, Result, Subscription, Topic,
    TopicFilter, Transport, WorkQueue,
};
use amqprs::{BasicProperties, FieldTable};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::attach::Attach;
use crate::broadcast::SubState;
use crate::channel::lock;
use crate::config::AmqpConfig;
use crate::error::AmqpError;
use crate::session::Session;
use crate::topology::{self, Decl, IntoField, Topology, insert};
use crate::work::ConsumerState;

/// Quick retries of a publish whose channel failed while the connection stayed up.
const QUICK_RETRIES: u32 = 3;

/// A transport on RabbitMQ (AMQP 0-9-1). See the [crate docs](crate) for the layout on
/// the broker and the guarantees.
///
/// One `AmqpTransport` is one connection, re-established (with every subscription and
/// consumer) whenever it is lost. Dropping it closes it.
pub struct AmqpTransport {
    shared: Arc<Shared>,
}

impl AmqpTransport {
    /// Connects to the broker an `amqp://` or `amqps://` URL names (see
    /// [`AmqpConfig::from_url`]). Fails if the first connection cannot be made; later
    /// losses are repaired in the background.
    pub async fn connect(url: &str) -> Result<AmqpTransport> {
        AmqpTransport::connect_with(AmqpConfig::from_url(url)?).await
    }

    /// Connects with `config`.
    pub async fn connect_with(config: AmqpConfig) -> Result<AmqpTransport> {
        config.validate()?;
        let session = Arc::new(Session::open(&config, 1, 0).await?);
        warn_about_old_brokers(&config, session.server_version());
        let shared = Arc::new(Shared {
            topology: Topology::new(&config),
            gate: Gate::new(config.max_payload),
            config,
            current: watch::channel(None).0,
            ids: AtomicU64::new(1),
            subs: Default::default(),
            consumers: Default::default(),
            gaps: watch::Sender::new(0),
        });
        shared.current.send_replace(Some(session.clone()));
        tokio::spawn(supervise(
            Arc::downgrade(&shared),
            shared.gate.closed(),
            session,
        ));
        Ok(AmqpTransport { shared })
    }

    /// The settings in use.
    pub fn config(&self) -> &AmqpConfig {
        &self.shared.config
    }

    /// The broker's version (e.g. `3.13.7`), while connected.
    pub fn server_version(&self) -> Option<String> {
        self.shared
            .session_now()
            .map(|s| s.server_version().to_owned())
    }
}

impl fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("broker", &self.shared.config.redacted_url())
            .field("connected", &self.shared.session_now().is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for AmqpTransport {
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

/// What the transport, its subscriptions, consumers and deliveries share.
pub(crate) struct Shared {
    pub(crate) config: AmqpConfig,
    pub(crate) topology: Topology,
    /// The connection, while it is up and its subscriptions and consumers are restored.
    current: watch::Sender<Option<Arc<Session>>>,
    /// Closed/oversize checks; closed once, by `close` or `Drop`.
    gate: Gate,
    ids: AtomicU64,
    pub(crate) subs: Mutex<HashMap<u64, Arc<SubState>>>,
    pub(crate) consumers: Mutex<HashMap<u64, Arc<ConsumerState>>>,
    /// Counts the times subscriptions came back on new queues, having lost what was
    /// published while they had none (the gaps of `Subscription::gaps`).
    pub(crate) gaps: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.gate.is_closed()
    }

    fn check_open(&self) -> Result<()> {
        self.gate.check_open()
    }

    /// The ready connection, if there is one now.
    pub(crate) fn session_now(&self) -> Option<Arc<Session>> {
        self.current.borrow().clone().filter(|s| s.is_alive())
    }

    /// The ready connection, waiting for a reconnection until `deadline`.
    pub(crate) async fn session(&self, deadline: Instant) -> Result<Arc<Session>> {
        let mut current = self.current.subscribe();
        let mut closed = self.gate.closed();
        let ready = async {
            loop {
                if let Some(s) = current.borrow_and_update().clone().filter(|s| s.is_alive()) {
                    return Ok(s);
                }
                tokio::select! {
                    changed = current.changed() => if changed.is_err() { return Err(Error::Closed) },
                    _ = closed.wait_for(|c| *c) => return Err(Error::Closed),
                }
            }
        };
        tokio::select! {
            r = ready => r,
            _ = tokio::time::sleep_until(deadline) => Err(Error::Timeout("waiting for the AMQP connection")),
        }
    }

    /// Declares what `needs` needs, publishes and waits for the broker's confirm, riding
    /// out a reconnection within the publish timeout. After a lost connection the message
    /// is sent again, so it may arrive twice.
    pub(crate) async fn publish(
        &self,
        needs: Needs<'_>,
        exchange: &str,
        routing_key: &str,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<()> {
        self.check_open()?;
        let deadline = Instant::now() + self.config.operation_timeout;
        let key = needs.key();
        let mut quick = 0;
        let mut nacked = Retry::new(self.config.reconnect_min, self.config.reconnect_max);
        loop {
            let session = match self.session_now() {
                Some(s) => s,
                None => self.session(deadline).await?,
            };
            let attempt = async {
                session
                    .ensure_all(&key, || needs.decls(&self.topology))
                    .await?;
                session
                    .publish(exchange, routing_key, properties, body)
                    .await
                    .map_err(Failure::Amqp)
            };
            let err = match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Err(Error::Timeout("AMQP publish (no confirm from the broker)")),
                Ok(Ok(())) => return Ok(()),
                Ok(Err(Failure::Amqp(e))) => e,
                Ok(Err(Failure::Core(e))) => match e {
                    Error::Transport { backend, source } => match source.downcast::<AmqpError>() {
                        Ok(e) => *e,
                        Err(source) => return Err(Error::Transport { backend, source }),
                    },
                    other => return Err(other),
                },
            };
            match &err {
                // An exchange deleted under us: declare again.
                AmqpError::ChannelClosed { code: 404, .. } if quick < QUICK_RETRIES => {
                    session.forget_declared();
                }
                e if e.is_connection_loss() && !session.is_alive() => {
                    tracing::debug!(error = %e, "publish interrupted by a lost connection; sending again");
                    session.lost().await;
                    continue;
                }
                e if e.is_connection_loss() && quick < QUICK_RETRIES => {}
                // The broker did not take the message: a quorum queue without a leader
                // (its node was just lost) nacks until another is elected. Send it again,
                // on a new channel, until the deadline.
                AmqpError::Nacked => {
                    let wait = tokio::time::sleep(nacked.next_delay());
                    if tokio::time::timeout_at(deadline, wait).await.is_err() {
                        return Err(err.into());
                    }
                    continue;
                }
                _ => return Err(err.into()),
            }
            quick += 1;
        }
    }

    /// Stores a dead letter in the dead-letter queue, with its reason in headers.
    pub(crate) async fn dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let mut headers = FieldTable::new();
        insert(
            &mut headers,
            "x-aether-reason",
            letter.reason.to_string().into_field(),
        );
        insert(
            &mut headers,
            "x-aether-topic",
            letter.topic.clone().into_field(),
        );
        let properties = BasicProperties::default()
            .with_persistence(true)
            .with_headers(headers)
            .finish();
        let routing_key = truncate(&letter.topic.replace('/', "."), 255).to_owned();
        self.publish(
            Needs::DeadLetters,
            self.topology.dead_letter(),
            &routing_key,
            &properties,
            &letter.payload,
        )
        .await
    }

    /// Stops for good: ends subscriptions and consumers; the supervisor closes the
    /// connection. Returns the connection, the first time.
    fn shut_down(&self) -> Option<Arc<Session>> {
        if !self.gate.close() {
            return None;
        }
        for s in lock(&self.subs).drain() {
            s.1.close();
        }
        for c in lock(&self.consumers).drain() {
            c.1.close();
        }
        self.current.send_replace(None)
    }
}

/// What a publish needs declared first.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Needs<'a> {
    /// The broadcast exchange of a union.
    Broadcast(&'a str),
    /// The work exchange and holding queue of a perform's (union, job, task, context).
    Enqueue(&'a Topic),
    /// The dead-letter exchange and queue.
    DeadLetters,
}

impl Needs<'_> {
    /// A key naming the set of declarations, for the per-connection cache.
    fn key(&self) -> String {
        match self {
            Needs::Broadcast(union) => format!("broadcast {union}"),
            Needs::Enqueue(t) => format!(
                "enqueue {}/{}/{}/{}",
                t.union(),
                t.job(),
                t.task(),
                t.context()
            ),
            Needs::DeadLetters => "dead letters".into(),
        }
    }

    fn decls(&self, t: &Topology) -> Result<Vec<Decl>> {
        Ok(match self {
            Needs::Broadcast(union) => t.broadcast_decls(union),
            Needs::Enqueue(topic) => t.enqueue_decls(&WorkQueue::of_topic(topic, "_")?)?,
            Needs::DeadLetters => t.dead_letters(),
        })
    }
}

/// Why an attempt to publish failed.
enum Failure {
    Amqp(AmqpError),
    Core(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Core(e)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Keeps the transport connected: restores subscriptions and consumers on each new
/// connection before publishes may use it, so a reply to a message sent after a
/// reconnection finds its subscription in place.
async fn supervise(
    shared: Weak<Shared>,
    mut closed: watch::Receiver<bool>,
    mut session: Arc<Session>,
) {
    let mut first = true;
    loop {
        if !first {
            let Some(s) = shared.upgrade() else { break };
            restore(&s, &session).await;
            if s.is_closed() {
                break;
            }
            s.current.send_replace(Some(session.clone()));
            // Every subscription is on a new queue now: what was published in between is
            // lost. One gap for all of them, reported once all are back.
            s.gaps.send_modify(|n| *n += 1);
            tracing::info!(connection = %session.conn.connection_name(), "AMQP connection restored");
        }
        first = false;
        tokio::select! {
            _ = session.lost() => {}
            _ = closed.wait_for(|c| *c) => break,
        }
        let Some(s) = shared.upgrade() else { break };
        s.current.send_replace(None);
        let config = s.config.clone();
        drop(s);
        tracing::warn!(broker = %config.redacted_url(), "AMQP connection lost; reconnecting");
        let mut retry = Retry::new(config.reconnect_min, config.reconnect_max);
        session = loop {
            // The node that was lost is tried last: in a cluster, another one takes over.
            match Session::open(&config, session.generation + 1, session.node + 1).await {
                Ok(new) => {
                    aether_core::observe::metrics::reconnected("amqp");
                    break Arc::new(new);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry.peek(), "AMQP reconnection failed");
                }
            }
            tokio::select! {
                _ = retry.wait() => {}
                _ = closed.wait_for(|c| *c) => return,
            }
        };
    }
    let _ = session.conn.clone().close().await;
}

/// Attaches every subscription, then every consumer, to `session`.
async fn restore(shared: &Arc<Shared>, session: &Arc<Session>) {
    let subs: Vec<_> = lock(&shared.subs).values().cloned().collect();
    for sub in subs {
        if let Err(e) = sub.attach(shared, session, None).await {
            tracing::warn!(filter = %sub.filter(), error = %e, "could not restore a subscription");
        }
    }
    let consumers: Vec<_> = lock(&shared.consumers).values().cloned().collect();
    for c in consumers {
        if let Err(e) = c.attach(shared, session, None).await {
            tracing::warn!(queue = %c.queue(), error = %e, "could not restore a consumer");
        }
    }
}

/// RabbitMQ before 3.12 ignores the per-consumer `x-consumer-timeout`; say so once.
fn warn_about_old_brokers(config: &AmqpConfig, version: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (3, 12) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            version,
            wanted = ?config.consumer_timeout,
            "RabbitMQ before 3.12 ignores per-consumer timeouts: a task running longer than the \
             broker's consumer_timeout (rabbitmq.conf, 30 min by default) has its channel closed; \
             aether consumes again and keeps the task, but raise consumer_timeout for long tasks"
        );
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .durable(true)
            .redelivers_on_crash(true)
            .multi_level_wildcards(true)
            // A queue per subscription: two subscriptions may be delivered out of order
            // with each other.
            .ordered(false)
            .max_payload(self.shared.config.max_payload)
            .dead_letters(true)
            .shared_between_processes(true)
            .gap_signals(true)
    }

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.shared.gate.check_publish(&payload)?;
        let t = &self.shared.topology;
        let properties = BasicProperties::default().finish();
        self.shared
            .publish(
                Needs::Broadcast(topic.union()),
                &t.broadcast(topic.union()),
                &topology::routing_key(topic),
                &properties,
                &payload,
            )
            .await
    }

    async fn subscribe(&self, filter: &TopicFilter) -> Result<Subscription> {
        self.shared.check_open()?;
        if self.shared.topology.per_union() && filter.union().is_none() {
            return Err(Error::unsupported(
                "amqp",
                "a filter with a wildcard union while the exchange name has `{union}` \
                 (configure one exchange for every union, e.g. exchange=aether)",
            ));
        }
        SubState::subscribe(&self.shared, filter).await
    }

    async fn enqueue(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        self.shared.gate.check_enqueue(topic, &payload)?;
        let t = &self.shared.topology;
        let properties = BasicProperties::default()
            .with_persistence(true)
            .with_message_id(topic.tid())
            .finish();
        let routing_key = WorkQueue::of_topic(topic, "_")?.key('.');
        self.shared
            .publish(
                Needs::Enqueue(topic),
                &t.work(topic.union()),
                &routing_key,
                &properties,
                &payload,
            )
            .await
    }

    async fn consume(&self, queue: &WorkQueue, options: ConsumeOptions) -> Result<Consumer> {
        self.shared.check_open()?;
        ConsumerState::consume(&self.shared, queue, &options).await
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.shared.dead_letter(&letter).await
    }

    async fn close(&self) -> Result<()> {
        if let Some(session) = self.shared.shut_down() {
            // amqprs waits for the broker's close-ok without a limit: once seen, a worker
            // process stopped by SIGTERM waited for good with its socket already gone.
            let limit = self.shared.config.operation_timeout;
            if tokio::time::timeout(limit, session.conn.clone().close())
                .await
                .is_err()
            {
                tracing::warn!(?limit, "the broker did not answer the close; dropped");
            }
        }
        Ok(())
    }
}
