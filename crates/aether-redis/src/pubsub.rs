//! Broadcast over `PUBLISH` / `SUBSCRIBE` / `PSUBSCRIBE` on `:`-joined channel names.
//!
//! Redis sends a connection one `pmessage` per subscribed pattern that matches a channel,
//! and fred does not say which pattern matched. So a connection ("lane") only ever holds
//! patterns that no topic can match together: a pattern that overlaps one already on a
//! lane goes to another lane (a new connection, made when first needed). Each `pmessage`
//! then belongs to exactly one pattern of its lane, and each subscription sees each
//! message once. Exact filters use `SUBSCRIBE` on the first lane; Redis marks those
//! `message`, so they never mix with patterns.
//!
//! After a reconnection each lane subscribes again to everything it had; until it has,
//! the lane counts as unhealthy and [`Broadcast::ready`] waits, so a perform is not sent
//! while the replies to it could not be heard. Once it has, each of its subscriptions is
//! told of the gap ([`Subscription::gaps`]), so clients can dispatch again the tasks whose
//! replies may have been published meanwhile.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use aether_core::kit::{Fanout, Retry};
use aether_core::{Error, InvalidMessage, Message, Received, Result, Subscription, TopicFilter};
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::{MessageKind, Value};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::connect::{Connector, redis_err};
use crate::keys;

/// The subscriptions of one transport, over one or more subscriber connections.
pub(crate) struct Broadcast {
    connector: Connector,
    capacity: usize,
    /// Serializes changes of what the server is subscribed to.
    ops: tokio::sync::Mutex<()>,
    lanes: Mutex<Vec<Arc<Lane>>>,
    ids: AtomicU64,
    health: Arc<Health>,
    closed: AtomicBool,
}

/// How many lanes are not (re)subscribed yet.
#[derive(Default)]
struct Health {
    unhealthy: AtomicUsize,
    changed: Notify,
}

/// One subscriber connection and what it routes.
struct Lane {
    client: SubscriberClient,
    routes: Mutex<Routes>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    healthy: AtomicBool,
}

#[derive(Default)]
struct Routes {
    /// Exact channels (`SUBSCRIBE`).
    exact: HashMap<String, Fanout>,
    /// Patterns (`PSUBSCRIBE`), pairwise disjoint.
    patterns: Vec<PatternRoute>,
}

struct PatternRoute {
    filter: TopicFilter,
    glob: String,
    /// The local subscriptions, each with its gap counter: bumped after each
    /// resubscription following a reconnection, and when the lane fell behind.
    sinks: Fanout,
}

impl Broadcast {
    pub(crate) fn new(connector: Connector, capacity: usize) -> Broadcast {
        Broadcast {
            connector,
            capacity: capacity.max(1),
            ops: tokio::sync::Mutex::new(()),
            lanes: Mutex::new(Vec::new()),
            ids: AtomicU64::new(1),
            health: Arc::default(),
            closed: AtomicBool::new(false),
        }
    }

