//! The WebSocket transport for [aether](https://docs.rs/aether): a [`Hub`] that serves
//! WebSocket and REST peers on one port, over the in-memory queue engine or any aether
//! backend, and the [`WsTransport`] that connects to it, on [`tokio_tungstenite`].
//!
//! ```no_run
//! use aether_core::{Aether, TaskContext};
//! use aether_ws::{Hub, HubConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> aether_core::Result<()> {
//! // A hub on loopback without a token (explicitly), over an in-memory broker.
//! let hub = Hub::start(HubConfig::from_url("ws://127.0.0.1:8080?no_auth=true")?).await?;
//! let aether = Aether::new(aether_ws::connect("ws://127.0.0.1:8080/ws").await?)?;
//!
//! let _worker = aether
//!     .worker()
//!     .handle("math", "add", "x", |_ctx: TaskContext, (a, b): (i64, i64)| async move {
//!         Ok::<_, aether_core::Error>(a + b)
//!     })
//!     .start()
//!     .await?;
//! let sum: i64 = aether.client().perform("math", "add", "x", &(2, 3)).await?.result().await?;
//! assert_eq!(sum, 5);
//! # drop(hub); Ok(()) }
//! ```
//!
//! ## The hub
//!
//! One port: `GET /ws` (WebSocket), `POST /publish/{topic}`, `GET /health`,
//! `GET /messages/{topic}`, and with `metrics=true` `GET /metrics` (see [`Hub`]). It is
//! a gateway, not a broker of its own: each
//! WebSocket subscription and consumer is one on its backend, and a delivery is held for
//! its connection until the peer settles it; a connection that closes, breaks, stops
//! answering pings or lets its send queue fill drops what it held, and the backend gives
//! it to another worker. The default backend is an in-memory broker (one node); with a
//! distributed one (`redis://`, `amqp://`), several hubs behind a load balancer share
//! workgroups and redelivery. Run it as the `aether-ws-hub` binary or embed it.
//!
//! With `tls_cert` and `tls_key` ([`HubConfig`]) the hub serves only TLS (`wss://`,
//! `https://`), with rustls and its ring provider; peers connect with `wss://`, trusting the
//! webpki roots and `tls_ca` ([`WsConfig`]), the hub's certificate checked against the
//! URL's host. A peer's first connection fails at once with a typed [`WsError`] (nothing
//! listening, a certificate that does not verify, a refused upgrade); later losses are
//! retried.
//!
//! Two protocols share `/ws`: aether's (binary MessagePack frames, acknowledged
//! deliveries, numbered broadcasts) and the Python AetherMagic seed's (JSON text frames).
//!
//! ## Guarantees
//!
//! Those of the hub's backend for work queues (the in-memory one: kept while no worker
//! consumes, redelivered when a worker dies). A peer reconnects by itself with backoff,
//! subscribes and consumes again, sends again what was unanswered, and reports a gap to
//! its subscriptions, from which clients recover the tasks in flight.
//!
//! ## Cargo features
//!
//! | feature | what it adds |
//! |---------|--------------|
//! | `prometheus` (default) | a hub's `metrics=true`: `GET /metrics` serves Prometheus text of aether's metrics in the process (`aether_core::observe::prometheus`) and the hub's own counts (`aether_hub_*`) |

mod config;
mod error;
mod hub;
mod link;
mod tls;
mod transport;
mod wire;

pub use config::{DEFAULT_PORT, HubConfig, WsConfig};
pub use error::WsError;
pub use hub::{Hub, HubStats};
pub use transport::WsTransport;

/// The tokio-tungstenite crate this adapter is built on, for code that wants the same
/// version (the benchmark's raw loop).
pub use tokio_tungstenite;

/// The rustls crate behind `wss://` and the hub's TLS, for matching
/// [`WsError::Tls`]'s source (`rustls::Error::InvalidCertificate`...).
pub use rustls;

use aether_core::{Result, SharedTransport};

/// URL schemes this adapter serves.
pub const SCHEMES: &[&str] = &["ws", "wss"];

/// Connects as a `ws://` URL says (see [`WsConfig`] for its form and keys).
pub async fn connect(url: &str) -> Result<SharedTransport> {
    Ok(std::sync::Arc::new(WsTransport::connect(url).await?))
}
