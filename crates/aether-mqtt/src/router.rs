//! The routing table: which broker subscriptions this connection holds, which local
//! subscriptions and consumers each one feeds, and the dispatch of arriving messages.
//!
//! One connection holds one broker subscription per filter, however many local
//! [`Subscription`](aether_core::Subscription)s share it. On MQTT 5 each broker subscription
//! carries a subscription identifier, and the broker tags every message with the
//! identifiers of the subscriptions it matched (Mosquitto sends one copy per matching
//! subscription), so a message reaches exactly the local subscriptions it was sent for. On
//! MQTT 3.1.1 a message goes to every local subscription whose filter matches its topic.
//!
//! Dispatch runs on paho's callback thread and never blocks: a local subscriber whose
//! buffer is full loses the message, and the loss is counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aether_core::kit::Fanout;
use aether_core::{Bytes, InvalidMessage, Message, Received, Topic, TopicFilter, WorkQueue};
use tokio::sync::{mpsc, watch};

use crate::queue::{Job, Slot};

/// The largest MQTT 5 subscription identifier.
const MAX_SUBSCRIPTION_ID: u32 = 268_435_455;

/// The MQTT 5 user property that counts how often a perform was given back to its
/// workgroup.
pub(crate) const REDELIVERIES: &str = "aether-redeliveries";

/// A local subscription or consumer: its broker subscription and its own id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Local {
    pub(crate) sub: u32,
    id: u64,
}

enum Rx {
    Subscription(mpsc::Sender<Received>),
    Consumer(Arc<Slot>),
}

enum Kind {
    Broadcast {
        filter: TopicFilter,
        /// The local subscriptions, each with its gap counter (`Subscription::gaps`):
        /// bumped when a message for it had to be dropped, and after each reconnection.
        subs: Fanout,
    },
    Queue {
        queue: WorkQueue,
        consumers: Vec<(u64, Arc<Slot>)>,
        next: usize,
    },
}

struct Entry {
    /// The filter as sent to the broker (`$share/...` for a queue).
    filter: Box<str>,
    kind: Kind,
}

impl Entry {
    fn is_empty(&self) -> bool {
        match &self.kind {
            Kind::Broadcast { subs, .. } => subs.is_empty(),
            Kind::Queue { consumers, .. } => consumers.is_empty(),
        }
    }

    /// Whether a message on `raw` (parsed as `topic`) belongs to this entry, for messages
    /// that carry no subscription identifier.
    fn matches(&self, raw: &str, topic: Option<&Topic>) -> bool {
        match (&self.kind, topic) {
            (Kind::Broadcast { filter, .. }, Some(t)) => filter.matches(t),
            (Kind::Queue { queue, .. }, Some(t)) => queue.matches(t),
            (_, None) => mqtt_matches(&self.filter, raw),
        }
    }
}

#[derive(Default)]
struct State {
    closed: bool,
    next_sub: u32,
    next_local: u64,
    entries: HashMap<u32, Entry>,
    by_filter: HashMap<Box<str>, u32>,
}

/// The routing table of one connection.
pub(crate) struct Router {
    state: Mutex<State>,
    overflowed: AtomicU64,
}

/// What a message carries besides its topic and payload.
pub(crate) struct Arrival<'a> {
    pub(crate) topic: &'a str,
    pub(crate) payload: Bytes,
    /// MQTT 5 subscription identifiers; empty on 3.1.1.
    pub(crate) subscriptions: &'a [u32],
    pub(crate) redeliveries: u32,
}

