//! [`Fanout`]: local subscriptions, matched by filter, each with its gap counter.

use std::fmt;

use tokio::sync::{mpsc, watch};

use crate::topic::{Topic, TopicFilter};
use crate::transport::Received;

/// The local subscriptions a transport feeds: each with its filter, its buffer and its gap
/// counter ([`Subscription::gaps`](crate::Subscription::gaps)). Plain data: the adapter keeps it under its own lock
/// and decides what happens when a subscriber is full:
///
/// - [`offer`](Fanout::offer) never waits: a full subscriber loses the message and counts
///   a gap (for dispatch on a broker client's callback thread);
/// - [`senders`](Fanout::senders) gives the channels to `send().await` on outside the
///   lock, so a slow subscriber holds the publisher up instead of losing anything.
///
/// After a reconnection, [`gap_all`](Fanout::gap_all) tells every subscriber it may have
/// missed messages.
///
/// ```
/// use aether_core::kit::Fanout;
/// use aether_core::{Bytes, Message, Topic};
///
/// let mut fanout = Fanout::new();
/// let (_status, _gaps) = fanout.subscribe(1, 0, "u/j/t/x/+/status".parse()?, 8);
/// let (_all, all_gaps) = fanout.subscribe(2, 0, "u/#".parse()?, 1);
/// let topic: Topic = "u/j/t/x/1/status".parse()?;
/// let msg = Ok(Message { topic: topic.clone(), payload: Bytes::new() });
/// assert_eq!(fanout.offer(&topic, &msg), 0);
/// assert_eq!(fanout.offer(&topic, &msg), 1, "the second subscriber's buffer holds one");
/// assert_eq!(*all_gaps.borrow(), 1);
/// # Ok::<(), aether_core::TopicError>(())
/// ```
#[derive(Default)]
pub struct Fanout {
    subs: Vec<Sub>,
}

struct Sub {
    id: u64,
    owner: u64,
    filter: TopicFilter,
    tx: mpsc::Sender<Received>,
    gaps: watch::Sender<u64>,
}

impl Fanout {
    /// No subscriptions.
    pub fn new() -> Fanout {
        Fanout::default()
    }

    /// Adds subscription `id` of `owner` (a connection, for
    /// [`remove_owner`](Fanout::remove_owner)) to `filter`, buffering `capacity` messages;
    /// returns the receiving end for [`Subscription::new`](crate::Subscription::new) (with the adapter's guard) and
    /// the gap counter to attach with [`Subscription::with_gaps`](crate::Subscription::with_gaps) where the transport
    /// reports gaps.
    pub fn subscribe(
        &mut self,
        id: u64,
        owner: u64,
        filter: TopicFilter,
        capacity: usize,
    ) -> (mpsc::Receiver<Received>, watch::Receiver<u64>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (rx, self.add_sender(id, owner, filter, tx))
    }

    /// [`subscribe`](Fanout::subscribe) with a channel the adapter made; returns the gap
    /// counter.
    pub fn add_sender(
        &mut self,
        id: u64,
        owner: u64,
        filter: TopicFilter,
        tx: mpsc::Sender<Received>,
    ) -> watch::Receiver<u64> {
        let gaps = watch::Sender::new(0);
        let gaps_rx = gaps.subscribe();
        self.subs.push(Sub {
            id,
            owner,
            filter,
            tx,
            gaps,
        });
        gaps_rx
    }

    /// Removes subscription `id`; returns whether none is left.
    pub fn remove(&mut self, id: u64) -> bool {
        self.subs.retain(|s| s.id != id);
        self.subs.is_empty()
    }

    /// Removes every subscription of `owner` (its connection closed).
    pub fn remove_owner(&mut self, owner: u64) {
        self.subs.retain(|s| s.owner != owner);
    }

    /// Ends every subscription: their `next` returns `None` once drained.
    pub fn clear(&mut self) {
        self.subs.clear();
    }

