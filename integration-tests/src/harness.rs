//! What the conformance suite needs from a transport under test.

use std::time::Duration;

use aether::{Aether, AetherBuilder, Capabilities, SharedTransport};
use async_trait::async_trait;

/// A transport under test: how to open connections to its broker.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// A name for messages, e.g. `redis-streams`.
    fn name(&self) -> String;

    /// A URL another process can connect with (`aether::connect`), if the broker is
    /// reachable from other processes.
    fn url(&self) -> Option<String>;

    /// A new connection to the broker, as a separate process would have.
    async fn connect(&self) -> SharedTransport;

    /// A broker of this kind that only this test uses, which the test may restart. `None`
    /// where the transport has no broker to restart.
    async fn private_broker(&self) -> Option<Box<dyn PrivateBroker>> {
        None
    }

    /// A new connection whose work queues hold at most `limit` performs (the transport's
    /// backlog setting, e.g. Redis `max_len`), or `None` where the transport has no such
    /// limit to set.
    async fn connect_limited(&self, limit: u64) -> Option<SharedTransport> {
        let _ = limit;
        None
    }

    /// Whether every connection to the broker goes to the address in [`Harness::url`], so
    /// that a proxy of that address cuts them off. Not so for a cluster, whose clients
    /// find the other nodes' addresses by themselves. Default true.
    fn one_address(&self) -> bool {
        true
    }

    /// Removes what a case left on the shared broker under `union` (exchanges, retained
    /// messages, keys), so test runs do not pile up there. Called after each case.
    async fn cleanup(&self, union: &str) {
        let _ = union;
    }
}

/// A broker started for one test.
#[async_trait]
pub trait PrivateBroker: Send + Sync {
    /// A new connection to it.
    async fn connect(&self) -> SharedTransport;
    /// Stops the broker, then starts it again on the same address.
    async fn restart(&self);
}

/// A harness for a networked broker reached by URL through `aether::connect`.
#[derive(Clone, Debug)]
pub struct UrlHarness {
    name: String,
    url: String,
}

impl UrlHarness {
    /// The URL from the environment variable `var`, else `default`.
    pub fn from_env(name: &str, var: &str, default: &str) -> UrlHarness {
        UrlHarness {
            name: name.to_owned(),
            url: std::env::var(var).unwrap_or_else(|_| default.to_owned()),
        }
    }

    /// The URL in use.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl Harness for UrlHarness {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn url(&self) -> Option<String> {
        Some(self.url.clone())
    }

    async fn connect(&self) -> SharedTransport {
        match tokio::time::timeout(Duration::from_secs(20), aether::connect(&self.url)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => panic!(
                "{}: cannot connect to {}: {e}. Is the broker running? The README's test command starts it.",
                self.name,
                aether::url::redact(&self.url)
            ),
            Err(_) => panic!(
                "{}: connecting to {} timed out. Is the broker running?",
                self.name,
                aether::url::redact(&self.url)
            ),
        }
    }
}

/// The in-memory transport: each harness is a private broker.
#[derive(Clone, Debug)]
pub struct MemoryHarness {
    url: String,
}

impl MemoryHarness {
    /// A fresh broker; `redeliver = false` makes it drop unacknowledged work like MQTT,
    /// so the client's redispatch is what recovers tasks.
    pub fn new(redeliver: bool) -> MemoryHarness {
        MemoryHarness {
            url: format!(
                "memory://h{}?redeliver={redeliver}",
                uuid::Uuid::new_v4().simple()
            ),
        }
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    fn name(&self) -> String {
        "memory".into()
    }

    fn url(&self) -> Option<String> {
        None
    }

    async fn connect(&self) -> SharedTransport {
        aether::connect(&self.url).await.expect("memory transport")
    }

    /// A broker of its own (named after this one) with `queue_capacity=limit`: `enqueue`
    /// waits for room there.
    async fn connect_limited(&self, limit: u64) -> Option<SharedTransport> {
        let (name, query) = self.url.split_once('?').unwrap_or((&self.url, ""));
        let url = format!("{name}-limited?{query}&queue_capacity={limit}");
        Some(aether::connect(&url).await.expect("memory transport"))
    }
}

/// A union no other test uses.
pub fn union() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A node on a new connection of `h`, in `union`, with `tweak` applied to the builder.
pub async fn node(
    h: &dyn Harness,
    union: &str,
    tweak: impl FnOnce(AetherBuilder) -> AetherBuilder,
) -> Aether {
    let t = h.connect().await;
    tweak(Aether::builder().union(union).transport(t))
        .build()
        .expect("node settings")
}

/// The capabilities of `h`'s transport.
pub async fn capabilities(h: &dyn Harness) -> Capabilities {
    let t = h.connect().await;
    let caps = t.capabilities();
    let _ = t.close().await;
    caps
}

/// Waits for `f` to hold, checking every 20 ms, failing after `limit` with `what`.
pub async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
