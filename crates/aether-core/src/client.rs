//! The client: performs tasks and follows them to exactly one outcome.
//!
//! Each perform gets a supervisor that watches the task's lease: if no worker accepts the
//! task, or the worker that has it stops sending heartbeats, within the lease, the client
//! sends the perform again with the same tid and `attempt + 1` (bounded, with backoff).
//! Workers drop tids they already completed, and the client surfaces the first outcome
//! only, so a task whose worker died is still completed exactly once as far as the caller
//! can see, on every transport.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::action::{Action, Status};
use crate::envelope::{Codec, Envelope, Header, empty_object, encode_raw};
use crate::error::{DecodeError, Error, Result};
use crate::node::{Aether, DEFAULT_CONTEXT};
use crate::state::{Applied, TaskEvent, TaskState};
use crate::stats::Counters;
use crate::topic::{Topic, TopicFilter, WorkQueue};
use crate::transport::{DeadLetter, DeadLetterReason, Received, SharedTransport, Subscription};

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
    pub fn task(&self, job: &str, task: &str) -> TaskBuilder<'_> {
        TaskBuilder {
            client: self,
            job: job.to_owned(),
            task: task.to_owned(),
            context: DEFAULT_CONTEXT.to_owned(),
            channel: String::new(),
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

/// A perform being described: context, channel, tid, deadline, headers, codec.
#[derive(Debug)]
#[must_use = "call .perform(&payload) to send it"]
pub struct TaskBuilder<'a> {
    client: &'a Client,
    job: String,
    task: String,
    context: String,
    channel: String,
    tid: Option<String>,
    deadline: Option<Duration>,
    headers: Option<BTreeMap<String, String>>,
    codec: Option<Codec>,
}

impl TaskBuilder<'_> {
    /// The context (fourth topic level). Default `x`.
    pub fn context(mut self, context: &str) -> Self {
        self.context = context.to_owned();
        self
    }
    /// The channel to send on. Default: the default channel.
    pub fn channel(mut self, channel: &str) -> Self {
        self.channel = channel.to_owned();
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
        let transport = node.transport(&self.channel)?.clone();
        let tid = match self.tid {
            Some(t) => t,
            None => new_tid(),
        };
        let topic = Topic::new(
            &config.union,
            &self.job,
            &self.task,
            &self.context,
            &tid,
            Action::Perform,
        )?;
        let codec = self.codec.unwrap_or(config.codec);
        let data = codec.to_vec(payload)?;
        let mut header = Header::new(Action::Perform, &config.host, &config.client_id);
        header.attempt = Some(1);
        header.lease = Some(config.lease.as_millis() as u64);
        header.deadline = self.deadline.map(|d| unix_ms() + d.as_millis() as u64);
        header.headers = self.headers;
        let bytes = encode_raw(codec, &header, &data);
        let limit = node.payload_limit(&transport);
        if bytes.len() > limit {
            return Err(Error::PayloadTooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let caps = transport.capabilities();
        // Before a worker accepts: wait on transports that keep the perform queued; chase it
        // on those that may have dropped it. After a worker accepted and promised
        // heartbeats: silence means the worker died or its completion was lost (a
        // subscriber reconnecting), and a redispatch recovers both (a worker that already
        // completed the tid repeats its completion), so that is on unless turned off.
        let redispatch = match config.redispatch {
            Some(on) => Redispatch {
                before_accept: on,
                after_accept: on,
            },
            None => Redispatch {
                before_accept: !caps.redelivers_on_crash,
                after_accept: true,
            },
        };
        let route = node
            .inner
            .routes
            .get(node, &self.channel, &transport, &topic)
            .await?;
        let shared = Arc::new(TaskShared::new(tid.clone(), config.progress_buffer));
        if !route.insert(&tid, shared.clone()) {
            return Err(Error::Config(format!(
                "task {tid} is already in flight from this node; tids must be unique"
            )));
        }
        if let Err(e) = node
            .timed("enqueue", transport.enqueue(&topic, bytes.clone()))
            .await
        {
            route.remove(&tid);
            return Err(e);
        }
        node.counters().performed.fetch_add(1, Ordering::Relaxed);
        let supervisor = Supervisor {
            node: node.clone(),
            transport: transport.clone(),
            route: route.clone(),
            shared: shared.clone(),
            topic: topic.clone(),
            codec,
            header,
            data,
            bytes,
            redispatch,
            deadline: self.deadline.map(|d| Instant::now() + d),
        };
        tokio::spawn(supervisor.run());
        Ok(TaskHandle {
            shared,
            topic,
            transport,
            node: node.clone(),
            codec,
        })
    }
}

/// 16 random hex digits. Python services use 8; aether uses more so tids of many
/// concurrent clients do not collide in workers' duplicate windows.
fn new_tid() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..16].to_owned()
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A progress report of a task.
#[derive(Clone, Debug)]
pub struct Progress {
    /// 0-100; 0 is the worker's acceptance.
    pub percent: u8,
    envelope: Envelope,
}

