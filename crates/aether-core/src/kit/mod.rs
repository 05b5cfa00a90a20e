//! The adapter kit: the plumbing every broker adapter needs, written and tested once.
//!
//! # Writing an adapter
//!
//! An adapter is a crate that depends on `aether-core` only (plus its broker's client)
//! and implements [`Transport`](crate::Transport). Read the trait's docs first: each method
//! states its contract (what is delivered to whom, when, what closing does), and the
//! contract suite in `integration-tests` checks it. The crate reads like
//! `lib.rs, config.rs, error.rs, transport.rs`, plus one file per mode where the broker
//! has several.
//!
//! ## The two delivery modes
//!
//! - **Broadcast** (`publish`, `subscribe`): render the topic in the broker's syntax with
//!   [`Topic::joined`](crate::Topic::joined) and filters with
//!   [`TopicFilter::render`](crate::TopicFilter::render) (or walk
//!   [`TopicFilter::levels`](crate::TopicFilter::levels); a broker that routes by prefix
//!   wants [`TopicFilter::literal_prefix`](crate::TopicFilter::literal_prefix)). Parse
//!   what arrives back with [`Topic::parse_with`](crate::Topic::parse_with); a topic that
//!   does not parse is handed to the subscription as an
//!   [`InvalidMessage`](crate::InvalidMessage), never dropped silently.
//! - **Work queue** (`enqueue`, `consume`): a perform goes to every workgroup consuming its
//!   [`WorkQueue`](crate::WorkQueue), to one consumer in each. A broker without queues of
//!   its own can host the in-memory broker's engine instead of writing one.
//!
//! ## The kit
//!
//! | piece | use it for |
//! |-------|------------|
//! | [`Gate`] | the first line of every call: `check_publish`, `check_enqueue`, `check_open`; `close()` once, `closed()` for background tasks |
//! | [`Credit`] | the consumer's prefetch: take a [`CreditUnit`] before handing a delivery out |
//! | [`Outlet`] | the consumer's channel: `deliver` never waits (credit guarantees room), `report` refused messages without crowding deliveries out |
//! | [`Settle`] + [`SettleOnce`] | the acker: write what ack, nack, reject and give-back mean on the broker; `SettleOnce` settles once, returns the credit, gives back on drop |
//! | [`Fanout`] | local subscriptions matched by filter, each with its gap counter: `offer` without waiting (a full one loses and counts a gap), or `senders` to wait on; `gap_all` after a reconnection |
//! | [`Retry`] | the backoff of every loop that reconnects, resubscribes or reads again |
//! | [`QueueEngine`] | work queues with aether's semantics in one process (workgroups, credit, settlement, redelivery when a consumer goes away): the in-memory broker, and the place a hub or device process hosts them for remote workers |
//!
//! A consumer, put together:
//!
//! ```
//! use aether_core::kit::{Credit, Outlet, Settle, SettleOnce};
//! use aether_core::{Bytes, Consumer, DeadLetter, Delivery, Result, Topic};
//!
//! #[derive(Debug)]
//! struct MySettle {/* the broker's delivery tag, a channel... */}
//!
//! #[async_trait::async_trait]
//! impl Settle for MySettle {
//!     async fn ack(&mut self) -> Result<()> { Ok(()) /* tell the broker */ }
//!     async fn nack(&mut self, _requeue: bool) -> Result<()> { Ok(()) }
//!     async fn reject(&mut self, _letter: DeadLetter) -> Result<()> { Ok(()) }
//!     fn give_back(&mut self) { /* spawn the broker's requeue */ }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let credit = Credit::new(16); // ConsumeOptions::prefetch
//! let (outlet, rx) = Outlet::new(credit.prefetch());
//! let mut consumer = Consumer::new(rx, None); // with the adapter's guard
//! // The reader: one unit per delivery, the unit travels in the acker.
//! let unit = credit.take().await;
//! let topic: Topic = "u/j/t/x/1/perform".parse()?;
//! let acker = SettleOnce::new(MySettle {}, Some(unit));
//! outlet.deliver(Delivery::new(topic, Bytes::from_static(b"{}"), 0, Box::new(acker)));
//! // The worker acknowledges; the unit is back.
//! consumer.next().await.unwrap().unwrap().ack().await.map_err(|e| e.error)?;
//! assert_eq!(credit.available(), 16);
//! # Ok(()) }
//! ```
//!
//! ## Rules the kit does not enforce
//!
//! - Never block a broker client's callback thread: hand out with [`Outlet::deliver`],
//!   spawn I/O from `Drop`.
//! - After a reconnection, subscribe again before the transport counts as ready, then
//!   bump each subscription's gap counter ([`Subscription::with_gaps`](crate::Subscription::with_gaps))
//!   so clients re-dispatch what they may have missed.
//! - Errors are [`Error::Transport`](crate::Error::Transport) with the backend's name and
//!   the source kept; never print a password.

mod backoff;
mod credit;
mod engine;
mod guard;
mod outlet;
mod router;
mod settle;

pub use backoff::Retry;
pub use credit::{Credit, CreditUnit};
pub use engine::{EngineConfig, QueueEngine};
pub use guard::Gate;
pub use outlet::{Outlet, REFUSED_SLACK};
pub use router::Fanout;
pub use settle::{Settle, SettleOnce};
