//! The seed protocol (Python AetherMagic's hub): JSON text frames, subscriptions by topic
//! string with MQTT wildcards, `$share/{group}/{filter}` as a one-of-N group, and the
//! second copy of each message (its peers send everything by REST and by WebSocket)
//! dropped.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_core::{Action, ConsumeOptions, Topic, TopicFilter, WorkQueue};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::conn::Conn;
use super::outbox::Outbox;
use super::replies::{Replies, task_of};
use super::seed_work::SEED_PREFETCH;
use super::{Shared, bump};
use crate::wire::SeedFrame;

/// How long a seed message is remembered to drop its second copy.
const WINDOW: Duration = Duration::from_secs(2);
/// Messages remembered at most.
const REMEMBERED: usize = 65_536;

/// Recently seen seed messages (topic and payload), to drop their second copies.
#[derive(Debug, Default)]
pub(crate) struct Dedupe {
    recent: Mutex<Recent>,
}

/// When each message was last seen, and the same in the order seen (to forget the old).
#[derive(Debug, Default)]
struct Recent {
    at: HashMap<u64, Instant>,
    order: VecDeque<(u64, Instant)>,
}

impl Dedupe {
    /// Whether the same message on the same topic came in the last 2 s (then it is a
    /// copy); remembers it otherwise.
    pub(crate) fn seen(&self, topic: &Topic, payload: &[u8]) -> bool {
        let mut h = DefaultHasher::new();
        topic.as_str().hash(&mut h);
        payload.hash(&mut h);
        let key = h.finish();
        let now = Instant::now();
        let mut guard = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let Recent { at: map, order } = &mut *guard;
        while let Some(&(k, at)) = order.front() {
            if now.duration_since(at) < WINDOW && order.len() < REMEMBERED {
                break;
            }
            order.pop_front();
            if map.get(&k) == Some(&at) {
                map.remove(&k);
            }
        }
        if map
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < WINDOW)
        {
            map.remove(&key);
            return true;
        }
        map.insert(key, now);
        order.push_back((key, now));
        false
    }
}

impl Conn {
    /// A text frame: the seed protocol.
    pub(crate) async fn on_text(&mut self, text: &str) {
        let frame = match serde_json::from_str::<SeedFrame>(text) {
            Ok(f) => f,
            Err(e) => return self.seed_error(format!("not a seed frame: {e}")),
        };
        match frame {
            SeedFrame::Subscribe { topic } => {
                if let Err(e) = self.seed_subscribe(&topic).await {
                    self.seed_error(e);
                }
            }
            SeedFrame::Unsubscribe { topic } => match self.seed_subs.remove(&topic) {
                Some(SeedSub::Forward(h)) => h.abort(),
                Some(SeedSub::Replies) => self.shared.replies.forget(&topic, &self.out),
                None => {}
            },
            SeedFrame::Publish {
                topic,
                message,
                retain,
            } => {
                if let Err((_, e)) =
                    super::http::publish(&self.shared, &topic, message, retain).await
                {
                    self.seed_error(e);
                }
            }
            SeedFrame::Message { .. } => self.seed_error("peers do not send messages".into()),
        }
    }

    fn seed_error(&self, text: String) {
        bump(&self.shared.counters.bad_frames);
        let frame = serde_json::json!({ "type": "error", "message": text }).to_string();
        self.out
            .push(WsMessage::Text(frame.into()), &self.shared.counters.stalled);
    }

    async fn seed_subscribe(&mut self, topic: &str) -> Result<(), String> {
        let backend = self.shared.backend.clone();
        let (group, filter) = match topic.strip_prefix("$share/") {
            Some(rest) => {
                let (group, f) = rest
                    .split_once('/')
                    .ok_or_else(|| format!("{topic}: $share/<group>/<filter>"))?;
                (Some(group), f)
            }
            None => (None, topic),
        };
        let parsed: TopicFilter = filter.parse().map_err(|e| format!("{topic}: {e}"))?;
        let out = self.out.clone();
        let shared = self.shared.clone();
        // A client following its own task: through the task's reply watch, which kept
        // what came before this subscription and keeps status and completion in order.
        if group.is_none() {
            let exact = filter
                .parse::<Topic>()
                .ok()
                .filter(|t| task_of(t).is_some());
            if let Some(exact) = exact {
                if Replies::listen(&shared, &exact, &out).await {
                    self.forget_seed_sub(topic);
                    self.seed_subs.insert(topic.to_owned(), SeedSub::Replies);
                    return Ok(());
                }
            }
        }
        let handle = match group.and_then(|g| queue_of(&parsed, g)) {
            Some(queue) => {
                // One of the group's members gets each perform, held (against a small
                // prefetch) until the task's completion comes back.
                let c = backend
                    .consume(&queue, ConsumeOptions::new().prefetch(SEED_PREFETCH))
                    .await
                    .map_err(|e| e.to_string())?;
                self.tasks.spawn(forward_performs(c, self.id, out, shared))
            }
            None => {
                let s = backend
                    .subscribe(&parsed)
                    .await
                    .map_err(|e| e.to_string())?;
                self.tasks.spawn(forward_messages(s, out, shared))
            }
        };
        self.forget_seed_sub(topic);
        self.seed_subs
            .insert(topic.to_owned(), SeedSub::Forward(handle));
        Ok(())
    }

