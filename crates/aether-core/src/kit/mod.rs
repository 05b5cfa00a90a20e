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
//!   so clients re-dispatch what they may have missed; count the reconnection with
//!   [`observe::metrics::reconnected`](crate::observe::metrics::reconnected).
//! - Errors are [`Error::Transport`](crate::Error::Transport) with the backend's name and
//!   the source kept; never print a password.
//!
//! ## Proving it: the two suites
//!
//! An adapter is done when both suites of `integration-tests` pass on it. Each case is
//! written once and run on every transport; an adapter adds no test of its own for what
//! they cover.
//!
//! - The **contract suite** (`integration-tests/src/contract`) holds one connection to the
//!   trait's doc comments: a subscription live when `subscribe` returns, `close`, `+`
//!   filters, order within a subscription, one copy per workgroup, nack, prefetch, work
//!   given back, the payload limit, and each capability flag both ways. No client or
//!   worker is involved: make it green first, one promise at a time.
//! - The **conformance suite** (`integration-tests/src/suite`) runs clients and workers
//!   on the transport: exactly one outcome per task, progress before the result, cancel,
//!   deadlines, bad input dead-lettered, a worker process killed mid-task, a connection
//!   cut, a broker restarted.
//!
//! To run them on a new transport:
//!
//! 1. **Let `aether::connect` reach it**: a cargo feature in the `aether` crate named like
//!    the adapter, and an arm for its URL scheme in `connect` (`integration-tests` builds
//!    `aether` with `full`).
//! 2. **A harness** (the `Harness` trait, `integration-tests/src/harness.rs`) says how a
//!    case reaches the broker:
//!
//!    | method | what the suites do with it |
//!    |--------|----------------------------|
//!    | `name()` | names the transport in failure messages |
//!    | `connect()` | a new connection, as a separate process would have; a case opens several |
//!    | `url()` | a URL another process connects with: the worker-process and cut-connection cases (through a TCP proxy) use it; `None` where the broker lives in the test process |
//!    | `private_broker()` | a broker only this case uses, which it may `restart()`: the broker-restart cases (`integration-tests/src/brokers/` starts them on spare ports) |
//!    | `connect_limited(n)` | a connection whose queues hold at most `n` performs, where the adapter has such a setting |
//!    | `cleanup(union)` | removes what a case left on a shared broker (keys, exchanges, retained messages) |
//!
//!    A broker reached by URL needs no code: `UrlHarness::from_env(name, var, default)`
//!    reads `AETHER_TEST_<NAME>_URL`; wrap it to add a private broker or a cleanup, as
//!    `tests/mqtt.rs` does. A broker that cannot be reached fails the case with a message
//!    saying so; nothing passes by skipping.
//! 3. **A test file** `integration-tests/tests/<transport>.rs`, with one `conformance!`
//!    per mode (Redis streams and lists, MQTT 5 and 3.1.1 each have a module):
//!
//!    ```text
//!    use integration_tests::harness::UrlHarness;
//!
//!    integration_tests::conformance! {
//!        harness: UrlHarness::from_env("my", "AETHER_TEST_MY_URL", "my://127.0.0.1:7000");
//!        ignore: {
//!            task_enqueued_before_any_worker_is_handled: "my broker keeps nothing for absent consumers",
//!        }
//!    }
//!    ```
//!
//!    Each case becomes one `#[tokio::test]` (the contract's in a `contract` module) with
//!    its own random union, so they run in parallel:
//!    `cargo test -p integration-tests --test my`, or `-- contract::` for the contract
//!    alone. `scripts/test.sh` (the one test command, also CI's) runs it with the rest.
//!
//! **Ignores must agree with [`Capabilities`](crate::Capabilities).** A case the
//! transport cannot pass is ignored with its reason, which becomes
//! `#[ignore = "reason"]`, so the gap shows in every run. Each case says what it needs
//! (`suite::CASES`, `contract::CASES`: a function of the capabilities and of whether the
//! harness has a private broker), and the generated `listing_matches_capabilities` test
//! fails both ways: a case ignored that the capabilities say can pass, and one not ignored
//! that they say cannot. In the example, `durable: false` is what makes that ignore
//! right. So the way to skip a case is to report (and document) the capability the
//! transport lacks, never to edit the list alone; and a flag the transport reports is
//! always tested. Most cases need nothing; a case about a flag checks both sides of it
//! (`enqueued_work_waits_for_a_consumer_exactly_where_durable`).
//!
//! A reading order for a first adapter: the [`Transport`](crate::Transport) docs, the
//! table above, the in-memory adapter (`src/memory`, the smallest complete one, on
//! [`QueueEngine`] and [`Fanout`]), then the broker adapter closest to yours and its test
//! file (`aether-zmq` hosts the engine itself, in a device process).

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
