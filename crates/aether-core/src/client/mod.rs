//! The client: performs tasks and follows them to exactly one outcome.
//!
//! Each route (the replies of one work queue) has a supervisor that watches its tasks'
//! leases: if no worker accepts a task, or the worker that has it stops sending heartbeats, within the lease, the client
//! sends the perform again with the same tid and `attempt + 1` (bounded, with backoff),
//! where the transport would not hand the task to another worker by itself.
//! Workers drop tids they already completed, and the client surfaces the first outcome
//! only, so a task whose worker died is still completed exactly once as far as the caller
//! can see, on every transport.
//!
//! Inside: what happens to a task is decided by its lifecycle (`lifecycle.rs`), a pure
//! tracker of events in and effects out, tested as tables. The route feeds it replies and
//! gaps, the handle its cancel and drop, and the route's supervisor (`supervisor.rs`)
//! only keeps the timers of all its tasks and carries out what needs I/O.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tracing::Instrument;

use crate::action::Action;
use crate::envelope::{Codec, Header, encode_as, unix_ms};
use crate::error::{Error, Result};
use crate::node::{Aether, Config, DEFAULT_CONTEXT};
use crate::observe;
use crate::topic::Topic;
use crate::transport::Capabilities;

mod handle;
mod lifecycle;
mod route;
mod shared;
mod supervisor;

pub use handle::{Progress, TaskHandle};
use lifecycle::{Event, Policy, Redispatch};
pub(crate) use route::Routes;
use shared::{Resend, TaskShared};

/// Performs tasks. Cheap to clone.
///
/// ```
/// # async fn demo(aether: aether_core::Aether) -> aether_core::Result<()> {
/// use std::time::Duration;
///
/// let client = aether.client();
/// let mut task = client
///     .task("math", "add")
///     .deadline(Duration::from_secs(5))
///     .perform(&(2, 3))
///     .await?;
/// while let Some(p) = task.next_progress().await {
///     println!("{}%", p.percent);
/// }
/// let sum: i32 = task.result().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    node: Aether,
}

impl Client {
    pub(crate) fn new(node: Aether) -> Client {
        Client { node }
    }

    /// Starts describing a perform of `task` in `job` (context `x`, default channel).
    pub fn task<'a>(&'a self, job: &'a str, task: &'a str) -> TaskBuilder<'a> {
        TaskBuilder {
            client: self,
            job,
            task,
            context: DEFAULT_CONTEXT,
            channel: "",
            tid: None,
            deadline: None,
            headers: None,
            codec: None,
        }
    }

    /// Performs `task` of `job` in `context` with `payload` on the default channel.
    pub async fn perform<P: Serialize + ?Sized>(
        &self,
        job: &str,
        task: &str,
        context: &str,
        payload: &P,
    ) -> Result<TaskHandle> {
        self.task(job, task).context(context).perform(payload).await
    }

    /// The node this client belongs to.
    pub fn node(&self) -> &Aether {
        &self.node
    }
}

/// A perform being described: context, channel, tid, deadline, headers, codec. It
/// borrows the names it is given until it performs.
#[derive(Debug)]
#[must_use = "call .perform(&payload) to send it"]
pub struct TaskBuilder<'a> {
    client: &'a Client,
    job: &'a str,
    task: &'a str,
    context: &'a str,
    channel: &'a str,
    tid: Option<String>,
    deadline: Option<Duration>,
    headers: Option<BTreeMap<String, String>>,
    codec: Option<Codec>,
}

