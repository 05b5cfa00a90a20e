//! Settings of an AMQP transport, and their parsing from `amqp://` / `amqps://` URLs.

use std::path::PathBuf;
use std::time::Duration;

use aether_core::settings::FromValue;
use aether_core::url::{BrokerUrl, Secret};
use aether_core::{Error, Result};

/// The kind of RabbitMQ queue that holds a workgroup's tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueType {
    /// Classic durable queues: the fastest on one node, and what every RabbitMQ version has.
    /// Redeliveries are known only as "delivered before or not".
    Classic,
    /// Quorum queues (RabbitMQ 3.8+): replicated, and they count deliveries, so a task that
    /// keeps crashing its workers is dead-lettered after `max_deliveries`.
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl std::str::FromStr for QueueType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            _ => Err(Error::Config(format!(
                "invalid queue_type {s:?}: expected classic or quorum"
            ))),
        }
    }
}

impl FromValue for QueueType {
    fn from_value(_: &str, value: &str) -> Result<Self> {
        value.parse()
    }
}

/// A RabbitMQ node, `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Host name or address (IPv6 in brackets, as in a URL).
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

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

aether_core::settings! {
    /// How to reach RabbitMQ and how to lay out exchanges and queues on it.
    ///
    /// Parsed from `amqp[s]://[user[:password]@]host[:port][/vhost][?key=value&...]` by
    /// [`AmqpConfig::from_url`], or built from [`AmqpConfig::default`] and the setters.
    /// Unknown query keys are an error; `Debug` never prints the password.
    #[derive(Clone, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct AmqpConfig {
        /// Broker host. Default `127.0.0.1`.
        host: String = "127.0.0.1".into(),
        /// Broker port. Default 5672; an `amqps://` URL makes it 5671.
        port: u16 = 5672,
        /// More nodes `host:port` of the same RabbitMQ cluster (same user, vhost and TLS
        /// settings); the key repeats. The transport connects to the first node that
        /// answers, host first, and after a lost connection tries the next one first, so
        /// it fails over to a live node. Default none.
        [key = AmqpConfig::add_cluster_node] cluster_nodes: Vec<Node> = Vec::new(),
        /// Virtual host, the URL's percent-decoded path (`/%2f` is `/`). Default `/`.
        vhost: String = "/".into(),
        /// User name. Default `guest`.
        username: String = "guest".into(),
        /// Password. Default `guest`.
        password: Secret = Secret::new("guest"),
        /// TLS, on for `amqps://`. Default off.
        tls: bool = false,
        /// PEM file of the CA that signed the broker's certificate. Default none: the
        /// webpki roots.
        [key] tls_ca: Option<PathBuf> = None,
        /// PEM client certificate, for brokers that ask for one (with `tls_key`). Default
        /// none.
        [key] tls_cert: Option<PathBuf> = None,
        /// PEM private key of `tls_cert`. Default none.
        [key] tls_key: Option<PathBuf> = None,
        /// Name the broker's certificate must carry. Default the host.
        [key] tls_domain: Option<String> = None,
        /// AMQP heartbeat: a connection silent for two of these is considered dead; whole
        /// seconds, `0s` turns it off. Default 20 s.
        [key] heartbeat: Duration = Duration::from_secs(20),
        /// Name shown for the connection in the RabbitMQ management UI. Default
        /// `aether-{process id}`.
        [key] connection_name: String = format!("aether-{}", std::process::id()),
        /// Name of the topic exchange for broadcasts; `{union}` is replaced by the union,
        /// so the default gives one exchange per union. Performs go through
        /// `{exchange}.work`, and performs no workgroup queue takes wait in holding queues
        /// fed through `{exchange}.unrouted`. Without `{union}`, one exchange serves every
        /// union and filters may have a wildcard union. Default `aether.{union}`.
        [key] exchange: String = "aether.{union}".into(),
        /// First part of work-queue names:
        /// `{queue_prefix}.{union}.{job}.{task}.{context}.{workgroup}`. Default `aether`.
        [key] queue_prefix: String = "aether".into(),
        /// Name of the dead-letter exchange (fanout) and of its queue. Default
        /// `aether.dead-letters`.
        [key] dead_letter: String = "aether.dead-letters".into(),
        /// Most messages the dead-letter queue keeps; the oldest are dropped past this.
        /// Default 100,000.
        [key] dead_letter_capacity: u32 = 100_000,
        /// Queue type of work queues, `classic` or `quorum` ([`QueueType`]). Default
        /// `classic`.
        [key] queue_type: QueueType = QueueType::Classic,
        /// How long RabbitMQ lets a consumer hold a task unacknowledged
        /// (`x-consumer-timeout` on each consumer); tasks may run this long. Honoured by
        /// RabbitMQ 3.12 and later; older brokers apply only their node-wide
        /// `consumer_timeout` (see the crate docs). Default 24 hours (RabbitMQ's own is 30
        /// minutes).
        [key] consumer_timeout: Duration = Duration::from_secs(24 * 3600),
        /// Work and holding queues unused (no consumer, no declaration) this long are
        /// deleted by RabbitMQ (`x-expires`), with their tasks: for short-lived unions such
        /// as tests. Every process must use the same value (RabbitMQ refuses a declaration
        /// with another one). Default none: never.
        [key] queue_expires: Option<Duration> = None,
        /// How long a publish or enqueue may wait for a connection and the broker's
        /// confirm. Default 30 s.
        [key] operation_timeout: Duration = Duration::from_secs(30),
        /// How long one connection attempt may take. Default 10 s.
        [key] connect_timeout: Duration = Duration::from_secs(10),
        /// First wait between reconnection attempts; it doubles up to `reconnect_max`.
        /// Default 100 ms.
        [key] reconnect_min: Duration = Duration::from_millis(100),
        /// Longest wait between reconnection attempts. Default 5 s.
        [key] reconnect_max: Duration = Duration::from_secs(5),
        /// Messages a subscription holds before the broker keeps the rest (its
        /// prefetch). Default 1,024.
        [key] subscription_capacity: usize = 1024,
        /// Largest payload, in bytes. Default 16 MiB (RabbitMQ 4's `max_message_size`).
        [key] max_payload: usize = 16 << 20,
    }
}

