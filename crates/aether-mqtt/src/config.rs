//! [`MqttConfig`]: everything the MQTT transport can be told, with its defaults, and the
//! URL form that sets it.

use std::time::Duration;

use std::path::PathBuf;

use aether_core::settings::FromValue;
use aether_core::url::{BrokerUrl, Secret};
use aether_core::{Error, Level, Result};

use crate::presence::Presence;

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

impl FromValue for MqttVersion {
    fn from_value(_: &str, value: &str) -> Result<Self> {
        value.parse()
    }
}

aether_core::settings! {
    /// The settings of an [`MqttTransport`](crate::MqttTransport).
    ///
    /// Parsed from `mqtt[s]://[user[:password]@]host[:port][?key=value&...]` by
    /// [`MqttConfig::from_url`], or built from [`MqttConfig::default`] and the setters.
    /// Unknown query keys are an error; `Debug` never prints a password.
    #[derive(Clone, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct MqttConfig {
        /// Broker host. Default `localhost`.
        host: String = "localhost".into(),
        /// Broker port. Default 1883; an `mqtts://` URL makes it 8883.
        port: u16 = 1883,
        /// User name, from the URL's user info. Default none.
        username: Option<String> = None,
        /// Password, from the URL's user info. Default none.
        password: Option<Secret> = None,
        /// TLS, on for `mqtts://`; the system's trust store verifies the broker unless
        /// `tls_ca` is given. Default off.
        tls: bool = false,
        /// PEM file of the certificate authorities that sign the broker's certificate.
        /// Default none.
        [key] tls_ca: Option<PathBuf> = None,
        /// PEM file of this client's certificate, for brokers that require one. Default none.
        [key] tls_cert: Option<PathBuf> = None,
        /// PEM file of this client's private key (if not in `tls_cert`). Default none.
        [key] tls_key: Option<PathBuf> = None,
        /// Password of the private key. Default none.
        [key] tls_key_password: Option<Secret> = None,
        /// Whether the broker's certificate must name the host connected to. Default true.
        [key] tls_verify_hostname: bool = true,
        /// Protocol version, `5` or `3.1.1`. Default 5.
        [key] version: MqttVersion = MqttVersion::V5,
        /// The MQTT client id; required for a persistent session. Default `aether-` and 16
        /// random hex digits.
        [key] client_id: Option<String> = None,
        /// Start with a clean session. With false, the broker keeps this client's
        /// subscriptions and queues its QoS 1 messages while it is away (for
        /// `session_expiry` on MQTT 5). Default true.
        [key] clean_session: bool = true,
        /// How long the broker keeps a persistent session after a disconnect, MQTT 5 only;
        /// ignored with a clean session. Default 1 hour.
        [key] session_expiry: Duration = Duration::from_secs(3600),
        /// Keep-alive interval. Default 30 s.
        [key] keep_alive: Duration = Duration::from_secs(30),
        /// How long the first connection may take. Default 10 s.
        [key] connect_timeout: Duration = Duration::from_secs(10),
        /// How long a publish or subscribe may wait for the broker, reconnections
        /// included. Default 30 s.
        [key] operation_timeout: Duration = Duration::from_secs(30),
        /// First wait between reconnection attempts; it doubles up to `reconnect_max`.
        /// Default 100 ms.
        [key] reconnect_min: Duration = Duration::from_millis(100),
        /// Longest wait between reconnection attempts. Default 5 s.
        [key] reconnect_max: Duration = Duration::from_secs(5),
        /// Last-will presence, `UNION[/HOST[/CLIENT]]` in a URL ([`Presence`]). Default none.
        [key = MqttConfig::apply_presence] presence: Option<Presence> = None,
        /// Publishes awaiting the broker's acknowledgement at once; more wait their turn.
        /// Default 1,024.
        [key] max_inflight: usize = 1024,
        /// Messages buffered per subscription and per consumer between the broker and the
        /// application. A subscriber that falls further behind loses messages, counted in
        /// [`MqttTransport::overflowed`](crate::MqttTransport::overflowed). Default 16,384.
        [key] subscription_capacity: usize = 16_384,
        /// Largest payload in bytes. Default 268,435,455, MQTT's limit.
        [key] max_payload: usize = MQTT_MAX_PAYLOAD,
        /// Topic prefix of dead letters: a dead letter of topic `T` is published on
        /// `{dead_letter_topic}/T`. Empty (or `None`) turns dead letters off, so nodes keep
        /// them locally. Default `aether-dead-letter`.
        [key = MqttConfig::apply_dead_letter_topic]
        dead_letter_topic: Option<String> = Some("aether-dead-letter".into()),
        /// Publish dead letters retained, so the broker stores the last one of each topic
        /// (up to `dead_letter_capacity` of them). Default true.
        [key] dead_letter_retain: bool = true,
        /// How long the broker keeps a dead letter: its MQTT 5 message expiry. MQTT 3.1.1
        /// has none, so there a retained dead letter stays until it is cleared. Default 7
        /// days.
        [key] dead_letter_expiry: Duration = Duration::from_secs(7 * 24 * 3600),
        /// Dead letters retained per `dead_letter_expiry` (per connection lifetime on MQTT
        /// 3.1.1); the ones past it are published without retain, so subscribers still see
        /// them. Bounds what bad input can make the broker store. Default 1,000.
        [key] dead_letter_capacity: usize = 1000,
        /// Largest dead-letter payload in bytes (and never above `max_payload`): a longer
        /// payload is cut to it, and the letter says so (`aether-truncated`, with the
        /// original `aether-size`). Default 65,536.
        [key] dead_letter_max_payload: usize = 65_536,
    }
}

