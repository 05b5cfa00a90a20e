//! The transport trait: what every broker adapter implements.
//!
//! A transport has two delivery modes.
//!
//! - **Broadcast** ([`Transport::publish`], [`Transport::subscribe`]): every live
//!   subscription whose filter matches a topic receives the message. Status, complete,
//!   cancel, online and idle messages travel this way. Nothing is stored for subscribers
//!   that do not exist yet.
//! - **Work queue** ([`Transport::enqueue`], [`Transport::consume`]): a perform goes to the
//!   queue of its (union, job, task, context); each workgroup consuming that queue receives
//!   it once, on exactly one of its consumers, which acknowledges it when done
//!   ([`Delivery::ack`]) or gives it back ([`Delivery::nack`]). A delivery that is never
//!   acknowledged because its consumer went away comes back to another consumer where the
//!   transport can do that ([`Capabilities::redelivers_on_crash`]).
//!
//! Every transport must provide, because the core relies on it:
//!
//! - single-level `+` filters: clients subscribe to a queue's replies and workers to its
//!   cancels with `{union}/{job}/{task}/{context}/+/{action}`;
//! - one publisher's broadcasts in the order sent, within each subscription;
//! - one copy of each perform per workgroup: a worker's `workgroup` setting means "each
//!   task once per workgroup", whatever the other workgroups on the queue;
//! - the acknowledgement contract of [`Delivery`] and the lifecycle of [`Subscription`],
//!   [`Consumer`] and [`Transport::close`] as documented below.
//!
//! [`Transport::capabilities`] says what varies between transports, and each flag is
//! either acted on by the core or held to the transport by the contract suite
//! (`integration-tests/src/contract`), in both directions: what the transport must do where
//! a flag is set, and what it must not do (or must refuse) where it is not. The core
//! refuses, when a node is built or a worker started, a configuration whose promise the
//! transport cannot keep (see [`Capabilities`]).

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result, TopicError};
use crate::topic::{Topic, TopicFilter, WorkQueue};

/// A transport chosen at run time, shared by clients and workers.
pub type SharedTransport = Arc<dyn Transport>;

/// A broker adapter. See the [module docs](self) for the two delivery modes.
///
/// Implementations are cheap to share (`Arc`) and safe to use from many tasks at once.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and errors, e.g. `"memory"`, `"redis-streams"`, `"mqtt"`.
    fn name(&self) -> &'static str;

    /// What this transport guarantees.
    fn capabilities(&self) -> Capabilities;

    /// Broadcasts `payload` on `topic` to every subscription whose filter matches it,
    /// including subscriptions of this same transport. Returns once the broker has the
    /// message (or, for brokerless transports, once it is handed to every local
    /// subscriber). Subscribers that do not exist yet never see it.
    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<()>;

    /// Subscribes to every topic `filter` matches. The subscription is active when this
    /// returns: a message published after that is delivered. The messages one publisher
    /// sends on the topics it matches arrive in the order they were sent. Dropping the [`Subscription`]
    /// unsubscribes. Closing the transport ends every subscription (`next` returns `None`).
    /// Every transport takes single-level `+`; a transport without
    /// [`Capabilities::multi_level_wildcards`] answers [`Error::Unsupported`] for a filter
    /// with `#`.
    async fn subscribe(&self, filter: &TopicFilter) -> Result<Subscription>;

    /// Puts a perform on the work queue of `topic`'s (union, job, task, context); `topic`'s
    /// action is [`crate::Action::Perform`] and its tid identifies the task. Returns once
    /// the broker has accepted it (publisher confirms where the broker has them). Each
    /// workgroup consuming that queue receives it once (required of every transport). On a
    /// durable transport it waits for a consumer if there is none; elsewhere a perform
    /// with no consumer is lost (the client's redispatch sends it again).
    async fn enqueue(&self, topic: &Topic, payload: Bytes) -> Result<()>;

    /// Starts consuming `queue` as one consumer of its workgroup. At most
    /// `options.prefetch` deliveries are outstanding (received and not yet acked, nacked or
    /// rejected) at a time. Dropping the [`Consumer`] stops consuming: what it had taken
    /// from the broker but not yet handed out goes back to the workgroup, while deliveries
    /// already handed out stay with their holders until acknowledged. A [`Delivery`]
    /// dropped unacknowledged (its handler crashed) comes back to the workgroup where the
    /// transport redelivers ([`Capabilities::redelivers_on_crash`]).
    async fn consume(&self, queue: &WorkQueue, options: ConsumeOptions) -> Result<Consumer>;

    /// Stores a message that could not be handled in this transport's dead-letter place,
    /// for an operator to inspect or replay. The default keeps nothing and answers
    /// [`Error::Unsupported`]; callers count and log dead letters either way.
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        let _ = letter;
        Err(Error::unsupported(self.name(), "a dead-letter place"))
    }

    /// Closes the connection: subscriptions and consumers end, outstanding deliveries go
    /// back to the broker as if their consumer had crashed. Further calls fail with
    /// [`Error::Closed`]. Idempotent.
    async fn close(&self) -> Result<()>;
}