impl AmqpConfig {
    /// Parses `amqp[s]://[user[:password]@]host[:port][/vhost][?key=value&...]` (keys in
    /// the table of [`AmqpConfig`]; durations like `30s` or `250ms`). The vhost is the
    /// percent-decoded path (`/%2f` is `/`; no path is `/`). An unknown key is an error.
    ///
    /// ```
    /// use aether_amqp::AmqpConfig;
    ///
    /// let c = AmqpConfig::from_url("amqps://app:s3cret@rabbit.internal/prod?heartbeat=10s")?;
    /// assert_eq!((c.port, c.vhost.as_str(), c.tls), (5671, "prod", true));
    /// assert!(!format!("{c:?}").contains("s3cret"));
    /// # Ok::<(), aether_core::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<AmqpConfig> {
        let u = BrokerUrl::parse(url)?;
        let mut c = AmqpConfig::default();
        match u.scheme.as_str() {
            "amqp" => {}
            "amqps" => {
                c.tls = true;
                c.port = 5671;
            }
            other => {
                return Err(Error::Config(format!(
                    "not an AMQP URL: scheme {other}; expected amqp:// or amqps://"
                )));
            }
        }
        if !u.host.is_empty() {
            c.host = u.host.clone();
        }
        if let Some(port) = u.port {
            c.port = port;
        }
        if !u.path.is_empty() {
            c.vhost = u.path.clone();
        }
        if let Some(user) = &u.username {
            c.username = user.clone();
        }
        if let Some(password) = &u.password {
            c.password = password.clone();
        }
        u.apply_query(AmqpConfig::KEYS, &mut c)?;
        c.validate()?;
        Ok(c)
    }

    fn add_cluster_node(&mut self, value: &str) -> Result<()> {
        let bad = || {
            Error::Config(format!(
                "invalid cluster node {value:?}: expected host:port"
            ))
        };
        let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() {
            return Err(bad());
        }
        self.cluster_nodes
            .push(Node::new(host, port.parse().map_err(|_| bad())?));
        Ok(())
    }

    /// Every node to try: the URL's host, then each of `cluster_nodes`.
    pub fn nodes(&self) -> Vec<Node> {
        let mut nodes = vec![Node::new(self.host.clone(), self.port)];
        nodes.extend(self.cluster_nodes.iter().cloned());
        nodes
    }

    /// Checks values that would only fail later, at the broker, saying what to change.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Config(why));
        if self.host.is_empty() {
            return bad("the broker host is empty".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key go together: give both or neither".into());
        }
        if !self.tls
            && (self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_domain.is_some())
        {
            return bad(
                "tls_ca, tls_cert, tls_key and tls_domain need TLS: an amqps:// URL".into(),
            );
        }
        if self.exchange.is_empty() || self.queue_prefix.is_empty() || self.dead_letter.is_empty() {
            return bad("exchange, queue_prefix and dead_letter must not be empty".into());
        }
        if self.exchange.starts_with("amq.") || self.dead_letter.starts_with("amq.") {
            return bad("exchange and queue names starting with `amq.` are reserved".into());
        }
        if self.heartbeat.as_secs() > u64::from(u16::MAX) {
            return bad(format!("heartbeat {:?} is too long", self.heartbeat));
        }
        if !self.heartbeat.is_zero() && self.heartbeat < Duration::from_secs(1) {
            return bad(format!(
                "heartbeat {:?}: AMQP counts it in whole seconds; use at least 1s (0s turns it off)",
                self.heartbeat
            ));
        }
        // AMQP short strings; the exchange name also gets `.unrouted` and a union appended.
        if self.vhost.len() > 255 || self.exchange.len() > 170 || self.dead_letter.len() > 255 {
            return bad("the vhost, exchange or dead_letter name is too long for AMQP".into());
        }
        if self.consumer_timeout.as_millis() > i32::MAX as u128 {
            return bad(format!(
                "consumer_timeout {:?} is longer than RabbitMQ accepts (24.8 days)",
                self.consumer_timeout
            ));
        }
        if self.subscription_capacity == 0 || self.subscription_capacity > usize::from(u16::MAX) {
            return bad("subscription_capacity must be 1 to 65535".into());
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return bad("reconnect_min must be above 0 and at most reconnect_max".into());
        }
        if self.tls && !cfg!(feature = "tls") {
            return bad(
                "amqps:// needs the `tls` cargo feature of aether-amqp (on by default)".into(),
            );
        }
        Ok(())
    }

    /// Sets [`AmqpConfig::username`] and [`AmqpConfig::password`].
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.username = username.into();
        self.password = password.into();
        self
    }

    /// Sets [`AmqpConfig::reconnect_min`] and [`AmqpConfig::reconnect_max`].
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// `amqp[s]://user:***@host:port/vhost`: the broker without the password, for logs.
    pub fn redacted_url(&self) -> String {
        self.redacted_url_of(&Node::new(self.host.clone(), self.port))
    }

    /// [`AmqpConfig::redacted_url`] of one of its `nodes`.
    pub fn redacted_url_of(&self, node: &Node) -> String {
        format!(
            "{}://{}:***@{node}/{}",
            if self.tls { "amqps" } else { "amqp" },
            self.username,
            self.vhost.replace('/', "%2f")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_urls() {
        let c = AmqpConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.vhost.as_str()),
            ("127.0.0.1", 5672, "/")
        );
        assert_eq!(c.username, "guest");
        assert_eq!(c.password.expose(), "guest");
        assert!(!c.tls);
        let c = AmqpConfig::from_url("amqp://rabbit").unwrap();
        assert_eq!((c.port, c.vhost.as_str()), (5672, "/"));
        let c = AmqpConfig::from_url(
            "amqps://u:p%40ss@[::1]/orders?heartbeat=5s&exchange=bus&queue_type=quorum\
             &consumer_timeout=7200s&tls_ca=/etc/ca.pem&connection_name=billing",
        )
        .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("[::1]", 5671));
        assert_eq!(c.vhost, "orders");
        assert_eq!(c.password.expose(), "p@ss");
        assert_eq!(c.heartbeat, Duration::from_secs(5));
        assert_eq!(c.exchange, "bus");
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert_eq!(c.consumer_timeout, Duration::from_secs(7200));
        assert_eq!(c.tls_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.connection_name, "billing");
    }

    #[test]
    fn cluster_nodes_repeat_after_the_host() {
        let c = AmqpConfig::from_url(
            "amqp://u:p@10.0.0.1:5673/?cluster_nodes=10.0.0.2:5674&cluster_nodes=[::1]:5675",
        )
        .unwrap();
        assert_eq!(
            c.nodes(),
            [
                Node::new("10.0.0.1", 5673),
                Node::new("10.0.0.2", 5674),
                Node::new("[::1]", 5675)
            ]
        );
        assert_eq!(
            c.redacted_url_of(&c.nodes()[2]),
            "amqp://u:***@[::1]:5675/%2f"
        );
        assert_eq!(AmqpConfig::default().nodes().len(), 1);
    }

    #[test]
    fn refuses_mistakes_with_a_reason() {
        for (url, says) in [
            ("redis://h", "not an AMQP URL"),
            ("amqp://h?prefetch=3", "unknown query parameter"),
            ("amqp://h?queue_type=stream", "classic or quorum"),
            ("amqp://h?heartbeat=5", "invalid duration"),
            ("amqp://h?tls_cert=/c.pem", "go together"),
            ("amqp://h?exchange=amq.topic", "reserved"),
            ("amqp://h?consumer_timeout=2200000s", "24.8 days"),
            ("amqp://h?heartbeat=500ms", "whole seconds"),
            ("amqp://h?cluster_nodes=h2", "expected host:port"),
            ("amqp://h?cluster_nodes=h2:x", "expected host:port"),
        ] {
            let err = AmqpConfig::from_url(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn never_prints_the_password() {
        let c = AmqpConfig::from_url("amqp://bob:hunter2@h/v").unwrap();
        let shown = format!("{c:?} {}", c.redacted_url());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("amqp://bob:***@h:5672/v"), "{shown}");
        let err = AmqpConfig::from_url("amqp://bob:hunter2@h?nope=1")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
