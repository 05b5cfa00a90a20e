//! The state a task shares between its handle, its supervisor and the router.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::action::{Action, Status};
use crate::envelope::{Codec, Envelope, Header, empty_object, encode_raw};
use crate::error::{DecodeError, Error, Result};
use crate::node::Aether;
use crate::state::{Applied, TaskEvent, TaskState};
use crate::stats::Counters;
use crate::topic::Topic;
use crate::transport::SharedTransport;

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
pub(super) enum Outcome {
    Succeeded(Envelope),
    Failed(Envelope),
    Cancelled,
    DeadlineExceeded,
    Lost(u32),
    Closed,
}

impl Outcome {
    pub(super) fn into_result(self, tid: &str) -> Result<Envelope> {
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
pub(super) fn failure_message(env: &Envelope) -> String {
    match env.data_value() {
        serde_json::Value::Null => "failed".to_owned(),
        serde_json::Value::String(s) => s,
        serde_json::Value::Object(map) if map.is_empty() => "failed".to_owned(),
        other => other.to_string(),
    }
}

pub(super) struct TaskInner {
    pub(super) state: TaskState,
    pub(super) progress: VecDeque<Progress>,
    pub(super) outcome: Option<Outcome>,
    /// When the task last showed a sign of life, or was last dispatched.
    pub(super) heard: Instant,
    /// Whether any worker reported on it since the last dispatch.
    pub(super) seen: bool,
    /// The lease the worker that has it promised to heartbeat within.
    pub(super) worker_lease: Option<Duration>,
    /// The handle was dropped.
    pub(super) detached: bool,
    /// The route's subscription was interrupted, and the task's replies may be lost:
    /// unless it is heard of after `since`, the supervisor dispatches it again at `at`.
    pub(super) probe: Option<Probe>,
    /// The route's gap count when the latest dispatch had reached the transport; `None`
    /// while a dispatch is under way. Only a gap after it can have lost its replies.
    pub(super) dispatched_at_gap: Option<u64>,
}

pub(super) struct TaskShared {
    pub(super) tid: String,
    pub(super) progress_cap: usize,
    pub(super) inner: Mutex<TaskInner>,
    /// Wakes the handle's waiters: progress or outcome.
    pub(super) wake: Notify,
    /// Wakes the supervisor: outcome, acceptance (which changes the
    /// lease), or the handle dropped. Plain progress does not wake it: on its lease timer
    /// it re-reads when the task was last heard of.
    pub(super) wake_supervisor: Notify,
}

impl TaskShared {
    pub(super) fn new(tid: String, progress_cap: usize) -> TaskShared {
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
                probe: None,
                dispatched_at_gap: None,
            }),
            wake: Notify::new(),
            wake_supervisor: Notify::new(),
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

    /// Ends the task with `outcome` unless it already ended; returns whether it did.
    pub(super) fn finish(&self, event: TaskEvent, outcome: Outcome, counters: &Counters) -> bool {
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

    /// Asks the supervisor to dispatch the task again if its replies may have been lost
    /// in gap number `gap` (its latest dispatch went out before it). A task no worker was
    /// heard of since that dispatch goes again at once. A task a worker accepted may still
    /// be running there: it goes again only if no heartbeat comes within half the worker's
    /// lease (it heartbeats every third), which means the worker completed it meanwhile
    /// (and answers the repeat from memory) or died. A dispatch still under way, or made
    /// after the subscriptions were back, has lost nothing; a worker that promised no
    /// heartbeats (a Python one) cannot be told apart from a busy one, so is left alone.
    pub(super) fn probe(&self, gap: u64) {
        let mut inner = self.lock();
        if inner.outcome.is_some() || inner.dispatched_at_gap.is_none_or(|d| d >= gap) {
            return;
        }
        let now = Instant::now();
        let at = match (inner.seen, inner.worker_lease) {
            (false, _) => now,
            (true, Some(lease)) => now + lease / 2,
            (true, None) => return,
        };
        if inner.probe.is_none() {
            inner.probe = Some(Probe { since: now, at });
        }
        drop(inner);
        self.wake_supervisor.notify_one();
    }

    /// Applies a status or complete from a worker.
    pub(super) fn on_update(&self, env: Envelope, counters: &Counters) {
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
            // The route delivers in the order the worker sent: every status sent before
            // this completion has been applied.
            drop(inner);
            self.complete(event, env, counters);
            return;
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
        drop(inner);
        self.wake.notify_waiters();
    }

    /// Ends the task with a worker's completion.
    pub(super) fn complete(&self, event: TaskEvent, env: Envelope, counters: &Counters) {
        let outcome = if event == TaskEvent::Succeeded {
            Outcome::Succeeded(env)
        } else {
            Outcome::Failed(env)
        };
        if !self.finish(event, outcome, counters) {
            counters.duplicate_updates.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A redispatch asked for by a gap.
#[derive(Clone, Copy, Debug)]
pub(super) struct Probe {
    /// When the gap was reported: anything heard later shows nothing was lost.
    pub(super) since: Instant,
    /// When to dispatch again if nothing was heard.
    pub(super) at: Instant,
}

/// A task in flight: its progress, its outcome, and the means to cancel it.
///
/// Dropping the handle does not cancel the task; the client still sees it through to an
/// outcome (redispatching if needed) while a lease or deadline applies.
pub struct TaskHandle {
    pub(super) shared: Arc<TaskShared>,
    pub(super) topic: Topic,
    pub(super) transport: SharedTransport,
    pub(super) node: Aether,
    pub(super) codec: Codec,
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
