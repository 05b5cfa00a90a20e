//! The Redis transport for [aether](https://docs.rs/aether): broadcast over pub/sub, the
//! work queue over streams (default) or reliable lists, on the `fred` client.
//!
//! ```no_run
//! use aether_core::{Aether, TaskContext};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> aether_core::Result<()> {
//! let transport = aether_redis::connect("redis://127.0.0.1:6379/?mode=streams").await?;
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
//! ## What goes where
//!
//! - **Broadcast** (status, complete, cancel, online, idle): `PUBLISH` on the topic's
//!   `:`-joined name, `{union}:{job}:{task}:{context}:{tid}:{action}`; filters become
//!   `SUBSCRIBE` (exact) or `PSUBSCRIBE` (`+` and `#` become `*`; segments cannot contain
//!   glob characters, so a `*` never spans a level of a valid topic).
//! - **Work queue, [`Mode::Streams`]** (default): a stream per (union, job, task,
//!   context), `{prefix}:{union:job:task:context}:stream`, one consumer group per
//!   workgroup. Idle entries are reclaimed after the lease (`XAUTOCLAIM`), entries
//!   delivered more than `max_deliveries` times move to the queue's dead-letter stream,
//!   acknowledged entries are trimmed.
//! - **Work queue, [`Mode::List`]**: a list per workgroup, `BLMOVE` into a per-consumer
//!   processing list, `LREM` on ack, a reaper for consumers whose presence expired.
//! - **Dead letters**: the stream `{prefix}:{union:job:task:context}:dead` (fields
//!   `topic`, `payload`, `reason`, `group`).
//!
//! Every key of a queue carries the hash tag `{union:job:task:context}`, so the
//! transport's scripts work on a **Redis Cluster**:
//! `redis://node1:7000/?cluster=true&cluster_nodes=node2:7001&cluster_nodes=node3:7002`.
//!
//! All processes of one union must use the same mode. The URL keys are listed at
//! [`RedisConfig`]; unknown keys are an error, and the password is never printed.
//!
//! ## Guarantees
//!
//! Both modes are durable (a perform waits in Redis for a worker; whether it survives a
//! Redis restart depends on the server's persistence) and redeliver the work of a worker
//! that died: its entries come back to another worker after the lease. Delivery is at
//! least once; the core drops repeats by tid. Broadcast is pub/sub: subscribers that are
//! not connected miss messages. After a reconnection the transport subscribes again,
//! `enqueue` waits until it has, and each subscription reports the gap
//! ([`Subscription::gaps`](aether_core::Subscription::gaps)) so clients dispatch again the
//! tasks whose replies may have been lost.
//!
//! ## Cargo features
//!
//! | feature | default | what |
//! |---------|---------|------|
//! | `tls` | yes | `rediss://` through the system's OpenSSL (`native-tls`); `tls_ca=` adds a CA |

mod config;
mod connect;
mod error;
mod keys;
mod list;
mod pubsub;
mod reader;
mod scripts;
mod streams;
mod transport;

pub use config::{Mode, Node, RedisConfig};
pub use error::RedisError;
pub use transport::RedisTransport;

/// The fred crate this adapter is built on: its error is the source of
/// [`RedisError::Client`], and code that needs the raw client (the benchmark's baseline,
/// say) gets the same version.
pub use fred;

use aether_core::{Result, SharedTransport};

/// URL schemes this adapter serves.
pub const SCHEMES: &[&str] = &["redis", "rediss"];

/// Connects to the Redis server a `redis://` or `rediss://` URL names (see
/// [`RedisConfig`] for its form and keys).
pub async fn connect(url: &str) -> Result<SharedTransport> {
    Ok(std::sync::Arc::new(RedisTransport::connect(url).await?))
}
