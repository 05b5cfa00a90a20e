//! The worker: takes performs from work queues and runs handlers on them.
//!
//! For each perform a worker: checks size, envelope and deadline (bad input is counted and
//! dead-lettered, never fatal); drops tids it already completed or is running; acknowledges
//! with progress 0; runs the handler with a concurrency limit, heartbeats while it runs, and
//! watches for cancellation; completes the task as succeeded or failed (an `Err` or a panic
//! fails it with the message, and the worker keeps serving); then acknowledges the delivery.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::action::Action;
use crate::client::{accept_broadcast, unix_ms};
use crate::context::{ContextInner, Reporter, TaskContext};
use crate::envelope::{Codec, Envelope, Header, empty_object, encode_raw};
use crate::error::{BoxError, DecodeError, Error, Result};
use crate::node::{Aether, Backoff};
use crate::topic::{DEFAULT_WORKGROUP, Topic, WorkQueue};
use crate::transport::{
    ConsumeOptions, Consumer, DeadLetterReason, Delivery, SharedTransport, Subscription,
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Encodes a handler's result data in the codec the perform came in.
pub(crate) type Produce = Box<dyn FnOnce(Codec) -> Result<Vec<u8>> + Send>;

/// A failed handler run: the message, and data for the completion if the handler gave any.
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) data: Option<Produce>,
}

impl Failure {
    pub(crate) fn message(message: String) -> Failure {
        Failure {
            message,
            data: None,
        }
    }
}

/// A handler with its types erased.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(&self, ctx: TaskContext, env: Envelope) -> BoxFuture<Result<Produce, Failure>>;
}

struct FnHandler<F, P, R, E, Fut> {
    f: F,
    #[allow(clippy::type_complexity)]
    _types: std::marker::PhantomData<fn(P) -> (R, E, Fut)>,
}

impl<F, P, R, E, Fut> Handler for FnHandler<F, P, R, E, Fut>
where
    F: Fn(TaskContext, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    P: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    fn call(&self, ctx: TaskContext, env: Envelope) -> BoxFuture<Result<Produce, Failure>> {
        let payload = match env.data::<P>() {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("payload does not fit the handler: {e}");
                return Box::pin(async move { Err(Failure::message(msg)) });
            }
        };
        let fut = (self.f)(ctx, payload);
        Box::pin(async move {
            match fut.await {
                Ok(r) => Ok(Box::new(move |codec: Codec| codec.to_vec(&r)) as Produce),
                Err(e) => Err(Failure::message(e.into().to_string())),
            }
        })
    }
}

/// Retries of a failed handler inside the worker (opt-in). When every attempt fails the task
/// completes as failed and its perform goes to the dead-letter place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Handler runs in all, at least 1.
    pub max_attempts: u32,
    /// Delay between runs.
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// `max_attempts` runs with `backoff` between them.
    pub fn new(max_attempts: u32, backoff: Backoff) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            backoff,
        }
    }
}

struct Registration {
    queue: WorkQueue,
    handler: Arc<dyn Handler>,
}

/// Builds a [`Worker`]: its workgroup, concurrency, channel and handlers.
#[must_use = "call .start() to run the worker"]
pub struct WorkerBuilder {
    node: Aether,
    channel: String,
    workgroup: String,
    concurrency: usize,
    retry: Option<RetryPolicy>,
    cancel_grace: Duration,
    max_deliveries: u32,
    announce: bool,
    handlers: Vec<(String, String, String, Arc<dyn Handler>)>,
}

impl WorkerBuilder {
    pub(crate) fn new(node: Aether) -> Self {
        WorkerBuilder {
            node,
            channel: String::new(),
            workgroup: DEFAULT_WORKGROUP.to_owned(),
            concurrency: 16,
            retry: None,
            cancel_grace: Duration::from_secs(5),
            max_deliveries: 5,
            announce: true,
            handlers: Vec::new(),
        }
    }

    /// The workgroup: each task goes to one worker of each workgroup. Default `workgroup`,
    /// the name Python AetherMagic workers use, so aether workers share their load.
    pub fn workgroup(mut self, name: &str) -> Self {
        self.workgroup = name.to_owned();
        self
    }

