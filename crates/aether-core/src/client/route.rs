//! Routing of status and complete messages to the tasks that wait for them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::OnceCell;
use tokio::task::AbortHandle;

use super::lifecycle::{Effect, Event};
use super::shared::TaskShared;
use super::supervisor::{self, Timers};
use crate::action::Action;
use crate::error::{Error, Result};
use crate::inbound::accept_broadcast;
use crate::node::Aether;
use crate::observe::metrics::ClientMetrics;
use crate::stats::Counters;
use crate::topic::{Topic, TopicFilter, WorkQueue};
use crate::transport::{Received, SharedTransport, Subscription};

/// A route's tasks by tid.
type TaskTable = FastMap<Arc<str>, Arc<TaskShared>>;

/// A route, created once by the first perform that needs it.
type RouteCell = Arc<OnceCell<Arc<Route>>>;

/// The subscriptions a node's clients share per (channel, union, job, task, context):
/// channel, then `union/job/task/context`, so a lookup allocates nothing. Both keys are
/// this node's own (its channels, its performs' topics): a fast hasher serves.
#[derive(Default)]
pub(crate) struct Routes {
    map: Mutex<FastMap<String, FastMap<Box<str>, RouteCell>>>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl Routes {
    pub(super) async fn get(
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

/// Routes status and complete messages of one (union, job, task, context) to the tasks,
/// and supervises their timers.
pub(crate) struct Route {
    /// The tasks by tid. Only this client's performs add to it (tids it made, or the
    /// caller's), so a fast hasher serves: replies from the network only look up.
    tasks: Mutex<TaskTable>,
    /// Gaps reported by the route's subscriptions so far.
    gaps: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    /// Numbers the route's tasks.
    ids: std::sync::atomic::AtomicU64,
    timers: Arc<Timers>,
    /// The metrics of the route's tasks.
    pub(super) metrics: Arc<ClientMetrics>,
    /// The router and the supervisor, aborted with the route. Spawned once the route is
    /// whole: a reply reaching a router spawned while the route was being built found no
    /// route, and the router ended, dropping the subscription its tasks wait on.
    loops: OnceLock<[AbortHandle; 2]>,
}

/// A route's subscriptions: statuses (or every action of the route's tasks, where the
/// transport is not ordered across subscriptions) and completions, with their gap counters.
struct Replies {
    statuses: Subscription,
    completions: Option<Subscription>,
    gaps: Option<tokio::sync::watch::Receiver<u64>>,
    more_gaps: Option<tokio::sync::watch::Receiver<u64>>,
}

impl Route {
    /// Subscribes to the replies of `queue`'s tasks and starts routing them. Where the
    /// transport keeps one order across subscriptions, statuses and completions have one
    /// subscription each (so performs broadcast on the same topics, as on MQTT, are not
    /// received); elsewhere one subscription takes every action of the queue's tasks, so
    /// a completion cannot overtake the statuses sent before it.
    pub(super) async fn start(
        node: &Aether,
        transport: &SharedTransport,
        queue: &WorkQueue,
    ) -> Result<Arc<Route>> {
        let (statuses, completions) = if transport.capabilities().ordered {
            let statuses = transport.subscribe(&queue.filter(Action::Status)).await?;
            let completions = transport.subscribe(&queue.filter(Action::Complete)).await?;
            (statuses, Some(completions))
        } else {
            let all = TopicFilter::from_levels(&[
                queue.union(),
                queue.job(),
                queue.task(),
                queue.context(),
                "+",
                "+",
            ])?;
            (transport.subscribe(&all).await?, None)
        };
        let limit = node.payload_limit(transport);
        let metrics = ClientMetrics::new(transport.name(), queue.job(), queue.task());
        // Subscriptions on one connection report the same gap: watch each counter once,
        // so one interruption dispatches a task again once.
        let first = statuses.gaps();
        let second = completions
            .as_ref()
            .and_then(Subscription::gaps)
            .filter(|g| first.as_ref().is_none_or(|f| !f.same_channel(g)));
        let replies = Replies {
            statuses,
            completions,
            gaps: first,
            more_gaps: second,
        };
        let timers = Arc::new(Timers::default());
        let route = Arc::new(Route {
            tasks: Mutex::new(HashMap::default()),
            gaps: Default::default(),
            closed: Default::default(),
            ids: Default::default(),
            metrics: Arc::new(metrics),
            timers: timers.clone(),
            loops: OnceLock::new(),
        });
        // Both hold the route weakly (it goes when its last task and its cell do), and may
        // run at once, on another thread: the route is whole before they start.
        let weak = Arc::downgrade(&route);
        let router = tokio::spawn(route_loop(weak.clone(), node.clone(), replies, limit));
        let supervisor = tokio::spawn(supervisor::run(
            timers,
            weak,
            node.clone(),
            transport.clone(),
        ));
        let _ = route
            .loops
            .set([router.abort_handle(), supervisor.abort_handle()]);
        Ok(route)
    }

    /// A number for a new task of this route.
    pub(super) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Applies `event` to `task` (see [`TaskShared::apply`]); forgets the task once it is
    /// done. Returns the effects that need I/O, which only a tick asks for.
    pub(super) fn apply(
        &self,
        task: &Arc<TaskShared>,
        event: Event,
        counters: &Counters,
    ) -> Vec<Effect> {
        let applied = task.apply(event, None, counters, &self.timers);
        if applied.done {
            self.forget(task);
            if applied.io.is_empty() {
                task.lock_resend().take();
            }
        }
        applied.io
    }

    /// Removes a done task, unless its tid is routed to another task by now.
    pub(super) fn forget(&self, task: &Arc<TaskShared>) {
        let mut tasks = self.lock();
        if tasks.get(&task.tid).is_some_and(|t| Arc::ptr_eq(t, task)) {
            tasks.remove(&task.tid);
        }
    }

    /// Adds a task; false if its tid is already routed here.
    pub(super) fn insert(&self, task: Arc<TaskShared>) -> bool {
        match self.lock().entry(task.tid.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(task);
                true
            }
        }
    }

    pub(super) fn remove(&self, tid: &str) {
        self.lock().remove(tid);
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, TaskTable> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gaps reported so far; a dispatch records it once it has reached the transport.
    pub(super) fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Acquire)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        for handle in self.loops.get().into_iter().flatten() {
            handle.abort();
        }
    }
}

/// Routes replies to tasks, in the order the transport delivers them, until the
/// subscriptions end.
async fn route_loop(route: Weak<Route>, node: Aether, mut replies: Replies, limit: usize) {
    let counters = node.counters();
    loop {
        let (received, completion) = tokio::select! {
            // Replies already here come first: a task they settle needs no probe.
            biased;
            r = replies.statuses.next() => (r, false),
            r = next_opt(&mut replies.completions) => (r, true),
            open = gap(&mut replies.gaps) => {
                on_gap(&route, open, &mut replies.gaps, counters);
                continue;
            }
            open = gap(&mut replies.more_gaps) => {
                on_gap(&route, open, &mut replies.more_gaps, counters);
                continue;
            }
        };
        let Some(received) = received else { break };
        let Some(route) = route.upgrade() else { return };
        if completion {
            // The transport is ordered across subscriptions: the statuses sent before this
            // completion are in their buffer already. They go first.
            while let Some(status) = replies.statuses.try_next() {
                route.deliver(status, limit, counters);
            }
        }
        route.deliver(received, limit, counters);
    }
    if let Some(route) = route.upgrade() {
        route.closed.store(true, Ordering::Release);
        let tasks: Vec<_> = route.lock().drain().map(|(_, t)| t).collect();
        for t in tasks {
            route.apply(&t, Event::Closed, counters);
        }
    }
}

impl Route {
    /// Hands a status or completion to its task. Other actions (on the one subscription of
    /// an unordered transport) are not replies: skipped before decoding.
    fn deliver(&self, received: Received, limit: usize, counters: &Counters) {
        if let Ok(msg) = &received
            && !matches!(msg.topic.action(), Action::Status | Action::Complete)
        {
            return;
        }
        let Some((topic, env)) = accept_broadcast(received, limit, counters) else {
            return;
        };
        let task = self.lock().get(topic.tid()).cloned();
        if let Some(task) = task {
            let io = self.apply(&task, Event::Reply(env), counters);
            debug_assert!(io.is_empty(), "a reply asks for no I/O: {io:?}");
        }
    }
}

/// A gap (or, with `open` false, the end of its counter): every task not heard of since a
/// dispatch before it is asked to dispatch again.
fn on_gap(
    route: &Weak<Route>,
    open: bool,
    counter: &mut Option<tokio::sync::watch::Receiver<u64>>,
    counters: &Counters,
) {
    if !open {
        *counter = None;
        return;
    }
    let Some(route) = route.upgrade() else { return };
    let gap = route.gaps.fetch_add(1, Ordering::AcqRel) + 1;
    counters.gaps.fetch_add(1, Ordering::Relaxed);
    route.metrics.gaps.increment(1);
    let tasks: Vec<_> = route.lock().values().cloned().collect();
    tracing::info!(
        tasks = tasks.len(),
        "subscription was interrupted; dispatching again the tasks not heard of"
    );
    for t in tasks {
        route.apply(&t, Event::Gap(gap), counters);
    }
}

/// The next message of a subscription that may not exist; never completes without one.
async fn next_opt(sub: &mut Option<Subscription>) -> Option<Received> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Waits for the next gap: true, or false once the adapter dropped the counter. Never
/// completes without a counter.
async fn gap(gaps: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    match gaps {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}