impl<'a> TaskBuilder<'a> {
    /// The context (fourth topic level). Default `x`.
    pub fn context(mut self, context: &'a str) -> Self {
        self.context = context;
        self
    }
    /// The channel to send on. Default: the default channel.
    pub fn channel(mut self, channel: &'a str) -> Self {
        self.channel = channel;
        self
    }
    /// The task id. Default: 16 random hex digits.
    pub fn tid(mut self, tid: &str) -> Self {
        self.tid = Some(tid.to_owned());
        self
    }
    /// Gives up (and cancels the task) if it has not completed this long after sending.
    /// Default: no deadline.
    pub fn deadline(mut self, after: Duration) -> Self {
        self.deadline = Some(after);
        self
    }
    /// Adds a string header, e.g. `traceparent`.
    pub fn header(mut self, key: &str, value: &str) -> Self {
        self.headers
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }
    /// The codec of this perform. Default: the node's.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// Sends the perform. Returns once the transport has accepted it; the task's progress
    /// and outcome come through the returned handle.
    pub async fn perform<P: Serialize + ?Sized>(self, payload: &P) -> Result<TaskHandle> {
        let node = &self.client.node;
        let config = node.config();
        let transport = node.transport(self.channel)?.clone();
        let tid = match self.tid {
            Some(t) => t,
            None => new_tid(),
        };
        let topic = Topic::new(
            &config.union,
            self.job,
            self.task,
            self.context,
            &tid,
            Action::Perform,
        )?;
        let span = observe::perform_span(transport.name(), &topic);
        let mut headers = self.headers;
        observe::inject(&span, &mut headers);
        let caps = transport.capabilities();
        let redispatch = redispatch(config, &caps);
        let codec = self.codec.unwrap_or(config.codec);
        let data = codec.to_vec(payload)?;
        let header = perform_header(config, redispatch, &caps, self.deadline, headers);
        let bytes = encode_as(codec, &header, config.sender(), &data);
        let limit = node.payload_limit(&transport);
        if bytes.len() > limit {
            return Err(Error::PayloadTooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let route = node
            .inner
            .routes
            .get(node, self.channel, &transport, &topic)
            .await?;
        let policy = Policy {
            lease: config.lease,
            max_attempts: config.max_attempts,
            backoff: config.backoff,
            redispatch,
            deadline: self.deadline.map(|d| shared::now() + d),
        };
        let resend = Resend {
            topic: topic.clone(),
            codec,
            header,
            data,
            bytes: bytes.clone(),
        };
        let shared = TaskShared::new(
            tid.as_str().into(),
            route.next_id(),
            config.progress_buffer,
            policy,
            route.metrics.clone(),
            resend,
        );
        let shared = Arc::new(shared);
        if !route.insert(shared.clone()) {
            return Err(Error::DuplicateTid { tid });
        }
        if let Err(e) = node
            .timed("enqueue", transport.enqueue(&topic, bytes))
            .instrument(span.clone())
            .await
        {
            observe::failed(&span, observe::error_type(&e));
            route.remove(&tid);
            return Err(e);
        }
        let counters = node.counters();
        route.apply(&shared, Event::Sent { gaps: route.gaps() }, counters);
        counters.performed.fetch_add(1, Ordering::Relaxed);
        route.metrics.performed.increment(1);
        Ok(TaskHandle {
            shared,
            route,
            topic,
            transport,
            node: node.clone(),
            codec,
        })
    }
}

/// When a silent task is dispatched again, by the node's setting or else by what the
/// transport promises.
///
/// Before a worker accepts: wait on transports that keep the perform queued; chase it on
/// those that may have dropped it. After a worker accepted and promised heartbeats,
/// silence means the worker died or its completion was lost (a subscriber reconnecting).
/// Where the transport redelivers a dead worker's tasks and reports the gaps in which
/// replies were lost, both are recovered without the lease, and a redispatch beside the
/// transport's redelivery would run the task twice; elsewhere the lease redispatch
/// recovers them (a worker that already completed the tid repeats its completion).
fn redispatch(config: &Config, caps: &Capabilities) -> Redispatch {
    match config.redispatch {
        Some(on) => Redispatch {
            before_accept: on,
            after_accept: on,
            on_gap: on,
        },
        None => Redispatch {
            before_accept: !caps.redelivers_on_crash || !caps.durable,
            after_accept: !(caps.redelivers_on_crash && caps.gap_signals),
            on_gap: true,
        },
    }
}

/// A perform's header: the first attempt, the client's lease, the deadline, the caller's
/// headers, and how long the acceptance may be held back.
fn perform_header(
    config: &Config,
    redispatch: Redispatch,
    caps: &Capabilities,
    deadline: Option<Duration>,
    headers: Option<BTreeMap<String, String>>,
) -> Header {
    // The host and client id are the node's, written at encoding.
    let mut header = Header::new(Action::Perform, "", "");
    header.attempt = Some(1);
    header.lease = Some(config.lease.as_millis() as u64);
    // A held-back acceptance is safe only where a lost completion of a task never
    // accepted is recovered: where the client chases a task it has not seen accepted
    // (as a lost perform), or where the transport says when broadcasts may have been
    // missed (the route dispatches again what it has not heard of). Elsewhere the
    // acceptance is what arms that recovery, so it is asked for at once.
    if redispatch.before_accept || (redispatch.on_gap && caps.gap_signals) {
        header.defer = Some(config.defer_accept.as_millis() as u64).filter(|ms| *ms > 0);
    }
    let now = unix_ms();
    header.sent = Some(now);
    header.deadline = deadline.map(|d| now + d.as_millis() as u64);
    header.headers = headers;
    header
}

/// 16 random hex digits. Python services use 8; aether uses more so tids of many
/// concurrent clients do not collide in workers' duplicate windows.
///
/// From a per-thread splitmix64 sequence seeded once from the OS's random source: a
/// perform makes no system call for its tid, and a thread's tids never repeat (splitmix64
/// is a bijection of a counter), while other threads and processes start elsewhere.
fn new_tid() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    let mut z = STATE.with(|s| {
        let next = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(next);
        next
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // `format!("{z:016x}")`, without the formatting machinery.
    (0..16)
        .rev()
        .map(|i| char::from(b"0123456789abcdef"[(z >> (4 * i)) as usize & 0xf]))
        .collect()
}
