//! [`SeedWork`]: the performs the hub handed to Python seed workers, held until the task's
//! completion comes back.
//!
//! A Python AetherMagic worker cannot acknowledge a delivery: it answers a perform with a
//! progress-0 status, its handler's statuses and a completion, each by REST on a
//! connection of its own. So the hub holds each perform it handed to a seed worker's
//! socket by its task (`{union}/{job}/{task}/{context}/{tid}`), counts it against that
//! socket's prefetch, keeps it alive on each status of the task, and acknowledges it on
//! the task's completion, whoever sends it. If the socket ends first, what it held goes
//! back to the backend, which gives it to another worker of the group.
//!
//! The prefetch is small on purpose: a Python peer reads one frame per pass of its main
//! loop (about 0.2 s), its WebSocket client queues 32 frames at most and, with that queue
//! full, stops reading the socket and so stops answering the hub's pings; a seed worker
//! flooded with performs would be cut off as silent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use aether_core::{Action, Delivery, Topic};

use super::Shared;

/// Performs one seed worker's socket holds at most.
pub(crate) const SEED_PREFETCH: usize = 8;

/// Held performs by task; each with the id of the connection it was handed to.
#[derive(Debug, Default)]
pub(crate) struct SeedWork {
    held: Mutex<HashMap<String, Vec<(u64, Delivery)>>>,
}

fn task_key(topic: &Topic) -> Option<&str> {
    topic.as_str().rsplit_once('/').map(|(task, _)| task)
}

impl SeedWork {
    /// Holds a perform handed to connection `conn`.
    pub(crate) fn hold(&self, shared: &Shared, conn: u64, d: Delivery) {
        let Some(task) = task_key(&d.topic).map(str::to_owned) else {
            return;
        };
        shared.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.entry(task).or_default().push((conn, d));
    }

    /// A reply on `topic` came in: a status keeps the task's held performs alive, a
    /// completion acknowledges them.
    pub(crate) async fn replied(&self, shared: &Shared, topic: &Topic) {
        let Some(task) = task_key(topic) else {
            return;
        };
        match topic.action() {
            Action::Complete => {
                let taken = {
                    let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                    held.remove(task).unwrap_or_default()
                };
                for (_, d) in taken {
                    shared.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    if let Err(e) = d.ack().await {
                        tracing::debug!(error = %e.error, "acknowledging a seed worker's perform failed");
                    }
                }
            }
            Action::Status => {
                let mut taken = {
                    let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                    held.remove(task).unwrap_or_default()
                };
                if taken.is_empty() {
                    return;
                }
                for (_, d) in &mut taken {
                    if let Err(e) = d.keep_alive().await {
                        tracing::debug!(error = %e, "keeping a seed worker's perform alive failed");
                    }
                }
                let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                held.entry(task.to_owned()).or_default().extend(taken);
            }
            _ => {}
        }
    }

    /// Connection `conn` ended: what it held goes back to the backend. How many.
    pub(crate) fn release(&self, shared: &Shared, conn: u64) -> u64 {
        let released: Vec<Delivery> = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let mut released = Vec::new();
            held.retain(|_, list| {
                let (gone, kept): (Vec<_>, Vec<_>) = list.drain(..).partition(|(c, _)| *c == conn);
                released.extend(gone.into_iter().map(|(_, d)| d));
                *list = kept;
                !list.is_empty()
            });
            released
        };
        let n = released.len() as u64;
        drop(released); // unsettled: the backend gives them back
        shared.counters.in_flight.fetch_sub(n, Ordering::Relaxed);
        n
    }
}