/// The largest payload MQTT can carry.
const MQTT_MAX_PAYLOAD: usize = 268_435_455;

impl MqttConfig {
    /// Parses `mqtt[s]://[user[:password]@]host[:port][?key=value&...]` (keys in the
    /// table of [`MqttConfig`]). `mqtts` turns TLS on (port 8883). Unknown keys are an
    /// error.
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
        let mut c = MqttConfig {
            host: u.host.clone(),
            port: u.port.unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
            username: u.username.clone(),
            password: u.password.clone(),
            ..MqttConfig::default()
        };
        u.apply_query(MqttConfig::KEYS, &mut c)?;
        c.validate()?;
        Ok(c)
    }

    fn apply_presence(&mut self, value: &str) -> Result<()> {
        let mut parts = value.splitn(3, '/');
        let mut presence = Presence::new(parts.next().unwrap_or_default());
        if let Some(host) = parts.next() {
            presence = presence.host(host);
        }
        if let Some(client) = parts.next() {
            presence = presence.client(client);
        }
        self.presence = Some(presence);
        Ok(())
    }

    fn apply_dead_letter_topic(&mut self, value: &str) -> Result<()> {
        self.dead_letter_topic = (!value.is_empty()).then(|| value.to_owned());
        Ok(())
    }

    /// Sets [`MqttConfig::username`] and [`MqttConfig::password`].
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Sets [`MqttConfig::reconnect_min`] and [`MqttConfig::reconnect_max`].
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// The broker's URL with the password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (Some(u), None) => format!("{u}@"),
            (None, _) => String::new(),
        };
        format!("{scheme}://{auth}{}:{}", self.host, self.port)
    }

    /// Refuses settings that cannot work, saying what to change.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Config(why));
        let tls_keys = [
            ("tls_ca", self.tls_ca.is_some()),
            ("tls_cert", self.tls_cert.is_some()),
            ("tls_key", self.tls_key.is_some()),
            ("tls_key_password", self.tls_key_password.is_some()),
            ("tls_verify_hostname", !self.tls_verify_hostname),
        ];
        if let Some((key, _)) = tls_keys.iter().find(|(_, set)| *set)
            && !self.tls
        {
            return bad(format!("{key} needs TLS: use an mqtts:// URL"));
        }
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
        if self.subscription_capacity == 0 {
            return bad("subscription_capacity must be at least 1".into());
        }
        if self.max_payload == 0 || self.max_payload > MQTT_MAX_PAYLOAD {
            return bad(format!("max_payload must be 1 to {MQTT_MAX_PAYLOAD} bytes"));
        }
        if self.keep_alive > Duration::from_secs(65_535) {
            return bad("keep_alive must be at most 65,535 s".into());
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
        if self.dead_letter_expiry < Duration::from_secs(1)
            || self.dead_letter_expiry.as_secs() > i32::MAX as u64
        {
            return bad(format!(
                "dead_letter_expiry must be 1 s to {} s (MQTT's message expiry)",
                i32::MAX
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
        let scheme = if self.tls { "ssl" } else { "tcp" };
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
        assert!(c.clean_session && !c.tls);
        assert_eq!(c.server_uri(), "tcp://127.0.0.1:1883");
        let c = MqttConfig::from_url("mqtts://broker.example").unwrap();
        assert_eq!(c.port, 8883);
        assert_eq!(c.server_uri(), "ssl://broker.example:8883");
        assert!(c.tls && c.tls_verify_hostname);
    }

    #[test]
    fn every_option_from_the_url() {
        let c = MqttConfig::from_url(
            "mqtts://u:p%40ss@h:1?version=3.1.1&client_id=w1&clean_session=false&session_expiry=60s\
             &keep_alive=5s&connect_timeout=2s&operation_timeout=3s&reconnect_min=50ms&reconnect_max=2s\
             &presence=u3/vm/c1&max_inflight=10&subscription_capacity=20&max_payload=4096\
             &dead_letter_topic=dl&dead_letter_retain=false&dead_letter_expiry=60s\
             &dead_letter_capacity=7&dead_letter_max_payload=99&tls_ca=/ca.pem&tls_cert=/c.pem\
             &tls_key=/k.pem&tls_key_password=kp&tls_verify_hostname=false",
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
        assert_eq!(
            (c.max_inflight, c.subscription_capacity, c.max_payload),
            (10, 20, 4096)
        );
        assert_eq!(c.dead_letter_topic.as_deref(), Some("dl"));
        assert!(!c.dead_letter_retain);
        assert_eq!(c.dead_letter_expiry, Duration::from_secs(60));
        assert_eq!((c.dead_letter_capacity, c.dead_letter_max_payload), (7, 99));
        assert_eq!(c.tls_ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(c.tls_cert.as_deref(), Some(std::path::Path::new("/c.pem")));
        assert_eq!(c.tls_key.as_deref(), Some(std::path::Path::new("/k.pem")));
        assert_eq!(c.tls_key_password.as_ref().unwrap().expose(), "kp");
        assert!(!c.tls_verify_hostname);
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
            ("mqtt://h?tls_ca=/x", "needs TLS"),
            ("mqtt://h?clean_session=false", "needs a fixed client_id"),
            ("mqtt://h?max_inflight=0", "max_inflight"),
            ("mqtt://h?dead_letter_topic=a/%23", "dead_letter_topic"),
            ("mqtt://h?dead_letter_expiry=0s", "dead_letter_expiry"),
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
