//! One AMQP connection and what it shares: a control channel for declarations, a
//! confirm-mode publisher channel, a channel for broadcast subscriptions, and the cache of
//! what has been declared on it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::task::{Context, Waker};

use amqprs::callbacks::ConnectionCallback;
use amqprs::channel::BasicPublishArguments;
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{BasicProperties, Close};
use async_trait::async_trait;
use tokio::sync::{MappedMutexGuard, MutexGuard, watch};

use crate::channel::{Chan, Confirm, lock};
use crate::config::{AmqpConfig, Node};
use crate::error::AmqpError;
use crate::topology::Decl;

/// Declarations remembered per connection before the cache starts over.
const DECLARED_CAP: usize = 4096;

/// One connection to the broker. A new one, with a higher `generation`, replaces it after
/// the connection is lost.
pub(crate) struct Session {
    pub(crate) generation: u64,
    /// The index in `AmqpConfig::nodes` of the node it is connected to.
    pub(crate) node: usize,
    pub(crate) conn: Connection,
    control: tokio::sync::Mutex<Option<Chan>>,
    publisher: tokio::sync::Mutex<Option<Chan>>,
    subscriptions: tokio::sync::Mutex<Option<Chan>>,
    declared: Mutex<HashSet<String>>,
    lost: watch::Receiver<bool>,
}

impl Session {
    /// Connects to the first of `config`'s nodes that answers, trying them in turn from
    /// the one at index `first`. Fails when none does; each may take
    /// `config.connect_timeout`.
    pub(crate) async fn open(
        config: &AmqpConfig,
        generation: u64,
        first: usize,
    ) -> Result<Session, AmqpError> {
        let nodes = config.nodes();
        let mut failures = Vec::new();
        for k in 0..nodes.len() {
            let node = (first + k) % nodes.len();
            match Session::open_node(config, &nodes[node], generation, node).await {
                Ok(session) => return Ok(session),
                Err(e) if nodes.len() == 1 => return Err(e),
                Err(e) => {
                    tracing::debug!(node = %nodes[node], error = %e, "AMQP node unreachable");
                    failures.push(e.to_string());
                }
            }
        }
        Err(AmqpError::Connect {
            url: config.redacted_url(),
            reason: format!("no node of the cluster answered: {}", failures.join("; ")),
        })
    }

    async fn open_node(
        config: &AmqpConfig,
        at: &Node,
        generation: u64,
        node: usize,
    ) -> Result<Session, AmqpError> {
        let failed = |reason: String| AmqpError::Connect {
            url: config.redacted_url_of(at),
            reason,
        };
        let mut args = OpenConnectionArguments::new(
            &at.host,
            at.port,
            &config.username,
            config.password.expose(),
        );
        args.virtual_host(&config.vhost)
            .heartbeat(config.heartbeat.as_secs() as u16)
            .connection_name(&config.connection_name);
        #[cfg(feature = "tls")]
        if config.tls {
            args.tls_adaptor(tls_adaptor(config, at).map_err(|e| failed(e.to_string()))?);
        }
        let conn = match tokio::time::timeout(config.connect_timeout, Connection::open(&args)).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e @ amqprs::error::Error::NetworkError(_))) => {
                // RabbitMQ drops the socket on a wrong user, password or vhost.
                return Err(failed(format!(
                    "{e} (is the broker up, and are the user, password and vhost right?)"
                )));
            }
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => {
                return Err(failed(format!(
                    "no answer within {:?}",
                    config.connect_timeout
                )));
            }
        };
        conn.register_callback(ConnCallback)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let lost = watch_connection(&conn);
        Ok(Session {
            generation,
            node,
            conn,
            control: Default::default(),
            publisher: Default::default(),
            subscriptions: Default::default(),
            declared: Default::default(),
            lost,
        })
    }

    /// Whether the connection is still up.
    pub(crate) fn is_alive(&self) -> bool {
        self.conn.is_open() && !*self.lost.borrow()
    }

    /// Resolves once the connection is gone.
    pub(crate) async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// The broker's version, e.g. `3.13.7`.
    pub(crate) fn server_version(&self) -> &str {
        self.conn.server_properties().version()
    }

    /// The control channel, opened again if the broker closed it.
    pub(crate) async fn control(&self) -> Result<MappedMutexGuard<'_, Chan>, AmqpError> {
        open_locked(&self.conn, &self.control, "control", false).await
    }

    /// The channel broadcast subscriptions consume on, opened again if it was closed.
    pub(crate) async fn subscriptions(&self) -> Result<MappedMutexGuard<'_, Chan>, AmqpError> {
        open_locked(&self.conn, &self.subscriptions, "subscriptions", false).await
    }

    /// Runs the declarations not yet made on this connection (all of them with `force`).
    pub(crate) async fn ensure(&self, decls: &[Decl], force: bool) -> Result<(), AmqpError> {
        let todo: Vec<&Decl> = {
            let declared = lock(&self.declared);
            decls
                .iter()
                .filter(|d| force || !declared.contains(&d.cache_key()))
                .collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        let ch = self.control().await?;
        for d in todo {
            d.run(&ch).await?;
            let mut declared = lock(&self.declared);
            if declared.len() >= DECLARED_CAP {
                declared.clear();
            }
            declared.insert(d.cache_key());
        }
        Ok(())
    }

    /// Runs the declarations `build` makes unless `key` says they were made on this
    /// connection: one lookup on the hot path instead of building them each time.
    pub(crate) async fn ensure_all(
        &self,
        key: &str,
        build: impl FnOnce() -> Result<Vec<Decl>, aether_core::Error>,
    ) -> Result<(), aether_core::Error> {
        if lock(&self.declared).contains(key) {
            return Ok(());
        }
        self.ensure(&build()?, false).await?;
        lock(&self.declared).insert(key.to_owned());
        Ok(())
    }

    /// Forgets what was declared, e.g. after the broker said an exchange is missing.
    pub(crate) fn forget_declared(&self) {
        lock(&self.declared).clear();
    }

    /// Publishes and waits for the broker's confirm.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<(), AmqpError> {
        let (confirm, chan) = {
            let guard = open_locked(&self.conn, &self.publisher, "publisher", true).await?;
            let confirms = guard
                .confirms
                .as_ref()
                .expect("publisher is in confirm mode");
            let confirm = confirms.register()?;
            guard
                .channel
                .basic_publish(
                    properties.clone(),
                    body.to_vec(),
                    BasicPublishArguments::new(exchange, routing_key),
                )
                .await
                .map_err(|e| guard.failure(e))?;
            (confirm, guard.clone())
        };
        match confirm.await {
            Ok(Confirm::Ack) => Ok(()),
            Ok(Confirm::Nack) => {
                self.renew_publisher(&chan).await;
                Err(AmqpError::Nacked)
            }
            Err(_) if chan.channel.is_connection_open() && !chan.is_open() => {
                Err(chan.reason.error())
            }
            Err(_) => Err(AmqpError::Unconfirmed),
        }
    }
}