/// What a transport guarantees, where transports differ. Built with [`Capabilities::new`]
/// and the setters, so adapter crates can fill it in while new fields are added.
///
/// Each flag is used: the core acts on `redelivers_on_crash`, `durable` and `gap_signals`
/// (when a client dispatches a task again, whether workers may hold back acceptance),
/// `ordered` (how a client subscribes to a task's replies), `max_payload` (the limit in
/// force, and a node asking for more is refused at `build()`) and `dead_letters` (where a
/// dead letter is kept); the contract suite checks the flags against what the transport
/// does, and the task-level suite skips what a transport without `durable`,
/// `multi_level_wildcards` or `shared_between_processes` cannot pass. Single-level `+`
/// filters, order within one subscription and per-workgroup fan-out are no capability:
/// every transport provides them (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Work enqueued while no consumer runs is kept until one comes, and survives a broker
    /// restart where the broker persists. Where false, a perform sent before any worker
    /// consumes is lost, and the client's redispatch is what sends it again.
    pub durable: bool,
    /// An unacknowledged delivery comes back to another consumer when its consumer is
    /// gone. Where false, the client's lease-based redispatch is what recovers a task
    /// whose worker died.
    pub redelivers_on_crash: bool,
    /// Subscribe accepts multi-level `#` filters (every transport takes `+`). The core
    /// never needs `#`; applications watching a whole union or job do.
    pub multi_level_wildcards: bool,
    /// Broadcasts from one publisher reach this transport's subscriptions in the order they
    /// were sent, across subscriptions: a message is in the buffers of the subscriptions it
    /// matches before a later one is in theirs (one connection dispatching in arrival
    /// order). Every transport keeps that order within one subscription; where this is
    /// false (a broker queue or connection per subscription), a client takes a task's
    /// statuses and completions through one subscription, so a completion never overtakes
    /// the progress reports sent before it.
    pub ordered: bool,
    /// The largest payload the transport carries, in bytes: larger ones are refused on
    /// send with [`Error::PayloadTooLarge`]. A node's `max_payload` may not exceed it.
    pub max_payload: usize,
    /// Dead letters are stored by the transport: [`Transport::dead_letter`] and
    /// [`Delivery::reject`] keep the letter for an operator. Where false, `dead_letter`
    /// answers [`Error::Unsupported`] and `reject` removes the delivery, logging the
    /// letter; the dead letters of the node itself (tasks a client gave up on) are then
    /// kept in memory instead (`Aether::local_dead_letters`).
    pub dead_letters: bool,
    /// A separate process can connect to the same broker (false for the in-memory one).
    pub shared_between_processes: bool,
    /// Broadcasts are not lost silently: a subscription either misses nothing, or says
    /// through [`Subscription::gaps`] when it may have missed some (after a reconnection,
    /// or when the adapter had to drop messages). Clients then dispatch again the tasks they
    /// have not heard of, which lets quick tasks be answered by their completion alone (see
    /// `Config::defer_accept`). An adapter documents any loss it cannot see (e.g. a broker
    /// queue's own length limit).
    pub gap_signals: bool,
}

