//! [`QueueEngine`]: the work-queue semantics of aether, in one process.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use super::{Credit, Gate, Outlet, Settle, SettleOnce};
use crate::error::Result;
use crate::topic::{Topic, WorkQueue};
use crate::transport::{Consumer, DeadLetter, Delivery};

/// Settings of a [`QueueEngine`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Performs a workgroup may hold before `enqueue` waits for room. Default 65,536.
    pub queue_capacity: usize,
    /// Whether a delivery dropped unacknowledged (or held by a consumer that went away)
    /// comes back to its workgroup. Default true.
    pub redeliver: bool,
    /// Dead letters kept; the oldest are dropped past this. Default 1,024.
    pub dead_letter_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue_capacity: 65_536,
            redeliver: true,
            dead_letter_capacity: 1024,
        }
    }
}

/// Work queues with aether's semantics, for anything that brokers performs inside one
/// process: the in-memory transport, and a hub or device process that serves remote
/// workers (over WebSocket, ZeroMQ...) by consuming on their behalf.
///
/// - A perform goes to its (union, job, task, context) queue and from there to **every
///   workgroup** consuming it; performs enqueued before any workgroup consumed wait in a
///   backlog that the first workgroup takes over.
/// - In a workgroup each perform goes to **one consumer**: the one with the fewest
///   deliveries in flight (handed out, not settled) among those with credit (at most
///   `prefetch` outstanding each), ties broken round-robin so idle consumers take turns.
///   A slow consumer that still holds work gets new work only once the others hold as
///   much.
/// - A delivery is settled once (see [`SettleOnce`]): ack forgets it, `nack(true)` puts
///   it back at the front with `redeliveries + 1`, reject stores a dead letter. Dropped
///   unsettled (its handler crashed, or its consumer's owner went away) it comes back the
///   same way when [`EngineConfig::redeliver`] is on.
/// - A full workgroup (`queue_capacity` performs waiting) makes `enqueue` wait for room.
///
/// A hub keeps the [`Delivery`] it took for a remote worker until the worker answers,
/// then settles it; when the worker disconnects it drops its deliveries and calls
/// [`disconnect`](QueueEngine::disconnect), and the work comes back to the others.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> aether_core::Result<()> {
/// use aether_core::kit::{EngineConfig, Gate, QueueEngine};
/// use aether_core::{Bytes, Topic, WorkQueue};
///
/// let engine = QueueEngine::new(EngineConfig::default());
/// let gate = Gate::new(1 << 20);
/// let queue = WorkQueue::new("u", "j", "t", "x", "workgroup")?;
/// let mut worker = engine.consume(&queue, 4, /* owner (a connection) */ 1);
/// let topic: Topic = "u/j/t/x/1/perform".parse()?;
/// engine.enqueue(&topic, Bytes::from_static(b"{}"), &gate).await?;
/// let delivery = worker.next().await.unwrap().unwrap();
/// drop(delivery); // crashed: back in the queue
/// let again = worker.next().await.unwrap().unwrap();
/// assert_eq!(again.redeliveries, 1);
/// again.ack().await.map_err(|e| e.error)?;
/// assert_eq!(engine.pending(&queue), 0);
/// # Ok(()) }
/// ```
pub struct QueueEngine {
    config: EngineConfig,
    ids: AtomicU64,
    queues: Mutex<HashMap<String, Queue>>,
    dead: Mutex<VecDeque<DeadLetter>>,
}

#[derive(Default)]
struct Queue {
    /// Performs enqueued before any workgroup consumed: the first workgroup takes them.
    backlog: VecDeque<Job>,
    groups: HashMap<Box<str>, Group>,
    space: Arc<Notify>,
}

impl Queue {
    fn full(&self, cap: usize) -> bool {
        if self.groups.is_empty() {
            self.backlog.len() >= cap
        } else {
            self.groups.values().any(|g| g.pending.len() >= cap)
        }
    }
}

#[derive(Default)]
struct Group {
    pending: VecDeque<Job>,
    consumers: Vec<Slot>,
    next: usize,
}

struct Slot {
    id: u64,
    owner: u64,
    outlet: Outlet,
    credit: Credit,
}

