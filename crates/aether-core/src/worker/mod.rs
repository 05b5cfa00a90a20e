//! The worker: takes performs from work queues and runs handlers on them.
//!
//! For each perform a worker: checks size, envelope and deadline (bad input is counted and
//! dead-lettered, never fatal); drops tids it already completed or is running; acknowledges
//! with progress 0 (at once, or, where the perform's `defer` allows, only if the task is
//! still running after that long or reports progress first); runs the handler with a concurrency limit, heartbeats while it runs, and
//! watches for cancellation; completes the task as succeeded or failed (an `Err` or a panic
//! fails it with the message, and the worker keeps serving); then acknowledges the delivery.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::action::Action;
use crate::context::TaskContext;
use crate::envelope::{Codec, Header, encode_raw};
use crate::error::{BoxError, Error, Result};
use crate::inbound::accept_broadcast;
use crate::node::{Aether, Backoff};
use crate::observe::metrics::{Online, WorkerMetrics};
use crate::topic::{DEFAULT_WORKGROUP, Topic, WorkQueue};
use crate::transport::{ConsumeOptions, Consumer, SharedTransport, Subscription};

mod dedup;
mod handler;
mod process;
mod reporter;
mod run;

use dedup::DedupWindow;
use handler::FnHandler;
pub(crate) use handler::{Failure, Handler, Produce};
use process::process;
pub(crate) use reporter::Reporter;

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
    metrics: WorkerMetrics,
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

    /// Retries a failed handler inside the worker. Default: no retries. Needs a transport
    /// with a dead-letter place ([`Capabilities::dead_letters`](crate::Capabilities)) for
    /// the perform that fails every attempt; `start()` refuses it elsewhere.
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
        crate::requirements::check_worker(&self.channel, &transport, self.retry.is_some())?;
        let config = self.node.config();
        let mut regs = Vec::new();
        for (job, task, context, handler) in self.handlers {
            let queue = WorkQueue::new(&config.union, &job, &task, &context, &self.workgroup)?;
            if regs.iter().any(|r: &Registration| r.queue == queue) {
                return Err(Error::Config(format!("two handlers for {queue}")));
            }
            let metrics = WorkerMetrics::new(transport.name(), &job, &task, &self.workgroup);
            regs.push(Registration {
                queue,
                handler,
                metrics,
            });
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
            inflight: Mutex::new(HashMap::default()),
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
            _online: Online::new(transport.name(), &self.workgroup),
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
    /// Cancel switches of the tasks running here, by tid. Its keys come from the network,
    /// but it holds no more than the deliveries the worker's permits let in, so a fast
    /// hasher cannot be flooded.
    inflight: Mutex<HashMap<String, watch::Sender<bool>, foldhash::fast::RandomState>>,
    /// Recently completed (or cancelled) `client/tid`s, with the completion to repeat.
    done: Mutex<DedupWindow>,
    running: AtomicUsize,
    idle: Notify,
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
                // Boxed: the task's state (the whole of `process`, ~3 KB) is copied into
                // the spawned task and over again when it finishes; a box is 8 bytes.
                tokio::spawn(Box::pin(async move {
                    let _guard = guard;
                    let _permit = permit;
                    process(shared, reg, delivery).await;
                }));
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
        lock(&shared.done).insert(&format!("{}/{tid}", env.header().client), None);
    }
}

/// A running worker. [`Worker::shutdown`] stops it gracefully; dropping it (or
/// [`Worker::abort`]) stops it at once, as if its process died.
pub struct Worker {
    shared: Arc<WorkerShared>,
    loops: Vec<JoinHandle<()>>,
    finished: bool,
    /// Counts this worker in the online gauge until it is stopped.
    _online: Online,
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
