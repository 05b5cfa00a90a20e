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

/// The tid of an element as read from Redis, which stores bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RawTid {
    /// Text, to be validated as a segment.
    Text(String),
    /// Bytes that are not UTF-8, shown lossily.
    NotUtf8(String),
    /// None at all, or an element that could not be read.
    Missing,
}

impl RawTid {
    /// Reads `bytes` as a tid.
    pub(crate) fn from_bytes(bytes: &[u8]) -> RawTid {
        match std::str::from_utf8(bytes) {
            Ok(s) => RawTid::Text(s.to_owned()),
            Err(_) => RawTid::NotUtf8(String::from_utf8_lossy(bytes).into_owned()),
        }
    }

    /// How it shows in a refused element's raw topic.
    pub(crate) fn shown(&self) -> &str {
        match self {
            RawTid::Text(s) | RawTid::NotUtf8(s) => s,
            RawTid::Missing => "",
        }
    }
}

/// The perform topic of an element of `queue` carrying `tid`.
pub(crate) fn perform_topic(queue: &WorkQueue, tid: &RawTid) -> Result<Topic, TopicError> {
    match tid {
        RawTid::Text(tid) => queue.topic(tid, Action::Perform),
        RawTid::NotUtf8(_) => Err(TopicError::NotUtf8 { level: Level::Tid }),
        RawTid::Missing => Err(TopicError::Empty { level: Level::Tid }),
    }
}

/// An element whose tid does not make a valid topic: moves it to the dead-letter stream
/// through `acker` (which frees its credit once done), and returns what the consumer is
/// told. `topic_prefix` is the queue's `u/j/t/x/`.
pub(crate) fn refuse(
    mut acker: impl Acker + 'static,
    topic_prefix: &str,
    tid: &RawTid,
    payload: Bytes,
    error: TopicError,
) -> InvalidMessage {
    let raw_topic = format!("{topic_prefix}{}/{}", tid.shown(), Action::Perform.as_str());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tids_say_what_is_wrong_with_them() {
        let q = WorkQueue::new("u", "j", "t", "x", "g").unwrap();
        let ok = perform_topic(&q, &RawTid::from_bytes(b"t1")).unwrap();
        assert_eq!(ok.tid(), "t1");
        let bad = RawTid::from_bytes(b"bad\xff");
        assert_eq!(bad.shown(), "bad\u{fffd}");
        let err = perform_topic(&q, &bad).unwrap_err().to_string();
        assert_eq!(err, "the tid segment is not UTF-8");
        let err = perform_topic(&q, &RawTid::Missing).unwrap_err().to_string();
        assert_eq!(err, "the tid segment is empty");
    }
}
