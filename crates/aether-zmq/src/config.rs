//! [`ZmqConfig`]: where the device is (or where to host it) and how the link behaves, from
//! a `zmq://` URL or built in code.

use std::time::Duration;

use aether_core::url::{BrokerUrl, Secret};
use aether_core::{Error, Result};

/// The default port of a `zmq://` URL.
pub const DEFAULT_PORT: u16 = 5555;

/// What a frame may carry besides a payload (a batch of small messages, kinds, ids,
/// topics; see `wire.rs`); the socket's hard limit is `max_payload` plus this.
pub(crate) const FRAME_OVERHEAD: usize = 64 << 10;

aether_core::settings! {
    /// Settings of a ZeroMQ transport (and of the device it hosts with `bind=true`).
    ///
    /// Parsed from `zmq://host[:port][?key=value&...]` by [`ZmqConfig::from_url`], or built
    /// from [`ZmqConfig::default`] and the setters. Unknown query keys are an error.
    #[derive(Clone, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct ZmqConfig {
        /// The device's host (to connect to), or the address to bind with `bind=true`
        /// (`0.0.0.0` for every interface). Default `127.0.0.1`.
        host: String = "127.0.0.1".into(),
        /// The device's port. Default 5555.
        port: u16 = DEFAULT_PORT,
        /// `true`: this process hosts the device on `host:port` (brokerless); every
        /// `bind=true` transport of the process for the same address shares it, and
        /// other processes connect to it with the same URL without `bind`. Default false.
        [key] bind: bool = false,
        /// Heartbeat interval, both ways; a peer silent for 3 intervals is dead and the
        /// work it held goes to another worker. The device's setting wins: a client uses
        /// the interval its device announces. Default 1 s.
        [key] heartbeat: Duration = Duration::from_secs(1),
        /// Largest payload, in bytes. Default 16 MiB.
        [key] max_payload: usize = 16 << 20,
        /// How long `connect`, an enqueue, a subscribe or a consume may wait for the
        /// device's answer. Default 10 s.
        [key] operation_timeout: Duration = Duration::from_secs(10),
        /// Messages a subscription buffers; past it the subscription loses messages and
        /// counts a gap. Default 4,096.
        [key] subscription_capacity: usize = 4096,
        /// Messages queued per peer in the socket before it drops broadcasts (counted as
        /// gaps by the peer) (ZeroMQ `SNDHWM`/`RCVHWM`). Default 10,000.
        [key] hwm: u32 = 10_000,
        /// Device only: performs a workgroup (or a queue nobody consumes yet) holds; past
        /// it an enqueue fails with `QueueFull` and the device counts it. Default 65,536.
        [key] queue_capacity: usize = 65_536,
        /// Device only: dead letters kept in memory; the oldest go first. Default 1,024.
        [key] dead_letter_capacity: usize = 1024,
        /// CURVE: this side's secret key (40 Z85 characters; percent-encode it in a URL).
        /// On a device (`bind=true`, or `aether-zmq-device`) it makes the device a CURVE
        /// server; on a client it is the client's own, with `curve_public_key`. Never
        /// printed. Default none.
        [key] curve_secret_key: Option<Secret> = None,
        /// CURVE: a client's own public key, with its `curve_secret_key`; without both, a
        /// client generates a pair for the connection. Default none.
        [key] curve_public_key: Option<String> = None,
        /// CURVE: the device's public key; set, the client connects with CURVE (encrypted,
        /// and only to the device holding the matching secret key). Default none.
        [key] curve_server_key: Option<String> = None,
        /// CURVE: on a device, the public keys of the clients it admits (the key repeats);
        /// empty admits any client that knows the device's public key. Default none.
        [key = ZmqConfig::add_curve_client] curve_clients: Vec<String> = Vec::new(),
    }
}

impl ZmqConfig {
    /// Parses a `zmq://` URL (keys in the table above). `tcp://` is accepted as the same.
    pub fn from_url(url: &str) -> Result<ZmqConfig> {
        let u = BrokerUrl::parse(url)?;
        if u.scheme != "zmq" && u.scheme != "tcp" {
            return Err(Error::Config(format!(
                "not a ZeroMQ URL: scheme {}; expected zmq://host:port",
                u.scheme
            )));
        }
        if u.username.is_some() || u.password.is_some() || !u.path.is_empty() {
            return Err(Error::Config(
                "a ZeroMQ URL is zmq://host[:port][?options], without user or path".into(),
            ));
        }
        let mut c = ZmqConfig::default();
        if !u.host.is_empty() {
            c.host = u.host.clone();
        }
        if let Some(port) = u.port {
            c.port = port;
        }
        u.apply_query(ZmqConfig::KEYS, &mut c)?;
        c.validate()?;
        Ok(c)
    }

    /// Refuses settings that cannot work, saying what to change.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat < Duration::from_millis(10) {
            return Err(Error::Config("heartbeat must be at least 10ms".into()));
        }
        for (key, value) in [
            ("max_payload", self.max_payload),
            ("subscription_capacity", self.subscription_capacity),
            ("queue_capacity", self.queue_capacity),
            ("hwm", self.hwm as usize),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{key} must be at least 1")));
            }
        }
        if self.max_payload > (1 << 30) {
            return Err(Error::Config("max_payload must be at most 1 GiB".into()));
        }
        crate::curve::validate(self)
    }

    fn add_curve_client(&mut self, value: &str) -> Result<()> {
        self.curve_clients.push(value.to_owned());
        Ok(())
    }

    /// The TCP endpoint, `tcp://host:port` (`*` for port 0 when binding).
    pub fn endpoint(&self) -> String {
        if self.port == 0 {
            format!("tcp://{}:*", self.host)
        } else {
            format!("tcp://{}:{}", self.host, self.port)
        }
    }

    /// The socket's hard message limit (ZeroMQ `MAXMSGSIZE`).
    pub(crate) fn max_message(&self) -> i64 {
        (self.max_payload + FRAME_OVERHEAD) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_refusals() {
        let c = ZmqConfig::from_url("zmq://127.0.0.1").unwrap();
        assert_eq!(c, ZmqConfig::default());
        let c = ZmqConfig::from_url("zmq://0.0.0.0:6000?bind=true&heartbeat=250ms&hwm=5").unwrap();
        assert!(c.bind);
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 6000));
        assert_eq!(c.heartbeat, Duration::from_millis(250));
        assert_eq!(c.endpoint(), "tcp://0.0.0.0:6000");
        assert_eq!(c.port(0).endpoint(), "tcp://0.0.0.0:*");
        for bad in [
            "zmq://h?nope=1",
            "zmq://h?heartbeat=1ms",
            "zmq://u:p@h",
            "zmq://h/path",
            "redis://h",
            "zmq://h?max_payload=0",
        ] {
            assert!(ZmqConfig::from_url(bad).is_err(), "{bad}");
        }
        let err = ZmqConfig::from_url("zmq://h?nope=1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope") && err.contains("heartbeat"), "{err}");
    }
}
