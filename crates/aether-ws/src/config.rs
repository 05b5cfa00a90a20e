//! [`WsConfig`] (a peer: where the hub is and how the link behaves) and [`HubConfig`]
//! (the hub: where it listens, who it admits, its limits), from `ws://` URLs or in code.

use std::path::PathBuf;
use std::time::Duration;

use aether_core::url::{BrokerUrl, Secret};
use aether_core::{Error, Result};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The default port of a `ws://` URL (and of the hub).
pub const DEFAULT_PORT: u16 = 8080;

/// What a frame may carry besides its payload (kind, ids, topic).
pub(crate) const FRAME_OVERHEAD: usize = 64 << 10;

/// tungstenite's read buffer per socket, hub and peer alike. Its default, 128 KiB, is
/// allocated per connection and zero-filled again before every read: 128 KiB of memory per
/// connection a hub holds, and a 128 KiB memset per read (43 % of the instructions of a
/// WebSocket round trip). A larger frame still arrives whole: the buffer grows to it.
pub(crate) const READ_BUFFER: usize = 8 << 10;

/// The tungstenite settings of a socket taking messages of up to `max_message` bytes.
pub(crate) fn socket_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(READ_BUFFER)
}

aether_core::settings! {
    /// Settings of a WebSocket transport (a peer of a hub).
    ///
    /// Parsed from `ws://host[:port][/path][?key=value&...]` (or `wss://`) by
    /// [`WsConfig::from_url`], or built from [`WsConfig::default`] and the setters.
    /// Unknown query keys are an error.
    #[derive(Clone, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct WsConfig {
        /// The hub's host. Default `127.0.0.1`.
        host: String = "127.0.0.1".into(),
        /// The hub's port. Default 8080.
        port: u16 = DEFAULT_PORT,
        /// The WebSocket path. Default `ws`.
        path: String = "ws".into(),
        /// `wss://`: TLS, the hub's certificate verified against the webpki roots and
        /// `tls_ca`, for the URL's host name (or IP address). Default false.
        tls: bool = false,
        /// PEM file of CA certificates to trust besides the webpki roots (a private CA, or
        /// the hub's self-signed certificate). Only with `wss://`. Default none.
        [key] tls_ca: Option<PathBuf> = None,
        /// The bearer token sent on the upgrade (`Authorization: Bearer`). Never printed.
        /// Default none.
        [key] token: Option<Secret> = None,
        /// Ping interval; a hub silent for 3 intervals is dead and the link reconnects.
        /// Default 1 s.
        [key] heartbeat: Duration = Duration::from_secs(1),
        /// How long `connect`, a publish, an enqueue, a subscribe or a consume may wait
        /// for the hub's answer (across reconnections). Default 10 s.
        [key] operation_timeout: Duration = Duration::from_secs(10),
        /// Messages a subscription buffers; past it the subscription loses messages and
        /// counts a gap. Default 4,096.
        [key] subscription_capacity: usize = 4096,
        /// Largest payload, in bytes (the hub's own limit applies too). Default 16 MiB.
        [key] max_payload: usize = 16 << 20,
        /// The longest wait between reconnection attempts. Default 2 s.
        [key] reconnect_max: Duration = Duration::from_secs(2),
    }
}

impl WsConfig {
    /// Parses a `ws://` or `wss://` URL (keys in the table above).
    pub fn from_url(url: &str) -> Result<WsConfig> {
        let u = BrokerUrl::parse(url)?;
        let tls = match u.scheme.as_str() {
            "ws" => false,
            "wss" => true,
            other => {
                return Err(Error::Config(format!(
                    "not a WebSocket URL: scheme {other}; expected ws://host:port/ws"
                )));
            }
        };
        if u.username.is_some() || u.password.is_some() {
            return Err(Error::Config(
                "a WebSocket URL takes its token as ?token=..., not user:password@".into(),
            ));
        }
        let mut c = WsConfig {
            tls,
            port: if tls { 443 } else { DEFAULT_PORT },
            ..WsConfig::default()
        };
        if !u.host.is_empty() {
            c.host = u.host.clone();
        }
        if let Some(port) = u.port {
            c.port = port;
        }
        if !u.path.is_empty() {
            c.path = u.path.clone();
        }
        u.apply_query(WsConfig::KEYS, &mut c)?;
        c.validate()?;
        Ok(c)
    }

