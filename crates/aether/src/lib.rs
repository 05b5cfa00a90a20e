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
//! | `full` | every adapter below | |

pub use aether_core::*;

/// Connects to the transport a URL names, picking the adapter from its scheme.
///
/// A scheme whose adapter is not compiled in is an [`Error::FeatureDisabled`] naming the
/// cargo feature to enable.
pub async fn connect(url: &str) -> Result<SharedTransport> {
    let scheme = url
        .split_once("://")
        .map_or(url, |(s, _)| s)
        .to_ascii_lowercase();
    let disabled = |feature: &'static str| Error::FeatureDisabled {
        scheme: scheme.clone(),
        feature,
    };
    match scheme.as_str() {
        "memory" => Ok(std::sync::Arc::new(MemoryTransport::connect(url)?)),
        "redis" | "rediss" => Err(disabled("redis")),
        "mqtt" | "mqtts" => Err(disabled("mqtt")),
        "amqp" | "amqps" => Err(disabled("amqp")),
        "ws" | "wss" => Err(disabled("ws")),
        "tcp" | "ipc" | "zmq" => Err(disabled("zmq")),
        _ => Err(Error::Config(format!(
            "unknown URL scheme {scheme:?}; known: memory, redis, rediss, mqtt, mqtts, amqp, amqps, ws, wss, zmq"
        ))),
    }
}

#[cfg(test)]
mod tests {
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