    /// Subscribes to `filter`; active on the server when this returns.
    pub(crate) async fn subscribe(self: &Arc<Self>, filter: &TopicFilter) -> Result<Subscription> {
        let _ops = self.ops.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let (tx, rx) = mpsc::channel(self.capacity);
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let exact = !filter.has_wildcards();
        let glob = keys::glob(filter);

        // Where it goes, and whether the server must be told.
        let placed = {
            let lanes = lock(&self.lanes);
            if exact {
                lanes.first().cloned().map(|lane| {
                    let fresh = !lock(&lane.routes).exact.contains_key(&glob);
                    (lane, fresh)
                })
            } else {
                let same = lanes
                    .iter()
                    .find(|l| lock(&l.routes).patterns.iter().any(|p| p.glob == glob));
                match same {
                    Some(lane) => Some((lane.clone(), false)),
                    None => lanes
                        .iter()
                        .find(|l| {
                            !lock(&l.routes)
                                .patterns
                                .iter()
                                .any(|p| overlap(&p.filter, filter))
                        })
                        .map(|lane| (lane.clone(), true)),
                }
            }
        };
        let (lane, fresh) = match placed {
            Some(p) => p,
            None => {
                let lane = self.new_lane().await?;
                lock(&self.lanes).push(lane.clone());
                (lane, true)
            }
        };
        let gaps = {
            let mut routes = lock(&lane.routes);
            let sinks = if exact {
                routes.exact.entry(glob.clone()).or_default()
            } else {
                let at = match routes.patterns.iter().position(|p| p.glob == glob) {
                    Some(at) => at,
                    None => {
                        routes.patterns.push(PatternRoute {
                            filter: filter.clone(),
                            glob: glob.clone(),
                            sinks: Fanout::new(),
                        });
                        routes.patterns.len() - 1
                    }
                };
                &mut routes.patterns[at].sinks
            };
            sinks.add_sender(id, 0, filter.clone(), tx)
        };
        if fresh {
            let done = if exact {
                lane.client.subscribe(glob.as_str()).await
            } else {
                lane.client.psubscribe(glob.as_str()).await
            };
            // fred does not wait for the server's confirmation of a (P)SUBSCRIBE; the
            // answer to a PING sent after it on the same connection proves it is active.
            let done = match done {
                Ok(()) => lane.client.ping::<Value>(None).await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                let mut routes = lock(&lane.routes);
                routes.remove_sink(&glob, exact, id);
                routes.remove_if_unused(&glob, exact);
                return Err(redis_err(e));
            }
        }
        let guard = SubGuard {
            broadcast: Arc::downgrade(self),
            lane: Arc::downgrade(&lane),
            glob,
            exact,
            id,
        };
        Ok(Subscription::new(rx, Some(Box::new(guard))).with_gaps(gaps))
    }

    async fn new_lane(&self) -> Result<Arc<Lane>> {
        let client = self.connector.subscriber();
        let messages = client.message_rx();
        let errors = client.error_rx();
        let reconnects = client.reconnect_rx();
        client.init().await.map_err(redis_err)?;
        let lane = Arc::new(Lane {
            client,
            routes: Mutex::default(),
            tasks: Mutex::default(),
            healthy: AtomicBool::new(true),
        });
        let dispatch = tokio::spawn(dispatch_loop(Arc::downgrade(&lane), messages));
        let health = tokio::spawn(health_loop(
            Arc::downgrade(&lane),
            self.health.clone(),
            errors,
            reconnects,
        ));
        lock(&lane.tasks).extend([dispatch, health]);
        Ok(lane)
    }

    /// Waits (at most `limit`) until every lane is subscribed again after a reconnection.
    pub(crate) async fn ready(&self, limit: Duration) -> Result<()> {
        if self.health.unhealthy.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let wait = async {
            loop {
                let changed = self.health.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.health.unhealthy.load(Ordering::Acquire) == 0 {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .map_err(|_| Error::Timeout("redis: subscribing again after a reconnection"))
    }

    /// Ends every subscription and closes the subscriber connections.
    pub(crate) async fn close(&self) {
        let _ops = self.ops.lock().await;
        self.closed.store(true, Ordering::Release);
        let lanes = std::mem::take(&mut *lock(&self.lanes));
        for lane in lanes {
            lane.shut();
            let _ = lane.client.quit().await;
        }
    }
}

impl fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcast")
            .field("lanes", &lock(&self.lanes).len())
            .finish_non_exhaustive()
    }
}

impl Drop for Broadcast {
    fn drop(&mut self) {
        for lane in std::mem::take(&mut *lock(&self.lanes)) {
            lane.shut();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = lane.client.quit().await;
                });
            }
        }
    }
}

impl Lane {
    /// Counts a gap on every subscription of the lane.
    fn gap(&self) {
        let routes = lock(&self.routes);
        for sinks in routes.exact.values() {
            sinks.gap_all();
        }
        for p in &routes.patterns {
            p.sinks.gap_all();
        }
    }

