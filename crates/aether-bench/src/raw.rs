//! Raw broker-client baselines: the same perform → receive → reply → receive loop written
//! directly on each adapter's client library, to show what aether costs on top. One module
//! per adapter.

mod amqp;
mod mqtt;
mod redis;
mod ws;
mod zmq;

use anyhow::bail;

use crate::runner::Report;

/// The baselines this build has.
pub(crate) const NAMES: &[&str] = &["redis", "mqtt", "amqp", "zmq", "ws"];

/// Whether baseline `name` speaks the protocol `url` names, so `--raw redis` beside
/// `memory://` and `redis://` URLs runs only against the latter.
pub(crate) fn applies(name: &str, url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    scheme == name || scheme.strip_suffix('s') == Some(name)
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
    }
}
