//! [`RedisConfig`]: where the Redis server is and how the transport uses it, from a URL
//! or built in code.

use std::fmt;
use std::time::Duration;

use std::path::PathBuf;

use aether_core::settings::FromValue;
use aether_core::url::{BrokerUrl, Secret};
use aether_core::{Error, Result};

/// How the work queue is kept in Redis. Broadcast is pub/sub in both modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// One stream per queue, one consumer group per workgroup: `XADD`, `XREADGROUP`,
    /// `XACK`, `XAUTOCLAIM` of entries idle past the lease, dead letters after too many
    /// deliveries. The default.
    #[default]
    Streams,
    /// One list per workgroup: `LPUSH`, `BLMOVE` into a per-consumer processing list,
    /// `LREM` on ack, and a reaper that returns the entries of consumers whose presence
    /// expired (the Python library's `LPUSH`/`BRPOP`, made reliable).
    List,
}

impl Mode {
    /// `"streams"` or `"list"`, as in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Streams => "streams",
            Mode::List => "list",
        }
    }

    /// The transport's name in this mode: `"redis-streams"` or `"redis-list"`.
    pub(crate) fn transport_name(self) -> &'static str {
        match self {
            Mode::Streams => "redis-streams",
            Mode::List => "redis-list",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Redis node, `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Node {
    /// The node `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Node {
        Node {
            host: host.into(),
            port,
        }
    }
}

impl FromValue for Mode {
    fn from_value(key: &str, value: &str) -> Result<Self> {
        match value {
            "streams" => Ok(Mode::Streams),
            "list" => Ok(Mode::List),
            _ => Err(Error::Config(format!(
                "invalid value {value:?} for {key}: expected streams or list"
            ))),
        }
    }
}

aether_core::settings! {
    /// Settings of a Redis transport.
    ///
    /// Parsed from `redis://[user:password@]host[:port][/db][?key=value&...]` (`rediss://`
    /// for TLS) by [`RedisConfig::from_url`], or built from [`RedisConfig::default`] and the
    /// setters. Unknown query keys are an error; `Debug` never prints the password.
    #[derive(Clone, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct RedisConfig {
        /// The server, or the first seed node of a cluster. Default `127.0.0.1`.
        host: String = "127.0.0.1".into(),
        /// Its port. Default 6379.
        port: u16 = 6379,
        /// ACL user. Default none.
        username: Option<String> = None,
        /// Password. Default none.
        password: Option<Secret> = None,
        /// Database number, the URL's path (not in cluster mode). Default 0.
        database: u8 = 0,
        /// TLS, on for `rediss://`. Default off.
        tls: bool = false,
        /// PEM file of a CA to trust besides the system's, for TLS. Default none.
        [key] tls_ca: Option<PathBuf> = None,
        /// Accept any server certificate (tests only). Default false.
        [key] tls_insecure: bool = false,
        /// `true`: the host (and every `cluster_nodes` entry) is a seed of a Redis
        /// Cluster. Default false.
        [key] cluster: bool = false,
        /// More seed nodes `host:port` of the cluster; the key repeats. Default none.
        [key = RedisConfig::add_cluster_node] cluster_nodes: Vec<Node> = Vec::new(),
        /// How the work queue is kept, `streams` or `list` ([`Mode`]). Default `streams`.
        [key] mode: Mode = Mode::Streams,
        /// First part of every key aether creates; non-empty, without braces. Default
        /// `aether`.
        [key] prefix: String = "aether".into(),
        /// Performs a queue holds (a stream's entries, or a workgroup's list); past it
        /// `enqueue` fails with `Error::QueueFull`, nothing is trimmed. Default 100,000.
        [key] max_len: u64 = 100_000,
        /// Dead letters kept per queue; past it the oldest are trimmed. Default 10,000.
        [key] dead_letter_capacity: u64 = 10_000,
        /// Largest payload in bytes. Default 8 MiB: Redis disconnects a pub/sub subscriber
        /// whose output buffer passes 8 MiB for a minute or 32 MiB at once
        /// (`client-output-buffer-limit`).
        [key] max_payload: usize = 8 << 20,
        /// How long a command may take, and an enqueue may wait for the subscriptions to be
        /// back after a reconnection. Default 10 s.
        [key] operation_timeout: Duration = Duration::from_secs(10),
        /// How long a connection (and TLS handshake) may take. Default 10 s.
        [key] connect_timeout: Duration = Duration::from_secs(10),
        /// First wait between reconnection attempts; it doubles up to `reconnect_max`.
        /// Default 10 ms.
        [key] reconnect_min: Duration = Duration::from_millis(10),
        /// Longest wait between reconnection attempts. Default 2 s.
        [key] reconnect_max: Duration = Duration::from_secs(2),
        /// Longest a consumer's blocking read waits before it checks for work to reclaim.
        /// Default 5 s.
        [key] block: Duration = Duration::from_secs(5),
        /// Messages a subscription buffers before it holds up the others. Default 1,024.
        [key] subscription_capacity: usize = 1024,
    }
}