impl Progress {
    /// The data the worker sent with it.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        self.envelope.data()
    }
    /// The whole message.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
}

/// How a task ended, as stored until the handle asks.
#[derive(Clone, Debug)]
enum Outcome {
    Succeeded(Envelope),
    Failed(Envelope),
    Cancelled,
    DeadlineExceeded,
    Lost(u32),
    Closed,
}

impl Outcome {
    fn into_result(self, tid: &str) -> Result<Envelope> {
        let tid = tid.to_owned();
        match self {
            Outcome::Succeeded(env) => Ok(env),
            Outcome::Failed(env) => Err(Error::TaskFailed {
                tid,
                message: env
                    .header()
                    .error
                    .clone()
                    .unwrap_or_else(|| failure_message(&env)),
                data: env.data_value(),
            }),
            Outcome::Cancelled => Err(Error::Cancelled { tid }),
            Outcome::DeadlineExceeded => Err(Error::DeadlineExceeded { tid }),
            Outcome::Lost(attempts) => Err(Error::WorkerLost { tid, attempts }),
            Outcome::Closed => Err(Error::Closed),
        }
    }
}

/// A failure message for a completion without aether's `error` key (a Python worker's).
fn failure_message(env: &Envelope) -> String {
    match env.data_value() {
        serde_json::Value::Null => "failed".to_owned(),
        serde_json::Value::String(s) => s,
        serde_json::Value::Object(map) if map.is_empty() => "failed".to_owned(),
        other => other.to_string(),
    }
}

struct TaskInner {
    state: TaskState,
    progress: VecDeque<Progress>,
    outcome: Option<Outcome>,
    /// When the task last showed a sign of life, or was last dispatched.
    heard: Instant,
    /// Whether any worker reported on it since the last dispatch.
    seen: bool,
    /// The lease the worker that has it promised to heartbeat within.
    worker_lease: Option<Duration>,
    /// The handle was dropped.
    detached: bool,
    /// The worker whose statuses are counted, and how many arrived.
    counted: Option<(String, u32)>,
    /// A completion waiting for earlier statuses.
    parked: Option<Parked>,
}

struct TaskShared {
    tid: String,
    progress_cap: usize,
    inner: Mutex<TaskInner>,
    /// Wakes the handle's waiters: progress or outcome.
    wake: Notify,
    /// Wakes the supervisor: outcome, a held completion, acceptance (which changes the
    /// lease), or the handle dropped. Plain progress does not wake it: on its lease timer
    /// it re-reads when the task was last heard of.
    wake_supervisor: Notify,
}

