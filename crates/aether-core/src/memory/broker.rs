//! The in-process broker behind [`MemoryTransport`](super::MemoryTransport): subscriptions,
//! work queues with one group per workgroup, credit-based dispatch, acknowledgements.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use super::MemoryConfig;
use crate::error::Result;
use crate::kit::{Credit, Outlet, Settle, SettleOnce};
use crate::topic::{Topic, TopicFilter};
use crate::transport::{DeadLetter, Delivery, Received};

pub(super) struct Broker {
    pub(super) config: MemoryConfig,
    pub(super) ids: AtomicU64,
    pub(super) subs: Mutex<Vec<SubEntry>>,
    pub(super) queues: Mutex<HashMap<String, Queue>>,
    pub(super) dead: Mutex<VecDeque<DeadLetter>>,
}

impl Broker {
    pub(super) fn new(config: MemoryConfig) -> Broker {
        Broker {
            config,
            ids: AtomicU64::new(1),
            subs: Mutex::new(Vec::new()),
            queues: Mutex::new(HashMap::new()),
            dead: Mutex::new(VecDeque::new()),
        }
    }

    /// Ends everything a connection opened.
    pub(super) fn disconnect(&self, conn: u64) {
        lock(&self.subs).retain(|s| s.conn != conn);
        let mut queues = lock(&self.queues);
        for q in queues.values_mut() {
            for g in q.groups.values_mut() {
                g.consumers.retain(|c| c.conn != conn);
            }
        }
    }

    pub(super) fn dead_letter(&self, letter: DeadLetter) {
        tracing::warn!(topic = %letter.topic, reason = %letter.reason, "dead letter");
        let mut dead = lock(&self.dead);
        if dead.len() >= self.config.dead_letter_capacity.max(1) {
            dead.pop_front();
        }
        dead.push_back(letter);
    }

    /// After a delivery was settled (its credit returned): if `requeue`, puts `job` back
    /// at the front of the workgroup's queue; hands out what the credit now allows.
    pub(super) fn settle(self: &Arc<Self>, key: &str, group: &str, requeue: Option<Job>) {
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

pub(super) struct SubEntry {
    pub(super) id: u64,
    pub(super) conn: u64,
    pub(super) filter: TopicFilter,
    pub(super) tx: mpsc::Sender<Received>,
}

#[derive(Default)]
pub(super) struct Queue {
    /// Performs enqueued before any workgroup consumed: the first workgroup takes them.
    pub(super) backlog: VecDeque<Job>,
    pub(super) groups: HashMap<Box<str>, Group>,
    pub(super) space: Arc<Notify>,
}

#[derive(Default)]
pub(super) struct Group {
    pub(super) pending: VecDeque<Job>,
    pub(super) consumers: Vec<Slot>,
    pub(super) next: usize,
}

pub(super) struct Slot {
    pub(super) id: u64,
    pub(super) conn: u64,
    pub(super) outlet: Outlet,
    /// The consumer's prefetch.
    pub(super) credit: Credit,
}

#[derive(Clone)]
pub(super) struct Job {
    pub(super) topic: Topic,
    pub(super) payload: Bytes,
    pub(super) redeliveries: u32,
}

impl Group {
    /// Hands pending jobs to consumers with credit, round-robin. The sends happen after the
    /// caller releases the lock (a failed send drops a delivery, whose `Drop` locks again).
    pub(super) fn dispatch(
        &mut self,
        broker: &Arc<Broker>,
        key: &str,
        group: &str,
        sends: &mut Vec<(Outlet, Delivery)>,
    ) {
        self.consumers.retain(|c| !c.outlet.is_closed());
        while !self.pending.is_empty() && !self.consumers.is_empty() {
            let n = self.consumers.len();
            let Some((idx, unit)) = (0..n).find_map(|i| {
                let idx = (self.next + i) % n;
                self.consumers[idx]
                    .credit
                    .try_take()
                    .map(|unit| (idx, unit))
            }) else {
                return;
            };
            self.next = idx + 1;
            let slot = &self.consumers[idx];
            let job = self.pending.pop_front().expect("checked non-empty");
            let settle = MemorySettle {
                broker: Arc::downgrade(broker),
                key: key.into(),
                group: group.into(),
                job: Some(job.clone()),
                requeue: None,
                redeliver: broker.config.redeliver,
            };
            let acker = SettleOnce::new(settle, Some(unit));
            let delivery = Delivery::new(job.topic, job.payload, job.redeliveries, Box::new(acker));
            sends.push((slot.outlet.clone(), delivery));
        }
    }
}

pub(super) fn send_all(sends: Vec<(Outlet, Delivery)>) {
    for (outlet, d) in sends {
        // Credit guarantees room; a closed consumer drops the delivery, which requeues it.
        outlet.deliver(d);
    }
}

/// What settling means in memory: the queue is in this process, so nothing can fail.
pub(super) struct MemorySettle {
    pub(super) broker: Weak<Broker>,
    pub(super) key: Box<str>,
    pub(super) group: Box<str>,
    /// The job, to give back.
    pub(super) job: Option<Job>,
    /// The job to put back at the front of the queue once settled.
    pub(super) requeue: Option<Job>,
    pub(super) redeliver: bool,
}

impl fmt::Debug for MemorySettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySettle")
            .field("queue", &self.key)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Settle for MemorySettle {
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
        if let Some(broker) = self.broker.upgrade() {
            broker.dead_letter(letter);
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
        if let Some(broker) = self.broker.upgrade() {
            broker.settle(&self.key, &self.group, self.requeue.take());
        }
    }
}

pub(super) struct SubGuard {
    pub(super) broker: Weak<Broker>,
    pub(super) id: u64,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        if let Some(b) = self.broker.upgrade() {
            lock(&b.subs).retain(|s| s.id != self.id);
        }
    }
}

pub(super) struct ConsumerGuard {
    pub(super) broker: Weak<Broker>,
    pub(super) key: String,
    pub(super) group: Box<str>,
    pub(super) id: u64,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        if let Some(b) = self.broker.upgrade() {
            let mut queues = lock(&b.queues);
            if let Some(g) = queues
                .get_mut(&self.key)
                .and_then(|q| q.groups.get_mut(&self.group))
            {
                g.consumers.retain(|c| c.id != self.id);
            }
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
