//! The ZeroMQ transport for [aether](https://docs.rs/aether): a device that brokers work
//! and broadcasts between processes, or that one process hosts itself (brokerless), on
//! [`tmq`].
//!
//! ```no_run
//! use aether_core::{Aether, TaskContext};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> aether_core::Result<()> {
//! // This process hosts the device; others connect with zmq://<this host>:5555.
//! let transport = aether_zmq::connect("zmq://0.0.0.0:5555?bind=true").await?;
//! let aether = Aether::new(transport)?;
//!
//! let _worker = aether
//!     .worker()
//!     .handle("math", "add", "x", |_ctx: TaskContext, (a, b): (i64, i64)| async move {
//!         Ok::<_, aether_core::Error>(a + b)
//!     })
//!     .start()
//!     .await?;
//!
//! let sum: i64 = aether.client().perform("math", "add", "x", &(2, 3)).await?.result().await?;
//! assert_eq!(sum, 5);
//! # Ok(()) }
//! ```
//!
//! ## Topology
//!
//! Every process connects one DEALER socket to the [`Device`]'s ROUTER (the ZeroMQ
//! Guide's Paranoid Pirate and Majordomo patterns): workers announce each consumer with
//! its credit, the device hands each perform to one worker of each workgroup and holds it
//! until acknowledged; broadcasts go through the device to every connection with a
//! matching subscription, numbered per connection so a lost one shows as a gap. Heartbeats
//! run both ways; a worker silent for 3 intervals is dead and its performs go to another
//! worker. The device runs as the `aether-zmq-device` binary, embedded with
//! [`Device::start`], or hosted by a transport with `bind=true` (brokerless).
//!
//! Publishes, performs and replies of one connection travel in order on one socket, which
//! is why everything, broadcasts included, goes over the DEALER/ROUTER pair rather than a
//! separate XPUB/XSUB pair: one order per connection, one heartbeat, one place to number
//! messages for gap detection, and a subscription acknowledged on the same path the
//! messages take (active when `subscribe` returns, without sleeping).
//!
//! ## Guarantees
//!
//! At least once, with redelivery of a dead worker's tasks; the core drops repeats by tid.
//! The device keeps nothing across its own restart: the connections notice the new
//! session, subscribe and consume again by themselves and report a gap, and the clients'
//! redispatch recovers the tasks that were in flight. URL keys: [`ZmqConfig`].
//!
//! ## Cargo features
//!
//! This crate has no optional features. It links the system's libzmq (`libzmq3-dev` on
//! Debian) through the workspace's `.cargo/config.toml`.

mod config;
mod curve;
mod device;
mod error;
mod link;
mod transport;
mod wire;

pub use config::{DEFAULT_PORT, ZmqConfig};
pub use curve::CurveKeys;
pub use device::{Device, DeviceStats};
pub use error::ZmqError;
pub use transport::ZmqTransport;

/// The tmq crate this adapter is built on, for code that wants the same version (the
/// benchmark's raw loop).
pub use tmq;

use aether_core::{Result, SharedTransport};

/// URL schemes this adapter serves.
pub const SCHEMES: &[&str] = &["zmq", "tcp"];

/// Connects as a `zmq://` URL says (see [`ZmqConfig`] for its form and keys).
pub async fn connect(url: &str) -> Result<SharedTransport> {
    Ok(std::sync::Arc::new(ZmqTransport::connect(url).await?))
}

/// Whether the linked libzmq has CURVE security (it does when linked against Debian's
/// `libzmq3-dev`, built with libsodium).
pub fn has_curve() -> bool {
    zmq::has("curve").unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn links_a_libzmq_with_curve() {
        assert!(
            super::has_curve(),
            "the linked libzmq has no CURVE: install libzmq3-dev (see .cargo/config.toml)"
        );
        assert!(zmq::CurveKeyPair::new().is_ok());
    }
}