impl TaskShared {
    fn new(tid: String, progress_cap: usize) -> TaskShared {
        TaskShared {
            tid,
            progress_cap: progress_cap.max(1),
            inner: Mutex::new(TaskInner {
                state: TaskState::Submitted,
                progress: VecDeque::new(),
                outcome: None,
                heard: Instant::now(),
                seen: false,
                worker_lease: None,
                detached: false,
                counted: None,
                parked: None,
            }),
            wake: Notify::new(),
            wake_supervisor: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TaskInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `f` returns `Some`, re-checking after every change.
    async fn wait_for<T>(&self, mut f: impl FnMut(&mut TaskInner) -> Option<T>) -> T {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = f(&mut self.lock()) {
                return v;
            }
            notified.await;
        }
    }

    /// Ends the task with `outcome` unless it already ended; returns whether it did.
    fn finish(&self, event: TaskEvent, outcome: Outcome, counters: &Counters) -> bool {
        let mut inner = self.lock();
        if inner.outcome.is_some() {
            return false;
        }
        if let Ok(Applied::Changed(s)) = inner.state.apply(event) {
            inner.state = s;
        }
        let counter = match &outcome {
            Outcome::Succeeded(_) => &counters.succeeded,
            Outcome::Failed(_) => &counters.failed,
            Outcome::Cancelled => &counters.cancelled,
            Outcome::DeadlineExceeded => &counters.deadline_exceeded,
            Outcome::Lost(_) | Outcome::Closed => &counters.lost,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        inner.outcome = Some(outcome);
        drop(inner);
        self.wake.notify_waiters();
        self.wake_supervisor.notify_one();
        true
    }

    /// Applies a status or complete from a worker.
    fn on_update(&self, env: Envelope, counters: &Counters) {
        let h = env.header();
        let event = match (h.action, h.status) {
            (Action::Status, _) => TaskEvent::Progress(h.progress),
            (Action::Complete, Status::Succeed) => TaskEvent::Succeeded,
            (Action::Complete, _) => TaskEvent::Failed,
            _ => return,
        };
        let mut inner = self.lock();
        inner.heard = Instant::now();
        let lease = h.lease.map(Duration::from_millis);
        let lease_changed = !inner.seen || (lease.is_some() && inner.worker_lease != lease);
        inner.seen = true;
        if lease.is_some() {
            inner.worker_lease = lease;
        }
        if lease_changed {
            self.wake_supervisor.notify_one();
        }
        if event.is_terminal() {
            // Statuses and completions may travel on different subscriptions: hold a
            // completion until the statuses its worker sent before it have arrived.
            let needed = h.seq.unwrap_or(0);
            let have = inner
                .counted
                .as_ref()
                .filter(|(w, _)| *w == h.client)
                .map_or(0, |c| c.1);
            if have < needed && inner.parked.is_none() && inner.outcome.is_none() {
                inner.parked = Some(Parked {
                    worker: h.client.clone(),
                    needed,
                    until: Instant::now() + PARK,
                    event,
                    env,
                });
                drop(inner);
                self.wake_supervisor.notify_one();
                return;
            }
            drop(inner);
            self.complete(event, env, counters);
            return;
        }
        match &mut inner.counted {
            Some((w, n)) if *w == h.client => *n += 1,
            counted => *counted = Some((h.client.clone(), 1)),
        }
        match inner.state.apply(event) {
            Ok(Applied::Changed(state)) => {
                inner.state = state;
                if inner.progress.len() >= self.progress_cap {
                    inner.progress.pop_front();
                    counters.progress_dropped.fetch_add(1, Ordering::Relaxed);
                }
                inner.progress.push_back(Progress {
                    percent: state.progress(),
                    envelope: env,
                });
            }
            Ok(Applied::Duplicate | Applied::Stale) => {
                counters.duplicate_updates.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(tid = %self.tid, error = %e, "late update ignored");
                counters.duplicate_updates.fetch_add(1, Ordering::Relaxed);
            }
        }
        let released = match (&inner.parked, &inner.counted) {
            (Some(p), Some((w, n))) if *w == p.worker && *n >= p.needed => inner.parked.take(),
            _ => None,
        };
        drop(inner);
        self.wake.notify_waiters();
        if let Some(p) = released {
            self.complete(p.event, p.env, counters);
        }
    }

    /// Ends the task with a worker's completion.
    fn complete(&self, event: TaskEvent, env: Envelope, counters: &Counters) {
        let outcome = if event == TaskEvent::Succeeded {
            Outcome::Succeeded(env)
        } else {
            Outcome::Failed(env)
        };
        if !self.finish(event, outcome, counters) {
            counters.duplicate_updates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Releases a held completion whose statuses did not all arrive in time.
    fn release_parked(&self, counters: &Counters) {
        let parked = self.lock().parked.take();
        if let Some(p) = parked {
            self.complete(p.event, p.env, counters);
        }
    }
}

/// How long a completion is held for statuses sent before it.
const PARK: Duration = Duration::from_millis(500);

/// A completion held until the statuses sent before it arrive.
struct Parked {
    worker: String,
    needed: u32,
    until: Instant,
    event: TaskEvent,
    env: Envelope,
}

/// A task in flight: its progress, its outcome, and the means to cancel it.
///
/// Dropping the handle does not cancel the task; the client still sees it through to an
/// outcome (redispatching if needed) while a lease or deadline applies.
pub struct TaskHandle {
    shared: Arc<TaskShared>,
    topic: Topic,
    transport: SharedTransport,
    node: Aether,
    codec: Codec,
}

impl TaskHandle {
    /// The task id.
    pub fn tid(&self) -> &str {
        self.topic.tid()
    }

    /// The perform's topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Where the task stands now.
    pub fn state(&self) -> TaskState {
        self.shared.lock().state
    }

    /// The next progress update, in order; `None` once the task has ended and every
    /// buffered update was taken. If updates are not taken, the oldest are dropped past
    /// [`Config::progress_buffer`](crate::Config::progress_buffer).
    pub async fn next_progress(&mut self) -> Option<Progress> {
        self.shared
            .wait_for(|inner| match inner.progress.pop_front() {
                Some(p) => Some(Some(p)),
                None if inner.outcome.is_some() => Some(None),
                None => None,
            })
            .await
    }

    /// Waits for the outcome and returns the completion message of a successful task.
    pub async fn outcome(&self) -> Result<Envelope> {
        let outcome = self.shared.wait_for(|inner| inner.outcome.clone()).await;
        outcome.into_result(&self.shared.tid)
    }

    /// Waits for the outcome and decodes a successful task's data as `R`.
    pub async fn result<R: DeserializeOwned>(self) -> Result<R> {
        let env = self.outcome().await?;
        env.data().map_err(Error::Decode)
    }

    /// Asks the worker to stop the task, and ends it here as cancelled (unless it already
    /// ended). The worker's handler sees the cancellation through its context.
    pub async fn cancel(&self) -> Result<()> {
        let config = self.node.config();
        let header = Header::new(Action::Cancel, &config.host, &config.client_id);
        let bytes = encode_raw(self.codec, &header, empty_object(self.codec));
        // Ended here first, so the worker's answer to the cancel cannot overtake it.
        self.shared.finish(
            TaskEvent::Cancelled,
            Outcome::Cancelled,
            self.node.counters(),
        );
        let topic = self.topic.with_action(Action::Cancel);
        self.node
            .timed("cancel", self.transport.publish(&topic, bytes))
            .await
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        self.shared.lock().detached = true;
        self.shared.wake_supervisor.notify_one();
    }
}

impl fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("topic", &self.topic)
            .field("state", &self.state())
            .finish()
    }
}

/// Follows one task until it ends: redispatches on lease expiry, enforces the deadline.
struct Supervisor {
    node: Aether,
    transport: SharedTransport,
    route: Arc<Route>,
    shared: Arc<TaskShared>,
    topic: Topic,
    codec: Codec,
    header: Header,
    data: Vec<u8>,
    bytes: bytes::Bytes,
    redispatch: Redispatch,
    deadline: Option<Instant>,
}

/// When a silent task is dispatched again.
#[derive(Clone, Copy, Debug)]
struct Redispatch {
    /// No worker accepted it within the lease.
    before_accept: bool,
    /// The worker that accepted it stopped heartbeating.
    after_accept: bool,
}

impl Supervisor {
    async fn run(mut self) {
        let node = self.node.clone();
        let config = node.config();
        let counters = node.counters();
        let mut attempt = 1u32;
        loop {
            let (lease_at, park_at) = {
                let inner = self.shared.lock();
                if inner.outcome.is_some() {
                    break;
                }
                let park_at = inner.parked.as_ref().map(|p| p.until);
                let lease_at = self.lease_deadline(&inner, config.lease);
                if inner.detached
                    && lease_at.is_none()
                    && self.deadline.is_none()
                    && park_at.is_none()
                {
                    break;
                }
                (lease_at, park_at)
            };
            // `notify_one` keeps a permit if the supervisor is not waiting yet.
            tokio::select! {
                _ = self.shared.wake_supervisor.notified() => {}
                _ = sleep_until_opt(park_at) => self.shared.release_parked(counters),
                _ = sleep_until_opt(self.deadline) => {
                    if self.shared.finish(TaskEvent::TimedOut, Outcome::DeadlineExceeded, counters) {
                        self.send_cancel().await;
                    }
                    break;
                }
                _ = sleep_until_opt(lease_at) => {
                    let now_due = self.lease_deadline(&self.shared.lock(), config.lease);
                    if now_due.is_some_and(|at| at > Instant::now()) {
                        // Heard of since the timer was set: sleep again.
                        continue;
                    }
                    if attempt >= config.max_attempts {
                        if self.shared.finish(TaskEvent::TimedOut, Outcome::Lost(attempt), counters) {
                            let letter = DeadLetter {
                                topic: self.topic.to_string(),
                                payload: self.bytes.clone(),
                                reason: DeadLetterReason::AttemptsExhausted { attempts: attempt },
                            };
                            self.node.dead_letter(&self.transport, letter).await;
                        }
                        break;
                    }
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(config.backoff.delay(attempt)) => {}
                        _ = sleep_until_opt(self.deadline) => continue,
                    }
                    if self.shared.lock().outcome.is_some() {
                        break;
                    }
                    self.header.attempt = Some(attempt);
                    self.bytes = encode_raw(self.codec, &self.header, &self.data);
                    {
                        let mut inner = self.shared.lock();
                        inner.heard = Instant::now();
                        inner.seen = false;
                        inner.worker_lease = None;
                    }
                    tracing::info!(topic = %self.topic, attempt, "lease expired; dispatching again");
                    counters.redispatched.fetch_add(1, Ordering::Relaxed);
                    let resend = self.transport.enqueue(&self.topic, self.bytes.clone());
                    if let Err(e) = self.node.timed("enqueue", resend).await {
                        tracing::warn!(topic = %self.topic, error = %e, "redispatch failed");
                    }
                }
            }
        }
        self.route.remove(&self.shared.tid);
    }

    /// When the task's lease runs out if nothing more is heard, where it is watched.
    fn lease_deadline(&self, inner: &TaskInner, lease: Duration) -> Option<Instant> {
        match (inner.seen, inner.worker_lease) {
            (false, _) if self.redispatch.before_accept => Some(inner.heard + lease),
            (true, Some(l)) if self.redispatch.after_accept => Some(inner.heard + l.max(lease)),
            _ => None,
        }
    }

    async fn send_cancel(&self) {
        let config = self.node.config();
        let header = Header::new(Action::Cancel, &config.host, &config.client_id);
        let bytes = encode_raw(self.codec, &header, empty_object(self.codec));
        if let Err(e) = self
            .transport
            .publish(&self.topic.with_action(Action::Cancel), bytes)
            .await
        {
            tracing::debug!(topic = %self.topic, error = %e, "cancel after deadline not sent");
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A route, created once by the first perform that needs it.
type RouteCell = Arc<OnceCell<Arc<Route>>>;

/// The subscriptions a node's clients share per (channel, union, job, task, context):
/// channel, then `union/job/task/context`, so a lookup allocates nothing.
#[derive(Default)]
pub(crate) struct Routes {
    map: Mutex<HashMap<String, HashMap<Box<str>, RouteCell>>>,
}

impl Routes {
    async fn get(
        &self,
        node: &Aether,
        channel: &str,
        transport: &SharedTransport,
        topic: &Topic,
    ) -> Result<Arc<Route>> {
        let prefix = topic.queue_prefix();
        let cell = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            let routes = match map.get_mut(channel) {
                Some(r) => r,
                None => map.entry(channel.to_owned()).or_default(),
            };
            match routes.get(prefix) {
                Some(cell) => cell.clone(),
                None => routes.entry(prefix.into()).or_default().clone(),
            }
        };
        let route = cell
            .get_or_try_init(|| {
                let start = async {
                    let queue = WorkQueue::of_topic(topic, "_")?;
                    Route::start(node, transport, &queue).await
                };
                node.timed("subscribe", start)
            })
            .await?;
        if route.is_closed() {
            // Its subscriptions ended (transport closed): forget it so a later call retries.
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(routes) = map.get_mut(channel) {
                routes.remove(prefix);
            }
            return Err(Error::Closed);
        }
        Ok(route.clone())
    }
}

/// Routes status and complete messages of one (union, job, task, context) to the tasks.
pub(crate) struct Route {
    tasks: Mutex<HashMap<String, Arc<TaskShared>>>,
    closed: std::sync::atomic::AtomicBool,
    routers: Vec<JoinHandle<()>>,
}

impl Route {
    async fn start(
        node: &Aether,
        transport: &SharedTransport,
        queue: &WorkQueue,
    ) -> Result<Arc<Route>> {
        let filters: [TopicFilter; 2] =
            [queue.filter(Action::Status), queue.filter(Action::Complete)];
        let mut subs = Vec::with_capacity(2);
        for f in &filters {
            subs.push(transport.subscribe(f).await?);
        }
        let limit = node.payload_limit(transport);
        Ok(Arc::new_cyclic(|weak: &Weak<Route>| Route {
            tasks: Mutex::new(HashMap::new()),
            closed: Default::default(),
            routers: subs
                .into_iter()
                .map(|sub| tokio::spawn(route_loop(weak.clone(), node.clone(), sub, limit)))
                .collect(),
        }))
    }

    /// Adds a task; false if its tid is already routed here.
    fn insert(&self, tid: &str, task: Arc<TaskShared>) -> bool {
        match self.lock().entry(tid.to_owned()) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(task);
                true
            }
        }
    }

    fn remove(&self, tid: &str) {
        self.lock().remove(tid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TaskShared>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        for r in &self.routers {
            r.abort();
        }
    }
}

async fn route_loop(route: Weak<Route>, node: Aether, mut sub: Subscription, limit: usize) {
    let counters = node.counters();
    while let Some(received) = sub.next().await {
        let Some(route) = route.upgrade() else { return };
        let Some(msg) = accept_broadcast(received, limit, counters) else {
            continue;
        };
        let task = route.lock().get(msg.0.tid()).cloned();
        if let Some(task) = task {
            task.on_update(msg.1, counters);
        }
    }
    if let Some(route) = route.upgrade() {
        route.closed.store(true, Ordering::Release);
        let tasks: Vec<_> = route.lock().drain().map(|(_, t)| t).collect();
        for t in tasks {
            t.finish(TaskEvent::TimedOut, Outcome::Closed, counters);
        }
    }
}

/// Checks a broadcast message: topic, size, envelope. Bad ones are counted and dropped.
pub(crate) fn accept_broadcast(
    received: Received,
    limit: usize,
    counters: &Counters,
) -> Option<(Topic, Envelope)> {
    let msg = match received {
        Ok(msg) => msg,
        Err(invalid) => {
            counters.invalid_topic.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %invalid.raw_topic, error = %invalid.error, "message on an invalid topic dropped");
            return None;
        }
    };
    if msg.payload.len() > limit {
        counters.oversized.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(topic = %msg.topic, size = msg.payload.len(), limit, "oversized message dropped");
        return None;
    }
    match Envelope::decode(msg.payload) {
        Ok(env) if env.header().action == msg.topic.action() => Some((msg.topic, env)),
        Ok(env) => {
            counters.unexpected_action.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %msg.topic, action = %env.header().action, "action does not match the topic; dropped");
            None
        }
        Err(e) => {
            let counter = match e {
                DecodeError::UnknownAction(_) => &counters.unknown_action,
                _ => &counters.malformed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %msg.topic, error = %e, "malformed message dropped");
            None
        }
    }
}