    /// Tasks run at once per handler; also the transport prefetch. Default 16.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The channel to consume from. Default: the default channel.
    pub fn channel(mut self, name: &str) -> Self {
        self.channel = name.to_owned();
        self
    }

    /// Retries a failed handler inside the worker. Default: no retries.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// How long a cancelled handler may take to return before it is aborted. Default 5 s.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Deliveries of one perform (counted by the transport) after which it is
    /// dead-lettered instead of run again: a poison message that crashes workers stops
    /// here. Default 5.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// Whether to publish `online` and `idle` announcements at start. Default true.
    pub fn announce(mut self, on: bool) -> Self {
        self.announce = on;
        self
    }

    /// Registers `handler` for `task` of `job` in `context`. The handler gets the task's
    /// context and its payload decoded as `P`; its `Ok` value is the result, its `Err` (or
    /// a panic) fails the task with the error's message.
    pub fn handle<P, R, E, F, Fut>(
        mut self,
        job: &str,
        task: &str,
        context: &str,
        handler: F,
    ) -> Self
    where
        F: Fn(TaskContext, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let h = FnHandler {
            f: handler,
            _types: std::marker::PhantomData,
        };
        self.handlers.push((
            job.to_owned(),
            task.to_owned(),
            context.to_owned(),
            Arc::new(h),
        ));
        self
    }

    pub(crate) fn handle_erased(
        mut self,
        job: &str,
        task: &str,
        context: &str,
        handler: Arc<dyn Handler>,
    ) -> Self {
        self.handlers
            .push((job.to_owned(), task.to_owned(), context.to_owned(), handler));
        self
    }

