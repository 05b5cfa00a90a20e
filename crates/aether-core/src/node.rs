//! [`Aether`]: one process's node, holding its identity, its transports (channels), its
//! counters, and the clients and workers built on them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::{Client, Routes};
use crate::envelope::Codec;
use crate::error::{Error, Level, Result};
use crate::requirements::{self, Explicit};
use crate::stats::{Counters, Stats};
use crate::topic::validate_segment;
use crate::transport::{DeadLetter, SharedTransport, Transport};
use crate::worker::WorkerBuilder;

/// The union Python AetherMagic uses when none is given.
pub const DEFAULT_UNION: &str = "default";

/// The context Python AetherMagic's `AetherTask` uses when none is given.
pub const DEFAULT_CONTEXT: &str = "x";

/// Something that can become a [`SharedTransport`]: any transport, or one already shared.
pub trait IntoTransport {
    /// Converts into a shared transport.
    fn into_transport(self) -> SharedTransport;
}

impl<T: Transport> IntoTransport for T {
    fn into_transport(self) -> SharedTransport {
        Arc::new(self)
    }
}

impl IntoTransport for SharedTransport {
    fn into_transport(self) -> SharedTransport {
        self
    }
}

/// Exponential backoff between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    /// Delay before the second attempt. Default 100 ms.
    pub initial: Duration,
    /// Longest delay. Default 10 s.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max }
    }

    /// The delay before attempt `attempt` (2 is the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(2).min(20);
        self.initial.saturating_mul(1 << exp).min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// A node's settings. Built through [`AetherBuilder`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The union (first topic level). Default `default`, as in Python AetherMagic.
    pub union: String,
    /// This host's name in presence messages. Default: the host name up to its first dot.
    pub host: String,
    /// This process's id in every message. Default: a random UUID.
    pub client_id: String,
    /// The codec of performs this node sends. Workers answer in the codec a perform came in.
    /// Default JSON.
    pub codec: Codec,
    /// Largest encoded message, enforced on send and receive. Default 1 MiB, or the
    /// transport's limit where that is lower; set above a transport's limit it is refused
    /// at `build()`.
    pub max_payload: usize,
    /// How long a task may go without a sign of life (acceptance, progress or heartbeat)
    /// before the client dispatches it again. Workers heartbeat at a third of the lease the
    /// perform carries. Default 30 s.
    pub lease: Duration,
    /// Dispatches of one task before the client gives up with [`Error::WorkerLost`].
    /// Default 3.
    pub max_attempts: u32,
    /// Whether clients dispatch a task again when they may have lost track of it. `None`
    /// (the default): a task no worker accepted within the lease, only where the transport
    /// does not redeliver after a consumer crash or is not durable (elsewhere it waits in
    /// the queue); a task
    /// whose worker stopped heartbeating, unless the transport both redelivers and reports
    /// gaps (then the transport hands a dead worker's tasks to another, and a completion
    /// lost in a gap is recovered by the gap report; a redispatch beside a redelivery would
    /// run the task twice); a task whose replies may be lost in a gap the transport reports
    /// in the client's subscriptions, always (a task still queued is then enqueued again;
    /// an accepted one only if its worker does not heartbeat within half its lease). `Some(true)` turns all three on, `Some(false)` all off (and with
    /// them held-back acceptance, see [`Config::defer_accept`]).
    pub redispatch: Option<bool>,
    /// Backoff between dispatches. Default 100 ms doubling to 10 s.
    pub backoff: Backoff,
    /// How long a worker may hold back its acceptance (progress 0) of a perform this node
    /// sends. A task that completes sooner is answered by its completion alone: one message
    /// fewer per task, and no acceptance on the critical path. A longer task is accepted
    /// when the time is up or when it first reports progress. Zero: accept at once. Capped
    /// by workers at a third of the lease. Default 20 ms.
    ///
    /// Asked for only where a lost completion of a task never accepted is recovered: where
    /// the client redispatches tasks it has not seen accepted ([`Config::redispatch`]; by
    /// default on transports that do not redeliver or are not durable), or where the
    /// transport reports gaps in its subscriptions
    /// ([`Capabilities::gap_signals`](crate::Capabilities::gap_signals)) and redispatch is
    /// not turned off. Elsewhere the acceptance is what arms the recovery of a lost
    /// completion, so workers are asked to send it at once, and a non-zero `defer_accept`
    /// set explicitly is refused at `build()`.
    pub defer_accept: Duration,
    /// Progress updates a task handle buffers; the oldest are dropped past it. Default 64.
    pub progress_buffer: usize,
    /// Completed tids a worker remembers to drop repeated performs. Default 10,000.
    pub dedup_window: usize,
    /// How long a client waits for the broker to take a perform, a cancel or a
    /// subscription before failing with [`Error::Timeout`]. Default 10 s.
    pub operation_timeout: Duration,
}

