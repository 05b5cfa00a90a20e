//! [`Outlet`]: the channel from a reader to its [`Consumer`](crate::Consumer).

use tokio::sync::mpsc;

use crate::transport::{Consumed, Delivery, InvalidMessage};

/// Room in a consumer's channel beyond its prefetch, for reports of refused messages
/// (which hold no credit once dead-lettered).
pub const REFUSED_SLACK: usize = 16;

/// The sending end of a consumer's channel, sized so a delivery holding a unit of
/// [`Credit`](super::Credit) always finds room: handing out never waits, so it can run on
/// a broker client's callback thread or under a lock.
///
/// ```
/// # use aether_core::kit::Outlet;
/// # use aether_core::Consumer;
/// let (outlet, rx) = Outlet::new(8);
/// let consumer = Consumer::new(rx, None); // with the adapter's guard
/// assert!(!outlet.is_closed());
/// drop(consumer);
/// assert!(outlet.is_closed());
/// ```
#[derive(Clone, Debug)]
pub struct Outlet {
    tx: mpsc::Sender<Consumed>,
    prefetch: usize,
}

impl Outlet {
    /// A channel for `prefetch` deliveries and [`REFUSED_SLACK`] reports; its receiving
    /// end goes into the [`Consumer`](crate::Consumer) ([`Consumer::new`](crate::Consumer::new),
    /// with the adapter's guard).
    pub fn new(prefetch: usize) -> (Outlet, mpsc::Receiver<Consumed>) {
        let prefetch = prefetch.max(1);
        let (tx, rx) = mpsc::channel(prefetch + REFUSED_SLACK);
        (Outlet { tx, prefetch }, rx)
    }

    /// Hands out a delivery that holds a unit of credit. If the consumer is gone the
    /// delivery is dropped, so its acker gives it back; returns whether it was handed out.
    pub fn deliver(&self, delivery: Delivery) -> bool {
        self.tx.try_send(Ok(delivery)).is_ok()
    }

    /// Tells the consumer of a message that was refused (and dead-lettered), while that
    /// leaves room for the whole credit: reports a consumer does not read must not crowd
    /// deliveries out. Returns whether it was reported.
    pub fn report(&self, invalid: InvalidMessage) -> bool {
        if self.tx.capacity() <= self.prefetch {
            tracing::warn!(topic = %invalid.raw_topic, "a refused message was not reported: the consumer is behind");
            return false;
        }
        self.tx.try_send(Err(invalid)).is_ok()
    }

    /// Whether the consumer is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the consumer is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bytes;
    use crate::error::{Level, TopicError};
    use crate::transport::Consumer;

    #[tokio::test]
    async fn unread_reports_leave_room_for_the_whole_credit() {
        let prefetch = 3;
        let (outlet, rx) = Outlet::new(prefetch);
        let mut consumer = Consumer::new(rx, None);
        let mut reported = 0;
        for _ in 0..100 {
            let report = InvalidMessage {
                raw_topic: "u/j/t/x/a.b/perform".into(),
                payload: Bytes::new(),
                error: TopicError::Empty { level: Level::Tid },
            };
            reported += usize::from(outlet.report(report));
        }
        assert_eq!(reported, REFUSED_SLACK);
        assert_eq!(
            outlet.tx.capacity(),
            prefetch,
            "room for every unit of credit"
        );
        for _ in 0..REFUSED_SLACK {
            assert!(consumer.next().await.unwrap().is_err());
        }
    }
}