    /// Refuses settings that cannot work, saying what to change.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat < Duration::from_millis(10) {
            return Err(Error::Config("heartbeat must be at least 10ms".into()));
        }
        if self.max_payload == 0 || self.subscription_capacity == 0 {
            return Err(Error::Config(
                "max_payload and subscription_capacity must be at least 1".into(),
            ));
        }
        if let Some(token) = &self.token {
            check_token(token)?;
        }
        if self.tls_ca.is_some() && !self.tls {
            return Err(Error::Config(
                "tls_ca needs TLS: a wss:// URL (or tls set)".into(),
            ));
        }
        Ok(())
    }

    /// The URL to open, without the token: `ws://host:port/path`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}:{}/{}", self.host, self.port, self.path)
    }
}

aether_core::settings! {
    /// Settings of a [`Hub`](crate::Hub).
    ///
    /// Parsed from `ws://host[:port][?key=value&...]` (or `wss://` with `tls_cert` and
    /// `tls_key`) by [`HubConfig::from_url`] (the address to listen on), or built from
    /// [`HubConfig::default`] and the setters. The hub refuses to start without a `token`
    /// unless `no_auth=true` says so explicitly.
    #[derive(Clone, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct HubConfig {
        /// The address to listen on. Default `127.0.0.1`.
        host: String = "127.0.0.1".into(),
        /// The port (0: any free one). Default 8080.
        port: u16 = DEFAULT_PORT,
        /// The bearer token every upgrade and REST call must carry
        /// (`Authorization: Bearer <token>`, or `?token=` on the upgrade for browsers).
        /// Never printed. Default none (then `no_auth` must be set).
        [key] token: Option<Secret> = None,
        /// Admit peers without a token. Only for a hub on loopback or behind a proxy that
        /// authenticates. Default false.
        [key] no_auth: bool = false,
        /// PEM file of the hub's certificate chain (leaf first): with `tls_key`, the hub
        /// serves only TLS (`wss://`, `https://`) and answers a plain HTTP request with 400.
        /// Default none.
        [key] tls_cert: Option<PathBuf> = None,
        /// PEM file of the private key of `tls_cert`. Default none.
        [key] tls_key: Option<PathBuf> = None,
        /// Origins admitted (the key repeats); a request with an `Origin` header not listed
        /// is refused with 403. Empty: requests with an `Origin` header are refused
        /// (non-browser peers send none). Default none.
        [key = HubConfig::add_origin] origins: Vec<String> = Vec::new(),
        /// Connections (WebSocket and REST) served at once; past it, 503. Default 10,000.
        [key] max_connections: usize = 10_000,
        /// Largest payload, in bytes; a larger frame closes the connection (1009) and is
        /// counted. Default 16 MiB.
        [key] max_payload: usize = 16 << 20,
        /// Ping interval; a peer silent for 3 intervals is dropped and its unacknowledged
        /// deliveries go to another worker. Default 1 s.
        [key] heartbeat: Duration = Duration::from_secs(1),
        /// Frames queued for one connection; a peer that lets it fill is cut off (a stalled
        /// consumer never stalls the hub) and counted. Default 8,192.
        [key] send_queue: usize = 8192,
        /// Retained messages kept per topic (`GET /messages/{topic}`). Default 100.
        [key] retained_per_topic: usize = 100,
        /// Topics with retained messages; past it the oldest topic is forgotten. Default 1,024.
        [key] retained_topics: usize = 1024,
        /// Performs a workgroup holds in the default in-memory backend. Default 65,536.
        [key] queue_capacity: usize = 65_536,
        /// Serve `GET /metrics` (behind the token like every route): Prometheus text of
        /// aether's metrics in this process and the hub's own counts. Starting the hub
        /// installs the process's Prometheus recorder
        /// (`aether_core::observe::prometheus::install`), so start it before building
        /// nodes in the same process. Needs the `prometheus` cargo feature (on by
        /// default). Default false.
        [key] metrics: bool = false,
    }
}

