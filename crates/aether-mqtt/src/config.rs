//! [`MqttConfig`]: everything the MQTT transport can be told, with its defaults, and the
//! URL form that sets it.

use std::time::Duration;

use aether_core::url::{BrokerUrl, Secret, parse_bool, parse_duration, parse_value};
use aether_core::{Error, Level, Result};

use crate::presence::Presence;
use crate::tls::TlsConfig;

/// The MQTT protocol version spoken to the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MqttVersion {
    /// MQTT 5: subscription identifiers route each message to exactly the subscriptions it
    /// matched. The default.
    #[default]
    V5,
    /// MQTT 3.1.1, for brokers without MQTT 5. Messages are routed to local subscriptions by
    /// their topic; see the crate docs for what that changes.
    V3_1_1,
}

impl std::str::FromStr for MqttVersion {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "5" | "5.0" | "v5" => Ok(MqttVersion::V5),
            "3.1.1" | "311" | "4" | "v3.1.1" => Ok(MqttVersion::V3_1_1),
            other => Err(Error::Config(format!(
                "unknown MQTT version {other:?}; expected 5 or 3.1.1"
            ))),
        }
    }
}

/// The settings of an [`MqttTransport`](crate::MqttTransport).
///
/// Built from a URL ([`MqttConfig::from_url`]) or with [`MqttConfig::new`] and the setters.
/// Each field's doc states its default and its URL query key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MqttConfig {
    /// Broker host. Default `localhost`.
    pub host: String,
    /// Broker port. Default 1883, or 8883 with TLS.
    pub port: u16,
    /// TLS, on for `mqtts://`. Default: off.
    pub tls: Option<TlsConfig>,
    /// Protocol version (`version=5|3.1.1`). Default 5.
    pub version: MqttVersion,
    /// The MQTT client id (`client_id=`). Default: `aether-` and 16 random hex digits.
    /// Required for a persistent session.
    pub client_id: Option<String>,
    /// Start with a clean session (`clean_session=`). Default true. With false, the broker
    /// keeps this client's subscriptions and queues its QoS 1 messages while it is away
    /// (for `session_expiry` on MQTT 5).
    pub clean_session: bool,
    /// How long the broker keeps a persistent session after a disconnect, MQTT 5 only
    /// (`session_expiry=`). Default 1 hour; ignored with a clean session.
    pub session_expiry: Duration,
    /// Keep-alive interval (`keepalive=`). Default 30 s.
    pub keep_alive: Duration,
    /// How long the first connection may take (`connect_timeout=`). Default 10 s.
    pub connect_timeout: Duration,
    /// How long a publish or subscribe may wait for the broker, reconnections included
    /// (`operation_timeout=`). Default 30 s.
    pub operation_timeout: Duration,
    /// First delay between reconnection attempts, doubling up to `reconnect_max`
    /// (`reconnect_min=`). Default 100 ms.
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts (`reconnect_max=`). Default 5 s.
    pub reconnect_max: Duration,
    /// User name (from the URL's user info). Default: none.
    pub username: Option<String>,
    /// Password (from the URL's user info); never printed. Default: none.
    pub password: Option<Secret>,
    /// Last-will presence (`presence=UNION[/HOST[/CLIENT]]`). Default: none.
    pub presence: Option<Presence>,
    /// Publishes awaiting the broker's acknowledgement at once (`max_inflight=`); more wait
    /// their turn. Default 1,024.
    pub max_inflight: usize,
    /// Messages buffered per subscription and per consumer between the broker and the
    /// application (`buffer=`). A subscriber that falls further behind loses messages,
    /// counted in [`MqttTransport::overflowed`](crate::MqttTransport::overflowed). Default
    /// 16,384.
    pub buffer: usize,
    /// Largest payload in bytes (`max_payload=`). Default 268,435,455, MQTT's limit.
    pub max_payload: usize,
    /// Topic prefix of dead letters (`dead_letter_topic=`; empty turns dead letters off, so
    /// nodes keep them locally). Default `aether-dead-letter`: a dead letter of topic `T`
    /// is published on `aether-dead-letter/T`.
    pub dead_letter_topic: Option<String>,
    /// Publish dead letters retained, so the broker stores the last one of each topic
    /// (`dead_letter_retain=`). Default true.
    pub dead_letter_retain: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "localhost".into(),
            port: 1883,
            tls: None,
            version: MqttVersion::V5,
            client_id: None,
            clean_session: true,
            session_expiry: Duration::from_secs(3600),
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            username: None,
            password: None,
            presence: None,
            max_inflight: 1024,
            buffer: 16_384,
            max_payload: MQTT_MAX_PAYLOAD,
            dead_letter_topic: Some("aether-dead-letter".into()),
            dead_letter_retain: true,
        }
    }
}