    /// Checks the configuration against the transport, subscribes, and starts serving.
    pub async fn start(self) -> Result<Worker> {
        if self.handlers.is_empty() {
            return Err(Error::Config("a worker needs at least one handler".into()));
        }
        if self.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        let transport = self.node.transport(&self.channel)?.clone();
        let config = self.node.config();
        let mut regs = Vec::new();
        for (job, task, context, handler) in self.handlers {
            let queue = WorkQueue::new(&config.union, &job, &task, &context, &self.workgroup)?;
            if regs.iter().any(|r: &Registration| r.queue == queue) {
                return Err(Error::Config(format!("two handlers for {queue}")));
            }
            regs.push(Registration { queue, handler });
        }
        let (stop_tx, _) = watch::channel(false);
        let (kill_tx, _) = watch::channel(Kill::No);
        let shared = Arc::new(WorkerShared {
            limit: self.node.payload_limit(&transport),
            node: self.node.clone(),
            transport: transport.clone(),
            retry: self.retry,
            cancel_grace: self.cancel_grace,
            max_deliveries: self.max_deliveries,
            stop: stop_tx,
            kill: kill_tx,
            inflight: Mutex::new(HashMap::new()),
            done: Mutex::new(DedupWindow::new(config.dedup_window)),
            running: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        let mut loops = Vec::new();
        for reg in regs {
            let options = ConsumeOptions::new()
                .prefetch(self.concurrency)
                .lease(config.lease)
                .max_deliveries(self.max_deliveries);
            let cancels = transport
                .subscribe(&reg.queue.filter(Action::Cancel))
                .await?;
            let consumer = transport.consume(&reg.queue, options).await?;
            let reg = Arc::new(reg);
            loops.push(tokio::spawn(cancel_loop(shared.clone(), cancels)));
            loops.push(tokio::spawn(consume_loop(
                shared.clone(),
                reg.clone(),
                consumer,
                Arc::new(Semaphore::new(self.concurrency)),
            )));
            if self.announce {
                announce_idle(&self.node, &transport, &reg.queue).await?;
            }
        }
        if self.announce {
            announce_online(&self.node, &transport).await?;
        }
        Ok(Worker {
            shared,
            loops,
            finished: false,
        })
    }
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("channel", &self.channel)
            .field("workgroup", &self.workgroup)
            .field("concurrency", &self.concurrency)
            .field("handlers", &self.handlers.len())
            .finish_non_exhaustive()
    }
}

async fn announce_online(node: &Aether, transport: &SharedTransport) -> Result<()> {
    let c = node.config();
    let topic = Topic::new(
        &c.union,
        "system",
        "online",
        &c.host,
        &c.client_id,
        Action::Online,
    )?;
    let header = Header::new(Action::Online, &c.host, &c.client_id);
    transport
        .publish(&topic, encode_raw(Codec::Json, &header, b"{}"))
        .await
}

async fn announce_idle(
    node: &Aether,
    transport: &SharedTransport,
    queue: &WorkQueue,
) -> Result<()> {
    let c = node.config();
    let tid = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let header = Header::new(Action::Idle, &c.host, &c.client_id);
    transport
        .publish(
            &queue.topic(tid, Action::Idle)?,
            encode_raw(Codec::Json, &header, b"{}"),
        )
        .await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kill {
    No,
    /// Shutdown grace expired: hand unfinished deliveries back.
    Requeue,
    /// Crash: drop everything unacknowledged.
    Abort,
}

struct WorkerShared {
    node: Aether,
    transport: SharedTransport,
    limit: usize,
    retry: Option<RetryPolicy>,
    cancel_grace: Duration,
    max_deliveries: u32,
    stop: watch::Sender<bool>,
    kill: watch::Sender<Kill>,
    /// Cancel switches of the tasks running here, by tid.
    inflight: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Recently completed (or cancelled) `client/tid`s, with the completion to repeat.
    done: Mutex<DedupWindow>,
    running: AtomicUsize,
    idle: Notify,
}

/// A bounded memory of completed tasks: the oldest are forgotten past `cap` entries, and
/// the oldest completions' bytes are dropped (the tid is still remembered) past
/// [`CACHED_BYTES`].
struct DedupWindow {
    map: HashMap<String, Option<Bytes>>,
    order: VecDeque<String>,
    cap: usize,
    bytes: usize,
    /// Keys whose completion is still cached, oldest first.
    cached: VecDeque<String>,
}

/// Total completion bytes a worker keeps to answer repeated performs.
const CACHED_BYTES: usize = 16 << 20;

impl DedupWindow {
    fn new(cap: usize) -> Self {
        DedupWindow {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            bytes: 0,
            cached: VecDeque::new(),
        }
    }

    fn get(&self, key: &str) -> Option<&Option<Bytes>> {
        self.map.get(key)
    }

    fn insert(&mut self, key: String, completion: Option<Bytes>) {
        let completion = completion.filter(|b| b.len() <= CACHED_BYTES / 16);
        if let Some(b) = &completion {
            self.bytes += b.len();
            self.cached.push_back(key.clone());
        }
        match self.map.insert(key.clone(), completion) {
            None => self.order.push_back(key),
            Some(Some(old)) => self.bytes -= old.len(),
            Some(None) => {}
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front()
                && let Some(Some(b)) = self.map.remove(&old)
            {
                self.bytes -= b.len();
            }
        }
        while self.bytes > CACHED_BYTES {
            let Some(old) = self.cached.pop_front() else {
                break;
            };
            if let Some(slot) = self.map.get_mut(&old)
                && let Some(b) = slot.take()
            {
                self.bytes -= b.len();
            }
        }
        // `cached` may hold keys already evicted or replaced; keep it from growing past
        // the window.
        while self.cached.len() > 2 * self.cap {
            self.cached.pop_front();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decrements the running count when a task ends, however it ends.
struct RunningGuard(Arc<WorkerShared>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

async fn consume_loop(
    shared: Arc<WorkerShared>,
    reg: Arc<Registration>,
    mut consumer: Consumer,
    sem: Arc<Semaphore>,
) {
    let mut stop = shared.stop.subscribe();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = stop.changed() => break,
        };
        let item = tokio::select! {
            item = consumer.next() => item,
            _ = stop.changed() => break,
        };
        match item {
            None => {
                tracing::warn!(queue = %reg.queue, "consumer ended: the transport was closed");
                break;
            }
            Some(Err(invalid)) => {
                shared
                    .node
                    .counters()
                    .invalid_topic
                    .fetch_add(1, Ordering::Relaxed);
                shared
                    .node
                    .counters()
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %invalid.raw_topic, error = %invalid.error, "perform on an invalid topic dead-lettered by the transport");
            }
            Some(Ok(delivery)) => {
                shared.running.fetch_add(1, Ordering::AcqRel);
                let guard = RunningGuard(shared.clone());
                let shared = shared.clone();
                let reg = reg.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    let _permit = permit;
                    process(shared, reg, delivery).await;
                });
            }
        }
    }
}

async fn cancel_loop(shared: Arc<WorkerShared>, mut sub: Subscription) {
    while let Some(received) = sub.next().await {
        let Some((topic, env)) = accept_broadcast(received, shared.limit, shared.node.counters())
        else {
            continue;
        };
        let tid = topic.tid();
        if let Some(tx) = lock(&shared.inflight).get(tid) {
            let _ = tx.send(true);
        }
        // A perform that arrives after its cancel is dropped as a duplicate.
        lock(&shared.done).insert(format!("{}/{tid}", env.header().client), None);
    }
}

/// Settles a delivery, logging a failed acknowledgement (the broker will redeliver).
async fn settle(delivery: Delivery, how: Settle) {
    let topic = delivery.topic.clone();
    let result = match how {
        Settle::Ack => delivery.ack().await,
        Settle::Requeue => delivery.nack(true).await,
        Settle::Reject(reason) => delivery.reject(reason).await,
    };
    if let Err(e) = result {
        tracing::warn!(%topic, error = %e.error, "acknowledgement failed; the broker may deliver it again");
    }
}

enum Settle {
    Ack,
    Requeue,
    Reject(DeadLetterReason),
}

/// How a handler run ended.
enum RunEnd {
    Done(Result<Produce, Failure>),
    Cancelled,
    DeadlineExceeded,
    Killed(Kill),
}

async fn process(shared: Arc<WorkerShared>, reg: Arc<Registration>, mut delivery: Delivery) {
    let node = &shared.node;
    let counters = node.counters();
    let config = node.config();
    counters.received.fetch_add(1, Ordering::Relaxed);

    if delivery.payload.len() > shared.limit {
        counters.oversized.fetch_add(1, Ordering::Relaxed);
        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let size = delivery.payload.len();
        let reason = DeadLetterReason::Oversized {
            size,
            limit: shared.limit,
        };
        return settle(delivery, Settle::Reject(reason)).await;
    }
    let env = match Envelope::decode(delivery.payload.clone()) {
        Ok(env) if env.header().action == Action::Perform => env,
        Ok(env) => {
            counters.unexpected_action.fetch_add(1, Ordering::Relaxed);
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            let reason = DeadLetterReason::UnexpectedAction(env.header().action.to_string());
            return settle(delivery, Settle::Reject(reason)).await;
        }
        Err(e) => {
            let counter = match e {
                DecodeError::UnknownAction(_) => &counters.unknown_action,
                _ => &counters.malformed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %delivery.topic, error = %e, "undecodable perform dead-lettered");
            return settle(
                delivery,
                Settle::Reject(DeadLetterReason::Malformed(e.to_string())),
            )
            .await;
        }
    };
    let header = env.header();
    let tid = delivery.topic.tid().to_owned();
    let done_key = format!("{}/{tid}", header.client);
    // Heartbeats must satisfy both the client's lease and the transport's reclaim of idle
    // work, which uses this worker's lease.
    let lease = header
        .lease
        .map(Duration::from_millis)
        .unwrap_or(config.lease)
        .min(config.lease)
        .max(Duration::from_millis(30));
    let reporter = Arc::new(Reporter {
        transport: shared.transport.clone(),
        topic: delivery.topic.clone(),
        codec: env.codec(),
        host: config.host.clone(),
        client: config.client_id.clone(),
        lease,
        limit: shared.limit,
        seq: Default::default(),
    });

    // Already completed here: repeat the completion, if kept, and drop the perform.
    let repeat = lock(&shared.done).get(&done_key).cloned();
    if let Some(completion) = repeat {
        counters.duplicate_performs.fetch_add(1, Ordering::Relaxed);
        if let Some(bytes) = completion {
            let _ = reporter.send(Action::Complete, bytes).await;
        }
        return settle(delivery, Settle::Ack).await;
    }
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let running_here = {
        let mut inflight = lock(&shared.inflight);
        let present = inflight.contains_key(&tid);
        if !present {
            inflight.insert(tid.clone(), cancel_tx);
        }
        present
    };
    if running_here {
        counters.duplicate_performs.fetch_add(1, Ordering::Relaxed);
        return settle(delivery, Settle::Ack).await;
    }
    let _inflight = InflightGuard(&shared, &tid);

    if let Some(deadline) = header.deadline
        && deadline <= unix_ms()
    {
        // The client has reported the deadline itself; nobody waits for a completion.
        counters.expired.fetch_add(1, Ordering::Relaxed);
        lock(&shared.done).insert(done_key, None);
        return settle(delivery, Settle::Ack).await;
    }
    if delivery.redeliveries >= shared.max_deliveries {
        let attempts = delivery.redeliveries + 1;
        let bytes = reporter.failure_bytes(&format!("delivered {attempts} times; dead-lettered"));
        let _ = reporter.send(Action::Complete, bytes).await;
        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        return settle(
            delivery,
            Settle::Reject(DeadLetterReason::AttemptsExhausted { attempts }),
        )
        .await;
    }

    // Accept: progress 0, with the lease this worker heartbeats within.
    if let Err(e) = reporter.status(0, empty_object(reporter.codec)).await {
        tracing::warn!(topic = %delivery.topic, error = %e, "could not acknowledge; handing the task back");
        return settle(delivery, Settle::Requeue).await;
    }

    let mut attempt = header.attempt.unwrap_or(1).max(delivery.redeliveries + 1);
    let max_runs = shared.retry.map_or(1, |r| r.max_attempts);
    let mut runs = 0;
    let outcome = loop {
        runs += 1;
        let ctx = TaskContext {
            inner: Arc::new(ContextInner {
                reporter: reporter.clone(),
                attempt,
                deadline: header.deadline,
                headers: header.headers.clone(),
                progress: AtomicU8::new(0),
                cancel: cancel_rx.clone(),
            }),
        };
        let end = run_once(&shared, &reg, &mut delivery, ctx, env.clone(), lease).await;
        match end {
            RunEnd::Done(Ok(produce)) => {
                counters.handled.fetch_add(1, Ordering::Relaxed);
                break Ok(produce);
            }
            RunEnd::Done(Err(failure)) => {
                if runs < max_runs {
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = shared
                        .retry
                        .map_or(Duration::ZERO, |r| r.backoff.delay(runs + 1));
                    tracing::info!(topic = %delivery.topic, error = %failure.message, runs, "handler failed; retrying");
                    let mut kill = shared.kill.subscribe();
                    let mut cancel = cancel_rx.clone();
                    let interrupted = tokio::select! {
                        _ = tokio::time::sleep(delay) => None,
                        _ = cancelled(&mut cancel) => Some(None),
                        k = killed(&mut kill) => Some(Some(k)),
                    };
                    match interrupted {
                        None => {}
                        Some(None) => break Err(Failure::message("cancelled".into())),
                        Some(Some(k)) => return finish_killed(delivery, k).await,
                    }
                    attempt += 1;
                    continue;
                }
                break Err(failure);
            }
            RunEnd::Cancelled => {
                counters.cancelled_in_worker.fetch_add(1, Ordering::Relaxed);
                break Err(Failure::message("cancelled".into()));
            }
            RunEnd::DeadlineExceeded => {
                // The client reports the deadline itself; a completion could only race it.
                counters.expired.fetch_add(1, Ordering::Relaxed);
                lock(&shared.done).insert(done_key, None);
                return settle(delivery, Settle::Ack).await;
            }
            RunEnd::Killed(k) => return finish_killed(delivery, k).await,
        }
    };

    let exhausted = shared.retry.is_some() && outcome.is_err() && runs >= max_runs;
    let bytes = match outcome {
        Ok(produce) => match produce(reporter.codec) {
            Ok(data) => reporter.complete_bytes(None, &data),
            Err(e) => reporter.failure_bytes(&format!("result could not be encoded: {e}")),
        },
        Err(failure) => match failure.data.map(|p| p(reporter.codec)) {
            Some(Ok(data)) => reporter.complete_bytes(Some(&failure.message), &data),
            _ => reporter.failure_bytes(&failure.message),
        },
    };
    let bytes = if bytes.len() > shared.limit {
        reporter.failure_bytes(&format!(
            "result of {} bytes exceeds the limit of {} bytes",
            bytes.len(),
            shared.limit
        ))
    } else {
        bytes
    };
    let last_error = exhausted.then(|| failure_text(&bytes));
    // Remembered before it is sent: a repeat that arrives meanwhile, or a redelivery after a
    // failed send, is answered with this completion instead of running the handler again.
    lock(&shared.done).insert(done_key, Some(bytes.clone()));
    if let Err(e) = reporter.send(Action::Complete, bytes).await {
        tracing::warn!(topic = %delivery.topic, error = %e, "could not publish the completion; handing the task back");
        return settle(delivery, Settle::Requeue).await;
    }
    match last_error {
        Some(error) => {
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            let reason = DeadLetterReason::RetriesExhausted {
                attempts: runs,
                error,
            };
            settle(delivery, Settle::Reject(reason)).await
        }
        None => settle(delivery, Settle::Ack).await,
    }
}

fn failure_text(completion: &Bytes) -> String {
    Envelope::decode(completion.clone())
        .ok()
        .and_then(|e| e.header().error.clone())
        .unwrap_or_default()
}

async fn finish_killed(delivery: Delivery, kill: Kill) {
    match kill {
        Kill::Requeue => settle(delivery, Settle::Requeue).await,
        // A crash: the delivery is dropped unacknowledged.
        _ => drop(delivery),
    }
}

struct InflightGuard<'a>(&'a WorkerShared, &'a str);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.inflight).remove(self.1);
    }
}

