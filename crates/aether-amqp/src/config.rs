//! Settings of an AMQP transport, and their parsing from `amqp://` / `amqps://` URLs.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use aether_core::url::{BrokerUrl, Secret, parse_duration, parse_value};
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

/// How to reach RabbitMQ and how to lay out exchanges and queues on it.
///
/// Built from a URL with [`AmqpConfig::from_url`], or from [`AmqpConfig::default`] and the
/// chained setters. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// Broker host. Default `127.0.0.1`.
    pub host: String,
    /// Broker port. Default 5672, or 5671 with TLS.
    pub port: u16,
    /// Virtual host. Default `/`.
    pub vhost: String,
    /// User name. Default `guest`.
    pub username: String,
    /// Password. Default `guest`.
    pub password: Secret,
    /// Whether to connect with TLS (`amqps://`). Default false.
    pub tls: bool,
    /// PEM file of the CA that signed the broker's certificate; `None` trusts the webpki
    /// roots. URL key `tls_ca`.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key, for brokers that ask for one. URL keys `tls_cert`,
    /// `tls_key`.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Name the broker's certificate must carry; default the host. URL key `tls_domain`.
    pub tls_domain: Option<String>,
    /// AMQP heartbeat: a connection silent for two of these is considered dead. Default 20 s.
    pub heartbeat: Duration,
    /// Name shown for the connection in the RabbitMQ management UI. Default
    /// `aether-{process id}`.
    pub connection_name: String,
    /// Name of the topic exchange for broadcasts; `{union}` is replaced by the union, so the
    /// default `aether.{union}` gives one exchange per union. Performs go through
    /// `{exchange}.work`, and performs no workgroup queue takes wait in holding queues fed
    /// through `{exchange}.unrouted`. Without `{union}`, one exchange serves every union
    /// and filters may have a wildcard union.
    pub exchange: String,
    /// First part of work-queue names: `{queue_prefix}.{union}.{job}.{task}.{context}.{workgroup}`.
    /// Default `aether`.
    pub queue_prefix: String,
    /// Name of the dead-letter exchange (fanout) and of its queue. Default
    /// `aether.dead-letters`.
    pub dead_letter: String,
    /// Most messages the dead-letter queue keeps; the oldest are dropped past this.
    /// Default 100,000.
    pub dead_letter_max: u32,
    /// Queue type of work queues. Default [`QueueType::Classic`].
    pub queue_type: QueueType,
    /// How long RabbitMQ lets a consumer hold a task unacknowledged (`x-consumer-timeout`
    /// on each consumer). Tasks may run this long. Default 24 hours; RabbitMQ's own default
    /// is 30 minutes. Honoured by RabbitMQ 3.12 and later; older brokers apply only their
    /// node-wide `consumer_timeout` (see the crate docs).
    pub consumer_timeout: Duration,
    /// Work and holding queues unused (no consumer, no declaration) this long are deleted by
    /// RabbitMQ (`x-expires`), with their tasks: for short-lived unions such as tests.
    /// Every process must use the same value (RabbitMQ refuses a declaration with another
    /// one). Default `None`: never.
    pub queue_expires: Option<Duration>,
    /// How long a publish or enqueue may wait for a connection and the broker's confirm.
    /// Default 30 s.
    pub publish_timeout: Duration,
    /// How long one connection attempt may take. Default 10 s.
    pub connect_timeout: Duration,
    /// Longest wait between reconnection attempts (they start at 100 ms and double).
    /// Default 5 s.
    pub reconnect_max_delay: Duration,
    /// Messages a subscription holds before the broker keeps the rest. Default 1,024.
    pub subscription_capacity: usize,
    /// Largest payload, in bytes. Default 16 MiB (RabbitMQ 4's `max_message_size`).
    pub max_payload: usize,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            host: "127.0.0.1".into(),
            port: 5672,
            vhost: "/".into(),
            username: "guest".into(),
            password: Secret::new("guest"),
            tls: false,
            tls_ca: None,
            tls_client: None,
            tls_domain: None,
            heartbeat: Duration::from_secs(20),
            connection_name: format!("aether-{}", std::process::id()),
            exchange: "aether.{union}".into(),
            queue_prefix: "aether".into(),
            dead_letter: "aether.dead-letters".into(),
            dead_letter_max: 100_000,
            queue_type: QueueType::Classic,
            consumer_timeout: Duration::from_secs(24 * 3600),
            queue_expires: None,
            publish_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect_max_delay: Duration::from_secs(5),
            subscription_capacity: 1024,
            max_payload: 16 << 20,
        }
    }
}

/// The URL query keys [`AmqpConfig::from_url`] knows.
const KEYS: &[&str] = &[
    "heartbeat",
    "connection_name",
    "exchange",
    "queue_prefix",
    "dead_letter",
    "dead_letter_max",
    "queue_type",
    "consumer_timeout",
    "queue_expires",
    "publish_timeout",
    "connect_timeout",
    "reconnect_max_delay",
    "subscription_capacity",
    "max_payload",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_domain",
];

