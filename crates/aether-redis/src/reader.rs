//! What the readers of both work-queue modes ([`crate::streams`], [`crate::list`]) share:
//! when to stop, the prefetch credit, the backoff between failed reads, and the handling
//! of an element whose topic does not parse.

use std::sync::Arc;
use std::time::Duration;

use aether_core::{
    Acker, Action, Bytes, Consumed, DeadLetter, DeadLetterReason, InvalidMessage, Level, Topic,
    TopicError, WorkQueue,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// Room in a consumer's channel beyond its prefetch, for reports of refused elements (which
/// hold no credit once dead-lettered).
const REFUSED_SLACK: usize = 16;

/// Stops its consumer's reader when dropped.
pub(crate) struct StopGuard {
    pub(crate) _stop: watch::Sender<bool>,
}

/// How often a consumer reclaims idle work: twice per lease.
pub(crate) fn reclaim_interval(lease: Duration) -> Duration {
    (lease / 2).max(Duration::from_millis(50))
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
}

/// The channel to a [`Consumer`](aether_core::Consumer): room for its whole credit and for
/// a few reports of refused elements.
pub(crate) fn channel(prefetch: usize) -> (mpsc::Sender<Consumed>, mpsc::Receiver<Consumed>) {
    mpsc::channel(prefetch + REFUSED_SLACK)
}

/// Hands `item` to the consumer without waiting. A delivery holds a unit of credit, so it
/// always finds room; it is lost only if the consumer is gone (and then given back by its
/// acker's `Drop`). A report of a refused element goes only while it leaves room for the
/// whole credit: reports the consumer does not read must not crowd deliveries out. The
/// refused element is dead-lettered either way.
pub(crate) fn hand(tx: &mpsc::Sender<Consumed>, item: Consumed, prefetch: usize) {
    if item.is_err() && tx.capacity() <= prefetch {
        tracing::warn!("redis: a refused element was not reported: the consumer is behind");
        return;
    }
    let _ = tx.try_send(item);
}

/// A consumer's prefetch credit: one permit per delivery outstanding.
pub(crate) struct Credit {
    permits: Arc<Semaphore>,
    prefetch: usize,
}

impl Credit {
    pub(crate) fn new(prefetch: usize) -> Credit {
        Credit {
            permits: Arc::new(Semaphore::new(prefetch)),
            prefetch,
        }
    }

    /// The most units there are.
    pub(crate) fn prefetch(&self) -> usize {
        self.prefetch
    }

    /// Waits for a unit of credit, then takes every other unit free now; `None` if the
    /// reader was halted meanwhile.
    pub(crate) async fn take(&self, halt: &mut Halt) -> Option<Vec<OwnedSemaphorePermit>> {
        let first = tokio::select! {
            p = self.permits.clone().acquire_owned() => p.expect("never closed"),
            _ = halt.wait() => return None,
        };
        let mut permits = vec![first];
        while permits.len() < self.prefetch {
            match self.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        Some(permits)
    }
}

/// The wait before retrying a failed read: 10 ms, doubling up to 2 s.
pub(crate) struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);

    pub(crate) fn new() -> Backoff {
        Backoff(Backoff::FIRST)
    }

    /// A read succeeded: the next failure waits the shortest again.
    pub(crate) fn reset(&mut self) {
        self.0 = Backoff::FIRST;
    }

    /// Waits before a retry; true if the reader was halted meanwhile.
    pub(crate) async fn pause(&mut self, halt: &mut Halt) -> bool {
        let delay = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = halt.wait() => true,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unread_refusal_reports_leave_room_for_the_whole_credit() {
        let prefetch = 3;
        let (tx, mut rx) = channel(prefetch);
        for _ in 0..100 {
            let report = InvalidMessage {
                raw_topic: "u/j/t/x/a.b/perform".into(),
                payload: Bytes::new(),
                error: TopicError::Empty { level: Level::Tid },
            };
            hand(&tx, Err(report), prefetch);
        }
        assert_eq!(
            tx.capacity(),
            prefetch,
            "room left for every unit of credit"
        );
        let mut reports = 0;
        while rx.try_recv().is_ok() {
            reports += 1;
        }
        assert_eq!(reports, REFUSED_SLACK);
    }
}
