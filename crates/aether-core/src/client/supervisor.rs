//! The supervisor of a task: redispatches on lease expiry, enforces the deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::handle::{Outcome, TaskInner, TaskShared};
use super::route::Route;
use crate::action::Action;
use crate::envelope::{Codec, Header, empty_object, encode_raw};
use crate::node::Aether;
use crate::state::TaskEvent;
use crate::topic::Topic;
use crate::transport::{DeadLetter, DeadLetterReason, SharedTransport};

/// Follows one task until it ends: redispatches on lease expiry, enforces the deadline.
pub(super) struct Supervisor {
    pub(super) node: Aether,
    pub(super) transport: SharedTransport,
    pub(super) route: Arc<Route>,
    pub(super) shared: Arc<TaskShared>,
    pub(super) topic: Topic,
    pub(super) codec: Codec,
    pub(super) header: Header,
    pub(super) data: Vec<u8>,
    pub(super) bytes: bytes::Bytes,
    pub(super) redispatch: Redispatch,
    pub(super) deadline: Option<Instant>,
}

/// When a silent task is dispatched again.
#[derive(Clone, Copy, Debug)]
pub(super) struct Redispatch {
    /// No worker accepted it within the lease.
    pub(super) before_accept: bool,
    /// The worker that accepted it stopped heartbeating.
    pub(super) after_accept: bool,
    /// The route's subscription was interrupted before any worker was heard of.
    pub(super) on_gap: bool,
}

impl Supervisor {
    pub(super) async fn run(mut self) {
        let node = self.node.clone();
        let config = node.config();
        let counters = node.counters();
        // Dispatches so far, which the perform's header numbers; and those that count
        // toward `max_attempts`: the first and each after a lease expired. A redispatch
        // after a gap is not a worker lost.
        let mut attempt = 1u32;
        let mut chances = 1u32;
        loop {
            let (lease_at, probe_at) = {
                let mut inner = self.shared.lock();
                if inner.outcome.is_some() {
                    break;
                }
                // A probe the task answered (heard of after the gap) is done with.
                if inner.probe.is_some_and(|p| inner.heard > p.since) {
                    inner.probe = None;
                }
                let probe_at = inner.probe.filter(|_| self.redispatch.on_gap).map(|p| p.at);
                let lease_at = self.lease_deadline(&inner, config.lease);
                if inner.detached && lease_at.is_none() && self.deadline.is_none() {
                    break;
                }
                (lease_at, probe_at)
            };
            if probe_at.is_some_and(|at| at <= Instant::now()) {
                attempt += 1;
                self.dispatch_again(
                    attempt,
                    "subscription interrupted; the task's replies may be lost",
                )
                .await;
                continue;
            }
            // `notify_one` keeps a permit if the supervisor is not waiting yet.
            tokio::select! {
                _ = self.shared.wake_supervisor.notified() => {}
                _ = sleep_until_opt(probe_at) => {}
                _ = sleep_until_opt(self.deadline) => {
                    if self.shared.finish(TaskEvent::TimedOut, Outcome::DeadlineExceeded, counters) {
                        self.send_cancel().await;
                    }
                    break;
                }
                _ = sleep_until_opt(lease_at) => {
                    let now_due = self.lease_deadline(&self.shared.lock(), config.lease);
                    if now_due.is_some_and(|at| at > Instant::now()) {
                        // Heard of since the timer was set: sleep again.
                        continue;
                    }
                    if chances >= config.max_attempts {
                        if self.shared.finish(TaskEvent::TimedOut, Outcome::Lost(attempt), counters) {
                            let letter = DeadLetter {
                                topic: self.topic.to_string(),
                                payload: self.bytes.clone(),
                                reason: DeadLetterReason::AttemptsExhausted { attempts: attempt },
                            };
                            self.node.dead_letter(&self.transport, letter).await;
                        }
                        break;
                    }
                    let expired = Instant::now();
                    tokio::select! {
                        _ = tokio::time::sleep(config.backoff.delay(chances + 1)) => {}
                        _ = sleep_until_opt(self.deadline) => continue,
                    }
                    {
                        let inner = self.shared.lock();
                        if inner.outcome.is_some() {
                            break;
                        }
                        // Heard of during the backoff (a late heartbeat, or another worker
                        // that took the task over): sending it again would run it twice.
                        if inner.heard > expired {
                            continue;
                        }
                    }
                    attempt += 1;
                    chances += 1;
                    self.dispatch_again(attempt, "lease expired").await;
                }
            }
        }
        self.route.remove(&self.shared.tid);
    }

    /// Sends the perform again as dispatch number `attempt`.
    async fn dispatch_again(&mut self, attempt: u32, why: &str) {
        self.header.attempt = Some(attempt);
        self.bytes = encode_raw(self.codec, &self.header, &self.data);
        {
            let mut inner = self.shared.lock();
            inner.heard = Instant::now();
            inner.seen = false;
            inner.worker_lease = None;
            // This dispatch answers any gap so far; a gap while it is under way lost
            // nothing it could be answered by.
            inner.probe = None;
            inner.dispatched_at_gap = None;
        }
        tracing::info!(topic = %self.topic, attempt, why, "dispatching again");
        self.node
            .counters()
            .redispatched
            .fetch_add(1, Ordering::Relaxed);
        let resend = self.transport.enqueue(&self.topic, self.bytes.clone());
        if let Err(e) = self.node.timed("enqueue", resend).await {
            tracing::warn!(topic = %self.topic, error = %e, "redispatch failed");
        }
        self.shared.lock().dispatched_at_gap = Some(self.route.gaps());
    }

    /// When the task's lease runs out if nothing more is heard, where it is watched.
    pub(super) fn lease_deadline(&self, inner: &TaskInner, lease: Duration) -> Option<Instant> {
        match (inner.seen, inner.worker_lease) {
            (false, _) if self.redispatch.before_accept => Some(inner.heard + lease),
            (true, Some(l)) if self.redispatch.after_accept => Some(inner.heard + l.max(lease)),
            _ => None,
        }
    }

    pub(super) async fn send_cancel(&self) {
        let config = self.node.config();
        let header = Header::new(Action::Cancel, &config.host, &config.client_id);
        let bytes = encode_raw(self.codec, &header, empty_object(self.codec));
        if let Err(e) = self
            .transport
            .publish(&self.topic.with_action(Action::Cancel), bytes)
            .await
        {
            tracing::debug!(topic = %self.topic, error = %e, "cancel after deadline not sent");
        }
    }
}

pub(super) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
