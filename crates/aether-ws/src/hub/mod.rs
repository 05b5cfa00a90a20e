//! [`Hub`]: one port serving WebSocket peers (`GET /ws`) and REST callers
//! (`POST /publish/{topic}`, `GET /health`, `GET /messages/{topic}`) on top of an aether
//! backend: by default an in-memory broker (the core's queue engine, one node), or any
//! transport (`redis://`, `amqp://`...) so that several hubs share work through it.
//!
//! The hub is a gateway: each WebSocket subscription is a subscription on the backend,
//! each WebSocket consumer a consumer on the backend, and a delivery stays held for its
//! connection until the peer settles it. A connection that closes, breaks or stops
//! answering pings drops what it held, and the backend gives it to another consumer.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aether_core::memory::MemoryConfig;
use aether_core::{Bytes, MemoryTransport, Result, SharedTransport};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::HubConfig;
use crate::error::WsError;

mod conn;
mod http;
mod outbox;
mod replies;
mod seed;
mod seed_work;

/// What a hub counted since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// WebSocket connections open now.
    pub connections: u64,
    /// Consumers (workers' queues) open now.
    pub consumers: u64,
    /// Deliveries handed to peers and not settled yet.
    pub in_flight: u64,
    /// WebSocket connections accepted in all.
    pub accepted: u64,
    /// Requests refused for a missing or wrong token.
    pub unauthorized: u64,
    /// Requests refused for their `Origin`.
    pub forbidden_origin: u64,
    /// Connections refused because `max_connections` were open.
    pub over_limit: u64,
    /// Frames or requests that could not be taken (undecodable, unknown, oversized).
    pub bad_frames: u64,
    /// Connections cut off because their send queue was full (stalled peers).
    pub stalled: u64,
    /// Connections dropped for missing heartbeats.
    pub expired: u64,
    /// Deliveries given back to the backend because their connection went away.
    pub given_back: u64,
    /// Seed-protocol messages dropped as the second copy of one already taken.
    pub duplicates: u64,
    /// Connections to a TLS hub that did not complete the TLS handshake: plain HTTP
    /// (answered 400), a peer that does not trust the certificate, garbage.
    pub tls_failed: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) consumers: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) forbidden_origin: AtomicU64,
    pub(crate) over_limit: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    pub(crate) stalled: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) given_back: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) tls_failed: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What every connection of a hub shares.
pub(crate) struct Shared {
    pub(crate) config: HubConfig,
    pub(crate) backend: SharedTransport,
    pub(crate) counters: Counters,
    pub(crate) retained: Mutex<Retained>,
    pub(crate) ids: AtomicU64,
    /// Sockets open (WebSocket and REST), against `max_connections`.
    pub(crate) open: AtomicUsize,
    pub(crate) seed: seed::Dedupe,
    /// Replies watched for seed clients' tasks.
    pub(crate) replies: replies::Replies,
    /// Performs held for seed workers until their completion.
    pub(crate) seed_work: seed_work::SeedWork,
    /// A random number naming this run of the hub: peers notice a restart by it.
    pub(crate) session: u64,
    /// With `tls_cert` and `tls_key`: every socket speaks TLS.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Retained messages (`retain: true` publishes), bounded per topic and in topics.
#[derive(Debug, Default)]
pub(crate) struct Retained {
    topics: HashMap<String, VecDeque<(Bytes, f64)>>,
    order: VecDeque<String>,
}

impl Retained {
    pub(crate) fn keep(&mut self, topic: &str, message: Bytes, per_topic: usize, topics: usize) {
        if !self.topics.contains_key(topic) {
            if self.order.len() >= topics.max(1) {
                if let Some(old) = self.order.pop_front() {
                    self.topics.remove(&old);
                }
            }
            self.order.push_back(topic.to_owned());
        }
        let list = self.topics.entry(topic.to_owned()).or_default();
        if list.len() >= per_topic.max(1) {
            list.pop_front();
        }
        list.push_back((message, now()));
    }

