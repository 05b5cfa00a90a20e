//! aether: one API for microservices to hand out tasks and get progress and results back,
//! over several brokers at once.
//!
//! ```
//! use aether::{Aether, TaskContext};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> aether::Result<()> {
//! let aether = Aether::new(aether::connect("memory://").await?)?;
//! let _worker = aether
//!     .worker()
//!     .handle("greet", "hello", "x", |_ctx: TaskContext, name: String| async move {
//!         Ok::<_, aether::Error>(format!("hello, {name}"))
//!     })
//!     .start()
//!     .await?;
//! let reply: String = aether
//!     .client()
//!     .perform("greet", "hello", "x", "world")
//!     .await?
//!     .result()
//!     .await?;
//! assert_eq!(reply, "hello, world");
//! # Ok(()) }
//! ```
//!
//! ## Cargo features
//!
//! | feature | adapter | URL schemes |
//! |---------|---------|-------------|
//! | (always) | in-memory, [`aether_core::memory`] | `memory://` |
//! | `redis` | [`aether-redis`](https://docs.rs/aether-redis) | `redis://`, `rediss://` |
//! | `mqtt` | [`aether-mqtt`](https://docs.rs/aether-mqtt) | `mqtt://`, `mqtts://` |
//! | `amqp` | [`aether-amqp`](https://docs.rs/aether-amqp) | `amqp://`, `amqps://` |
//! | `zmq` | [`aether-zmq`](https://docs.rs/aether-zmq) | `zmq://` (`tcp://`), `?bind=true` hosts the device |
//! | `ws` | [`aether-ws`](https://docs.rs/aether-ws) | `ws://`, `wss://` (a peer of an aether-ws hub; TLS with rustls) |
//! | `full` | every adapter above | |
//! | `otel` | trace context across every transport ([`aether_core::observe`]) | |
//! | `prometheus` | the process's Prometheus recorder for `/metrics` endpoints (`aether_core::observe::prometheus`) | |

pub use aether_core::*;

// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
mod readme {}

#[cfg(feature = "amqp")]
pub use aether_amqp;
#[cfg(feature = "mqtt")]
pub use aether_mqtt;
#[cfg(feature = "redis")]
pub use aether_redis;
#[cfg(feature = "ws")]
pub use aether_ws;
#[cfg(feature = "zmq")]
pub use aether_zmq;

/// Connects to the transport a URL names, picking the adapter from its scheme.
///
/// A scheme whose adapter is not compiled in is an [`Error::FeatureDisabled`] naming the
/// cargo feature to enable.
pub async fn connect(url: &str) -> Result<SharedTransport> {
    let scheme = url
        .split_once("://")
        .map_or(url, |(s, _)| s)
        .to_ascii_lowercase();
    // Unused when every adapter is compiled in.
    #[cfg_attr(
        all(
            feature = "redis",
            feature = "mqtt",
            feature = "amqp",
            feature = "zmq",
            feature = "ws"
        ),
        allow(unused_variables)
    )]
    let disabled = |feature: &'static str| Error::FeatureDisabled {
        scheme: scheme.clone(),
        feature,
    };
    match scheme.as_str() {
        "memory" => Ok(std::sync::Arc::new(MemoryTransport::connect(url)?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => aether_redis::connect(url).await,
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => Err(disabled("redis")),
        #[cfg(feature = "mqtt")]
        "mqtt" | "mqtts" => aether_mqtt::connect(url).await,
        #[cfg(not(feature = "mqtt"))]
        "mqtt" | "mqtts" => Err(disabled("mqtt")),
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => aether_amqp::connect(url).await,
        #[cfg(not(feature = "amqp"))]
        "amqp" | "amqps" => Err(disabled("amqp")),
        #[cfg(feature = "ws")]
        "ws" | "wss" => aether_ws::connect(url).await,
        #[cfg(not(feature = "ws"))]
        "ws" | "wss" => Err(disabled("ws")),
        #[cfg(feature = "zmq")]
        "zmq" | "tcp" => aether_zmq::connect(url).await,
        #[cfg(not(feature = "zmq"))]
        "tcp" | "zmq" => Err(disabled("zmq")),
        "ipc" => Err(Error::Config(
            "ipc:// is not served; the ZeroMQ transport takes zmq://host:port".into(),
        )),
        _ => Err(Error::Config(format!(
            "unknown URL scheme {scheme:?}; known: memory, redis, rediss, mqtt, mqtts, amqp, amqps, ws, wss, zmq"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(not(feature = "mqtt"))]
    #[tokio::test]
    async fn names_the_feature_to_enable() {
        let err = super::connect("mqtt://localhost:1883").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the URL scheme `mqtt` needs the `mqtt` cargo feature of the `aether` crate"
        );
        assert!(super::connect("gopher://x").await.is_err());
        assert!(super::connect("memory://umbrella-test").await.is_ok());
    }
}