impl AmqpConfig {
    /// Parses `amqp[s]://[user[:password]@]host[:port][/vhost][?key=value&...]`.
    ///
    /// The vhost is the percent-decoded path (`/%2f` is `/`; no path is `/`). Query keys
    /// are the field names: `heartbeat`, `connection_name`, `exchange`, `queue_prefix`,
    /// `dead_letter`, `dead_letter_max`, `queue_type` (`classic`/`quorum`),
    /// `consumer_timeout`, `queue_expires`, `publish_timeout`, `connect_timeout`,
    /// `reconnect_max_delay` (durations like `30s` or `250ms`), `subscription_capacity`,
    /// `max_payload`, and for TLS `tls_ca`, `tls_cert`, `tls_key`, `tls_domain`. An unknown
    /// key is an error.
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
        let (mut cert, mut key) = (None, None);
        u.take_query(KEYS, |k, v| {
            match k {
                "heartbeat" => c.heartbeat = parse_duration(k, v)?,
                "connection_name" => c.connection_name = v.to_owned(),
                "exchange" => c.exchange = v.to_owned(),
                "queue_prefix" => c.queue_prefix = v.to_owned(),
                "dead_letter" => c.dead_letter = v.to_owned(),
                "dead_letter_max" => c.dead_letter_max = parse_value(k, v)?,
                "queue_type" => c.queue_type = v.parse()?,
                "consumer_timeout" => c.consumer_timeout = parse_duration(k, v)?,
                "queue_expires" => c.queue_expires = Some(parse_duration(k, v)?),
                "publish_timeout" => c.publish_timeout = parse_duration(k, v)?,
                "connect_timeout" => c.connect_timeout = parse_duration(k, v)?,
                "reconnect_max_delay" => c.reconnect_max_delay = parse_duration(k, v)?,
                "subscription_capacity" => c.subscription_capacity = parse_value(k, v)?,
                "max_payload" => c.max_payload = parse_value(k, v)?,
                "tls_ca" => c.tls_ca = Some(v.into()),
                "tls_cert" => cert = Some(PathBuf::from(v)),
                "tls_key" => key = Some(PathBuf::from(v)),
                _ => c.tls_domain = Some(v.to_owned()),
            }
            Ok(())
        })?;
        c.tls_client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "tls_cert and tls_key go together: give both or neither".into(),
                ));
            }
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks values that would only fail later, at the broker.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Config(why));
        if self.host.is_empty() {
            return bad("the broker host is empty".into());
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
        if self.tls && !cfg!(feature = "tls") {
            return bad(
                "amqps:// needs the `tls` cargo feature of aether-amqp (on by default)".into(),
            );
        }
        Ok(())
    }

    /// Sets [`AmqpConfig::host`].
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }
    /// Sets [`AmqpConfig::port`].
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Sets [`AmqpConfig::vhost`].
    pub fn vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = vhost.into();
        self
    }
    /// Sets the user name and password.
    pub fn credentials(mut self, username: impl Into<String>, password: Secret) -> Self {
        self.username = username.into();
        self.password = password;
        self
    }
    /// Sets [`AmqpConfig::heartbeat`].
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }
    /// Sets [`AmqpConfig::connection_name`].
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }
    /// Sets [`AmqpConfig::exchange`].
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }
    /// Sets [`AmqpConfig::queue_prefix`].
    pub fn queue_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.queue_prefix = prefix.into();
        self
    }
    /// Sets [`AmqpConfig::queue_type`].
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }
    /// Sets [`AmqpConfig::consumer_timeout`].
    pub fn consumer_timeout(mut self, timeout: Duration) -> Self {
        self.consumer_timeout = timeout;
        self
    }
    /// Sets [`AmqpConfig::queue_expires`].
    pub fn queue_expires(mut self, expires: Option<Duration>) -> Self {
        self.queue_expires = expires;
        self
    }
    /// Sets [`AmqpConfig::publish_timeout`].
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }
    /// Sets [`AmqpConfig::max_payload`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// `amqp[s]://user@host:port/vhost`, without the password, for messages.
    pub fn display_url(&self) -> String {
        format!(
            "{}://{}@{}:{}/{}",
            if self.tls { "amqps" } else { "amqp" },
            self.username,
            self.host,
            self.port,
            self.vhost.replace('/', "%2f")
        )
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.display_url())
            .field("password", &self.password)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .field("tls_domain", &self.tls_domain)
            .field("heartbeat", &self.heartbeat)
            .field("connection_name", &self.connection_name)
            .field("exchange", &self.exchange)
            .field("queue_prefix", &self.queue_prefix)
            .field("dead_letter", &self.dead_letter)
            .field("dead_letter_max", &self.dead_letter_max)
            .field("queue_type", &self.queue_type)
            .field("consumer_timeout", &self.consumer_timeout)
            .field("queue_expires", &self.queue_expires)
            .field("publish_timeout", &self.publish_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("max_payload", &self.max_payload)
            .finish()
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
        ] {
            let err = AmqpConfig::from_url(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn never_prints_the_password() {
        let c = AmqpConfig::from_url("amqp://bob:hunter2@h/v").unwrap();
        let shown = format!("{c:?} {}", c.display_url());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("amqp://bob@h:5672/v"), "{shown}");
        let err = AmqpConfig::from_url("amqp://bob:hunter2@h?nope=1")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