impl RedisConfig {
    /// Parses a `redis://` or `rediss://` URL (keys in the table above). Unknown query keys
    /// are an error; errors never contain the password.
    pub fn from_url(url: &str) -> Result<RedisConfig> {
        let u = BrokerUrl::parse(url)?;
        let mut c = RedisConfig::default();
        match u.scheme.as_str() {
            "redis" => {}
            "rediss" => c.tls = true,
            other => {
                return Err(Error::Config(format!(
                    "not a Redis URL: scheme {other}; expected redis:// or rediss://"
                )));
            }
        }
        if !u.host.is_empty() {
            c.host = strip_brackets(&u.host).to_owned();
        }
        if let Some(port) = u.port {
            c.port = port;
        }
        c.username = u.username.clone();
        c.password = u.password.clone();
        if !u.path.is_empty() {
            c.database = u.path.parse().map_err(|_| {
                Error::Config(format!(
                    "the path of a Redis URL is the database number, not {:?}",
                    u.path
                ))
            })?;
        }
        u.apply_query(RedisConfig::KEYS, &mut c)?;
        c.validate()?;
        Ok(c)
    }

    fn add_cluster_node(&mut self, value: &str) -> Result<()> {
        self.cluster_nodes.push(parse_node(value)?);
        Ok(())
    }

    /// Refuses settings that cannot work together, saying what to change.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::Config(why.into()));
        if !self.cluster_nodes.is_empty() && !self.cluster {
            return bad("`cluster_nodes` names more cluster seed nodes; add `cluster=true`");
        }
        if self.cluster && self.database != 0 {
            return bad("a Redis Cluster has only database 0; drop the /db path");
        }
        if (self.tls_ca.is_some() || self.tls_insecure) && !self.tls {
            return bad("tls_ca and tls_insecure need TLS: a rediss:// URL");
        }
        if self.block < Duration::from_millis(10) {
            return bad("block must be at least 10ms");
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(Error::Config(format!(
                "invalid prefix {:?}: it must be non-empty, without braces",
                self.prefix
            )));
        }
        for (key, value) in [
            ("max_len", self.max_len),
            ("dead_letter_capacity", self.dead_letter_capacity),
            ("max_payload", self.max_payload as u64),
            ("subscription_capacity", self.subscription_capacity as u64),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{key} must be at least 1")));
            }
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return bad("reconnect_min must be above 0 and at most reconnect_max");
        }
        Ok(())
    }

    /// Sets [`RedisConfig::username`] (none when empty) and [`RedisConfig::password`].
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.username = Some(username.into()).filter(|u| !u.is_empty());
        self.password = Some(password.into());
        self
    }

    /// Sets [`RedisConfig::reconnect_min`] and [`RedisConfig::reconnect_max`].
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// The URL of this configuration with the password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (None, Some(_)) => ":***@".to_owned(),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        };
        let host = &self.host;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        format!(
            "{scheme}://{auth}{host}:{}/{}?mode={}",
            self.port, self.database, self.mode
        )
    }
}

fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn parse_node(v: &str) -> Result<Node> {
    let bad = || Error::Config(format!("invalid node {v:?}: expected host:port"));
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let host = strip_brackets(host);
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Node::new(host, port.parse().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_the_full_shape() {
        let c = RedisConfig::from_url("redis://127.0.0.1:6379").unwrap();
        assert_eq!(c, RedisConfig::default());
        let c = RedisConfig::from_url(
            "rediss://bob:s%3Acret@cache.example:6380/3?mode=list&prefix=app&max_len=50&operation_timeout=250ms&tls_insecure=true",
        )
        .unwrap();
        assert!(c.tls && c.tls_insecure);
        assert_eq!((c.host.as_str(), c.port), ("cache.example", 6380));
        assert_eq!(c.username.as_deref(), Some("bob"));
        assert_eq!(c.password.as_ref().unwrap().expose(), "s:cret");
        assert_eq!(
            (c.database, c.mode, c.prefix.as_str()),
            (3, Mode::List, "app")
        );
        assert_eq!(c.max_len, 50);
        assert_eq!(c.operation_timeout, Duration::from_millis(250));
        let c = RedisConfig::from_url("redis://[::1]").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 6379));
    }

    #[test]
    fn cluster_urls() {
        let c = RedisConfig::from_url(
            "redis://10.0.0.1:7000?cluster=true&cluster_nodes=10.0.0.2:7001&cluster_nodes=[::1]:7002",
        )
        .unwrap();
        assert!(c.cluster);
        assert_eq!(
            c.cluster_nodes,
            [Node::new("10.0.0.2", 7001), Node::new("::1", 7002)]
        );
        assert!(RedisConfig::from_url("redis://h?cluster_nodes=a:1").is_err());
        assert!(RedisConfig::from_url("redis://h/2?cluster=true").is_err());
        assert!(RedisConfig::from_url("redis://h?cluster=true&cluster_nodes=nope").is_err());
    }

    #[test]
    fn refuses_mistakes_without_printing_the_password() {
        for bad in [
            "redis://u:hunter2@h?bogus=1",
            "redis://u:hunter2@h?mode=pubsub",
            "redis://u:hunter2@h/notadb",
            "redis://u:hunter2@h?max_len=0",
            "redis://u:hunter2@h?prefix={x}",
            "redis://u:hunter2@h?tls_insecure=true",
            "mqtt://u:hunter2@h",
        ] {
            let err = RedisConfig::from_url(bad).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{bad}: {err}");
        }
        let err = RedisConfig::from_url("redis://h?bogus=1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus") && err.contains("mode"), "{err}");
        let c = RedisConfig::from_url("redis://u:hunter2@h").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.redacted_url(), "redis://u:***@h:6379/0?mode=streams");
        let c = RedisConfig::from_url("redis://[::1]:7000").unwrap();
        assert_eq!(c.redacted_url(), "redis://[::1]:7000/0?mode=streams");
    }
}
