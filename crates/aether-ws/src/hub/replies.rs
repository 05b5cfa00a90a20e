//! [`Replies`]: a task's replies watched for the Python seed's clients, one watch per tid.
//!
//! A Python AetherMagic client sends its perform (by REST) whenever its caller asks, and
//! subscribes to the task's `.../{tid}/status` and `.../{tid}/complete` at the start of its
//! main loop's next pass: up to ~0.2 s later. A fast worker has replied by then, and a
//! plain subscription would miss every reply. So the hub subscribes on the client's behalf
//! to `{union}/{job}/{task}/{context}/{tid}/+` before it enqueues a seed perform, keeps
//! what comes (bounded) until the client subscribes, and then hands it over, followed by
//! whatever comes next. One backend subscription carries both topics of a tid, so the
//! client sees a worker's status reports and its completion in the order they were
//! published (two subscriptions forwarded on their own would let a completion overtake
//! the last progress report).
//!
//! A watch ends once it has handed a completion over, or when it has had no listener for
//! [`IDLE`] (a perform nobody follows); at most [`WATCHES`] are open at once, past which a
//! seed subscription is a plain one again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aether_core::{Action, Bytes, Topic, TopicFilter};

use super::Shared;
use super::outbox::Outbox;

/// How long a watch without a listener is kept.
pub(crate) const IDLE: Duration = Duration::from_secs(30);
/// Watches open at most.
pub(crate) const WATCHES: usize = 16_384;
/// Replies a watch keeps for a client that has not subscribed yet.
const KEPT: usize = 64;

/// The open watches, by task (`{union}/{job}/{task}/{context}/{tid}`).
#[derive(Debug, Default)]
pub(crate) struct Replies {
    watches: Mutex<HashMap<String, Arc<Watch>>>,
}

#[derive(Debug, Default)]
struct Watch {
    state: Mutex<State>,
    /// Wakes the forwarder once a completion was handed over by [`Replies::listen`].
    ended: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Seed connections following a topic of the task.
    listeners: Vec<(String, Arc<Outbox>)>,
    /// Replies no listener took yet, oldest first.
    kept: VecDeque<(Topic, Bytes)>,
    /// A completion was handed over: the watch ends.
    done: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The task a status or completion topic belongs to (`None` for other actions).
pub(crate) fn task_of(topic: &Topic) -> Option<&str> {
    match topic.action() {
        Action::Status | Action::Complete => {}
        _ => return None,
    }
    topic.as_str().rsplit_once('/').map(|(task, _)| task)
}

impl Replies {
    /// Starts watching the replies to a perform on `topic` before it is enqueued.
    pub(crate) async fn expect(shared: &Arc<Shared>, topic: &Topic) {
        if let Some((task, _)) = topic.as_str().rsplit_once('/') {
            Replies::watch(shared, task).await;
        }
    }

    /// Hands the replies on `topic` (a status or completion topic, no wildcards) to `out`:
    /// those kept, then the rest as they come. False if no watch could be opened (too
    /// many, or the backend refused): then the caller subscribes plainly.
    pub(crate) async fn listen(shared: &Arc<Shared>, topic: &Topic, out: &Arc<Outbox>) -> bool {
        let Some(task) = task_of(topic) else {
            return false;
        };
        let Some(watch) = Replies::watch(shared, task).await else {
            return false;
        };
        let mut state = lock(&watch.state);
        let mut rest = VecDeque::new();
        for (t, payload) in std::mem::take(&mut state.kept) {
            if t == *topic {
                if super::seed::seed_message(out, shared, t.as_str(), &payload)
                    && t.action() == Action::Complete
                {
                    state.done = true;
                }
            } else {
                rest.push_back((t, payload));
            }
        }
        state.kept = rest;
        state
            .listeners
            .push((topic.as_str().to_owned(), out.clone()));
        if state.done {
            drop(state);
            watch.ended.notify_one();
            shared.replies.close(task, &watch);
        }
        true
    }

    /// Stops handing `topic` to `out` (the peer unsubscribed).
    pub(crate) fn forget(&self, topic: &str, out: &Arc<Outbox>) {
        let Some((task, _)) = topic.rsplit_once('/') else {
            return;
        };
        let watch = lock(&self.watches).get(task).cloned();
        if let Some(w) = watch {
            lock(&w.state)
                .listeners
                .retain(|(t, o)| !(t == topic && Arc::ptr_eq(o, out)));
        }
    }

    /// The watch of `task`, opened (subscribed on the backend) if there is none.
    async fn watch(shared: &Arc<Shared>, task: &str) -> Option<Arc<Watch>> {
        if let Some(w) = lock(&shared.replies.watches).get(task) {
            return Some(w.clone());
        }
        if lock(&shared.replies.watches).len() >= WATCHES {
            tracing::debug!(task, "too many reply watches open: a plain subscription");
            return None;
        }
        let filter: TopicFilter = format!("{task}/+").parse().ok()?;
        let sub = match shared.backend.subscribe(&filter).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(task, error = %e, "watching a seed task's replies failed");
                return None;
            }
        };
        let mut watches = lock(&shared.replies.watches);
        if let Some(w) = watches.get(task) {
            return Some(w.clone()); // opened meanwhile: this subscription is dropped
        }
        let watch = Arc::new(Watch::default());
        watches.insert(task.to_owned(), watch.clone());
        drop(watches);
        tokio::spawn(forward(
            sub,
            task.to_owned(),
            watch.clone(),
            Arc::downgrade(shared),
        ));
        Some(watch)
    }

    /// Removes `task`'s watch if it is still `watch`.
    fn close(&self, task: &str, watch: &Arc<Watch>) {
        let mut watches = lock(&self.watches);
        if watches.get(task).is_some_and(|w| Arc::ptr_eq(w, watch)) {
            watches.remove(task);
        }
    }
}

/// Hands each reply to the listeners of its topic, or keeps it; ends when a completion was
/// handed over, when the watch was idle for [`IDLE`], or when the hub is gone.
async fn forward(
    mut sub: aether_core::Subscription,
    task: String,
    watch: Arc<Watch>,
    shared: std::sync::Weak<Shared>,
) {
    let mut idle_until = tokio::time::Instant::now() + IDLE;
    loop {
        if lock(&watch.state).done {
            break;
        }
        tokio::select! {
            next = sub.next() => {
                let Some(Ok(m)) = next else {
                    if next.is_none() { break } else { continue }
                };
                let Some(shared) = shared.upgrade() else { break };
                let mut state = lock(&watch.state);
                let topic = m.topic.as_str();
                let mut taken = false;
                state.listeners.retain(|(t, out)| {
                    if t != topic {
                        return true;
                    }
                    let queued = super::seed::seed_message(out, &shared, topic, &m.payload);
                    taken |= queued;
                    queued
                });
                if !taken {
                    if state.kept.len() >= KEPT {
                        state.kept.pop_front();
                    }
                    state.kept.push_back((m.topic, m.payload));
                } else if m.topic.action() == Action::Complete {
                    state.done = true;
                }
                if !state.listeners.is_empty() {
                    idle_until = tokio::time::Instant::now() + IDLE;
                }
            }
            () = watch.ended.notified() => break,
            () = tokio::time::sleep_until(idle_until) => {
                if lock(&watch.state).listeners.is_empty() {
                    break;
                }
                idle_until = tokio::time::Instant::now() + IDLE;
            }
        }
    }
    if let Some(shared) = shared.upgrade() {
        shared.replies.close(&task, &watch);
    }
}