impl Capabilities {
    /// Nothing guaranteed, `max_payload` 1 MiB; switch on what the transport provides.
    pub fn new() -> Capabilities {
        Capabilities {
            durable: false,
            redelivers_on_crash: false,
            multi_level_wildcards: false,
            ordered: false,
            max_payload: 1 << 20,
            dead_letters: false,
            shared_between_processes: false,
            gap_signals: false,
        }
    }
    /// Sets [`Capabilities::durable`].
    pub fn durable(mut self, v: bool) -> Self {
        self.durable = v;
        self
    }
    /// Sets [`Capabilities::redelivers_on_crash`].
    pub fn redelivers_on_crash(mut self, v: bool) -> Self {
        self.redelivers_on_crash = v;
        self
    }
    /// Sets [`Capabilities::multi_level_wildcards`].
    pub fn multi_level_wildcards(mut self, v: bool) -> Self {
        self.multi_level_wildcards = v;
        self
    }
    /// Sets [`Capabilities::ordered`].
    pub fn ordered(mut self, v: bool) -> Self {
        self.ordered = v;
        self
    }
    /// Sets [`Capabilities::max_payload`].
    pub fn max_payload(mut self, v: usize) -> Self {
        self.max_payload = v;
        self
    }
    /// Sets [`Capabilities::dead_letters`].
    pub fn dead_letters(mut self, v: bool) -> Self {
        self.dead_letters = v;
        self
    }
    /// Sets [`Capabilities::shared_between_processes`].
    pub fn shared_between_processes(mut self, v: bool) -> Self {
        self.shared_between_processes = v;
        self
    }
    /// Sets [`Capabilities::gap_signals`].
    pub fn gap_signals(mut self, v: bool) -> Self {
        self.gap_signals = v;
        self
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::new()
    }
}

/// How a consumer takes work from a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// Most deliveries outstanding at once; the worker's concurrency. Default 16.
    pub prefetch: usize,
    /// How long a delivery may go without [`Delivery::keep_alive`] before a transport that
    /// reclaims idle work gives it to another consumer. Default 30 s.
    pub lease: Duration,
    /// Deliveries of one message after which the transport dead-letters it instead of
    /// delivering it again, where the transport counts deliveries. Default 5.
    pub max_deliveries: u32,
}

impl ConsumeOptions {
    /// The defaults.
    pub fn new() -> Self {
        ConsumeOptions {
            prefetch: 16,
            lease: Duration::from_secs(30),
            max_deliveries: 5,
        }
    }
    /// Sets [`ConsumeOptions::prefetch`] (at least 1).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }
    /// Sets [`ConsumeOptions::lease`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// Sets [`ConsumeOptions::max_deliveries`] (at least 1).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions::new()
    }
}

/// A received broadcast message.
#[derive(Clone, Debug)]
pub struct Message {
    /// The topic it was published on.
    pub topic: Topic,
    /// The payload as published.
    pub payload: Bytes,
}

/// A message that arrived on a topic the grammar refuses. Counted and logged by the core;
/// never handed to application code.
#[derive(Clone, Debug)]
pub struct InvalidMessage {
    /// The topic as received.
    pub raw_topic: String,
    /// The payload as received.
    pub payload: Bytes,
    /// Why the topic was refused.
    pub error: TopicError,
}

/// What a [`Subscription`] yields.
pub type Received = std::result::Result<Message, InvalidMessage>;

