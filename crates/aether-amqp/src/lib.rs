//! The AMQP 0-9-1 (RabbitMQ) transport for aether, on [amqprs]: durable work queues with
//! manual acknowledgements, publisher confirms and dead-lettering; broadcasts through a
//! topic exchange.
//!
//! ```no_run
//! use aether_core::{Aether, TaskContext};
//!
//! # #[tokio::main]
//! # async fn main() -> aether_core::Result<()> {
//! let transport = aether_amqp::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! let aether = Aether::new(transport)?;
//! let _worker = aether
//!     .worker()
//!     .concurrency(8) // = the consumer's prefetch
//!     .handle("img", "resize", "x", |ctx: TaskContext, width: u32| async move {
//!         ctx.progress(50).await?;
//!         Ok::<_, aether_core::Error>(width / 2)
//!     })
//!     .start()
//!     .await?;
//! let half: u32 = aether.client().perform("img", "resize", "x", &640).await?.result().await?;
//! assert_eq!(half, 320);
//! # Ok(()) }
//! ```
//!
//! Through the umbrella crate, `aether::connect("amqp://...")` picks this adapter (cargo
//! feature `amqp` of `aether`).
//!
//! ## URL
//!
//! `amqp://user:password@host:port/vhost?key=value&...`, or `amqps://` for TLS (port 5671
//! by default). The vhost is percent-encoded: `/%2f` is the default vhost `/`. Every
//! setting of [`AmqpConfig`] is a query key (`heartbeat=20s`, `connection_name=billing`,
//! `exchange=aether.{union}`, `queue_type=quorum`, `consumer_timeout=7200s`, ...); unknown
//! keys are refused. Passwords never appear in `Debug` output, logs or errors.
//!
//! ## Layout on the broker
//!
//! - **Broadcasts** (status, complete, cancel, online, idle) go to the topic exchange
//!   `aether.{union}` with the routing key `union.job.task.context.tid.action`. Each
//!   subscription is an exclusive queue bound with its filter (`+` becomes `*`, `#` stays
//!   `#`), consumed without acknowledgements (broadcasts promise nothing to absent
//!   subscribers). A subscriber whose buffer is full pauses its consumer, leaving the
//!   backlog in the queue on the broker (bounded, oldest dropped first) rather than in
//!   memory. A filter whose union is a wildcard needs one exchange for every union (an
//!   `exchange` name without `{union}`); with the default it is refused as unsupported.
//! - **Performs** go, persistent and with publisher confirms, to the direct exchange
//!   `aether.{union}.work` with the routing key `union.job.task.context` and the tid as the
//!   message id (a direct exchange costs RabbitMQ far less to route than a topic one). Each
//!   workgroup has one durable queue `aether.{union}.{job}.{task}.{context}.{workgroup}`
//!   bound to it, so every workgroup gets every task and the workers of one workgroup share
//!   them. `enqueue` returns once the broker has confirmed the message.
//! - **Tasks sent before any worker** of their (job, task, context) ever ran match no
//!   workgroup queue. The work exchange's alternate exchange `aether.{union}.unrouted`
//!   puts them in the durable holding queue `aether.{union}.{job}.{task}.{context}:unrouted`,
//!   which the client declares. The first worker to start moves them through the work
//!   exchange to the workgroup queues bound by then (its own included). From then on the
//!   workgroup queues exist and hold the tasks themselves, also while their workers are
//!   down. The client never needs to know workgroup names.
//! - **Workers** consume with manual acknowledgements and a prefetch (`basic.qos`) equal to
//!   their concurrency, so a busy worker does not hoard tasks. A task is acknowledged after
//!   its completion was published; a transient failure nacks it with requeue; a worker
//!   that dies (or whose connection drops) leaves its tasks unacknowledged and RabbitMQ
//!   gives them to another worker.
//! - **Dead letters** (undecodable tasks, tasks past their attempts) go to the fanout
//!   exchange and durable queue `aether.dead-letters` ([`AmqpConfig::dead_letter`]; a
//!   quorum queue with `queue_type=quorum`; bounded, oldest dropped first), with
//!   the reason in the `x-aether-reason` header and the topic in `x-aether-topic`. Work
//!   queues name it as their dead-letter exchange, so a `nack` without requeue lands there
//!   too.
//!
//! ## Clusters
//!
//! Name every node of a RabbitMQ cluster in the URL, the first as its host and the others
//! as repeated `cluster_nodes` keys, and use quorum queues so tasks are replicated:
//! `amqp://app:pw@10.0.0.1:5672/prod?cluster_nodes=10.0.0.2:5672&cluster_nodes=10.0.0.3:5672&queue_type=quorum`.
//! The transport connects to the first node that answers, in that order; after a lost
//! connection it tries the next node first. A queue that exists with other arguments (say
//! a classic `aether.dead-letters` left by an earlier setup) is refused with
//! [`AmqpError::QueueMismatch`], which names the queue and the key to change
//! (`dead_letter=` gives the dead-letter queue another name).
//!
//! ## Long tasks and the consumer timeout
//!
//! RabbitMQ closes the channel of a consumer that holds a delivery unacknowledged longer
//! than its consumer timeout (30 minutes by default). Workers consume with
//! `x-consumer-timeout` = [`AmqpConfig::consumer_timeout`] (24 hours by default), which
//! RabbitMQ 3.12 and later honour per consumer. Older brokers only have the node-wide
//! `consumer_timeout` in `rabbitmq.conf`: raise it above your longest task there. If the
//! channel is closed anyway, the adapter consumes again at once, and when the broker
//! redelivers the running task to the same worker, the running handler takes over the new
//! delivery rather than starting the task twice (a redelivery to another worker is a
//! second run, which the client's one-outcome-per-task rule absorbs).
//!
//! ## Reconnection
//!
//! The connection is watched (AMQP heartbeats, [`AmqpConfig::heartbeat`]). When it is lost,
//! or the broker restarts, the transport reconnects with backoff, declares again and
//! consumes again for every live subscription and consumer, without user code. Publishes
//! and enqueues wait for the new connection within [`AmqpConfig::operation_timeout`]; one
//! that was unconfirmed when the connection went is sent again (at-least-once: workers
//! drop tasks they already completed). A channel the broker closes is opened again.
//!
//! ## Capabilities
//!
//! Durable, redelivers on crash, wildcards, ordered (per publisher and topic), dead letters,
//! shared between processes; payloads up to [`AmqpConfig::max_payload`] (16 MiB by default).
//!
//! ## Cargo features
//!
//! | feature | default | what |
//! |---------|---------|------|
//! | `tls` | yes | `amqps://` URLs, with rustls (ring) and the webpki roots or a CA file (`tls_ca`), optional client certificate (`tls_cert`, `tls_key`) |
//!
//! [amqprs]: https://docs.rs/amqprs

mod attach;
mod broadcast;
mod channel;
mod config;
mod error;
mod session;
mod topology;
mod transport;
mod work;

pub use config::{AmqpConfig, Node, QueueType};
pub use error::AmqpError;
pub use transport::AmqpTransport;

/// The amqprs crate this adapter is built on, for code that needs the raw client (the
/// benchmark's baseline, say).
pub use amqprs;

use std::sync::Arc;

use aether_core::{Result, SharedTransport};

/// URL schemes this adapter serves.
pub const SCHEMES: &[&str] = &["amqp", "amqps"];

/// Connects to the broker an `amqp://` or `amqps://` URL names (see
/// [`AmqpConfig::from_url`]), as a shared transport.
pub async fn connect(url: &str) -> Result<SharedTransport> {
    Ok(Arc::new(AmqpTransport::connect(url).await?))
}