impl Router {
    pub(crate) fn new() -> Router {
        Router {
            state: Mutex::new(State::default()),
            overflowed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain data: a panic while holding the lock leaves nothing half-done that matters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Messages lost because a local subscriber's buffer was full.
    pub(crate) fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Adds a local subscription to `filter`; returns it and the broker filter to subscribe.
    /// `None` once closed.
    pub(crate) fn add_subscription(
        &self,
        filter: &TopicFilter,
        tx: mpsc::Sender<Received>,
    ) -> Option<(Local, String)> {
        self.add(filter.as_str(), Rx::Subscription(tx), || Kind::Broadcast {
            filter: filter.clone(),
            subs: Fanout::new(),
        })
    }

    /// Adds a consumer of `queue`; returns it and the broker filter to subscribe. `None`
    /// once closed.
    pub(crate) fn add_consumer(
        &self,
        queue: &WorkQueue,
        slot: Arc<Slot>,
    ) -> Option<(Local, String)> {
        self.add(&shared_subscription(queue), Rx::Consumer(slot), || {
            Kind::Queue {
                queue: queue.clone(),
                consumers: Vec::new(),
                next: 0,
            }
        })
    }

    fn add(&self, filter: &str, rx: Rx, create: impl FnOnce() -> Kind) -> Option<(Local, String)> {
        let mut st = self.lock();
        if st.closed {
            return None;
        }
        st.next_local += 1;
        let id = st.next_local;
        let sub = match st.by_filter.get(filter) {
            Some(&sub) => sub,
            None => {
                let sub = loop {
                    st.next_sub = st.next_sub % MAX_SUBSCRIPTION_ID + 1;
                    if !st.entries.contains_key(&st.next_sub) {
                        break st.next_sub;
                    }
                };
                let entry = Entry {
                    filter: filter.into(),
                    kind: create(),
                };
                st.entries.insert(sub, entry);
                st.by_filter.insert(filter.into(), sub);
                sub
            }
        };
        let entry = st.entries.get_mut(&sub).expect("indexed entry exists");
        // Only queue filters start with `$share/`, so a filter names one kind of entry.
        match (&mut entry.kind, rx) {
            (Kind::Broadcast { subs, filter }, Rx::Subscription(tx)) => {
                subs.add_sender(id, 0, filter.clone(), tx);
            }
            (Kind::Queue { consumers, .. }, Rx::Consumer(tx)) => consumers.push((id, tx)),
            _ => unreachable!("broadcast and queue filters never share a string"),
        }
        Some((Local { sub, id }, filter.to_owned()))
    }

    /// The gap counter of a local subscription.
    pub(crate) fn gaps(&self, local: Local) -> Option<watch::Receiver<u64>> {
        let st = self.lock();
        match &st.entries.get(&local.sub)?.kind {
            Kind::Broadcast { subs, .. } => subs.gaps(local.id),
            Kind::Queue { .. } => None,
        }
    }

    /// Tells every subscription it may have missed messages (after a reconnection).
    pub(crate) fn gap_all(&self) {
        let st = self.lock();
        for entry in st.entries.values() {
            if let Kind::Broadcast { subs, .. } = &entry.kind {
                subs.gap_all();
            }
        }
    }

    /// Removes a local receiver; returns the broker filter to unsubscribe if it was the
    /// last one on it.
    pub(crate) fn remove(&self, local: Local) -> Option<String> {
        let mut st = self.lock();
        let entry = st.entries.get_mut(&local.sub)?;
        match &mut entry.kind {
            Kind::Broadcast { subs, .. } => {
                subs.remove(local.id);
            }
            Kind::Queue { consumers, .. } => consumers.retain(|(id, _)| *id != local.id),
        }
        if !entry.is_empty() {
            return None;
        }
        let entry = st.entries.remove(&local.sub).expect("present");
        st.by_filter.remove(&entry.filter);
        Some(entry.filter.into())
    }

    /// Every broker subscription with its identifier, to restore after a reconnection.
    pub(crate) fn subscriptions(&self) -> Vec<(String, u32)> {
        self.lock()
            .entries
            .iter()
            .map(|(id, e)| (e.filter.to_string(), *id))
            .collect()
    }

    /// Ends every local subscription and consumer (their receivers see the end) and refuses
    /// new ones.
    pub(crate) fn close(&self) {
        let entries = {
            let mut st = self.lock();
            st.closed = true;
            st.by_filter.clear();
            std::mem::take(&mut st.entries)
        };
        // Outside the lock: ending a consumer drops what waited in its line.
        for entry in entries.into_values() {
            if let Kind::Queue { consumers, .. } = entry.kind {
                for (_, slot) in consumers {
                    drop(slot.close());
                }
            }
        }
    }

    /// Routes one arriving message.
    pub(crate) fn dispatch(&self, m: Arrival<'_>) {
        let parsed = m.topic.parse::<Topic>();
        let mut st = self.lock();
        if st.closed {
            return;
        }
        let mut lost = 0u64;
        if m.subscriptions.is_empty() {
            let topic = parsed.as_ref().ok();
            for entry in st.entries.values_mut() {
                if entry.matches(m.topic, topic) {
                    lost += deliver(entry, &m, &parsed);
                }
            }
        } else {
            for id in m.subscriptions {
                if let Some(entry) = st.entries.get_mut(id) {
                    lost += deliver(entry, &m, &parsed);
                }
            }
        }
        drop(st);
        if lost > 0 {
            let total = self.overflowed.fetch_add(lost, Ordering::Relaxed) + lost;
            // Once, then every 1,000 losses: a stuck subscriber must not flood the log.
            if total == lost || total / 1000 != (total - lost) / 1000 {
                tracing::warn!(
                    topic = m.topic,
                    total,
                    "a subscriber's buffer is full; messages dropped"
                );
            }
        }
    }
}

/// Hands a message to the receivers of one entry; returns how many copies were lost.
fn deliver(
    entry: &mut Entry,
    m: &Arrival<'_>,
    parsed: &Result<Topic, aether_core::TopicError>,
) -> u64 {
    match &mut entry.kind {
        Kind::Broadcast { subs, .. } => {
            let item: Received = match parsed {
                Ok(topic) => Ok(Message {
                    topic: topic.clone(),
                    payload: m.payload.clone(),
                }),
                Err(e) => Err(invalid(m, e)),
            };
            // Routed to this entry already: every subscription of it wants the message.
            subs.offer_where(&item, |_| true)
        }
        Kind::Queue {
            consumers, next, ..
        } => {
            let mut job = match parsed {
                Ok(topic) => Job {
                    topic: topic.clone(),
                    payload: m.payload.clone(),
                    redeliveries: m.redeliveries,
                },
                Err(e) => {
                    // Refused by the grammar: dead-lettered, reported to one consumer.
                    if let Some((_, slot)) = consumers.get(*next % consumers.len().max(1)) {
                        slot.refuse(invalid(m, e));
                    }
                    return 0;
                }
            };
            // Round-robin: a consumer with credit first, else one with room in its line.
            let n = consumers.len();
            for with_credit in [true, false] {
                for i in 0..n {
                    let idx = (*next + i) % n;
                    let slot = &consumers[idx].1;
                    if with_credit && !slot.has_credit() {
                        continue;
                    }
                    match slot.offer(job) {
                        Ok(()) => {
                            *next = idx + 1;
                            return 0;
                        }
                        Err(back) => job = back,
                    }
                }
            }
            1
        }
    }
}

fn invalid(m: &Arrival<'_>, error: &aether_core::TopicError) -> InvalidMessage {
    InvalidMessage {
        raw_topic: m.topic.to_owned(),
        payload: m.payload.clone(),
        error: error.clone(),
    }
}

/// The shared-subscription filter of `queue`, the one Python AetherMagic's workers use:
/// `$share/{union}_{job}_{workgroup}/{union}/{job}/{task}/{context}/+/perform`.
///
/// ```
/// use aether_core::WorkQueue;
///
/// let q = WorkQueue::new("u3", "interop", "echo", "x", "workgroup")?;
/// assert_eq!(
///     aether_mqtt::shared_subscription(&q),
///     "$share/u3_interop_workgroup/u3/interop/echo/x/+/perform"
/// );
/// # Ok::<(), aether_core::TopicError>(())
/// ```
pub fn shared_subscription(queue: &WorkQueue) -> String {
    format!(
        "$share/{u}_{j}_{w}/{u}/{j}/{t}/{c}/+/perform",
        u = queue.union(),
        j = queue.job(),
        w = queue.workgroup(),
        t = queue.task(),
        c = queue.context()
    )
}

/// MQTT topic matching of a raw topic against a broker filter (`$share/{group}/` stripped).
pub(crate) fn mqtt_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    };
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival<'a>(topic: &'a str, subs: &'a [u32]) -> Arrival<'a> {
        Arrival {
            topic,
            payload: Bytes::from_static(b"p"),
            subscriptions: subs,
            redeliveries: 0,
        }
    }

