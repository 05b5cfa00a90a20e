//! [`Peer`]: what the device knows of one connected DEALER.

use std::collections::{HashMap, VecDeque};

use aether_core::{Delivery, Topic, TopicFilter};
use bytes::Bytes;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::wire::ToPeer;

/// Most messages that must not be lost (deliveries, answers) waiting for a peer whose
/// socket queue is full or who is reconnecting; past it the peer is dropped as dead.
pub(crate) const OUTBOX_LIMIT: usize = 65_536;

/// One peer's session on the device.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Its routing id.
    pub(crate) id: Bytes,
    /// Its number for the engine's consumers ([`QueueEngine::disconnect`]).
    ///
    /// [`QueueEngine::disconnect`]: aether_core::kit::QueueEngine::disconnect
    pub(crate) owner: u64,
    /// This session, sent in every heartbeat; a peer that sees another one starts over.
    pub(crate) session: u64,
    /// The number of the last broadcast sent to it.
    pub(crate) seq: u64,
    /// When it was last heard from.
    pub(crate) last_heard: Instant,
    /// Its subscriptions, by its own ids.
    pub(crate) subs: Vec<(u64, TopicFilter)>,
    /// Its consumers, by its own ids: the task forwarding each engine consumer's handouts.
    pub(crate) consumers: HashMap<u64, AbortHandle>,
    /// The performs handed to it and not yet settled, by delivery id.
    pub(crate) held: super::core::FastMap<u64, Delivery>,
    /// The id of its next delivery.
    pub(crate) next_delivery: u64,
    /// Messages that must not be lost, waiting for room in its socket queue.
    pub(crate) outbox: VecDeque<ToPeer>,
}

impl Peer {
    pub(crate) fn new(id: Bytes, owner: u64, session: u64, now: Instant) -> Peer {
        Peer {
            id,
            owner,
            session,
            seq: 0,
            last_heard: now,
            subs: Vec::new(),
            consumers: HashMap::new(),
            held: Default::default(),
            next_delivery: 1,
            outbox: VecDeque::new(),
        }
    }

    /// Whether any of its filters matches `topic`.
    pub(crate) fn wants(&self, topic: &Topic) -> bool {
        self.subs.iter().any(|(_, f)| f.matches(topic))
    }

    /// Adds or replaces subscription `id`.
    pub(crate) fn subscribe(&mut self, id: u64, filter: TopicFilter) {
        match self.subs.iter_mut().find(|(s, _)| *s == id) {
            Some(entry) => entry.1 = filter,
            None => self.subs.push((id, filter)),
        }
    }

    /// Stops forwarding its consumers' work; what they held in the engine goes back.
    pub(crate) fn stop_consumers(&mut self) {
        for (_, task) in self.consumers.drain() {
            task.abort();
        }
    }

    /// A routing id for logs: printable, short.
    pub(crate) fn label(id: &Bytes) -> String {
        id.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}
