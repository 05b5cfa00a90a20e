//! [`TaskContext`]: what a handler sees of its task: ids, progress reporting, cancellation.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::envelope::empty_object;
use crate::error::Result;
use crate::topic::Topic;
use crate::worker::Reporter;

pub(crate) struct ContextInner {
    pub(crate) reporter: Arc<Reporter>,
    pub(crate) attempt: u32,
    pub(crate) deadline: Option<u64>,
    pub(crate) headers: Option<BTreeMap<String, String>>,
    pub(crate) progress: AtomicU8,
    pub(crate) cancel: watch::Receiver<bool>,
}

/// A handler's view of its task. Cheap to clone.
#[derive(Clone)]
pub struct TaskContext {
    pub(crate) inner: Arc<ContextInner>,
}

impl TaskContext {
    /// The task id.
    pub fn tid(&self) -> &str {
        self.inner.reporter.topic.tid()
    }

    /// The perform's topic.
    pub fn topic(&self) -> &Topic {
        &self.inner.reporter.topic
    }

    /// Which attempt this is, from 1: a redispatch by the client, a redelivery by the
    /// broker, or a retry after a handler error each count.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The task's deadline, if the client set one.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.inner
            .deadline
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// A header the client sent (e.g. `traceparent`).
    pub fn header(&self, key: &str) -> Option<&str> {
        self.inner.headers.as_ref()?.get(key).map(String::as_str)
    }

    /// Reports progress (0-100, clamped) with no data.
    pub async fn progress(&self, percent: u8) -> Result<()> {
        let data = empty_object(self.inner.reporter.codec);
        self.report(percent, data).await
    }

    /// Reports progress (0-100, clamped) with data.
    pub async fn progress_with<D: Serialize + ?Sized>(&self, percent: u8, data: &D) -> Result<()> {
        let data = self.inner.reporter.codec.to_vec(data)?;
        self.report(percent, &data).await
    }

    async fn report(&self, percent: u8, data: &[u8]) -> Result<()> {
        let percent = percent.min(100);
        self.inner.progress.fetch_max(percent, Ordering::Relaxed);
        self.inner.reporter.status(percent, data).await
    }

    /// The highest progress reported so far.
    pub fn current_progress(&self) -> u8 {
        self.inner.progress.load(Ordering::Relaxed)
    }

    /// Whether the task was cancelled (by the client, its deadline, or worker shutdown).
    pub fn is_cancelled(&self) -> bool {
        *self.inner.cancel.borrow()
    }

    /// Completes when the task is cancelled. Use it in `tokio::select!` to stop work early.
    pub async fn cancelled(&self) {
        let mut rx = self.inner.cancel.clone();
        // An error means the worker dropped the task: treat as cancelled.
        let _ = rx.wait_for(|c| *c).await;
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("topic", &self.inner.reporter.topic)
            .field("attempt", &self.inner.attempt)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