/// A live subscription. Dropping it unsubscribes.
pub struct Subscription {
    rx: mpsc::Receiver<Received>,
    gaps: Option<watch::Receiver<u64>>,
    _guard: Option<Box<dyn Any + Send + Sync>>,
}

impl Subscription {
    /// A subscription fed through `rx`; `guard` is dropped with it (adapters unsubscribe
    /// in its `Drop`).
    pub fn new(rx: mpsc::Receiver<Received>, guard: Option<Box<dyn Any + Send + Sync>>) -> Self {
        Subscription {
            rx,
            gaps: None,
            _guard: guard,
        }
    }

    /// Attaches a gap counter: the adapter increments it each time the subscription is
    /// live again after an interruption in which messages may have been lost (set once
    /// the subscription is back, so anything published afterwards arrives).
    pub fn with_gaps(mut self, gaps: watch::Receiver<u64>) -> Self {
        self.gaps = Some(gaps);
        self
    }

    /// The gap counter, if the adapter keeps one (see [`Capabilities::gap_signals`]).
    pub fn gaps(&self) -> Option<watch::Receiver<u64>> {
        self.gaps.clone()
    }

    /// The next message; `None` once the subscription or its transport is closed.
    pub async fn next(&mut self) -> Option<Received> {
        self.rx.recv().await
    }

    /// The next message if one is already here, without waiting: `None` if there is none
    /// yet, or the subscription ended.
    pub fn try_next(&mut self) -> Option<Received> {
        self.rx.try_recv().ok()
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// Why a message went to the dead-letter place.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The payload is not a valid envelope.
    Malformed(String),
    /// The topic is not valid.
    InvalidTopic(String),
    /// The payload is larger than the limit.
    Oversized {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The action does not belong where it arrived (e.g. a status on a work queue).
    UnexpectedAction(String),
    /// The task was dispatched or delivered too many times.
    AttemptsExhausted {
        /// How many.
        attempts: u32,
    },
    /// The handler failed on every allowed attempt.
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        error: String,
    },
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterReason::Malformed(e) => write!(f, "malformed payload: {e}"),
            DeadLetterReason::InvalidTopic(e) => write!(f, "invalid topic: {e}"),
            DeadLetterReason::Oversized { size, limit } => {
                write!(f, "payload of {size} bytes exceeds the limit of {limit}")
            }
            DeadLetterReason::UnexpectedAction(a) => write!(f, "unexpected action {a}"),
            DeadLetterReason::AttemptsExhausted { attempts } => {
                write!(f, "gave up after {attempts} attempts")
            }
            DeadLetterReason::RetriesExhausted { attempts, error } => {
                write!(f, "handler failed {attempts} times, last: {error}")
            }
        }
    }
}

/// A message that could not be handled, with the reason.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The topic it was on, in MQTT form (as received, if it did not parse).
    pub topic: String,
    /// The payload as received.
    pub payload: Bytes,
    /// Why it is dead.
    pub reason: DeadLetterReason,
}

