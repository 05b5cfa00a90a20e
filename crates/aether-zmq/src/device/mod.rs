//! The device: one ROUTER socket that every peer (client or worker) connects a DEALER to.
//!
//! - **Work**: a worker announces each consumer with `READY` and its credit (prefetch); the
//!   device keeps the work queues in the adapter kit's [`QueueEngine`] (workgroups, one
//!   consumer per perform in each, settlement, redelivery) and hands each perform to one
//!   consumer with credit, holding it until the worker acknowledges. Performs enqueued for
//!   a workgroup with no worker wait, up to `queue_capacity`; past it an enqueue is
//!   refused with `QueueFull` and counted.
//! - **Broadcast**: each peer subscribes with filters; the device sends a message once per
//!   peer whose filters match, numbered per peer, and the peer routes it to its own
//!   subscriptions. A message the socket cannot take for a slow or absent peer is dropped
//!   and counted; the peer sees the missing number and reports a gap.
//! - **Heartbeats** both ways: the device heartbeats every peer each interval; a peer
//!   silent for 3 intervals is dead, and every perform it held goes back to its workgroup
//!   (`redelivers_on_crash`). Acknowledgements, requeues and rejects settle what a worker
//!   held.
//!
//! The device keeps nothing across its own restart: peers notice the new session,
//! subscribe and consume again and report a gap, and the clients' lease recovers the
//! tasks that were in flight.
//!
//! It runs on a thread of its own (with its own Tokio runtime), so any process can host
//! it, async or not: [`Device::start`], or the `aether-zmq-device` binary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use aether_core::kit::{EngineConfig, QueueEngine};
use aether_core::{DeadLetter, Result};
use tokio::sync::watch;

use crate::config::ZmqConfig;
use crate::error::ZmqError;

mod core;
mod peer;
mod run;
#[cfg(test)]
mod tests;

/// What a device counted since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceStats {
    /// Peers connected now.
    pub peers: u64,
    /// Peers declared dead after 3 silent heartbeat intervals.
    pub peers_expired: u64,
    /// Enqueues refused because the workgroup's queue was full.
    pub queue_full: u64,
    /// Messages refused because their payload was over `max_payload`.
    pub oversized: u64,
    /// Messages that did not decode (unknown kind, missing frames, bad topic), dropped.
    pub malformed: u64,
    /// Broadcasts dropped because a peer's socket queue was full or the peer was away.
    pub broadcasts_dropped: u64,
    /// Performs handed back to their workgroup by a dead or departed peer.
    pub redelivered: u64,
}

/// The counters, shared between the device's thread and its handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) peers: AtomicU64,
    pub(crate) peers_expired: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) oversized: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) broadcasts_dropped: AtomicU64,
    pub(crate) redelivered: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DeviceStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DeviceStats {
            peers: get(&self.peers),
            peers_expired: get(&self.peers_expired),
            queue_full: get(&self.queue_full),
            oversized: get(&self.oversized),
            malformed: get(&self.malformed),
            broadcasts_dropped: get(&self.broadcasts_dropped),
            redelivered: get(&self.redelivered),
        }
    }
}

/// A running device. Dropping it (or [`close`](Device::close)) stops it and releases its
/// address.
///
/// ```no_run
/// use aether_zmq::{Device, ZmqConfig};
///
/// let device = Device::start(ZmqConfig::from_url("zmq://0.0.0.0:5555")?)?;
/// println!("device on {}", device.endpoint());
/// # Ok::<(), aether_core::Error>(())
/// ```
pub struct Device {
    endpoint: String,
    inproc: String,
    counters: Arc<Counters>,
    engine: Arc<QueueEngine>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Device {
    /// Binds the device on `config`'s `host:port` (port 0 picks a free one; see
    /// [`endpoint`](Device::endpoint)) and starts it on a thread of its own. Retries for
    /// up to 2 s while the address is still held by a device that just stopped.
    pub fn start(config: ZmqConfig) -> Result<Device> {
        config.validate()?;
        static IDS: AtomicU64 = AtomicU64::new(1);
        let inproc = format!(
            "inproc://aether-zmq-device-{}-{}",
            std::process::id(),
            IDS.fetch_add(1, Ordering::Relaxed)
        );
        let mut engine = EngineConfig::default();
        engine.queue_capacity = config.queue_capacity;
        engine.redeliver = true;
        engine.dead_letter_capacity = config.dead_letter_capacity;
        let engine = QueueEngine::new(engine);
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(false);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let setup = run::Setup {
            config,
            inproc: inproc.clone(),
            engine: engine.clone(),
            counters: counters.clone(),
            stopped,
        };
        let thread = std::thread::Builder::new()
            .name("aether-zmq-device".into())
            .spawn(move || run::thread_main(setup, bound_tx))
            .map_err(|e| ZmqError::Device(e.to_string()))?;
        let endpoint = match bound_rx.recv() {
            Ok(Ok(endpoint)) => endpoint,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(
                    ZmqError::Device("the device thread ended before binding".into()).into(),
                );
            }
        };
        tracing::info!(%endpoint, "aether-zmq device started");
        Ok(Device {
            endpoint,
            inproc,
            counters,
            engine,
            stop,
            thread: Some(thread),
        })
    }

    /// The device this process hosts on `config`'s address (`host:port`): the one already
    /// running for it, or a new one. Every `bind=true` transport of the process for that
    /// address joins it, and it stops when the last handle (these, and the transports')
    /// is dropped. Holding one keeps the device up while transports come and go.
    pub fn host(config: &ZmqConfig) -> Result<Arc<Device>> {
        static HOSTED: OnceLock<Mutex<HashMap<String, Weak<Device>>>> = OnceLock::new();
        let mut hosted = HOSTED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        hosted.retain(|_, d| d.strong_count() > 0);
        let key = config.endpoint();
        if let Some(device) = hosted.get(&key).and_then(Weak::upgrade) {
            return Ok(device);
        }
        let device = Arc::new(Device::start(config.clone())?);
        hosted.insert(key, Arc::downgrade(&device));
        Ok(device)
    }

    /// The TCP endpoint it is bound to, `tcp://host:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The port it is bound to.
    pub fn port(&self) -> u16 {
        self.endpoint
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// The in-process endpoint transports of this process connect to.
    pub(crate) fn inproc(&self) -> &str {
        &self.inproc
    }

    /// What it counted so far.
    pub fn stats(&self) -> DeviceStats {
        self.counters.snapshot()
    }

    /// The dead letters it holds, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.engine.dead_letters()
    }

    /// Stops the device and waits for its thread, releasing the address. Performs it held
    /// are gone; peers see a new session once a device is back on the address.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("endpoint", &self.endpoint)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The one ZeroMQ context of the process: every socket of this crate lives in it, so a
/// hosted device and the transports of its process meet over `inproc://`.
pub(crate) fn context() -> &'static zmq::Context {
    static CONTEXT: std::sync::OnceLock<zmq::Context> = std::sync::OnceLock::new();
    CONTEXT.get_or_init(zmq::Context::new)
}

/// Three heartbeat intervals: how long a silent peer (or device) is given.
pub(crate) fn dead_after(heartbeat: Duration) -> Duration {
    heartbeat * 3
}
