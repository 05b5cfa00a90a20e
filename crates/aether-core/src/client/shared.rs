//! The state a task shares between its handle, its supervisor and the route: its
//! lifecycle, the progress not yet taken, and the outcome. Events are applied here under
//! one lock; what needs no I/O is carried out here too.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::handle::Progress;
use super::lifecycle::{Effect, Event, Lifecycle, Outcome, Policy};
use crate::observe::metrics::ClientMetrics;
use crate::stats::Counters;

pub(super) struct TaskInner {
    pub(super) lifecycle: Lifecycle,
    pub(super) progress: VecDeque<Progress>,
    pub(super) outcome: Option<Outcome>,
}

pub(super) struct TaskShared {
    pub(super) tid: String,
    progress_cap: usize,
    inner: Mutex<TaskInner>,
    /// Wakes the handle's waiters: progress or outcome.
    wake: Notify,
    /// Wakes the supervisor: its timers changed, or the task ended. Plain progress does
    /// not wake it: on its lease timer it reads again when the task was last heard of.
    pub(super) wake_supervisor: Notify,
    metrics: Arc<ClientMetrics>,
}

impl TaskShared {
    /// A task whose first dispatch is under way.
    pub(super) fn new(
        tid: String,
        progress_cap: usize,
        policy: Policy,
        metrics: Arc<ClientMetrics>,
    ) -> TaskShared {
        TaskShared {
            tid,
            progress_cap: progress_cap.max(1),
            inner: Mutex::new(TaskInner {
                lifecycle: Lifecycle::new(policy, now()),
                progress: VecDeque::new(),
                outcome: None,
            }),
            wake: Notify::new(),
            wake_supervisor: Notify::new(),
            metrics,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, TaskInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
    /// no I/O: progress for the handle, the outcome, counters, wake-ups. Returns the ones
    /// that do, for the supervisor.
    pub(super) fn apply(&self, event: Event, counters: &Counters) -> Vec<Effect> {
        let mut inner = self.lock();
        let effects = inner.lifecycle.on(event, now());
        let mut io = Vec::new();
        let (mut wake, mut wake_supervisor) = (false, false);
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
                Effect::Finish(outcome) => {
                    count(&outcome, counters, &self.metrics);
                    inner.outcome = Some(outcome);
                    wake = true;
                    wake_supervisor = true;
                }
                Effect::Reschedule => wake_supervisor = true,
                other => io.push(other),
            }
        }
        drop(inner);
        if wake {
            self.wake.notify_waiters();
        }
        if wake_supervisor {
            // Keeps a permit if the supervisor is not waiting yet.
            self.wake_supervisor.notify_one();
        }
        io
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
pub(super) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