    #[test]
    fn raw_matching() {
        for (filter, topic, want) in [
            ("a/+/c", "a/b/c", true),
            ("a/#", "a/b/c", true),
            ("a/+", "a/b/c", false),
            ("$share/g/a/+/c", "a/b/c", true),
            ("$share/g/a/+/c", "a/b/d", false),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
        ] {
            assert_eq!(mqtt_matches(filter, topic), want, "{filter} {topic}");
        }
    }

    #[test]
    fn one_broker_subscription_per_filter() {
        let r = Router::new();
        let f: TopicFilter = "u/j/t/x/+/status".parse().unwrap();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        let (a, fa) = r.add_subscription(&f, tx1).unwrap();
        let (b, fb) = r.add_subscription(&f, tx2).unwrap();
        assert_eq!((a.sub, fa.as_str()), (b.sub, fb.as_str()));
        r.dispatch(arrival("u/j/t/x/1/status", &[a.sub]));
        assert!(rx1.try_recv().unwrap().is_ok());
        assert!(rx2.try_recv().unwrap().is_ok());
        assert_eq!(r.remove(a), None, "b still uses the broker subscription");
        assert_eq!(r.remove(b).as_deref(), Some("u/j/t/x/+/status"));
        assert!(r.subscriptions().is_empty());
    }