    /// Whether there is no subscription.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// The gap counter of subscription `id`.
    pub fn gaps(&self, id: u64) -> Option<watch::Receiver<u64>> {
        self.subs
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.gaps.subscribe())
    }

    /// Hands `item` (received on `topic`) to every subscription whose filter matches,
    /// without waiting. A full subscription loses it and counts a gap; returns how many
    /// lost it.
    pub fn offer(&self, topic: &Topic, item: &Received) -> u64 {
        self.offer_where(item, |f| f.matches(topic))
    }

    /// [`offer`](Fanout::offer) to the subscriptions whose filter `wanted` accepts (all of
    /// them for `|_| true`, when the broker already routed by subscription).
    pub fn offer_where(&self, item: &Received, wanted: impl Fn(&TopicFilter) -> bool) -> u64 {
        let mut lost = 0;
        for s in self.subs.iter().filter(|s| wanted(&s.filter)) {
            // A closed receiver has unsubscribed; its guard removes it.
            if let Err(mpsc::error::TrySendError::Full(_)) = s.tx.try_send(item.clone()) {
                lost += 1;
                s.gaps.send_modify(|n| *n += 1);
            }
        }
        lost
    }

    /// The channels of the subscriptions whose filter matches `topic`, to send to (and
    /// wait on) outside the adapter's lock.
    pub fn senders(&self, topic: &Topic) -> Vec<mpsc::Sender<Received>> {
        self.senders_where(|f| f.matches(topic))
    }

    /// The channels of the subscriptions whose filter `wanted` accepts.
    pub fn senders_where(
        &self,
        wanted: impl Fn(&TopicFilter) -> bool,
    ) -> Vec<mpsc::Sender<Received>> {
        self.subs
            .iter()
            .filter(|s| wanted(&s.filter))
            .map(|s| s.tx.clone())
            .collect()
    }

    /// Counts a gap on every subscription (after a reconnection: whatever was published
    /// meanwhile is lost).
    pub fn gap_all(&self) {
        for s in &self.subs {
            s.gaps.send_modify(|n| *n += 1);
        }
    }
}

impl fmt::Debug for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fanout")
            .field("subscriptions", &self.subs.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bytes;
    use crate::transport::Message;

    fn msg(topic: &Topic) -> Received {
        Ok(Message {
            topic: topic.clone(),
            payload: Bytes::new(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn routes_by_filter_counts_losses_and_gaps() {
        let mut fanout = Fanout::new();
        let (mut narrow, narrow_gaps) =
            fanout.subscribe(1, 7, "u/j/t/x/+/status".parse().unwrap(), 1);
        let (mut wide, wide_gaps) = fanout.subscribe(2, 8, "u/#".parse().unwrap(), 4);
        let status: Topic = "u/j/t/x/1/status".parse().unwrap();
        let complete: Topic = "u/j/t/x/1/complete".parse().unwrap();
        // (topic, lost, narrow gaps after, wide gaps after)
        let table = [
            (&status, 0, 0, 0),
            (&complete, 0, 0, 0),
            (&status, 1, 1, 0), // narrow holds one
        ];
        for (i, (topic, lost, ng, wg)) in table.into_iter().enumerate() {
            assert_eq!(fanout.offer(topic, &msg(topic)), lost, "step {i}");
            assert_eq!(*narrow_gaps.borrow(), ng, "step {i}");
            assert_eq!(*wide_gaps.borrow(), wg, "step {i}");
        }
        assert_eq!(fanout.senders(&complete).len(), 1);
        fanout.gap_all();
        assert_eq!((*narrow_gaps.borrow(), *wide_gaps.borrow()), (2, 1));
        assert!(narrow.recv().await.unwrap().is_ok());
        for _ in 0..3 {
            assert!(wide.recv().await.unwrap().is_ok());
        }
        fanout.remove_owner(7);
        assert!(fanout.remove(2), "none left");
        assert!(narrow.recv().await.is_none() && wide.recv().await.is_none());
    }
}