    pub(crate) fn get(&self, topic: &str) -> Vec<(Bytes, f64)> {
        self.topics
            .get(topic)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Seconds since the epoch, as the seed's REST answers carry them.
pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A running hub. Dropping it (or [`Hub::close`]) stops it: the port closes and every
/// connection ends, their unacknowledged deliveries going back to the backend.
///
/// ```no_run
/// # async fn demo() -> aether_core::Result<()> {
/// use aether_ws::{Hub, HubConfig};
///
/// let hub = Hub::start(HubConfig::from_url("ws://0.0.0.0:8080?token=s3cret")?).await?;
/// println!("peers connect with ws://this-host:{}/ws?token=s3cret", hub.port());
/// # Ok(()) }
/// ```
pub struct Hub {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Hub {
    /// Starts a hub over a new in-memory broker (one node, nothing else to run).
    pub async fn start(config: HubConfig) -> Result<Hub> {
        let memory = MemoryConfig::default()
            .queue_capacity(config.queue_capacity)
            .max_payload(config.max_payload);
        Hub::start_with(config, Arc::new(MemoryTransport::new(memory))).await
    }

    /// Starts a hub over `backend`: hubs on one distributed broker share its workgroups,
    /// queues and redelivery.
    pub async fn start_with(config: HubConfig, backend: SharedTransport) -> Result<Hub> {
        config.validate()?;
        http::start_metrics(&config)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::server_config(cert, key)?,
            )),
            _ => None,
        };
        let bind = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&bind).await.map_err(|e| WsError::Io {
            what: format!("bind {bind}"),
            source: e,
        })?;
        let addr = listener.local_addr().map_err(|e| WsError::Io {
            what: "local address".into(),
            source: e,
        })?;
        let shared = Arc::new(Shared {
            config,
            backend,
            counters: Counters::default(),
            retained: Mutex::new(Retained::default()),
            ids: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            seed: seed::Dedupe::default(),
            replies: replies::Replies::default(),
            seed_work: seed_work::SeedWork::default(),
            session: uuid::Uuid::new_v4().as_u64_pair().0 | 1,
            tls,
        });
        let accept = tokio::spawn(accept(listener, shared.clone()));
        let tls = shared.tls.is_some();
        tracing::info!(%addr, tls, backend = shared.backend.name(), "aether-ws hub listening");
        Ok(Hub {
            shared,
            addr,
            accept,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it serves TLS (`wss://`, `https://`).
    pub fn tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// The backend it serves.
    pub fn backend(&self) -> &SharedTransport {
        &self.shared.backend
    }

    /// What it counted.
    pub fn stats(&self) -> HubStats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HubStats {
            connections: g(&c.connections),
            consumers: g(&c.consumers),
            in_flight: g(&c.in_flight),
            accepted: g(&c.accepted),
            unauthorized: g(&c.unauthorized),
            forbidden_origin: g(&c.forbidden_origin),
            over_limit: g(&c.over_limit),
            bad_frames: g(&c.bad_frames),
            stalled: g(&c.stalled),
            expired: g(&c.expired),
            given_back: g(&c.given_back),
            duplicates: g(&c.duplicates),
            tls_failed: g(&c.tls_failed),
        }
    }

    /// Stops listening and ends every connection (as the runtime gets to them; see
    /// [`Hub::stop`] to wait for it).
    pub fn close(&self) {
        self.accept.abort();
    }

    /// Stops listening, ends every connection and waits until the port is free.
    pub async fn stop(self) {
        self.accept.abort();
        let _ = (&mut { self }.accept).await;
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("addr", &self.addr)
            .field("config", &self.shared.config)
            .field("backend", &self.shared.backend.name())
            .finish_non_exhaustive()
    }
}

/// Accepts sockets until aborted; aborting drops the set, which ends every connection.
async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(http::serve(shared.clone(), stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