    /// Stops routing: every subscription on the lane ends.
    fn shut(&self) {
        *lock(&self.routes) = Routes::default();
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    /// Subscribes again to everything the lane routes, and waits until the server has.
    async fn resubscribe(&self) -> Result<(), fred::error::Error> {
        let (channels, patterns): (Vec<String>, Vec<String>) = {
            let routes = lock(&self.routes);
            (
                routes.exact.keys().cloned().collect(),
                routes.patterns.iter().map(|p| p.glob.clone()).collect(),
            )
        };
        if !channels.is_empty() {
            self.client.subscribe(channels).await?;
        }
        if !patterns.is_empty() {
            self.client.psubscribe(patterns).await?;
        }
        self.client.ping::<Value>(None).await.map(drop)
    }

    fn mark(&self, health: &Health, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            if healthy {
                health.unhealthy.fetch_sub(1, Ordering::AcqRel);
                health.changed.notify_waiters();
            } else {
                health.unhealthy.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    async fn dispatch(&self, msg: fred::types::Message) {
        let payload = value_bytes(msg.value);
        let channel: &str = &msg.channel;
        let parsed = keys::parse_channel(channel);
        let targets: Vec<mpsc::Sender<Received>> = {
            let routes = lock(&self.routes);
            match (msg.kind, &parsed) {
                (MessageKind::Message, _) => {
                    routes.exact.get(channel).map(every).unwrap_or_default()
                }
                (MessageKind::PMessage, Ok(topic)) => routes
                    .patterns
                    .iter()
                    .find(|p| p.filter.matches(topic))
                    .map(|p| every(&p.sinks))
                    .unwrap_or_default(),
                // A channel that is not a topic (sent by someone else) but matched a glob:
                // handed over as invalid, to be counted and dropped.
                (MessageKind::PMessage, Err(_)) => routes
                    .patterns
                    .iter()
                    .filter(|p| glob_match(&p.glob, channel))
                    .flat_map(|p| every(&p.sinks))
                    .collect(),
                _ => Vec::new(),
            }
        };
        for tx in targets {
            let item = match &parsed {
                Ok(topic) => Ok(Message {
                    topic: topic.clone(),
                    payload: payload.clone(),
                }),
                Err(error) => Err(InvalidMessage {
                    raw_topic: channel.to_owned(),
                    payload: payload.clone(),
                    error: error.clone(),
                }),
            };
            // A full subscription holds up this lane (Redis and fred buffer meanwhile)
            // rather than losing the message.
            if let Err(mpsc::error::TrySendError::Full(item)) = tx.try_send(item) {
                let _ = tx.send(item).await;
            }
        }
    }
}

impl Routes {
    /// Removes sink `id` from a route; returns whether the route is left without sinks.
    fn remove_sink(&mut self, glob: &str, exact: bool, id: u64) -> bool {
        let sinks = if exact {
            self.exact.get_mut(glob)
        } else {
            self.patterns
                .iter_mut()
                .find(|p| p.glob == glob)
                .map(|p| &mut p.sinks)
        };
        match sinks {
            Some(sinks) => sinks.remove(id),
            None => false,
        }
    }

    /// Drops a route that has no sinks; returns whether it did.
    fn remove_if_unused(&mut self, glob: &str, exact: bool) -> bool {
        if exact {
            if self.exact.get(glob).is_some_and(Fanout::is_empty) {
                self.exact.remove(glob);
                return true;
            }
        } else if let Some(i) = self
            .patterns
            .iter()
            .position(|p| p.glob == glob && p.sinks.is_empty())
        {
            self.patterns.remove(i);
            return true;
        }
        false
    }
}

async fn dispatch_loop(
    lane: Weak<Lane>,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let msg = match messages.recv().await {
            Ok(msg) => msg,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    lost = n,
                    "redis: subscriptions fell behind; broadcast messages lost"
                );
                // Which subscriptions lost them is unknown: a gap for every one on the lane.
                if let Some(lane) = lane.upgrade() {
                    lane.gap();
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(lane) = lane.upgrade() else { return };
        lane.dispatch(msg).await;
    }
}

/// Marks the lane unhealthy when its connection breaks, and subscribes again after each
/// reconnection.
async fn health_loop(
    lane: Weak<Lane>,
    health: Arc<Health>,
    mut errors: tokio::sync::broadcast::Receiver<(
        fred::error::Error,
        Option<fred::types::config::Server>,
    )>,
    mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
) {
    use tokio::sync::broadcast::error::RecvError;
    // fred announces the lane's first connection to each server as a reconnection too (in
    // a cluster it connects to every master): the servers seen so far, a few.
    let mut seen = std::collections::HashSet::new();
    loop {
        tokio::select! {
            biased;
            e = errors.recv() => {
                match e {
                    Ok((error, _)) => {
                        let Some(lane) = lane.upgrade() else { return };
                        tracing::debug!(%error, "redis: subscriber connection lost");
                        lane.mark(&health, false);
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
            r = reconnects.recv() => {
                let first = match r {
                    Ok(server) => seen.insert(server),
                    Err(RecvError::Lagged(_)) => false,
                    Err(RecvError::Closed) => return,
                };
                let Some(lane) = lane.upgrade() else { return };
                // Any reconnection but the first connection to a server is a gap; so is
                // the first if the lane was seen down before it.
                let was_down = !first || !lane.healthy.load(Ordering::Acquire);
                let mut retry = Retry::new(Duration::from_millis(10), Duration::from_secs(2));
                loop {
                    match lane.resubscribe().await {
                        Ok(()) => {
                            lane.mark(&health, true);
                            // Subscribed again: whatever was published while the
                            // connection was down is lost; tell the subscriptions.
                            if was_down {
                                lane.gap();
                            }
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "redis: subscribing again failed; retrying");
                            retry.wait().await;
                        }
                    }
                }
            }
        }
    }
}

/// Unsubscribes when its [`Subscription`] is dropped.
struct SubGuard {
    broadcast: Weak<Broadcast>,
    lane: Weak<Lane>,
    glob: String,
    exact: bool,
    id: u64,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        let (Some(broadcast), Some(lane)) = (self.broadcast.upgrade(), self.lane.upgrade()) else {
            return;
        };
        if !lock(&lane.routes).remove_sink(&self.glob, self.exact, self.id) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (glob, exact) = (std::mem::take(&mut self.glob), self.exact);
        rt.spawn(async move {
            let _ops = broadcast.ops.lock().await;
            // Still unused (no subscribe came in meanwhile): tell the server.
            if !lock(&lane.routes).remove_if_unused(&glob, exact) {
                return;
            }
            let done = if exact {
                lane.client.unsubscribe(glob.as_str()).await
            } else {
                lane.client.punsubscribe(glob.as_str()).await
            };
            if let Err(error) = done {
                tracing::debug!(%error, channel = %glob, "redis: unsubscribe failed");
            }
        });
    }
}

/// The channels of every subscription of a route (the server matched the message).
fn every(sinks: &Fanout) -> Vec<mpsc::Sender<Received>> {
    sinks.senders_where(|_| true)
}

/// The payload of a fred value without copying.
pub(crate) fn value_bytes(v: Value) -> Bytes {
    match v {
        Value::Bytes(b) => b,
        Value::String(s) => s.into_inner(),
        Value::Null => Bytes::new(),
        other => Bytes::from(other.as_string().unwrap_or_default()),
    }
}

/// Whether some topic matches both filters.
fn overlap(a: &TopicFilter, b: &TopicFilter) -> bool {
    let mut la = a.as_str().split('/');
    let mut lb = b.as_str().split('/');
    loop {
        match (la.next(), lb.next()) {
            (None, None) => return true,
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, _) | (_, None) => return false,
            (Some("+"), _) | (_, Some("+")) => {}
            (Some(x), Some(y)) if x != y => return false,
            _ => {}
        }
    }
}

/// Matches a glob whose only special character is `*` (what
/// [`keys::glob`] makes).
fn glob_match(glob: &str, s: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        s.parse().unwrap()
    }

    #[test]
    fn overlapping_filters() {
        let table = [
            ("u/j/+/x/+/status", "u/j/#", true),
            ("u/j/+/x/+/status", "u/j/t2/x/+/complete", false),
            ("u/j/t2/x/+/complete", "u/j/#", true),
            ("u/j/t/x/+/status", "u/j/t/x/+/complete", false),
            ("u/j/t/x/+/status", "u/j/t/y/+/status", false),
            ("u/+/t/x/+/status", "u/j/+/x/1/status", true),
            ("#", "v/j/t/x/1/idle", true),
            ("u/j/t/x/1/status", "u/j/t/x/1/status", true),
        ];
        for (a, b, want) in table {
            assert_eq!(overlap(&f(a), &f(b)), want, "{a} {b}");
            assert_eq!(overlap(&f(b), &f(a)), want, "{b} {a}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("u:j:*:x:*:status", "u:j:t:x:1:status"));
        assert!(glob_match("u:j:*", "u:j:t:x:1:status"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("u:j:*:x:*:status", "u:j:t:x:1:complete"));
        assert!(!glob_match("u:j:*:status", "u:j:status"));
        assert!(glob_match("a*a", "aa"));
        assert!(!glob_match("a*a", "a"));
        assert!(glob_match("u:j:t:x:1:idle", "u:j:t:x:1:idle"));
    }
}