/// Runs the handler once, heartbeating, watching cancellation, deadline and shutdown.
async fn run_once(
    shared: &WorkerShared,
    reg: &Registration,
    delivery: &mut Delivery,
    ctx: TaskContext,
    env: Envelope,
    lease: Duration,
) -> RunEnd {
    let reporter = ctx.inner.reporter.clone();
    let mut cancel = ctx.inner.cancel.clone();
    let deadline = env.header().deadline;
    let mut kill = shared.kill.subscribe();
    let mut handle: JoinHandle<Result<Produce, Failure>> =
        tokio::spawn(reg.handler.call(ctx.clone(), env));
    let beat = lease / 3;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline_at = deadline.map(|ms| {
        let left = ms.saturating_sub(unix_ms());
        tokio::time::Instant::now() + Duration::from_millis(left)
    });
    let counters = shared.node.counters();
    let stopped = loop {
        tokio::select! {
            joined = &mut handle => return RunEnd::Done(joined_result(joined, counters)),
            _ = heartbeat.tick() => {
                let p = ctx.current_progress();
                if let Err(e) = reporter.status(p, empty_object(reporter.codec)).await {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
                if let Err(e) = delivery.keep_alive().await {
                    tracing::debug!(error = %e, "keep-alive failed");
                }
            }
            _ = cancelled(&mut cancel) => break RunEnd::Cancelled,
            _ = sleep_until_opt(deadline_at) => break RunEnd::DeadlineExceeded,
            k = killed(&mut kill) => {
                if k == Kill::Abort {
                    handle.abort();
                    return RunEnd::Killed(k);
                }
                break RunEnd::Killed(k);
            }
        }
    };
    // Cancelled, past the deadline or shutting down: tell the handler and give it a grace
    // period to return before aborting it.
    if let Some(tx) = lock(&shared.inflight).get(reporter.topic.tid()) {
        let _ = tx.send(true);
    }
    match tokio::time::timeout(shared.cancel_grace, &mut handle).await {
        // Shutting down: a handler that finished within the grace period reports its
        // result rather than handing the task back.
        Ok(joined) if matches!(stopped, RunEnd::Killed(Kill::Requeue)) => {
            match joined_result(joined, counters) {
                Ok(p) => RunEnd::Done(Ok(p)),
                Err(_) => stopped,
            }
        }
        Ok(_) => stopped,
        Err(_) => {
            handle.abort();
            stopped
        }
    }
}

fn joined_result(
    joined: Result<Result<Produce, Failure>, tokio::task::JoinError>,
    counters: &crate::stats::Counters,
) -> Result<Produce, Failure> {
    match joined {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(f)) => {
            counters.handler_errors.fetch_add(1, Ordering::Relaxed);
            Err(f)
        }
        Err(e) if e.is_panic() => {
            counters.handler_panics.fetch_add(1, Ordering::Relaxed);
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_owned());
            Err(Failure::message(format!("handler panicked: {msg}")))
        }
        Err(_) => Err(Failure::message("handler was aborted".into())),
    }
}