    #[test]
    fn subscription_ids_route_exactly() {
        let r = Router::new();
        let (tx1, mut narrow) = mpsc::channel(4);
        let (tx2, mut wide) = mpsc::channel(4);
        let (a, _) = r
            .add_subscription(&"u/j/t/x/+/status".parse().unwrap(), tx1)
            .unwrap();
        let (b, _) = r.add_subscription(&"u/#".parse().unwrap(), tx2).unwrap();
        // MQTT 5: the broker sends one copy per matching subscription, each tagged.
        r.dispatch(arrival("u/j/t/x/1/status", &[a.sub]));
        r.dispatch(arrival("u/j/t/x/1/status", &[b.sub]));
        assert!(narrow.try_recv().is_ok() && narrow.try_recv().is_err());
        assert!(wide.try_recv().is_ok() && wide.try_recv().is_err());
        // MQTT 3.1.1: one copy, routed by topic.
        r.dispatch(arrival("u/j/t/x/1/status", &[]));
        assert!(narrow.try_recv().is_ok() && wide.try_recv().is_ok());
        // An invalid topic reaches the subscriptions that match it raw.
        r.dispatch(arrival("u/j/t/x/a.b/status", &[]));
        assert!(narrow.try_recv().unwrap().is_err());
        assert!(wide.try_recv().unwrap().is_err());
    }

    #[tokio::test]
    async fn queues_hand_out_by_credit_then_line() {
        let r = Router::new();
        let q = WorkQueue::new("u", "j", "t", "x", "workgroup").unwrap();
        let (s1, mut c1) = Slot::new(std::sync::Weak::new(), 1, 1);
        let (s2, mut c2) = Slot::new(std::sync::Weak::new(), 1, 1);
        let (a, filter) = r.add_consumer(&q, s1).unwrap();
        r.add_consumer(&q, s2).unwrap();
        assert_eq!(filter, "$share/u_j_workgroup/u/j/t/x/+/perform");
        for tid in ["1", "2", "3", "4", "5"] {
            r.dispatch(arrival(&format!("u/j/t/x/{tid}/perform"), &[a.sub]));
        }
        // One delivery each (prefetch 1), one waiting each (line 1), the fifth lost.
        let d1 = c1.try_recv().unwrap().unwrap();
        let d2 = c2.try_recv().unwrap().unwrap();
        assert_eq!((d1.topic.tid(), d2.topic.tid()), ("1", "2"));
        assert!(c1.try_recv().is_err() && c2.try_recv().is_err());
        assert_eq!(r.overflowed(), 1);
        // Settling frees the credit for the next in line.
        d1.ack().await.unwrap();
        assert_eq!(c1.try_recv().unwrap().unwrap().topic.tid(), "3");
        r.close();
        assert!(
            r.add_consumer(&q, Slot::new(std::sync::Weak::new(), 1, 1).0)
                .is_none()
        );
        drop(d2);
    }
}