impl Config {
    /// What signs this node's messages: (host, client id).
    pub(crate) fn sender(&self) -> (&str, &str) {
        (&self.host, &self.client_id)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            union: DEFAULT_UNION.to_owned(),
            host: short_hostname(),
            client_id: uuid::Uuid::new_v4().to_string(),
            codec: Codec::Json,
            max_payload: 1 << 20,
            lease: Duration::from_secs(30),
            max_attempts: 3,
            redispatch: None,
            backoff: Backoff::default(),
            defer_accept: Duration::from_millis(20),
            progress_buffer: 64,
            dedup_window: 10_000,
            operation_timeout: Duration::from_secs(10),
        }
    }
}

fn short_hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let short = raw.trim().split('.').next().unwrap_or_default().to_owned();
    if validate_segment(Level::Context, &short).is_ok() {
        short
    } else {
        "localhost".to_owned()
    }
}

/// Builds an [`Aether`] node.
#[derive(Debug, Default)]
#[must_use]
pub struct AetherBuilder {
    config: Config,
    channels: HashMap<String, SharedTransport>,
    explicit: Explicit,
}

impl AetherBuilder {
    /// The default channel's transport.
    pub fn transport(self, transport: impl IntoTransport) -> Self {
        self.channel("", transport)
    }

    /// Adds a named channel; tasks and workers pick it with `.channel(name)`. The name `""`
    /// is the default channel.
    pub fn channel(mut self, name: impl Into<String>, transport: impl IntoTransport) -> Self {
        self.channels
            .insert(name.into(), transport.into_transport());
        self
    }

    /// Sets [`Config::union`].
    pub fn union(mut self, union: impl Into<String>) -> Self {
        self.config.union = union.into();
        self
    }
    /// Sets [`Config::host`].
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.config.host = host.into();
        self
    }
    /// Sets [`Config::client_id`].
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.config.client_id = id.into();
        self
    }
    /// Sets [`Config::codec`].
    pub fn codec(mut self, codec: Codec) -> Self {
        self.config.codec = codec;
        self
    }
    /// Sets [`Config::max_payload`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.config.max_payload = bytes;
        self.explicit.max_payload = true;
        self
    }
    /// Sets [`Config::lease`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }
    /// Sets [`Config::max_attempts`].
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.max_attempts = n;
        self
    }
    /// Sets [`Config::redispatch`]: `true` or `false` overrides the per-transport choice.
    pub fn redispatch(mut self, on: bool) -> Self {
        self.config.redispatch = Some(on);
        self
    }
    /// Sets [`Config::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }
    /// Sets [`Config::defer_accept`].
    pub fn defer_accept(mut self, defer: Duration) -> Self {
        self.config.defer_accept = defer;
        self.explicit.defer_accept = true;
        self
    }
    /// Sets [`Config::progress_buffer`].
    pub fn progress_buffer(mut self, n: usize) -> Self {
        self.config.progress_buffer = n;
        self
    }
    /// Sets [`Config::dedup_window`].
    pub fn dedup_window(mut self, n: usize) -> Self {
        self.config.dedup_window = n;
        self
    }
    /// Sets [`Config::operation_timeout`].
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.config.operation_timeout = timeout;
        self
    }

    /// Checks the settings, and that each channel's transport can keep what they ask (see
    /// [`requirements`]), and builds the node.
    pub fn build(self) -> Result<Aether> {
        let c = &self.config;
        validate_segment(Level::Union, &c.union)?;
        validate_segment(Level::Context, &c.host)?;
        validate_segment(Level::Tid, &c.client_id)?;
        if self.channels.is_empty() {
            return Err(Error::Config(
                "no transport: call .transport(..) or .channel(..)".into(),
            ));
        }
        if c.lease < Duration::from_millis(30) {
            return Err(Error::Config(format!(
                "lease {:?} is too short; use at least 30 ms",
                c.lease
            )));
        }
        if c.max_attempts == 0 {
            return Err(Error::Config("max_attempts must be at least 1".into()));
        }
        if c.max_payload < 256 {
            return Err(Error::Config(
                "max_payload must be at least 256 bytes".into(),
            ));
        }
        requirements::check_node(c, self.explicit, &self.channels)?;
        Ok(Aether {
            inner: Arc::new(Node {
                config: self.config,
                channels: self.channels,
                counters: Counters::default(),
                dead: Mutex::new(VecDeque::new()),
                routes: Routes::default(),
            }),
        })
    }
}

