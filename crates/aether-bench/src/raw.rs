//! Raw broker-client baselines: the same perform → receive → reply → receive loop written
//! directly on each adapter's client library, to show what aether costs on top. One module
//! per adapter.

mod amqp;
mod libzmq;
mod mqtt;
mod redis;
mod ws;
mod zmq;
mod zmqfd;

use anyhow::bail;

use crate::runner::Report;

/// The baselines this build has.
pub(crate) const NAMES: &[&str] = &["redis", "mqtt", "amqp", "zmq", "zmq-fd", "libzmq", "ws"];

/// Whether baseline `name` speaks the protocol `url` names, so `--raw redis` beside
/// `memory://` and `redis://` URLs runs only against the latter. `zmq-fd` (ZeroMQ on
/// Tokio without tmq) and `libzmq` (blocking sockets on plain threads) are ZeroMQ ones.
pub(crate) fn applies(name: &str, url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    let name = match name {
        "zmq-fd" | "libzmq" => "zmq",
        other => other,
    };
    scheme == name || scheme.strip_suffix('s') == Some(name)
}

/// Whether a `zmq://` URL names the brokerless topology (`bind=true`): the client hosts
/// the device and joins it in-process, the worker connects over TCP.
fn brokerless(url: &str) -> bool {
    aether::aether_zmq::ZmqConfig::from_url(url).is_ok_and(|c| c.bind)
}

/// Runs baseline `name` against `url`.
pub(crate) async fn run(
    name: &str,
    url: &str,
    tasks: usize,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    match name {
        "redis" => redis::run(url, tasks, inflight, payload).await,
        "mqtt" => mqtt::run(url, tasks, inflight, payload).await,
        "amqp" => amqp::run(url, tasks, inflight, payload).await,
        "zmq" => zmq::run(url, tasks, inflight, payload).await,
        "zmq-fd" => zmqfd::run(url, tasks, inflight, payload).await,
        "libzmq" => {
            let url = url.to_owned();
            tokio::task::spawn_blocking(move || libzmq::run(&url, tasks, inflight, payload)).await?
        }
        "ws" => ws::run(url, tasks, inflight, payload).await,
        _ => bail!(
            "no raw baseline named {name:?}; known: {}",
            NAMES.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_baseline_applies_to_its_own_schemes_only() {
        assert!(super::applies("redis", "redis://127.0.0.1:6379/"));
        assert!(super::applies("redis", "rediss://host/"));
        assert!(super::applies("amqp", "amqps://host/"));
        assert!(!super::applies("redis", "memory://bench"));
        assert!(!super::applies("mqtt", "redis://host/"));
        assert!(super::applies("libzmq", "zmq://127.0.0.1:5591"));
        assert!(super::applies("zmq-fd", "zmq://127.0.0.1:5591?bind=true"));
        assert!(!super::applies("libzmq", "ws://127.0.0.1:1/ws"));
    }

    #[test]
    fn a_bind_url_is_the_brokerless_topology() {
        assert!(super::brokerless("zmq://127.0.0.1:5592?bind=true"));
        assert!(!super::brokerless("zmq://127.0.0.1:5591"));
        assert!(!super::brokerless("ws://127.0.0.1:1/ws"));
    }
}
