//! The core of aether: one API to hand out tasks and get progress and results back, over
//! any broker.
//!
//! A task is addressed by the topic grammar `union/job/task/context/tid/action`
//! ([`Topic`]). A [`Client`] *performs* a task; one worker of each workgroup receives it
//! ([`Worker`]); the worker reports *status* (progress 0-100) and finally *complete*
//! (succeed or failed, with data); the client can *cancel*. Messages are JSON or
//! MessagePack [envelopes](envelope) compatible with Python AetherMagic services.
//!
//! This crate holds everything that does not depend on a broker: the envelope, the topic
//! grammar, the task [state machine](state), the [`Transport`] trait, and the in-memory
//! transport ([`MemoryTransport`]). Adapters for MQTT, Redis, AMQP and ZeroMQ live in
//! their own crates; the `aether` crate re-exports them behind cargo features. Writing
//! one: the [adapter kit](kit)'s docs are the guide (the trait, the kit, and the two test
//! suites that prove an adapter).
//!
//! ```
//! use std::time::Duration;
//! use aether_core::{Aether, MemoryTransport, TaskContext};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> aether_core::Result<()> {
//! let aether = Aether::new(MemoryTransport::connect("memory://doc")?)?;
//!
//! let worker = aether
//!     .worker()
//!     .concurrency(4)
//!     .handle("math", "add", "x", |ctx: TaskContext, (a, b): (i64, i64)| async move {
//!         ctx.progress(50).await?;
//!         Ok::<_, aether_core::Error>(a + b)
//!     })
//!     .start()
//!     .await?;
//!
//! let task = aether.client().perform("math", "add", "x", &(2, 3)).await?;
//! let sum: i64 = task.result().await?;
//! assert_eq!(sum, 5);
//! worker.shutdown(Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
//!
//! ## Reliability
//!
//! Workers heartbeat while a handler runs; a client that hears nothing within the lease
//! dispatches the task again with the same tid and `attempt + 1`, so tasks survive dead
//! workers even on transports that never redeliver. Workers drop tids they already
//! completed, and a client surfaces exactly one outcome per tid. Bad input (malformed
//! payloads, invalid topics, oversized messages, unknown actions) is counted in
//! [`Stats`] and dead-lettered, never fatal.
//!
//! ## Cargo features
//!
//! | feature | what it adds |
//! |---------|--------------|
//! | `otel` | W3C trace context (`traceparent`, `tracestate`) written into each perform's headers from the current span and continued by the worker's span, through a [tracing-opentelemetry](https://docs.rs/tracing-opentelemetry) layer; see [`observe`] |
//! | `prometheus` | `observe::prometheus`: the process's Prometheus recorder (metrics-exporter-prometheus) with aether's histogram buckets, for `/metrics` endpoints |

pub mod action;
pub mod callback;
pub mod client;
pub mod context;
pub mod envelope;
pub mod error;
mod inbound;
pub mod kit;
pub mod memory;
pub mod node;
pub mod observe;
pub mod requirements;
pub mod settings;
pub mod state;
pub mod stats;
pub mod topic;
pub mod transport;
pub mod url;
pub mod worker;

pub use action::{Action, Status};
pub use callback::AetherTask;
pub use client::{Client, Progress, TaskBuilder, TaskHandle};
pub use context::TaskContext;
pub use envelope::{Codec, Envelope, Header};
pub use error::{BoxError, DecodeError, Error, Level, Result, TopicError};
pub use memory::{MemoryConfig, MemoryTransport};
pub use node::{
    Aether, AetherBuilder, Backoff, Config, DEFAULT_CONTEXT, DEFAULT_UNION, IntoTransport,
};
pub use state::{Applied, InvalidTransition, TaskEvent, TaskState};
pub use stats::Stats;
pub use topic::{DEFAULT_WORKGROUP, FilterLevel, Topic, TopicFilter, WorkQueue};
pub use transport::{
    AckError, Acker, Capabilities, ConsumeOptions, Consumed, Consumer, DeadLetter,
    DeadLetterReason, Delivery, InvalidMessage, Message, Received, SharedTransport, Subscription,
    Transport,
};
pub use url::{BrokerUrl, Secret};
pub use worker::{RetryPolicy, ShutdownReport, Worker, WorkerBuilder};

pub use bytes::Bytes;