    fn forget_seed_sub(&mut self, topic: &str) {
        match self.seed_subs.remove(topic) {
            Some(SeedSub::Forward(h)) => h.abort(),
            Some(SeedSub::Replies) => self.shared.replies.forget(topic, &self.out),
            None => {}
        }
    }
}

/// What a seed subscription is on the hub.
#[derive(Debug)]
pub(crate) enum SeedSub {
    /// A task forwarding a backend subscription or consumer.
    Forward(tokio::task::AbortHandle),
    /// A listener of a task's reply watch ([`Replies`]).
    Replies,
}

/// The work queue a shared perform filter names: `{union}/{job}/{task}/{context}/+/perform`
/// in group `{union}_{job}_{workgroup}`, as Python AetherMagic (and aether's MQTT adapter)
/// name it, is workgroup `{workgroup}`'s queue, the one aether workers of that workgroup
/// consume; a group not of that form is the workgroup's name itself.
fn queue_of(filter: &TopicFilter, group: &str) -> Option<WorkQueue> {
    let levels: Vec<&str> = filter.as_str().split('/').collect();
    let [union, job, task, context, "+", action] = levels.as_slice() else {
        return None;
    };
    if *action != Action::Perform.as_str() {
        return None;
    }
    let workgroup = group
        .strip_prefix(&format!("{union}_{job}_"))
        .filter(|w| !w.is_empty())
        .unwrap_or(group);
    WorkQueue::new(union, job, task, context, workgroup).ok()
}

/// Queues a `{"type": "message"}` frame; false if the connection is gone or was cut off.
pub(crate) fn seed_message(out: &Outbox, shared: &Shared, topic: &str, payload: &[u8]) -> bool {
    let frame = SeedFrame::Message {
        topic: topic.to_owned(),
        message: String::from_utf8_lossy(payload).into_owned(),
    };
    let text = serde_json::to_string(&frame).unwrap_or_default();
    out.push(WsMessage::Text(text.into()), &shared.counters.stalled)
}

async fn forward_messages(mut s: aether_core::Subscription, out: Arc<Outbox>, shared: Arc<Shared>) {
    while let Some(Ok(m)) = s.next().await {
        if !seed_message(&out, &shared, m.topic.as_str(), &m.payload) {
            return;
        }
    }
}

/// Hands a seed worker its group's performs, each held until its completion comes back
/// (see [`super::seed_work`]).
async fn forward_performs(
    mut c: aether_core::Consumer,
    conn: u64,
    out: Arc<Outbox>,
    shared: Arc<Shared>,
) {
    while let Some(next) = c.next().await {
        let Ok(d) = next else { continue };
        let sent = seed_message(&out, &shared, d.topic.as_str(), &d.payload);
        if !sent {
            return; // dropped unacknowledged: back to the group
        }
        shared.seed_work.hold(&shared, conn, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_copy_dropped_third_taken() {
        let d = Dedupe::default();
        let t: Topic = "u/j/t/x/1/status".parse().unwrap();
        assert!(!d.seen(&t, b"a"));
        assert!(d.seen(&t, b"a"));
        assert!(!d.seen(&t, b"a"), "a third send is a new message");
        assert!(!d.seen(&t, b"b"));
    }

    #[test]
    fn shared_perform_filters_name_a_queue() {
        let f: TopicFilter = "u3/interop/echo/x/+/perform".parse().unwrap();
        let q = queue_of(&f, "u3_interop_workgroup").unwrap();
        assert_eq!(q.workgroup(), "workgroup", "the aether workers' group");
        let q = queue_of(&f, "billing").unwrap();
        assert_eq!(q.workgroup(), "billing");
        let f: TopicFilter = "u3/interop/echo/x/+/status".parse().unwrap();
        assert!(queue_of(&f, "g").is_none());
    }
}