/// Completes when the switch turns on; never if its sender is gone.
async fn cancelled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Completes when the worker is killed, with how.
async fn killed(rx: &mut watch::Receiver<Kill>) -> Kill {
    match rx.wait_for(|k| *k != Kill::No).await {
        Ok(k) => *k,
        Err(_) => Kill::Abort,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A running worker. [`Worker::shutdown`] stops it gracefully; dropping it (or
/// [`Worker::abort`]) stops it at once, as if its process died.
pub struct Worker {
    shared: Arc<WorkerShared>,
    loops: Vec<JoinHandle<()>>,
    finished: bool,
}

/// What a graceful shutdown did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Tasks still running when the grace period ended, handed back to the workgroup.
    pub handed_back: usize,
}

impl Worker {
    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::Acquire)
    }

    /// Stops taking tasks, waits up to `grace` for running ones to finish, then cancels the
    /// rest and hands them back to the workgroup.
    pub async fn shutdown(mut self, grace: Duration) -> Result<ShutdownReport> {
        self.finished = true;
        let _ = self.shared.stop.send(true);
        let drained = tokio::time::timeout(grace, self.wait_idle()).await.is_ok();
        let mut handed_back = 0;
        if !drained {
            handed_back = self.running();
            let _ = self.shared.kill.send(Kill::Requeue);
            let wait = self.shared.cancel_grace + Duration::from_secs(1);
            let _ = tokio::time::timeout(wait, self.wait_idle()).await;
        }
        for l in &self.loops {
            l.abort();
        }
        Ok(ShutdownReport { handed_back })
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Stops at once, as if the process died: nothing running is completed or
    /// acknowledged; transports that redeliver give those tasks to other workers.
    pub fn abort(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        self.finished = true;
        let _ = self.shared.stop.send(true);
        let _ = self.shared.kill.send(Kill::Abort);
        for l in &self.loops {
            l.abort();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.finished {
            self.kill_now();
        }
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_window_is_bounded_in_entries_and_bytes() {
        let mut w = DedupWindow::new(3);
        for i in 0..5 {
            w.insert(format!("k{i}"), Some(Bytes::from(vec![0u8; 10])));
        }
        assert!(w.get("k0").is_none() && w.get("k1").is_none());
        assert!(matches!(w.get("k4"), Some(Some(_))));
        assert_eq!(w.bytes, 30);
        w.insert("k4".into(), None);
        assert_eq!(w.bytes, 20);
        let mut w = DedupWindow::new(1000);
        let big = CACHED_BYTES / 16;
        for i in 0..40 {
            w.insert(format!("b{i}"), Some(Bytes::from(vec![0u8; big])));
        }
        assert!(w.bytes <= CACHED_BYTES);
        assert!(
            matches!(w.get("b0"), Some(None)),
            "oldest bytes dropped, tid kept"
        );
        assert!(matches!(w.get("b39"), Some(Some(_))));
    }
}
