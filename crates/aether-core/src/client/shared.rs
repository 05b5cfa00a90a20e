//! The state a task shares between its handle, its route and the route's supervisor: its
//! lifecycle, the progress not yet taken, the outcome, and what sending it again needs.
//! Events are applied here under one lock; what needs no I/O is carried out here too.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

use super::handle::Progress;
use super::lifecycle::{Effect, Event, Lifecycle, Outcome, Policy};
use super::supervisor::Timers;
use crate::envelope::{Codec, Header};
use crate::observe::metrics::ClientMetrics;
use crate::stats::Counters;
use crate::topic::Topic;

pub(super) struct TaskInner {
    pub(super) lifecycle: Lifecycle,
    pub(super) progress: VecDeque<Progress>,
    pub(super) outcome: Option<Outcome>,
    /// When the supervisor ticks the task, as scheduled in its [`Timers`].
    timer: Option<Instant>,
    /// Done: nothing is watched any more, and the route has forgotten the task.
    done: bool,
}

/// What the supervisor needs to dispatch the task again, cancel it at its deadline or
/// dead-letter it: kept until the task is done.
pub(super) struct Resend {
    pub(super) topic: Topic,
    pub(super) codec: Codec,
    pub(super) header: Header,
    pub(super) data: Vec<u8>,
    /// The perform as last dispatched.
    pub(super) bytes: Bytes,
}

pub(super) struct TaskShared {
    /// Shared with the route's table, whose key it is.
    pub(super) tid: Arc<str>,
    /// The task's number on its route: tells apart tasks due at the same instant.
    pub(super) id: u64,
    progress_cap: usize,
    inner: Mutex<TaskInner>,
    /// Wakes the handle's waiters: progress or outcome.
    wake: Notify,
    metrics: Arc<ClientMetrics>,
    pub(super) resend: Mutex<Option<Resend>>,
}

/// What applying an event left to do.
pub(super) struct Applied {
    /// The effects that need I/O, for the supervisor.
    pub(super) io: Vec<Effect>,
    /// The task became done with this event: the route forgets it.
    pub(super) done: bool,
}

impl TaskShared {
    /// A task whose first dispatch is under way.
    pub(super) fn new(
        tid: Arc<str>,
        id: u64,
        progress_cap: usize,
        policy: Policy,
        metrics: Arc<ClientMetrics>,
        resend: Resend,
    ) -> TaskShared {
        TaskShared {
            tid,
            id,
            progress_cap: progress_cap.max(1),
            inner: Mutex::new(TaskInner {
                lifecycle: Lifecycle::new(policy, now()),
                progress: VecDeque::new(),
                outcome: None,
                timer: None,
                done: false,
            }),
            wake: Notify::new(),
            metrics,
            resend: Mutex::new(Some(resend)),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, TaskInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn lock_resend(&self) -> std::sync::MutexGuard<'_, Option<Resend>> {
        self.resend.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `f` returns `Some`, re-checking after every change.
    pub(super) async fn wait_for<T>(&self, mut f: impl FnMut(&mut TaskInner) -> Option<T>) -> T {
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

    /// Applies `event` to the task's lifecycle, now, and carries out the effects that need
    /// no I/O: progress for the handle, the outcome, counters, wake-ups, and the task's
    /// place in `timers`. `fired` is the timer that made a [`Event::Tick`], if one did.
    pub(super) fn apply(
        self: &std::sync::Arc<Self>,
        event: Event,
        fired: Option<Instant>,
        counters: &Counters,
        timers: &Timers,
    ) -> Applied {
        let mut inner = self.lock();
        if inner.done && matches!(event, Event::Detached) {
            // The handle of a task already done (the common end of a task): nothing is
            // watched, so there is nothing for its absence to change.
            return Applied {
                io: Vec::new(),
                done: false,
            };
        }
        if fired.is_some() && inner.timer == fired {
            // The supervisor took it off its timers to tick it.
            inner.timer = None;
        }
        let effects = inner.lifecycle.on(event, now());
        let mut io = Vec::new();
        let mut wake = false;
        for effect in effects {
            match effect {
                Effect::Progress { percent, envelope } => {
                    if inner.progress.len() >= self.progress_cap {
                        inner.progress.pop_front();
                        counters.progress_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    inner.progress.push_back(Progress { percent, envelope });
                    wake = true;
                }
                Effect::Duplicate => {
                    counters.duplicate_updates.fetch_add(1, Ordering::Relaxed);
                }
                Effect::Heartbeat => {
                    counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                Effect::Finish(outcome) => {
                    count(&outcome, counters, &self.metrics);
                    inner.outcome = Some(outcome);
                    wake = true;
                }
                // The timers are read again below, after every event.
                Effect::Reschedule => {}
                other => io.push(other),
            }
        }
        let done = !inner.done && inner.lifecycle.is_done();
        inner.done |= done;
        let next = match inner.done {
            true => None,
            false => inner.lifecycle.next_wake(),
        };
        if next != inner.timer {
            // Under the task's lock, so two events cannot leave their timers crossed.
            timers.set(self, inner.timer, next);
            inner.timer = next;
        }
        drop(inner);
        if wake {
            self.wake.notify_waiters();
        }
        Applied { io, done }
    }
}

fn count(outcome: &Outcome, counters: &Counters, metrics: &ClientMetrics) {
    let (counter, metric) = match outcome {
        Outcome::Succeeded(_) => (&counters.succeeded, &metrics.succeeded),
        Outcome::Failed(_) => (&counters.failed, &metrics.failed),
        Outcome::Cancelled => (&counters.cancelled, &metrics.cancelled),
        Outcome::DeadlineExceeded => (&counters.deadline_exceeded, &metrics.deadline_exceeded),
        Outcome::Lost(_) | Outcome::Closed => (&counters.lost, &metrics.lost),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    metric.increment(1);
}

/// Now, on tokio's clock (which tests may pause), as the lifecycle's `Instant`.
pub(super) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
