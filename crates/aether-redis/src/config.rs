//! [`RedisConfig`]: where the Redis server is and how the transport uses it, from a URL
//! or built in code.

use std::fmt;
use std::time::Duration;

use aether_core::url::{BrokerUrl, Secret, parse_bool, parse_duration, parse_value};
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

/// Settings of a Redis transport.
///
/// Parsed from `redis://[user:password@]host[:port][/db][?key=value&...]` (`rediss://` for
/// TLS) by [`RedisConfig::from_url`], or built with [`RedisConfig::new`] and the setters.
/// `Debug` never prints the password.
///
/// | query key | meaning | default |
/// |---|---|---|
/// | `mode` | `streams` or `list` ([`Mode`]) | `streams` |
/// | `prefix` | first part of every key aether creates | `aether` |
/// | `max_len` | performs kept per queue (stream `MAXLEN ~`, list `LTRIM`) | 100000 |
/// | `dead_letter_max_len` | dead letters kept per queue | 10000 |
/// | `max_payload` | largest payload in bytes | 8388608 (8 MiB) |
/// | `timeout` | command timeout | `10s` |
/// | `connect_timeout` | connection (and TLS handshake) timeout | `10s` |
/// | `reconnect_max_delay` | longest wait between reconnection attempts | `2s` |
/// | `block` | longest a consumer's blocking read waits before it looks around | `5s` |
/// | `subscription_capacity` | messages a subscription buffers | 1024 |
/// | `cluster` | `true`: the host (and every `node`) is a seed of a Redis Cluster | `false` |
/// | `node` | another seed node `host:port` of the cluster (repeatable) | |
/// | `tls_ca` | PEM file of a CA to trust besides the system's (`rediss://` only) | |
/// | `tls_insecure` | `true`: accept any server certificate (tests only) | `false` |
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server, or the first seed node of a cluster. Default `127.0.0.1:6379`.
    pub node: Node,
    /// More seed nodes of a cluster. Default none.
    pub cluster_nodes: Vec<Node>,
    /// Connect to a Redis Cluster. Default false.
    pub cluster: bool,
    /// ACL user. Default none.
    pub username: Option<String>,
    /// Password. Default none.
    pub password: Option<Secret>,
    /// Database number (not in cluster mode). Default 0.
    pub database: u8,
    /// TLS (`rediss://`). Default false.
    pub tls: bool,
    /// A CA certificate (PEM file) to trust, for TLS. Default none.
    pub tls_ca: Option<String>,
    /// Accept any server certificate. Default false.
    pub tls_insecure: bool,
    /// How the work queue is kept. Default [`Mode::Streams`].
    pub mode: Mode,
    /// First part of every key. Default `aether`.
    pub prefix: String,
    /// Performs kept per queue; past it the oldest are trimmed. Default 100,000.
    pub max_len: u64,
    /// Dead letters kept per queue; past it the oldest are trimmed. Default 10,000.
    pub dead_letter_max_len: u64,
    /// Largest payload. Default 8 MiB: Redis disconnects a pub/sub subscriber whose output
    /// buffer passes 8 MiB for a minute or 32 MiB at once (`client-output-buffer-limit`).
    pub max_payload: usize,
    /// Command timeout. Default 10 s.
    pub timeout: Duration,
    /// Connection timeout. Default 10 s.
    pub connect_timeout: Duration,
    /// Longest wait between reconnection attempts (they start at 10 ms and double).
    /// Default 2 s.
    pub reconnect_max_delay: Duration,
    /// Longest a consumer's blocking read waits before it checks for work to reclaim.
    /// Default 5 s.
    pub block: Duration,
    /// Messages a subscription buffers before it holds up the others. Default 1,024.
    pub subscription_capacity: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            node: Node {
                host: "127.0.0.1".into(),
                port: 6379,
            },
            cluster_nodes: Vec::new(),
            cluster: false,
            username: None,
            password: None,
            database: 0,
            tls: false,
            tls_ca: None,
            tls_insecure: false,
            mode: Mode::Streams,
            prefix: "aether".into(),
            max_len: 100_000,
            dead_letter_max_len: 10_000,
            max_payload: 8 << 20,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            reconnect_max_delay: Duration::from_secs(2),
            block: Duration::from_secs(5),
            subscription_capacity: 1024,
        }
    }
}

