//! The caller's side of a task: [`TaskHandle`] and the [`Progress`] it surfaces.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::lifecycle::Event;
use super::route::Route;
use super::shared::TaskShared;
use crate::action::Action;
use crate::envelope::{Codec, Envelope, Header, empty_object, encode_raw};
use crate::error::{DecodeError, Error, Result};
use crate::node::Aether;
use crate::state::TaskState;
use crate::topic::Topic;
use crate::transport::SharedTransport;

/// A progress report of a task.
#[derive(Clone, Debug)]
pub struct Progress {
    /// 0-100; 0 is the worker's acceptance.
    pub percent: u8,
    pub(super) envelope: Envelope,
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

/// A task in flight: its progress, its outcome, and the means to cancel it.
///
/// Dropping the handle does not cancel the task; the client still sees it through to an
/// outcome (redispatching if needed) while a lease or deadline applies.
pub struct TaskHandle {
    pub(super) shared: Arc<TaskShared>,
    pub(super) route: Arc<Route>,
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
        self.shared.lock().lifecycle.state()
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
        // The handle is consumed, so nobody reads the outcome again: taken, not copied.
        let outcome = self.shared.wait_for(|inner| inner.outcome.take()).await;
        let env = outcome.into_result(&self.shared.tid)?;
        env.data().map_err(Error::Decode)
    }

    /// Asks the worker to stop the task, and ends it here as cancelled (unless it already
    /// ended). The worker's handler sees the cancellation through its context.
    pub async fn cancel(&self) -> Result<()> {
        let config = self.node.config();
        let header = Header::new(Action::Cancel, &config.host, &config.client_id);
        let bytes = encode_raw(self.codec, &header, empty_object(self.codec));
        // Ended here first, so the worker's answer to the cancel cannot overtake it.
        let io = self
            .route
            .apply(&self.shared, Event::Cancelled, self.node.counters());
        debug_assert!(io.is_empty(), "a cancel asks for no I/O: {io:?}");
        let topic = self.topic.with_action(Action::Cancel);
        self.node
            .timed("cancel", self.transport.publish(&topic, bytes))
            .await
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        let io = self
            .route
            .apply(&self.shared, Event::Detached, self.node.counters());
        debug_assert!(io.is_empty(), "a dropped handle asks for no I/O: {io:?}");
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