impl HubConfig {
    /// Parses `ws://host[:port][?options]` or `wss://host[:port]?tls_cert=...&tls_key=...`:
    /// where to listen, and the keys above. The settings are checked
    /// ([`HubConfig::validate`]) when the hub starts, so a token may be set after parsing.
    pub fn from_url(url: &str) -> Result<HubConfig> {
        let u = BrokerUrl::parse(url)?;
        let tls = match u.scheme.as_str() {
            "ws" => false,
            "wss" => true,
            other => {
                return Err(Error::Config(format!(
                    "a hub listens on ws://host:port (or wss:// with tls_cert and tls_key); \
                     got scheme {other}"
                )));
            }
        };
        let mut c = HubConfig::default();
        if !u.host.is_empty() {
            c.host = u.host.clone();
        }
        if let Some(port) = u.port {
            c.port = port;
        }
        u.apply_query(HubConfig::KEYS, &mut c)?;
        if tls != c.tls() {
            return Err(Error::Config(if tls {
                "a wss:// hub needs tls_cert and tls_key (PEM files)".into()
            } else {
                "tls_cert and tls_key serve TLS: listen on wss://host:port".into()
            }));
        }
        Ok(c)
    }

    /// Whether the hub serves TLS (`tls_cert` and `tls_key` set).
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// Refuses settings that cannot work, saying what to change.
    pub fn validate(&self) -> Result<()> {
        if self.token.is_none() && !self.no_auth {
            return Err(Error::Config(
                "the hub needs a token (token=..., or AETHER_WS_TOKEN for the binary); \
                 set no_auth=true to admit anyone"
                    .into(),
            ));
        }
        if let Some(token) = &self.token {
            check_token(token)?;
        }
        if self.metrics && !cfg!(feature = "prometheus") {
            return Err(Error::Config(
                "metrics=true needs the `prometheus` cargo feature of aether-ws".into(),
            ));
        }
        if self.heartbeat < Duration::from_millis(10) {
            return Err(Error::Config("heartbeat must be at least 10ms".into()));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::Config(
                "tls_cert and tls_key go together: give both or neither".into(),
            ));
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            ("max_payload", self.max_payload),
            ("send_queue", self.send_queue),
            ("queue_capacity", self.queue_capacity),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{key} must be at least 1")));
            }
        }
        Ok(())
    }

    fn add_origin(&mut self, value: &str) -> Result<()> {
        self.origins.push(value.to_owned());
        Ok(())
    }

    /// The largest WebSocket message the hub reads.
    pub(crate) fn max_frame(&self) -> usize {
        self.max_payload + FRAME_OVERHEAD
    }
}

