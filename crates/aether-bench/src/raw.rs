//! Raw broker-client baselines: the same perform → receive → reply → receive loop written
//! directly on each adapter's client library, to show what aether costs on top. One module
//! per adapter.

mod amqp;
mod mqtt;
mod redis;
mod zmq;

use anyhow::bail;

use crate::runner::Report;

/// The baselines this build has.
pub(crate) const NAMES: &[&str] = &["redis", "mqtt", "amqp", "zmq"];

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
        _ => bail!(
            "no raw baseline named {name:?}; known: {}",
            NAMES.join(", ")
        ),
    }
}