#[derive(Clone)]
struct Job {
    topic: Topic,
    payload: Bytes,
    redeliveries: u32,
}

impl QueueEngine {
    /// An engine with no queues yet.
    pub fn new(config: EngineConfig) -> Arc<QueueEngine> {
        Arc::new(QueueEngine {
            config,
            ids: AtomicU64::new(1),
            queues: Mutex::new(HashMap::new()),
            dead: Mutex::new(VecDeque::new()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Puts a perform on the queue of `topic` for every workgroup consuming it (or in the
    /// backlog), waiting while a workgroup's queue is full. Fails with
    /// [`Error::Closed`](crate::Error::Closed) if `gate` closes while it waits.
    pub async fn enqueue(
        self: &Arc<Self>,
        topic: &Topic,
        payload: Bytes,
        gate: &Gate,
    ) -> Result<()> {
        let key = topic.queue_prefix();
        let cap = self.config.queue_capacity;
        let job = Job {
            topic: topic.clone(),
            payload,
            redeliveries: 0,
        };
        loop {
            let Err(space) = self.put(key, &job) else {
                return Ok(());
            };
            let notified = space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check after registering, so a wake-up between the check and here is kept.
            let still_full = lock(&self.queues).get(key).is_none_or(|q| q.full(cap));
            if still_full {
                notified.await;
            }
            gate.check_open()?;
        }
    }

    /// Puts a perform on the queue of `topic` as [`enqueue`](QueueEngine::enqueue) does,
    /// but never waits: while a workgroup's queue (or the backlog of a queue no workgroup
    /// consumes yet) holds `queue_capacity` performs, it refuses with
    /// [`Error::QueueFull`](crate::Error::QueueFull) and enqueues nothing. For a device or
    /// hub whose one loop serves every connection and cannot wait for room.
    pub fn try_enqueue(self: &Arc<Self>, topic: &Topic, payload: Bytes) -> Result<()> {
        let job = Job {
            topic: topic.clone(),
            payload,
            redeliveries: 0,
        };
        match self.put(topic.queue_prefix(), &job) {
            Ok(()) => Ok(()),
            Err(_) => Err(crate::Error::QueueFull {
                limit: self.config.queue_capacity as u64,
            }),
        }
    }

    /// Queues `job` for every workgroup of queue `key` (or in its backlog) and hands out
    /// what credit allows; when full, queues nothing and returns the queue's room signal.
    fn put(self: &Arc<Self>, key: &str, job: &Job) -> std::result::Result<(), Arc<Notify>> {
        let mut queues = lock(&self.queues);
        let q = match queues.get_mut(key) {
            Some(q) => q,
            None => queues.entry(key.to_owned()).or_default(),
        };
        if q.full(self.config.queue_capacity) {
            return Err(q.space.clone());
        }
        let mut sends = Vec::new();
        if q.groups.is_empty() {
            q.backlog.push_back(job.clone());
        } else {
            for (name, g) in q.groups.iter_mut() {
                g.pending.push_back(job.clone());
                g.dispatch(self, key, name, &mut sends);
            }
        }
        drop(queues);
        send_all(sends);
        Ok(())
    }

    /// Starts a consumer of `queue` in its workgroup with `prefetch` credit; `owner` is
    /// whatever [`disconnect`](QueueEngine::disconnect) ends it by (a connection's id).
    /// Dropping the [`Consumer`] stops it; what it had not taken goes to the others.
    pub fn consume(self: &Arc<Self>, queue: &WorkQueue, prefetch: usize, owner: u64) -> Consumer {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let key = queue.key('/');
        let group: Box<str> = queue.workgroup().into();
        let (outlet, rx) = Outlet::new(prefetch);
        let sends = {
            let mut queues = lock(&self.queues);
            let q = queues.entry(key.clone()).or_default();
            let fresh = !q.groups.contains_key(&group);
            let backlog = std::mem::take(&mut q.backlog);
            let g = q.groups.entry(group.clone()).or_default();
            if fresh {
                g.pending.extend(backlog);
            } else {
                q.backlog = backlog;
            }
            g.consumers.push(Slot {
                id,
                owner,
                outlet,
                credit: Credit::new(prefetch),
            });
            let mut sends = Vec::new();
            g.dispatch(self, &key, &group, &mut sends);
            q.space.notify_waiters();
            sends
        };
        send_all(sends);
        let guard = ConsumerGuard {
            engine: Arc::downgrade(self),
            key,
            group,
            id,
        };
        Consumer::new(rx, Some(Box::new(guard)))
    }

    /// Ends every consumer of `owner`. Their deliveries already handed out stay with
    /// their holders until settled or dropped.
    pub fn disconnect(&self, owner: u64) {
        let mut queues = lock(&self.queues);
        for q in queues.values_mut() {
            for g in q.groups.values_mut() {
                g.consumers.retain(|c| c.owner != owner);
            }
        }
    }

    /// Performs waiting in `queue`'s workgroup (not yet delivered).
    pub fn pending(&self, queue: &WorkQueue) -> usize {
        lock(&self.queues)
            .get(&queue.key('/'))
            .and_then(|q| q.groups.get(queue.workgroup()))
            .map_or(0, |g| g.pending.len())
    }

    /// Stores a dead letter, dropping the oldest past the capacity.
    pub fn dead_letter(&self, letter: DeadLetter) {
        tracing::warn!(topic = %letter.topic, reason = %letter.reason, "dead letter");
        let mut dead = lock(&self.dead);
        if dead.len() >= self.config.dead_letter_capacity.max(1) {
            dead.pop_front();
        }
        dead.push_back(letter);
    }

    /// The dead letters held, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.dead).iter().cloned().collect()
    }

    /// After a delivery was settled (its credit returned): if `requeue`, puts `job` back
    /// at the front of the workgroup's queue; hands out what the credit now allows.
    fn settle(self: &Arc<Self>, key: &str, group: &str, requeue: Option<Job>) {
        let sends = {
            let mut queues = lock(&self.queues);
            let Some(q) = queues.get_mut(key) else { return };
            let Some(g) = q.groups.get_mut(group) else {
                return;
            };
            if let Some(mut job) = requeue {
                job.redeliveries += 1;
                g.pending.push_front(job);
            }
            let mut sends = Vec::new();
            g.dispatch(self, key, group, &mut sends);
            if g.pending.len() < self.config.queue_capacity {
                q.space.notify_waiters();
            }
            sends
        };
        send_all(sends);
    }
}

impl fmt::Debug for QueueEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// Hands pending jobs to consumers with credit, least in flight first (see
    /// [`least_in_flight`]). The sends happen after the caller releases the lock (a failed
    /// send drops a delivery, whose `Drop` locks again).
    fn dispatch(
        &mut self,
        engine: &Arc<QueueEngine>,
        key: &str,
        group: &str,
        sends: &mut Vec<(Outlet, Delivery)>,
    ) {
        self.consumers.retain(|c| !c.outlet.is_closed());
        while !self.pending.is_empty() && !self.consumers.is_empty() {
            let loads = self.consumers.iter().map(|c| {
                let free = c.credit.available();
                (c.credit.prefetch() - free, free > 0)
            });
            let Some(idx) = least_in_flight(loads, self.next) else {
                return;
            };
            let Some(unit) = self.consumers[idx].credit.try_take() else {
                return; // not reached: the lock is held and the unit was free
            };
            self.next = idx + 1;
            let job = self.pending.pop_front().expect("checked non-empty");
            let settle = EngineSettle {
                engine: Arc::downgrade(engine),
                key: key.into(),
                group: group.into(),
                job: Some(job.clone()),
                requeue: None,
                redeliver: engine.config.redeliver,
            };
            let acker = SettleOnce::new(settle, Some(unit));
            let delivery = Delivery::new(job.topic, job.payload, job.redeliveries, Box::new(acker));
            sends.push((self.consumers[idx].outlet.clone(), delivery));
        }
    }
}

/// Which consumer of a workgroup gets the next perform: of those with credit, the one
/// with the fewest deliveries in flight; among equals, the first at or after `next`
/// (the one after the last chosen), so equally loaded consumers take turns. `loads` is
/// each consumer's (in flight, has credit), in the workgroup's order. `None` when no
/// consumer has credit.
///
/// In flight is counted per consumer, and a connection (a hub's WebSocket peer, a
/// device's ZeroMQ peer, a memory transport) has one consumer per queue, so this is the
/// connection's in-flight work on that queue.
pub(crate) fn least_in_flight(
    loads: impl ExactSizeIterator<Item = (usize, bool)>,
    next: usize,
) -> Option<usize> {
    let n = loads.len();
    let mut best: Option<(usize, usize, usize)> = None; // (in flight, turn distance, index)
    for (idx, (in_flight, has_credit)) in loads.enumerate() {
        if !has_credit {
            continue;
        }
        let turn = (idx + n - next % n.max(1)) % n.max(1);
        if best.is_none_or(|(f, t, _)| (in_flight, turn) < (f, t)) {
            best = Some((in_flight, turn, idx));
        }
    }
    best.map(|(_, _, idx)| idx)
}

fn send_all(sends: Vec<(Outlet, Delivery)>) {
    for (outlet, d) in sends {
        // Credit guarantees room; a closed consumer drops the delivery, which requeues it.
        outlet.deliver(d);
    }
}

/// What settling means in the engine: the queue is in this process, so nothing can fail.
struct EngineSettle {
    engine: Weak<QueueEngine>,
    key: Box<str>,
    group: Box<str>,
    /// The job, to give back.
    job: Option<Job>,
    /// The job to put back at the front of the queue once settled.
    requeue: Option<Job>,
    redeliver: bool,
}

impl fmt::Debug for EngineSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineSettle")
            .field("queue", &self.key)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Settle for EngineSettle {
    async fn ack(&mut self) -> Result<()> {
        Ok(())
    }

    async fn nack(&mut self, requeue: bool) -> Result<()> {
        if requeue {
            self.requeue = self.job.take();
        }
        Ok(())
    }

    async fn reject(&mut self, letter: DeadLetter) -> Result<()> {
        if let Some(engine) = self.engine.upgrade() {
            engine.dead_letter(letter);
        }
        Ok(())
    }

    fn give_back(&mut self) {
        if self.redeliver {
            self.requeue = self.job.take();
        }
    }

    /// The credit is back: requeue if asked, and hand out what it allows, in one lock.
    fn settled(&mut self) {
        if let Some(engine) = self.engine.upgrade() {
            engine.settle(&self.key, &self.group, self.requeue.take());
        }
    }
}

/// Removes its consumer from its workgroup when the [`Consumer`] is dropped.
struct ConsumerGuard {
    engine: Weak<QueueEngine>,
    key: String,
    group: Box<str>,
    id: u64,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.upgrade() {
            let mut queues = lock(&engine.queues);
            if let Some(g) = queues
                .get_mut(&self.key)
                .and_then(|q| q.groups.get_mut(&self.group))
            {
                g.consumers.retain(|c| c.id != self.id);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;
    use crate::transport::DeadLetterReason;

    fn topic(tid: &str) -> Topic {
        Topic::new("u", "j", "t", "x", tid, Action::Perform).unwrap()
    }

    fn queue(group: &str) -> WorkQueue {
        WorkQueue::new("u", "j", "t", "x", group).unwrap()
    }

    /// What the consumer gets within a minute (of paused time), if anything.
    async fn next_soon(c: &mut Consumer) -> Option<Delivery> {
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), c.next());
        next.await.ok().flatten().map(|r| r.unwrap())
    }

    async fn tid(c: &mut Consumer) -> (String, u32, Delivery) {
        let d = c.next().await.unwrap().unwrap();
        (d.topic.tid().to_owned(), d.redeliveries, d)
    }

    #[tokio::test(start_paused = true)]
    async fn every_workgroup_gets_each_perform_once_and_the_backlog_goes_to_the_first() {
        let engine = QueueEngine::new(EngineConfig::default());
        let gate = Gate::new(1024);
        engine
            .enqueue(&topic("early"), Bytes::new(), &gate)
            .await
            .unwrap();
        let mut a1 = engine.consume(&queue("a"), 1, 1);
        let mut a2 = engine.consume(&queue("a"), 1, 2);
        let mut b = engine.consume(&queue("b"), 8, 3);
        engine
            .enqueue(&topic("late"), Bytes::new(), &gate)
            .await
            .unwrap();
        // Workgroup a: the backlog and the new one, one per consumer (prefetch 1 each).
        let (first, _, _d1) = tid(&mut a1).await;
        let (second, _, _d2) = tid(&mut a2).await;
        assert_eq!((first.as_str(), second.as_str()), ("early", "late"));
        // Workgroup b came second: only what was enqueued after it consumed.
        let (only, _, _d3) = tid(&mut b).await;
        assert_eq!(only, "late");
        assert!(next_soon(&mut b).await.is_none());
    }

    #[test]
    fn least_in_flight_table() {
        // (each consumer's (in flight, has credit), next turn, chosen)
        type Row = (&'static [(usize, bool)], usize, Option<usize>);
        let table: &[Row] = &[
            (&[], 0, None),
            (&[(0, false), (3, false)], 0, None),
            // Idle consumers take turns from `next`.
            (&[(0, true), (0, true), (0, true)], 0, Some(0)),
            (&[(0, true), (0, true), (0, true)], 1, Some(1)),
            (&[(0, true), (0, true), (0, true)], 3, Some(0)),
            (&[(0, true), (0, true), (0, true)], 7, Some(1)),
            // The least loaded wins whatever the turn.
            (&[(2, true), (0, true), (1, true)], 0, Some(1)),
            (&[(2, true), (0, true), (1, true)], 2, Some(1)),
            (&[(5, true), (4, true)], 1, Some(1)),
            // Without credit a consumer is skipped however idle it looks.
            (&[(0, false), (1, true), (1, true)], 0, Some(1)),
            (&[(0, false), (1, true), (1, true)], 2, Some(2)),
            // Ties among the least loaded: the first at or after the turn, wrapping.
            (&[(1, true), (3, true), (1, true)], 1, Some(2)),
            (&[(1, true), (3, true), (1, true)], 3, Some(0)),
        ];
        for (i, (loads, next, want)) in table.iter().enumerate() {
            let got = least_in_flight(loads.iter().copied(), *next);
            assert_eq!(got, *want, "row {i}: {loads:?} next {next}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_holding_work_gets_new_work_last() {
        let engine = QueueEngine::new(EngineConfig::default());
        let gate = Gate::new(1024);
        let mut slow = engine.consume(&queue("g"), 8, 1);
        let mut fast = engine.consume(&queue("g"), 8, 2);
        engine
            .enqueue(&topic("first"), Bytes::new(), &gate)
            .await
            .unwrap();
        let (_, _, held) = tid(&mut slow).await;
        // One at a time, each settled before the next: the idle consumer gets every one
        // (round-robin would have handed every other one to the busy consumer).
        for i in 0..6 {
            engine
                .enqueue(&topic(&format!("t{i}")), Bytes::new(), &gate)
                .await
                .unwrap();
            let (got, _, d) = tid(&mut fast).await;
            assert_eq!(got, format!("t{i}"));
            d.ack().await.unwrap();
        }
        assert!(
            next_soon(&mut slow).await.is_none(),
            "the busy one got none"
        );
        // A burst spreads so that loads even out: fast has 0, slow 1.
        for i in 0..5 {
            engine
                .enqueue(&topic(&format!("b{i}")), Bytes::new(), &gate)
                .await
                .unwrap();
        }
        let mut to_fast = Vec::new();
        for _ in 0..3 {
            to_fast.push(tid(&mut fast).await.2);
        }
        let mut to_slow = vec![held];
        for _ in 0..2 {
            to_slow.push(tid(&mut slow).await.2);
        }
        assert!(next_soon(&mut fast).await.is_none());
        assert_eq!((to_fast.len(), to_slow.len()), (3, 3), "3 in flight each");
    }

    #[tokio::test(start_paused = true)]
    async fn settlement_table() {
        // (what the holder does, redelivered?, dead letters after)
        enum Do {
            Ack,
            Requeue,
            Drop,
            Reject,
            OwnerGone,
        }
        let table = [
            (Do::Ack, false, 0),
            (Do::Requeue, true, 0),
            (Do::Drop, true, 0),
            (Do::Reject, false, 1),
            (Do::OwnerGone, true, 0),
        ];
        for (i, (step, back, dead)) in table.into_iter().enumerate() {
            let engine = QueueEngine::new(EngineConfig::default());
            let gate = Gate::new(1024);
            let mut c1 = engine.consume(&queue("g"), 1, 1);
            engine
                .enqueue(&topic("1"), Bytes::new(), &gate)
                .await
                .unwrap();
            let (_, r, d) = tid(&mut c1).await;
            assert_eq!(r, 0);
            let mut c2 = engine.consume(&queue("g"), 1, 2);
            match step {
                Do::Ack => d.ack().await.unwrap(),
                Do::Requeue => d.nack(true).await.unwrap(),
                Do::Drop => drop(d),
                Do::Reject => d
                    .reject(DeadLetterReason::Malformed("x".into()))
                    .await
                    .unwrap(),
                Do::OwnerGone => {
                    engine.disconnect(1);
                    drop(c1);
                    drop(d);
                    let (_, r, _d) = tid(&mut c2).await;
                    assert_eq!(r, 1, "case {i}");
                    continue;
                }
            }
            drop(c1);
            let got = next_soon(&mut c2).await;
            assert_eq!(got.is_some(), back, "case {i}");
            if let Some(d) = got {
                assert_eq!(d.redeliveries, 1, "case {i}");
            }
            assert_eq!(engine.dead_letters().len(), dead, "case {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_redelivery_a_dropped_delivery_is_gone() {
        let config = EngineConfig {
            redeliver: false,
            ..EngineConfig::default()
        };
        let engine = QueueEngine::new(config);
        let gate = Gate::new(1024);
        let mut c = engine.consume(&queue("g"), 1, 1);
        engine
            .enqueue(&topic("1"), Bytes::new(), &gate)
            .await
            .unwrap();
        drop(c.next().await);
        assert!(next_soon(&mut c).await.is_none());
        assert_eq!(engine.pending(&queue("g")), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn try_enqueue_refuses_when_full_and_enqueues_nothing() {
        let config = EngineConfig {
            queue_capacity: 1,
            ..EngineConfig::default()
        };
        let engine = QueueEngine::new(config);
        // (tid, accepted) with no workgroup yet (the backlog), then one consuming.
        engine.try_enqueue(&topic("1"), Bytes::new()).unwrap();
        let full = engine.try_enqueue(&topic("2"), Bytes::new());
        assert!(matches!(full, Err(crate::Error::QueueFull { limit: 1 })));
        let mut c = engine.consume(&queue("g"), 1, 1);
        let (first, _, d) = tid(&mut c).await;
        assert_eq!(first, "1");
        engine.try_enqueue(&topic("3"), Bytes::new()).unwrap();
        let full = engine.try_enqueue(&topic("4"), Bytes::new());
        assert!(matches!(full, Err(crate::Error::QueueFull { .. })));
        d.ack().await.unwrap();
        let (next, _, _d) = tid(&mut c).await;
        assert_eq!(next, "3", "the refused one was never queued");
        assert_eq!(engine.pending(&queue("g")), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_workgroup_holds_enqueue_until_room_or_close() {
        let config = EngineConfig {
            queue_capacity: 1,
            ..EngineConfig::default()
        };
        let engine = QueueEngine::new(config);
        let gate = Arc::new(Gate::new(1024));
        let mut c = engine.consume(&queue("g"), 1, 1);
        for t in ["1", "2"] {
            // one in flight, one pending
            engine
                .enqueue(&topic(t), Bytes::new(), &gate)
                .await
                .unwrap();
        }
        let (e, g) = (engine.clone(), gate.clone());
        let blocked = tokio::spawn(async move { e.enqueue(&topic("3"), Bytes::new(), &g).await });
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        assert!(!blocked.is_finished());
        c.next().await.unwrap().unwrap().ack().await.unwrap();
        blocked.await.unwrap().unwrap();
        // Full again; closing the gate does not wake it, room does, and then it fails.
        let (e, g) = (engine.clone(), gate.clone());
        let blocked = tokio::spawn(async move { e.enqueue(&topic("4"), Bytes::new(), &g).await });
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        gate.close();
        c.next().await.unwrap().unwrap().ack().await.unwrap();
        assert!(matches!(blocked.await.unwrap(), Err(crate::Error::Closed)));
    }
}