/// Refuses a token an HTTP header cannot carry as it is, without printing it.
fn check_token(token: &Secret) -> Result<()> {
    let t = token.expose();
    if t.is_empty() {
        return Err(Error::Config("the token must not be empty".into()));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Config(
            "the token must be printable ASCII without spaces (it travels in an HTTP \
             header); percent-encode it in a URL"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls() {
        let c = WsConfig::from_url("ws://h:9000/ws?token=s3cret&heartbeat=250ms").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("h", 9000));
        assert_eq!(c.endpoint(), "ws://h:9000/ws");
        assert_eq!(c.heartbeat, Duration::from_millis(250));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(WsConfig::from_url("wss://h").unwrap().port, 443);
        for bad in [
            "ws://h?nope=1",
            "ws://u:p@h",
            "redis://h",
            "ws://h?heartbeat=1ms",
        ] {
            assert!(WsConfig::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_keys() {
        let c = WsConfig::from_url("wss://h:8443/ws?tls_ca=/etc/ca.pem").unwrap();
        assert!(c.tls);
        assert_eq!(c.tls_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert!(format!("{c:?}").contains("/etc/ca.pem"));
        let err = WsConfig::from_url("ws://h?tls_ca=/etc/ca.pem").unwrap_err();
        assert!(err.to_string().contains("wss://"), "{err}");

        let c = HubConfig::from_url("wss://0.0.0.0:8443?tls_cert=/c.pem&tls_key=/k.pem").unwrap();
        assert!(c.tls());
        for (bad, why) in [
            ("wss://h", "needs tls_cert and tls_key"),
            ("wss://h?tls_cert=/c.pem", "needs tls_cert and tls_key"),
            ("ws://h?tls_cert=/c.pem&tls_key=/k.pem", "listen on wss://"),
            ("http://h", "got scheme http"),
        ] {
            let err = HubConfig::from_url(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let mut c = HubConfig::from_url("ws://h?no_auth=true").unwrap();
        c.tls_key = Some("/k.pem".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("go together")
        );
    }

    #[test]
    fn tokens_a_header_cannot_carry_are_refused_unprinted() {
        for bad in ["s3cr%C3%A9t", "s3cr%20t", "s3cr%0At", "s3cr%7Ft"] {
            let err = WsConfig::from_url(&format!("ws://h?token={bad}")).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(text.contains("printable ASCII"), "{text}");
            assert!(!text.contains("s3cr"), "{text}");
            let hub = HubConfig::from_url(&format!("ws://h?token={bad}")).unwrap();
            let err = hub.validate().unwrap_err();
            assert!(!format!("{err} {err:?} {hub:?}").contains("s3cr"));
        }
        // Escaped characters a header carries are fine, and never printed either.
        let c = WsConfig::from_url("ws://h?token=s3cr%26%3D%2B%25t~!").unwrap();
        assert_eq!(c.token.as_ref().unwrap().expose(), "s3cr&=+%t~!");
        assert!(!format!("{c:?}").contains("s3cr"));
    }

    #[test]
    fn url_errors_never_print_the_token() {
        // Each URL is refused; none of the errors may show any part of the token.
        for url in [
            "ws://h:bad/ws?token=s3cr%zzt",
            "ws://h/ws?token=s3cr%zzt",
            "ws://h/ws?token=s3cr@t",
            "ws://h/ws?token=s3cr#t&nope=1",
            "ws://h/ws?token=s3cr&t",
            "ws://h/ws?token=s3cr&t=1",
            "ws://h/ws?heartbeat=1ms&token=s3crt",
            "wss://h/ws?token=s3cr&t&tls_ca=/ca.pem",
        ] {
            let err = WsConfig::from_url(url).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("s3cr"), "{url}: {text}");
            // What follows a raw `&` in the token would be taken for a key's name.
            assert!(!text.contains("\"t\""), "{url}: {text}");
            let hub = url.replace("/ws?", "?");
            if let Err(err) = HubConfig::from_url(&hub).and_then(|c| c.validate()) {
                let text = format!("{err} {err:?}");
                assert!(
                    !text.contains("s3cr") && !text.contains("\"t\""),
                    "{hub}: {text}"
                );
            }
        }
    }

    #[test]
    fn hub_needs_a_token_or_an_explicit_no_auth() {
        let err = HubConfig::from_url("ws://0.0.0.0:1")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_auth"), "{err}");
        let c = HubConfig::from_url("ws://0.0.0.0:1?no_auth=true&origins=a&origins=b").unwrap();
        assert_eq!(c.origins, ["a", "b"]);
        let c = HubConfig::from_url("ws://h?token=t0k").unwrap();
        assert!(!format!("{c:?}").contains("t0k"));
        assert!(
            HubConfig::from_url("ws://h?token=")
                .unwrap()
                .validate()
                .is_err()
        );
    }
}