impl Session {
    /// Sets `chan` aside if it is still the publisher channel, so the next publish opens a
    /// new one. RabbitMQ keeps a per-channel client of each quorum queue published to;
    /// after the queue's leader was lost that client may go on refusing (nacking) every
    /// message, while a new channel finds the new leader. Publishes still waiting on
    /// `chan` keep it open until they are confirmed.
    async fn renew_publisher(&self, chan: &Chan) {
        let mut slot = self.publisher.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| c.channel.channel_id() == chan.channel.channel_id())
        {
            tracing::debug!("the broker nacked a message: publishing on a new channel");
            slot.take();
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("generation", &self.generation)
            .field("connection", &self.conn.connection_name())
            .field("alive", &self.is_alive())
            .finish_non_exhaustive()
    }
}

/// The channel in `slot`, opened anew when there is none or the broker closed it. The
/// guard serializes synchronous requests on it: amqprs keeps one responder per method, so
/// two concurrent declarations on one channel would lose an answer.
async fn open_locked<'a>(
    conn: &Connection,
    slot: &'a tokio::sync::Mutex<Option<Chan>>,
    role: &'static str,
    confirm: bool,
) -> Result<MappedMutexGuard<'a, Chan>, AmqpError> {
    let mut guard = slot.lock().await;
    if !guard.as_ref().is_some_and(Chan::is_open) {
        *guard = Some(Chan::open(conn, role, confirm).await?);
    }
    Ok(MutexGuard::map(guard, |c| c.as_mut().expect("just opened")))
}

/// A receiver that turns true when `conn` ends. amqprs signals the end through a broadcast
/// it subscribes to when first polled, so the listener is polled once here, before the
/// connection can end unnoticed, and checked against `is_open` for an end before that.
fn watch_connection(conn: &Connection) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let c = conn.clone();
    let mut listen = Box::pin(async move {
        c.listen_network_io_failure().await;
    });
    let first = listen
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    if first.is_ready() || !conn.is_open() {
        let _ = tx.send(true);
        return rx;
    }
    tokio::spawn(async move {
        listen.await;
        let _ = tx.send(true);
    });
    rx
}

/// Logs what the broker says about the connection.
struct ConnCallback;

#[async_trait]
impl ConnectionCallback for ConnCallback {
    async fn close(&mut self, conn: &Connection, close: Close) -> Result<(), amqprs::error::Error> {
        tracing::warn!(
            connection = %conn.connection_name(),
            code = close.reply_code(),
            reason = %close.reply_text(),
            "the broker closed the AMQP connection; reconnecting"
        );
        Ok(())
    }

    async fn blocked(&mut self, conn: &Connection, reason: String) {
        tracing::warn!(
            connection = %conn.connection_name(),
            %reason,
            "the broker blocks publishing (a memory or disk alarm); publishes wait"
        );
    }

    async fn unblocked(&mut self, conn: &Connection) {
        tracing::info!(connection = %conn.connection_name(), "the broker accepts publishes again");
    }

    async fn secret_updated(&mut self, _conn: &Connection) {}
}

#[cfg(feature = "tls")]
fn tls_adaptor(config: &AmqpConfig, at: &Node) -> std::io::Result<amqprs::tls::TlsAdaptor> {
    use amqprs::tls::TlsAdaptor;
    // amqprs builds rustls configs with the process default provider; make sure there is one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let domain = config
        .tls_domain
        .clone()
        .unwrap_or_else(|| at.host.trim_matches(['[', ']']).to_owned());
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            TlsAdaptor::with_client_auth(config.tls_ca.as_deref(), cert, key, domain)
        }
        _ => TlsAdaptor::without_client_auth(config.tls_ca.as_deref(), domain),
    }
}