/// One process's node: its identity, transports and counters. Cheap to clone.
///
/// ```
/// # async fn demo() -> aether_core::Result<()> {
/// use aether_core::{Aether, MemoryTransport};
///
/// let aether = Aether::builder()
///     .union("demo")
///     .transport(MemoryTransport::connect("memory://")?)
///     .build()?;
/// let client = aether.client();
/// # drop(client); Ok(()) }
/// ```
#[derive(Clone)]
pub struct Aether {
    pub(crate) inner: Arc<Node>,
}

pub(crate) struct Node {
    pub(crate) config: Config,
    pub(crate) channels: HashMap<String, SharedTransport>,
    pub(crate) counters: Counters,
    dead: Mutex<VecDeque<DeadLetter>>,
    pub(crate) routes: Routes,
}

/// Dead letters a node keeps locally for transports without a dead-letter place.
const LOCAL_DEAD_LETTERS: usize = 256;

impl Aether {
    /// A builder with the default settings.
    pub fn builder() -> AetherBuilder {
        AetherBuilder::default()
    }

    /// A node with default settings on one transport.
    pub fn new(transport: impl IntoTransport) -> Result<Aether> {
        Aether::builder().transport(transport).build()
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A client to perform tasks.
    pub fn client(&self) -> Client {
        Client::new(self.clone())
    }

    /// A builder for a worker that handles tasks.
    pub fn worker(&self) -> WorkerBuilder {
        WorkerBuilder::new(self.clone())
    }

    /// The transport of channel `name` (`""` is the default channel).
    pub fn transport(&self, name: &str) -> Result<&SharedTransport> {
        self.inner
            .channels
            .get(name)
            .ok_or_else(|| Error::UnknownChannel(name.to_owned()))
    }

    /// The names of the channels.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.inner.channels.keys().map(String::as_str)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Dead letters kept locally because their transport has no dead-letter place (the
    /// newest 256).
    pub fn local_dead_letters(&self) -> Vec<DeadLetter> {
        self.inner
            .dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Closes every transport.
    pub async fn close(&self) -> Result<()> {
        for t in self.inner.channels.values() {
            t.close().await?;
        }
        Ok(())
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Stores a dead letter on `transport`, or locally if it has no dead-letter place.
    pub(crate) async fn dead_letter(&self, transport: &SharedTransport, letter: DeadLetter) {
        use std::sync::atomic::Ordering;
        self.counters()
            .dead_lettered
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(topic = %letter.topic, reason = %letter.reason, "dead letter");
        // Where the transport has no dead-letter place, do not even ask.
        let stored = transport.capabilities().dead_letters
            && match transport.dead_letter(letter.clone()).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "transport refused a dead letter; kept locally");
                    false
                }
            };
        if !stored {
            let mut dead = self.inner.dead.lock().unwrap_or_else(|e| e.into_inner());
            if dead.len() >= LOCAL_DEAD_LETTERS {
                dead.pop_front();
            }
            dead.push_back(letter);
        }
    }

    /// Runs a broker operation under [`Config::operation_timeout`].
    pub(crate) async fn timed<T>(
        &self,
        what: &'static str,
        op: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(self.inner.config.operation_timeout, op)
            .await
            .map_err(|_| Error::Timeout(what))?
    }

    /// The payload limit in force on `transport`.
    pub(crate) fn payload_limit(&self, transport: &SharedTransport) -> usize {
        self.inner
            .config
            .max_payload
            .min(transport.capabilities().max_payload)
    }
}

impl fmt::Debug for Aether {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aether")
            .field("config", &self.inner.config)
            .field("channels", &self.inner.channels.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryTransport;

    #[test]
    fn backoff_doubles_to_max() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<_> = (2..6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(d, [100, 200, 350, 350]);
    }

    #[test]
    fn build_checks_settings() {
        let t = || MemoryTransport::connect("memory://node-test").unwrap();
        assert!(Aether::builder().build().is_err());
        assert!(matches!(
            Aether::builder().transport(t()).union("a.b").build(),
            Err(Error::Topic(_))
        ));
        assert!(
            Aether::builder()
                .transport(t())
                .max_attempts(0)
                .build()
                .is_err()
        );
        let a = Aether::builder()
            .transport(t())
            .channel("other", t())
            .build()
            .unwrap();
        assert!(a.transport("other").is_ok());
        // A limit above what a channel carries is refused, naming the channel.
        let small = || MemoryTransport::connect("memory://node-test-small?max_payload=1000");
        let err = Aether::builder()
            .transport(t())
            .channel("small", small().unwrap())
            .max_payload(2000)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("\"small\"") && m.contains("1000")),
            "{err}"
        );
        // Left at its default, the limit is the transport's.
        assert!(
            Aether::builder()
                .transport(small().unwrap())
                .build()
                .is_ok()
        );
        assert!(matches!(a.transport("nope"), Err(Error::UnknownChannel(_))));
        assert_eq!(a.config().union, "default");
    }
}
