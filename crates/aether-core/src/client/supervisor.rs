//! The supervisor of a task: it keeps the lifecycle's timers and carries out what needs
//! I/O (dispatching again, cancelling at the deadline, dead-lettering a lost task). What
//! happens when is the [lifecycle](super::lifecycle)'s to decide.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::lifecycle::{Effect, Event};
use super::route::Route;
use super::shared::TaskShared;
use crate::action::Action;
use crate::envelope::{Codec, Header, empty_object, encode_raw};
use crate::node::Aether;
use crate::topic::Topic;
use crate::transport::{DeadLetter, DeadLetterReason, SharedTransport};

/// Follows one task until it ends, or until nobody waits for it and nothing is watched.
pub(super) struct Supervisor {
    pub(super) node: Aether,
    pub(super) transport: SharedTransport,
    pub(super) route: Arc<Route>,
    pub(super) shared: Arc<TaskShared>,
    pub(super) topic: Topic,
    pub(super) codec: Codec,
    pub(super) header: Header,
    pub(super) data: Vec<u8>,
    /// The perform as last dispatched.
    pub(super) bytes: bytes::Bytes,
}

impl Supervisor {
    pub(super) async fn run(mut self) {
        let node = self.node.clone();
        let counters = node.counters();
        loop {
            for effect in self.shared.apply(Event::Tick, counters) {
                self.carry_out(effect).await;
            }
            let (done, wake_at) = {
                let inner = self.shared.lock();
                (inner.lifecycle.is_done(), inner.lifecycle.next_wake())
            };
            if done {
                break;
            }
            tokio::select! {
                // `notify_one` keeps a permit if the supervisor is not waiting yet.
                _ = self.shared.wake_supervisor.notified() => {}
                _ = sleep_until_opt(wake_at.map(Instant::from_std)) => {}
            }
        }
        self.route.remove(&self.shared.tid);
    }

    async fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Dispatch { attempt, why } => self.dispatch_again(attempt, why).await,
            Effect::SendCancel => self.send_cancel().await,
            Effect::DeadLetter { attempts } => {
                let letter = DeadLetter {
                    topic: self.topic.to_string(),
                    payload: self.bytes.clone(),
                    reason: DeadLetterReason::AttemptsExhausted { attempts },
                };
                self.node.dead_letter(&self.transport, letter).await;
            }
            // Carried out where the event was applied.
            Effect::Progress { .. }
            | Effect::Duplicate
            | Effect::Finish(_)
            | Effect::Reschedule => {}
        }
    }

    /// Sends the perform again as dispatch number `attempt`.
    async fn dispatch_again(&mut self, attempt: u32, why: &str) {
        self.header.attempt = Some(attempt);
        self.header.sent = Some(crate::envelope::unix_ms());
        self.bytes = encode_raw(self.codec, &self.header, &self.data);
        tracing::info!(topic = %self.topic, attempt, why, "dispatching again");
        let counters = self.node.counters();
        counters.redispatched.fetch_add(1, Ordering::Relaxed);
        self.route.metrics.redispatched.increment(1);
        let resend = self.transport.enqueue(&self.topic, self.bytes.clone());
        if let Err(e) = self.node.timed("enqueue", resend).await {
            tracing::warn!(topic = %self.topic, error = %e, "redispatch failed");
        }
        let gaps = self.route.gaps();
        self.shared.apply(Event::Sent { gaps }, counters);
    }

    async fn send_cancel(&self) {
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

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The supervisor's scheduling on tokio's paused clock: each case runs in virtual time,
/// so its timers are checked to the millisecond without waiting for them.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use crate::memory::{MemoryConfig, MemoryTransport};
    use crate::node::{Aether, Backoff};
    use crate::{Error, TaskContext, Transport};

    fn broker(redeliver: bool) -> MemoryTransport {
        MemoryTransport::new(MemoryConfig {
            redeliver,
            ..MemoryConfig::default()
        })
    }

    fn client(transport: MemoryTransport) -> Aether {
        Aether::builder()
            .lease(Duration::from_secs(1))
            .max_attempts(3)
            .backoff(Backoff::new(
                Duration::from_millis(100),
                Duration::from_millis(400),
            ))
            .transport(transport)
            .build()
            .expect("node")
    }

    fn ms_since(start: Instant) -> u128 {
        start.elapsed().as_millis()
    }

    /// No worker, a transport that may drop performs: dispatched again after each lease
    /// and backoff (1 s + 100 ms, 1 s + 200 ms), lost when the third lease runs out.
    #[tokio::test(start_paused = true)]
    async fn lost_after_the_last_lease_on_schedule() {
        let node = client(broker(false));
        let start = Instant::now();
        let task = node.client().perform("j", "t", "x", &1u32).await.unwrap();
        tokio::time::sleep_until(start + Duration::from_millis(1099)).await;
        assert_eq!(node.stats().redispatched, 0);
        tokio::time::sleep_until(start + Duration::from_millis(1101)).await;
        assert_eq!(node.stats().redispatched, 1);
        let r = task.result::<u32>().await;
        assert!(
            matches!(r, Err(Error::WorkerLost { attempts: 3, .. })),
            "{r:?}"
        );
        let at = ms_since(start);
        assert!((3300..3310).contains(&at), "lost at {at} ms");
        assert_eq!(node.stats().redispatched, 2);
        assert_eq!(node.stats().lost, 1);
    }

    /// A transport that keeps performs: nothing is sent again; at the deadline the task
    /// ends and the cancel goes out.
    #[tokio::test(start_paused = true)]
    async fn deadline_ends_the_task_and_sends_the_cancel() {
        let b = broker(true);
        let node = client(b.reconnect());
        let watcher = b.reconnect();
        let filter = "default/j/t/x/+/cancel".parse().unwrap();
        let mut cancels = watcher.subscribe(&filter).await.unwrap();
        let start = Instant::now();
        let task = node
            .client()
            .task("j", "t")
            .deadline(Duration::from_secs(5))
            .perform(&1u32)
            .await
            .unwrap();
        let tid = task.tid().to_owned();
        let r = task.result::<u32>().await;
        assert!(matches!(r, Err(Error::DeadlineExceeded { .. })), "{r:?}");
        let at = ms_since(start);
        assert!((5000..5010).contains(&at), "ended at {at} ms");
        let cancel = cancels.next().await.expect("a cancel").expect("valid");
        assert_eq!(cancel.topic.tid(), tid);
        assert_eq!(node.stats().redispatched, 0);
    }

    /// A worker that heartbeats keeps its task alive far past the client's lease, on a
    /// transport where silence would be chased.
    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_a_long_task_alive() {
        let b = broker(false);
        let wn = client(b.reconnect());
        let _worker = wn
            .worker()
            .announce(false)
            .handle("j", "t", "x", |_ctx: TaskContext, v: u32| async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, Error>(v)
            })
            .start()
            .await
            .unwrap();
        let node = client(b.reconnect());
        let start = Instant::now();
        let task = node.client().perform("j", "t", "x", &7u32).await.unwrap();
        assert_eq!(task.result::<u32>().await.unwrap(), 7);
        let at = ms_since(start);
        assert!((10_000..10_100).contains(&at), "completed at {at} ms");
        assert_eq!(node.stats().redispatched, 0);
    }
}