/// The query keys [`RedisConfig::from_url`] knows.
const KEYS: &[&str] = &[
    "mode",
    "prefix",
    "max_len",
    "dead_letter_max_len",
    "max_payload",
    "timeout",
    "connect_timeout",
    "reconnect_max_delay",
    "block",
    "subscription_capacity",
    "cluster",
    "node",
    "tls_ca",
    "tls_insecure",
];

impl RedisConfig {
    /// The defaults: `127.0.0.1:6379`, streams mode.
    pub fn new() -> Self {
        RedisConfig::default()
    }

    /// Parses a `redis://` or `rediss://` URL (see the table above). Unknown query keys are
    /// an error; errors never contain the password.
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
            c.node.host = strip_brackets(&u.host).to_owned();
        }
        if let Some(port) = u.port {
            c.node.port = port;
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
        u.take_query(KEYS, |k, v| {
            match k {
                "mode" => {
                    c.mode = match v {
                        "streams" => Mode::Streams,
                        "list" => Mode::List,
                        _ => {
                            return Err(Error::Config(format!(
                                "invalid value {v:?} for mode: expected streams or list"
                            )));
                        }
                    }
                }
                "prefix" => {
                    if v.is_empty() || v.contains(['{', '}']) {
                        return Err(Error::Config(format!(
                            "invalid prefix {v:?}: it must be non-empty, without braces"
                        )));
                    }
                    c.prefix = v.to_owned();
                }
                "max_len" => c.max_len = positive(k, v)?,
                "dead_letter_max_len" => c.dead_letter_max_len = positive(k, v)?,
                "max_payload" => c.max_payload = positive::<u64>(k, v)? as usize,
                "timeout" => c.timeout = parse_duration(k, v)?,
                "connect_timeout" => c.connect_timeout = parse_duration(k, v)?,
                "reconnect_max_delay" => c.reconnect_max_delay = parse_duration(k, v)?,
                "block" => c.block = parse_duration(k, v)?,
                "subscription_capacity" => {
                    c.subscription_capacity = positive::<u64>(k, v)? as usize
                }
                "cluster" => c.cluster = parse_bool(k, v)?,
                "node" => c.cluster_nodes.push(parse_node(v)?),
                "tls_ca" => c.tls_ca = Some(v.to_owned()),
                _ => c.tls_insecure = parse_bool(k, v)?,
            }
            Ok(())
        })?;
        c.check()?;
        Ok(c)
    }

    /// Refuses settings that cannot work together.
    pub(crate) fn check(&self) -> Result<()> {
        if !self.cluster_nodes.is_empty() && !self.cluster {
            return Err(Error::Config(
                "`node=` names more cluster seed nodes; add `cluster=true`".into(),
            ));
        }
        if self.cluster && self.database != 0 {
            return Err(Error::Config(
                "a Redis Cluster has only database 0; drop the /db path".into(),
            ));
        }
        if (self.tls_ca.is_some() || self.tls_insecure) && !self.tls {
            return Err(Error::Config(
                "tls_ca and tls_insecure need a rediss:// URL".into(),
            ));
        }
        if self.block < Duration::from_millis(10) {
            return Err(Error::Config("block must be at least 10ms".into()));
        }
        Ok(())
    }

    /// Sets [`RedisConfig::node`].
    pub fn node(mut self, host: &str, port: u16) -> Self {
        self.node = Node {
            host: host.to_owned(),
            port,
        };
        self
    }
    /// Sets [`RedisConfig::mode`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
    /// Sets [`RedisConfig::prefix`].
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }
    /// Sets the ACL user and password.
    pub fn credentials(mut self, username: Option<&str>, password: &str) -> Self {
        self.username = username.map(str::to_owned);
        self.password = Some(Secret::new(password));
        self
    }
    /// Sets [`RedisConfig::database`].
    pub fn database(mut self, db: u8) -> Self {
        self.database = db;
        self
    }
    /// Connects to a Redis Cluster through these seed nodes (the first replaces
    /// [`RedisConfig::node`]).
    pub fn cluster(mut self, seeds: &[(&str, u16)]) -> Self {
        self.cluster = true;
        let mut nodes = seeds.iter().map(|(h, p)| Node {
            host: (*h).to_owned(),
            port: *p,
        });
        if let Some(first) = nodes.next() {
            self.node = first;
        }
        self.cluster_nodes = nodes.collect();
        self
    }
    /// Sets [`RedisConfig::tls`].
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }
    /// Sets [`RedisConfig::max_len`] (at least 1).
    pub fn max_len(mut self, n: u64) -> Self {
        self.max_len = n.max(1);
        self
    }
    /// Sets [`RedisConfig::max_payload`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
    /// Sets [`RedisConfig::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Sets [`RedisConfig::block`].
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
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
        let host = &self.node.host;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        format!(
            "{scheme}://{auth}{host}:{}/{}?mode={}",
            self.node.port, self.database, self.mode
        )
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("node", &self.node)
            .field("cluster_nodes", &self.cluster_nodes)
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("database", &self.database)
            .field("tls", &self.tls)
            .field("mode", &self.mode)
            .field("prefix", &self.prefix)
            .field("max_len", &self.max_len)
            .field("max_payload", &self.max_payload)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(key: &str, value: &str) -> Result<T> {
    let v: T = parse_value(key, value)?;
    if v <= T::default() {
        return Err(Error::Config(format!("{key} must be at least 1")));
    }
    Ok(v)
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
    Ok(Node {
        host: host.to_owned(),
        port: port.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_the_full_shape() {
        let c = RedisConfig::from_url("redis://127.0.0.1:6379").unwrap();
        assert_eq!(c, RedisConfig::default());
        let c = RedisConfig::from_url(
            "rediss://bob:s%3Acret@cache.example:6380/3?mode=list&prefix=app&max_len=50&timeout=250ms&tls_insecure=true",
        )
        .unwrap();
        assert!(c.tls && c.tls_insecure);
        assert_eq!(
            c.node,
            Node {
                host: "cache.example".into(),
                port: 6380
            }
        );
        assert_eq!(c.username.as_deref(), Some("bob"));
        assert_eq!(c.password.as_ref().unwrap().expose(), "s:cret");
        assert_eq!(
            (c.database, c.mode, c.prefix.as_str()),
            (3, Mode::List, "app")
        );
        assert_eq!(c.max_len, 50);
        assert_eq!(c.timeout, Duration::from_millis(250));
        let c = RedisConfig::from_url("redis://[::1]").unwrap();
        assert_eq!(
            c.node,
            Node {
                host: "::1".into(),
                port: 6379
            }
        );
    }

    #[test]
    fn cluster_urls() {
        let c = RedisConfig::from_url(
            "redis://10.0.0.1:7000?cluster=true&node=10.0.0.2:7001&node=[::1]:7002",
        )
        .unwrap();
        assert!(c.cluster);
        assert_eq!(
            c.cluster_nodes,
            [
                Node {
                    host: "10.0.0.2".into(),
                    port: 7001
                },
                Node {
                    host: "::1".into(),
                    port: 7002
                }
            ]
        );
        assert!(RedisConfig::from_url("redis://h?node=a:1").is_err());
        assert!(RedisConfig::from_url("redis://h/2?cluster=true").is_err());
        assert!(RedisConfig::from_url("redis://h?cluster=true&node=nope").is_err());
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
