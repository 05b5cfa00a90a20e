//! The MQTT transport of aether, on [paho-mqtt], wire-compatible with Python AetherMagic:
//! an aether service can sit beside Python services on the same broker, in both directions.
//!
//! ```no_run
//! use aether_core::{Aether, TaskContext};
//!
//! # #[tokio::main] async fn main() -> aether_core::Result<()> {
//! let transport = aether_mqtt::connect("mqtt://127.0.0.1:1883").await?;
//! let aether = Aether::builder().union("shop").transport(transport).build()?;
//!
//! // Shares the load with Python AetherTask workers of the same job: same shared group.
//! let _worker = aether
//!     .worker()
//!     .handle("orders", "price", "x", |ctx: TaskContext, items: Vec<u32>| async move {
//!         ctx.progress(50).await?;
//!         Ok::<_, aether_core::Error>(items.iter().sum::<u32>())
//!     })
//!     .start()
//!     .await?;
//!
//! let total: u32 = aether
//!     .client()
//!     .perform("orders", "price", "x", &vec![3, 4])
//!     .await?
//!     .result()
//!     .await?;
//! assert_eq!(total, 7);
//! # Ok(()) }
//! ```
//!
//! ## Topics
//!
//! Exactly those of Python AetherMagic. A perform is published on
//! `{union}/{job}/{task}/{context}/{tid}/perform`; workers take performs through the shared
//! subscription `$share/{union}_{job}_{workgroup}/{union}/{job}/{task}/{context}/+/perform`
//! (the default workgroup is `workgroup`, the one Python's `AetherTask` uses, so aether and
//! Python workers share the load); status, complete and cancel travel on `.../{tid}/status`,
//! `.../{tid}/complete` and `.../{tid}/cancel`, idle on `.../{tid}/idle`, and presence on
//! `{union}/system/online/{host}/{client}/online`. Payloads are the JSON envelope Python
//! reads (MessagePack when a client asks for it; Python services cannot read that).
//!
//! ## Guarantees
//!
//! Everything is published at QoS 1 and each `publish`/`enqueue` waits for the broker's
//! acknowledgement. Per [`capabilities`](aether_core::Transport::capabilities):
//!
//! - **not durable**: MQTT keeps nothing for a subscriber that does not exist yet, so a
//!   perform sent while no worker subscribes is lost, and the client's lease redispatch is
//!   what sends it again. (Mosquitto answers such a publish with the MQTT 5 PUBACK reason
//!   "no matching subscribers", but paho's C library does not pass reason codes of
//!   successful PUBACKs on, so the adapter cannot report it.)
//! - **no redelivery after a crash**: the broker does not hand a message a dead member of
//!   a shared group had received to another member. The client's lease redispatch (same
//!   tid, `attempt + 1`) recovers tasks of dead workers; workers drop tids they completed.
//!   What acknowledging a delivery means here: see [Acknowledgements](#acknowledgements).
//! - **ordered** per topic and publisher; **wildcards** `+` and `#`.
//! - **dead letters** are published, retained, on `aether-dead-letter/{topic}` (prefix
//!   `dead_letter_topic`), with the reason, original topic and size in the MQTT 5 user
//!   properties `aether-reason`, `aether-topic` and `aether-size`. What the broker keeps
//!   of them is bounded whatever arrives: content cut to `dead_letter_max_payload`
//!   (64 KiB, marked `aether-truncated`), an MQTT 5 message expiry of
//!   `dead_letter_expiry` (7 days), and at most `dead_letter_capacity` (1,000) retained
//!   per expiry window, the rest published without retain. (MQTT 3.1.1 carries neither
//!   properties nor expiry: there the reason is only logged, and the 1,000 are per
//!   connection.) Inspect them with `mosquitto_sub -V mqttv5 -F '%t %P %p' -t
//!   'aether-dead-letter/#'`; clear one by publishing an empty retained message on its
//!   topic.
//!
//! ## Acknowledgements
//!
//! paho acknowledges a QoS 1 message to the broker when it arrives, before any handler
//! runs. `Delivery::ack` frees the consumer's prefetch slot; `nack(true)` publishes the
//! perform again on its topic so its workgroup gets it back (workers of other workgroups
//! get a copy that their duplicate window answers); `reject` publishes it as a dead letter;
//! a delivery dropped unacknowledged inside a live process is published again too.
//!
//! ## Connection
//!
//! [`MqttConfig`] lists every setting with its default and URL key: MQTT 5 (default) or
//! 3.1.1 (`version=3.1.1`), client id, clean or persistent session, keep-alive, TLS
//! (`mqtts://`, CA file, client certificate and key), user name and password (never
//! printed), and the last will that announces a dead connection offline ([`Presence`]).
//!
//! The connection reconnects by itself with backoff and restores every subscription when
//! it is back (on a clean session the broker forgot them), without user code; publishes
//! made meanwhile wait for it, up to `operation_timeout`. [`MqttTransport::is_connected`],
//! [`MqttTransport::connections`] and [`MqttTransport::wait_restored`] tell where it
//! stands. Messages arriving faster than a subscriber takes them are buffered up to
//! `subscription_capacity` per subscription and consumer, then dropped and counted
//! ([`MqttTransport::overflowed`]): dispatch runs on paho's network thread and never
//! blocks it.
//!
//! On MQTT 5 every subscription carries a subscription identifier, so a message reaches
//! exactly the subscriptions it matched. On 3.1.1 messages are routed by topic; a
//! connection that both consumes a work queue and subscribes to a plain filter matching its
//! performs may then see a perform twice.
//!
//! ## Cargo features
//!
//! This crate has no optional features. It builds paho's C library (bundled, with TLS),
//! which needs `cmake`, a C compiler and OpenSSL's headers (`libssl-dev`).
//!
//! [paho-mqtt]: https://crates.io/crates/paho-mqtt

mod config;
mod connection;
mod dead_letter;
mod error;
mod presence;
mod queue;
mod router;
mod transport;

pub use config::{MqttConfig, MqttVersion};
pub use error::MqttError;
pub use presence::Presence;
pub use router::shared_subscription;
pub use transport::MqttTransport;

/// The paho-mqtt crate this adapter is built on, for code that needs the raw client (the
/// benchmark's baseline, say).
pub use paho_mqtt;

use aether_core::{Result, SharedTransport};

/// URL schemes this adapter serves.
pub const SCHEMES: &[&str] = &["mqtt", "mqtts"];

/// Connects to the broker a `mqtt://` or `mqtts://` URL names; see
/// [`MqttConfig::from_url`] for the options.
pub async fn connect(url: &str) -> Result<SharedTransport> {
    Ok(std::sync::Arc::new(MqttTransport::connect(url).await?))
}