/// The largest payload MQTT can carry.
const MQTT_MAX_PAYLOAD: usize = 268_435_455;

const QUERY_KEYS: &[&str] = &[
    "version",
    "client_id",
    "clean_session",
    "session_expiry",
    "keepalive",
    "connect_timeout",
    "operation_timeout",
    "reconnect_min",
    "reconnect_max",
    "presence",
    "max_inflight",
    "buffer",
    "max_payload",
    "dead_letter_topic",
    "dead_letter_retain",
    "ca_file",
    "cert_file",
    "key_file",
    "key_password",
    "verify_hostname",
];

impl MqttConfig {
    /// The defaults, for a broker at `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        MqttConfig {
            host: host.into(),
            port,
            ..MqttConfig::default()
        }
    }

    /// Parses `mqtt[s]://[user[:password]@]host[:port][?key=value&...]`; the keys are named
    /// on each field. `mqtts` turns TLS on (port 8883) and accepts `ca_file`, `cert_file`,
    /// `key_file`, `key_password` and `verify_hostname`. Unknown keys are an error.
    ///
    /// ```
    /// use aether_mqtt::{MqttConfig, MqttVersion};
    ///
    /// let c = MqttConfig::from_url("mqtt://bob:secret@broker:1884?version=3.1.1&client_id=w1")?;
    /// assert_eq!((c.host.as_str(), c.port), ("broker", 1884));
    /// assert_eq!(c.version, MqttVersion::V3_1_1);
    /// assert!(!format!("{c:?}").contains("secret"));
    /// assert!(MqttConfig::from_url("mqtt://broker?qos=2").is_err());
    /// # Ok::<(), aether_core::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<MqttConfig> {
        let u = BrokerUrl::parse(url)?;
        let tls = match u.scheme.as_str() {
            "mqtt" => false,
            "mqtts" => true,
            other => {
                return Err(Error::Config(format!(
                    "not an MQTT URL: scheme {other:?}; expected mqtt or mqtts"
                )));
            }
        };
        if u.host.is_empty() {
            return Err(Error::Config(format!(
                "{} has no host; expected mqtt://host[:port]",
                aether_core::url::redact(url)
            )));
        }
        if !u.path.is_empty() {
            return Err(Error::Config(format!(
                "an MQTT URL has no path, found /{}",
                u.path
            )));
        }
        let mut c = MqttConfig::new(
            u.host.clone(),
            u.port.unwrap_or(if tls { 8883 } else { 1883 }),
        );
        c.username = u.username.clone();
        c.password = u.password.clone();
        let mut t = tls.then(TlsConfig::new);
        let mut presence = None;
        u.take_query(QUERY_KEYS, |k, v| {
            match k {
                "version" => c.version = v.parse()?,
                "client_id" => c.client_id = Some(v.to_owned()),
                "clean_session" => c.clean_session = parse_bool(k, v)?,
                "session_expiry" => c.session_expiry = parse_duration(k, v)?,
                "keepalive" => c.keep_alive = parse_duration(k, v)?,
                "connect_timeout" => c.connect_timeout = parse_duration(k, v)?,
                "operation_timeout" => c.operation_timeout = parse_duration(k, v)?,
                "reconnect_min" => c.reconnect_min = parse_duration(k, v)?,
                "reconnect_max" => c.reconnect_max = parse_duration(k, v)?,
                "presence" => presence = Some(v.to_owned()),
                "max_inflight" => c.max_inflight = parse_value(k, v)?,
                "buffer" => c.buffer = parse_value(k, v)?,
                "max_payload" => c.max_payload = parse_value(k, v)?,
                "dead_letter_topic" => c.dead_letter_topic = (!v.is_empty()).then(|| v.to_owned()),
                "dead_letter_retain" => c.dead_letter_retain = parse_bool(k, v)?,
                tls_key => {
                    let Some(t) = t.as_mut() else {
                        return Err(Error::Config(format!(
                            "{tls_key} needs TLS: use an mqtts:// URL"
                        )));
                    };
                    match tls_key {
                        "ca_file" => t.ca_file = Some(v.into()),
                        "cert_file" => t.cert_file = Some(v.into()),
                        "key_file" => t.key_file = Some(v.into()),
                        "key_password" => t.key_password = Some(Secret::new(v)),
                        _ => t.verify_hostname = parse_bool(k, v)?,
                    }
                }
            }
            Ok(())
        })?;
        c.tls = t;
        if let Some(p) = presence {
            let mut parts = p.splitn(3, '/');
            let mut pr = Presence::new(parts.next().unwrap_or_default());
            if let Some(host) = parts.next() {
                pr = pr.host(host);
            }
            if let Some(client) = parts.next() {
                pr = pr.client(client);
            }
            c.presence = Some(pr);
        }
        c.check()?;
        Ok(c)
    }

    /// Sets [`MqttConfig::tls`].
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        if self.port == 1883 {
            self.port = 8883;
        }
        self.tls = Some(tls);
        self
    }
    /// Sets [`MqttConfig::version`].
    pub fn version(mut self, version: MqttVersion) -> Self {
        self.version = version;
        self
    }
    /// Sets [`MqttConfig::client_id`].
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }
    /// Sets [`MqttConfig::clean_session`].
    pub fn clean_session(mut self, clean: bool) -> Self {
        self.clean_session = clean;
        self
    }
    /// Sets [`MqttConfig::session_expiry`].
    pub fn session_expiry(mut self, d: Duration) -> Self {
        self.session_expiry = d;
        self
    }
    /// Sets [`MqttConfig::keep_alive`].
    pub fn keep_alive(mut self, d: Duration) -> Self {
        self.keep_alive = d;
        self
    }
    /// Sets [`MqttConfig::connect_timeout`].
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Sets [`MqttConfig::operation_timeout`].
    pub fn operation_timeout(mut self, d: Duration) -> Self {
        self.operation_timeout = d;
        self
    }
    /// Sets [`MqttConfig::reconnect_min`] and [`MqttConfig::reconnect_max`].
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }
    /// Sets [`MqttConfig::username`] and [`MqttConfig::password`].
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(Secret::new(password));
        self
    }
    /// Sets [`MqttConfig::presence`].
    pub fn presence(mut self, presence: Presence) -> Self {
        self.presence = Some(presence);
        self
    }
    /// Sets [`MqttConfig::max_inflight`].
    pub fn max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = n;
        self
    }
    /// Sets [`MqttConfig::buffer`].
    pub fn buffer(mut self, n: usize) -> Self {
        self.buffer = n;
        self
    }
    /// Sets [`MqttConfig::max_payload`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
    /// Sets [`MqttConfig::dead_letter_topic`] (`None` turns dead letters off).
    pub fn dead_letter_topic(mut self, prefix: Option<String>) -> Self {
        self.dead_letter_topic = prefix;
        self
    }
    /// Sets [`MqttConfig::dead_letter_retain`].
    pub fn dead_letter_retain(mut self, on: bool) -> Self {
        self.dead_letter_retain = on;
        self
    }

    /// Refuses settings that cannot work, saying what to change.
    pub fn check(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Config(why));
        if !self.clean_session && self.client_id.is_none() {
            return bad(
                "a persistent session (clean_session=false) needs a fixed client_id".into(),
            );
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 65_535)
        {
            return bad(format!(
                "client_id must be 1 to 65,535 bytes, not {}",
                id.len()
            ));
        }
        if self.max_inflight == 0 || self.max_inflight > 65_535 {
            return bad("max_inflight must be 1 to 65,535".into());
        }
        if self.buffer == 0 {
            return bad("buffer must be at least 1".into());
        }
        if self.max_payload == 0 || self.max_payload > MQTT_MAX_PAYLOAD {
            return bad(format!("max_payload must be 1 to {MQTT_MAX_PAYLOAD} bytes"));
        }
        if self.keep_alive > Duration::from_secs(65_535) {
            return bad("keepalive must be at most 65,535 s".into());
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return bad("reconnect_min must be above 0 and at most reconnect_max".into());
        }
        if let Some(prefix) = &self.dead_letter_topic
            && (prefix.contains(['+', '#', '\0']) || prefix.starts_with('$'))
        {
            return bad(format!(
                "dead_letter_topic {prefix:?} must not contain + # or NUL, nor start with $"
            ));
        }
        if let Some(p) = &self.presence {
            aether_core::topic::validate_segment(Level::Union, &p.union)?;
            aether_core::topic::validate_segment(Level::Context, &p.host)?;
            if let Some(client) = &p.client {
                aether_core::topic::validate_segment(Level::Tid, client)?;
            }
        }
        if self.username.is_none() && self.password.is_some() {
            return bad("MQTT sends a password only with a user name".into());
        }
        Ok(())
    }

    /// The paho server URI.
    pub(crate) fn server_uri(&self) -> String {
        let scheme = if self.tls.is_some() { "ssl" } else { "tcp" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_ports() {
        let c = MqttConfig::from_url("mqtt://127.0.0.1").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 1883));
        assert_eq!(c.version, MqttVersion::V5);
        assert!(c.clean_session && c.tls.is_none());
        assert_eq!(c.server_uri(), "tcp://127.0.0.1:1883");
        let c = MqttConfig::from_url("mqtts://broker.example").unwrap();
        assert_eq!(c.port, 8883);
        assert_eq!(c.server_uri(), "ssl://broker.example:8883");
        assert!(c.tls.as_ref().unwrap().verify_hostname);
    }

    #[test]
    fn every_option_from_the_url() {
        let c = MqttConfig::from_url(
            "mqtts://u:p%40ss@h:1?version=3.1.1&client_id=w1&clean_session=false&session_expiry=60s\
             &keepalive=5s&connect_timeout=2s&operation_timeout=3s&reconnect_min=50ms&reconnect_max=2s\
             &presence=u3/vm/c1&max_inflight=10&buffer=20&max_payload=4096&dead_letter_topic=dl\
             &dead_letter_retain=false&ca_file=/ca.pem&cert_file=/c.pem\
             &key_file=/k.pem&key_password=kp&verify_hostname=false",
        )
        .unwrap();
        assert_eq!(c.version, MqttVersion::V3_1_1);
        assert_eq!(c.client_id.as_deref(), Some("w1"));
        assert!(!c.clean_session);
        assert_eq!(c.session_expiry, Duration::from_secs(60));
        assert_eq!(c.keep_alive, Duration::from_secs(5));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.operation_timeout, Duration::from_secs(3));
        assert_eq!(c.reconnect_min, Duration::from_millis(50));
        assert_eq!(c.reconnect_max, Duration::from_secs(2));
        assert_eq!(
            c.presence,
            Some(Presence::new("u3").host("vm").client("c1"))
        );
        assert_eq!((c.max_inflight, c.buffer, c.max_payload), (10, 20, 4096));
        assert_eq!(c.dead_letter_topic.as_deref(), Some("dl"));
        assert!(!c.dead_letter_retain);
        let t = c.tls.as_ref().unwrap();
        assert_eq!(t.ca_file.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(t.cert_file.as_deref(), Some(std::path::Path::new("/c.pem")));
        assert_eq!(t.key_file.as_deref(), Some(std::path::Path::new("/k.pem")));
        assert_eq!(t.key_password.as_ref().unwrap().expose(), "kp");
        assert!(!t.verify_hostname);
        assert_eq!(c.password.as_ref().unwrap().expose(), "p@ss");
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("p@ss") && !printed.contains("kp\""),
            "{printed}"
        );
    }

    #[test]
    fn refusals_say_why() {
        for (url, why) in [
            ("mqtt://h?qos=2", "unknown query parameter"),
            ("mqtt://h?version=6", "unknown MQTT version"),
            ("mqtt://h?ca_file=/x", "needs TLS"),
            ("mqtt://h?clean_session=false", "needs a fixed client_id"),
            ("mqtt://h?max_inflight=0", "max_inflight"),
            ("mqtt://h?dead_letter_topic=a/%23", "dead_letter_topic"),
            ("mqtt://h?presence=a.b", "union"),
            ("mqtt://h/path", "no path"),
            ("mqtt://", "no host"),
            ("redis://h", "not an MQTT URL"),
        ] {
            let err = MqttConfig::from_url(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
        let c = MqttConfig::from_url("mqtt://h?dead_letter_topic=").unwrap();
        assert_eq!(c.dead_letter_topic, None);
    }
}
