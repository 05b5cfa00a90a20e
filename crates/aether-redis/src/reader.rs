//! What the readers of both work-queue modes ([`crate::streams`], [`crate::list`]) share:
//! when to stop, how often to reclaim, and the handling of an element whose topic does not
//! parse. Credit, the consumer's channel, acknowledgements and the backoff are the core's
//! [`kit`](aether_core::kit).

use std::time::Duration;

use aether_core::kit::{Credit, CreditUnit, Retry};
use aether_core::{
    Acker, Action, Bytes, DeadLetter, DeadLetterReason, InvalidMessage, Level, Topic, TopicError,
    WorkQueue,
};
use tokio::sync::watch;

/// Stops its consumer's reader when dropped.
pub(crate) struct StopGuard {
    pub(crate) _stop: watch::Sender<bool>,
}

/// How often a consumer reclaims idle work: twice per lease.
pub(crate) fn reclaim_interval(lease: Duration) -> Duration {
    (lease / 2).max(Duration::from_millis(50))
}

/// The wait before retrying a failed read: 10 ms, doubling up to 2 s.
pub(crate) fn read_retry() -> Retry {
    Retry::new(Duration::from_millis(10), Duration::from_secs(2))
}

/// What ends a reader: its [`Consumer`](aether_core::Consumer) dropped (the
/// [`StopGuard`] with it), or the transport closed or dropped.
pub(crate) struct Halt {
    stop: watch::Receiver<bool>,
    closed: watch::Receiver<bool>,
}

impl Halt {
    pub(crate) fn new(stop: watch::Receiver<bool>, closed: watch::Receiver<bool>) -> Halt {
        Halt { stop, closed }
    }

    /// Resolves when the reader should stop.
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            _ = self.stop.changed() => {}
            _ = self.closed.changed() => {}
        }
    }

    /// Waits for a unit of credit, then takes every other unit free now; `None` if the
    /// reader was halted meanwhile.
    pub(crate) async fn credit(&mut self, credit: &Credit) -> Option<Vec<CreditUnit>> {
        tokio::select! {
            units = credit.take_all() => Some(units),
            _ = self.wait() => None,
        }
    }

    /// Waits before a retry; true if the reader was halted meanwhile.
    pub(crate) async fn pause(&mut self, retry: &mut Retry) -> bool {
        tokio::select! {
            _ = retry.wait() => false,
            _ = self.wait() => true,
        }
    }
}

/// The perform topic of an element of `queue` carrying `tid` (`None`: the element had
/// none, or could not be read).
pub(crate) fn perform_topic(queue: &WorkQueue, tid: Option<&str>) -> Result<Topic, TopicError> {
    match tid {
        Some(tid) => queue.topic(tid, Action::Perform),
        None => Err(TopicError::Empty { level: Level::Tid }),
    }
}

/// An element whose tid does not make a valid topic: moves it to the dead-letter stream
/// through `acker` (which frees its credit once done), and returns what the consumer is
/// told. `topic_prefix` is the queue's `u/j/t/x/`.
pub(crate) fn refuse(
    mut acker: impl Acker + 'static,
    topic_prefix: &str,
    tid: Option<&str>,
    payload: Bytes,
    error: TopicError,
) -> InvalidMessage {
    let raw_topic = format!(
        "{topic_prefix}{}/{}",
        tid.unwrap_or(""),
        Action::Perform.as_str()
    );
    let letter = DeadLetter {
        topic: raw_topic.clone(),
        payload: payload.clone(),
        reason: DeadLetterReason::InvalidTopic(error.to_string()),
    };
    tokio::spawn(async move {
        if let Err(e) = acker.reject(letter).await {
            tracing::warn!(error = %e, "redis: cannot dead-letter an element with an invalid tid");
        }
    });
    InvalidMessage {
        raw_topic,
        payload,
        error,
    }
}