/// The acknowledgement side of a [`Delivery`], implemented by each transport.
#[async_trait]
pub trait Acker: Send + Sync + fmt::Debug {
    /// The delivery was handled; the broker may forget it.
    async fn ack(&mut self) -> Result<()>;
    /// The delivery was not handled; `requeue` gives it back to the workgroup, otherwise it
    /// is dropped (or dead-lettered by a broker configured to).
    async fn nack(&mut self, requeue: bool) -> Result<()>;
    /// The delivery cannot be handled: store it with `letter`'s reason in the dead-letter
    /// place and remove it from the queue.
    async fn reject(&mut self, letter: DeadLetter) -> Result<()>;
    /// The handler is still working: keep the delivery from being reclaimed. The default
    /// does nothing, for transports that do not reclaim idle deliveries.
    async fn keep_alive(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A perform taken from a work queue, with the handle to acknowledge it.
///
/// Acknowledging consumes the delivery; if the acknowledgement fails, the error hands the
/// delivery back so it can be retried. A delivery dropped without any acknowledgement
/// counts as unhandled: it comes back where the transport redelivers.
#[derive(Debug)]
pub struct Delivery {
    /// The perform's topic; its tid identifies the task.
    pub topic: Topic,
    /// The payload as enqueued.
    pub payload: Bytes,
    /// How many times the transport delivered this message before, where it counts them
    /// (0 on a first delivery or when unknown).
    pub redeliveries: u32,
    acker: Box<dyn Acker>,
}

/// A failed acknowledgement, with the delivery to retry it.
#[derive(Debug, thiserror::Error)]
#[error("acknowledgement failed: {error}")]
pub struct AckError {
    /// The delivery, still unacknowledged.
    pub delivery: Box<Delivery>,
    /// What went wrong.
    #[source]
    pub error: Error,
}

impl Delivery {
    /// A delivery acknowledged through `acker`.
    pub fn new(topic: Topic, payload: Bytes, redeliveries: u32, acker: Box<dyn Acker>) -> Self {
        Delivery {
            topic,
            payload,
            redeliveries,
            acker,
        }
    }

    /// Acknowledges: the message was handled.
    pub async fn ack(mut self) -> Result<(), AckError> {
        match self.acker.ack().await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.failed(error)),
        }
    }

    /// Gives the message back (`requeue`) or drops it.
    pub async fn nack(mut self, requeue: bool) -> Result<(), AckError> {
        match self.acker.nack(requeue).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.failed(error)),
        }
    }

    /// Moves the message to the dead-letter place with `reason`.
    pub async fn reject(mut self, reason: DeadLetterReason) -> Result<(), AckError> {
        let letter = DeadLetter {
            topic: self.topic.to_string(),
            payload: self.payload.clone(),
            reason,
        };
        match self.acker.reject(letter).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.failed(error)),
        }
    }

    /// Tells the transport the handler is still working on it.
    pub async fn keep_alive(&mut self) -> Result<()> {
        self.acker.keep_alive().await
    }

    fn failed(self, error: Error) -> AckError {
        AckError {
            delivery: Box::new(self),
            error,
        }
    }
}

/// What a [`Consumer`] yields: a delivery, or a message the transport refused (its topic
/// did not parse) and has already moved to the dead-letter place.
pub type Consumed = std::result::Result<Delivery, InvalidMessage>;

/// A live consumer of a work queue. Dropping it stops consuming and gives back what it
/// had buffered.
pub struct Consumer {
    rx: mpsc::Receiver<Consumed>,
    guard: Option<Box<dyn Any + Send + Sync>>,
}

impl Consumer {
    /// A consumer fed through `rx`; `guard` is dropped with it (adapters stop consuming
    /// and give back unacknowledged work in its `Drop`). Deliveries still in `rx` then are
    /// given back with [`Delivery::nack`]`(true)`, so an adapter need not track which of
    /// its deliveries were handed out.
    pub fn new(rx: mpsc::Receiver<Consumed>, guard: Option<Box<dyn Any + Send + Sync>>) -> Self {
        Consumer { rx, guard }
    }

    /// The next delivery; `None` once the consumer or its transport is closed.
    pub async fn next(&mut self) -> Option<Consumed> {
        self.rx.recv().await
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Stop consuming first, so what is given back goes to the other consumers.
        drop(self.guard.take());
        self.rx.close();
        let mut buffered = Vec::new();
        while let Ok(consumed) = self.rx.try_recv() {
            if let Ok(delivery) = consumed {
                buffered.push(delivery);
            }
        }
        if buffered.is_empty() {
            return;
        }
        // Outside a runtime the deliveries are dropped, which their transport treats as
        // unacknowledged.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for delivery in buffered {
                    if let Err(e) = delivery.nack(true).await {
                        tracing::debug!(error = %e.error, "a buffered delivery was not given back");
                    }
                }
            });
        }
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}
