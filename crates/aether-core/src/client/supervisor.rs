//! The supervisor of a route's tasks: one task per route keeps every lifecycle's timers
//! and carries out what needs I/O (dispatching again, cancelling at the deadline,
//! dead-lettering a lost task). What happens when is the [lifecycle](super::lifecycle)'s
//! to decide.
//!
//! A task is on the supervisor's [`Timers`] only while its lifecycle has a wake-up due
//! (a lease watched, a deadline, a backoff, a probe after a gap); most tasks complete
//! without ever being on them, and cost the supervisor nothing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tokio::sync::Notify;

use super::lifecycle::{Effect, Event};
use super::route::Route;
use super::shared::{TaskShared, now};
use crate::action::Action;
use crate::envelope::{Header, empty_object, encode_as, encode_raw};
use crate::node::Aether;
use crate::transport::{DeadLetter, DeadLetterReason, SharedTransport};

/// The wake-ups of a route's tasks, earliest first.
#[derive(Default)]
pub(super) struct Timers {
    due: Mutex<BTreeMap<(Instant, u64), Arc<TaskShared>>>,
    /// Wakes the supervisor: a wake-up earlier than all others was set.
    earlier: Notify,
}

impl Timers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Instant, u64), Arc<TaskShared>>> {
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves `task`'s wake-up from `old` to `new` (either may be none).
    pub(super) fn set(&self, task: &Arc<TaskShared>, old: Option<Instant>, new: Option<Instant>) {
        let mut due = self.lock();
        if let Some(at) = old {
            due.remove(&(at, task.id));
        }
        let Some(at) = new else { return };
        let earliest = due
            .first_key_value()
            .is_none_or(|((first, _), _)| at < *first);
        due.insert((at, task.id), task.clone());
        drop(due);
        if earliest {
            // Keeps a permit if the supervisor is not waiting yet.
            self.earlier.notify_one();
        }
    }

    /// Takes the tasks due by `now` off the timers; and when the next is due.
    fn take_due(&self, now: Instant) -> (Vec<(Instant, Arc<TaskShared>)>, Option<Instant>) {
        let mut due = self.lock();
        let mut fired = Vec::new();
        while let Some(entry) = due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((at, _), task) = entry.remove_entry();
            fired.push((at, task));
        }
        (fired, due.first_key_value().map(|((at, _), _)| *at))
    }
}

/// Ticks the route's tasks when their wake-ups are due, until the route is gone.
pub(super) async fn run(
    timers: Arc<Timers>,
    route: Weak<Route>,
    node: Aether,
    transport: SharedTransport,
) {
    let counters = node.counters();
    loop {
        let earlier = timers.earlier.notified();
        let (fired, next) = timers.take_due(now());
        if !fired.is_empty() {
            let Some(route) = route.upgrade() else { return };
            for (at, task) in fired {
                let applied = task.apply(Event::Tick, Some(at), counters, &timers);
                if applied.done {
                    route.forget(&task);
                }
                if !applied.io.is_empty() {
                    // I/O may wait on the broker: the other tasks' timers do not.
                    let io = CarryOut {
                        node: node.clone(),
                        transport: transport.clone(),
                        route: route.clone(),
                        task,
                    };
                    tokio::spawn(io.run(applied.io, applied.done));
                }
            }
        }
        tokio::select! {
            _ = earlier => {}
            _ = sleep_until_opt(next.map(tokio::time::Instant::from_std)) => {}
        }
    }
}

/// Carries out a task's effects that need I/O.
struct CarryOut {
    node: Aether,
    transport: SharedTransport,
    route: Arc<Route>,
    task: Arc<TaskShared>,
}

impl CarryOut {
    async fn run(self, effects: Vec<Effect>, done: bool) {
        for effect in effects {
            match effect {
                Effect::Dispatch { attempt, why } => self.dispatch_again(attempt, why).await,
                Effect::SendCancel => self.send_cancel().await,
                Effect::DeadLetter { attempts } => {
                    let letter = self.task.lock_resend().as_ref().map(|r| DeadLetter {
                        topic: r.topic.to_string(),
                        payload: r.bytes.clone(),
                        reason: DeadLetterReason::AttemptsExhausted { attempts },
                    });
                    if let Some(letter) = letter {
                        self.node.dead_letter(&self.transport, letter).await;
                    }
                }
                // Carried out where the event was applied.
                Effect::Progress { .. }
                | Effect::Duplicate
                | Effect::Heartbeat
                | Effect::Finish(_)
                | Effect::Reschedule => {}
            }
        }
        if done {
            self.task.lock_resend().take();
        }
    }

    /// Sends the perform again as dispatch number `attempt`.
    async fn dispatch_again(&self, attempt: u32, why: &str) {
        let again = self.task.lock_resend().as_mut().map(|r| {
            r.header.attempt = Some(attempt);
            r.header.sent = Some(crate::envelope::unix_ms());
            r.bytes = encode_as(r.codec, &r.header, self.node.config().sender(), &r.data);
            (r.topic.clone(), r.bytes.clone())
        });
        let Some((topic, bytes)) = again else { return };
        tracing::info!(%topic, attempt, why, "dispatching again");
        let counters = self.node.counters();
        counters.redispatched.fetch_add(1, Ordering::Relaxed);
        self.route.metrics.redispatched.increment(1);
        let resend = self.transport.enqueue(&topic, bytes);
        if let Err(e) = self.node.timed("enqueue", resend).await {
            tracing::warn!(%topic, error = %e, "redispatch failed");
        }
        let gaps = self.route.gaps();
        self.route.apply(&self.task, Event::Sent { gaps }, counters);
    }

    async fn send_cancel(&self) {
        let cancel = self.task.lock_resend().as_ref().map(|r| {
            let config = self.node.config();
            let header = Header::new(Action::Cancel, &config.host, &config.client_id);
            let bytes = encode_raw(r.codec, &header, empty_object(r.codec));
            (r.topic.with_action(Action::Cancel), bytes)
        });
        let Some((topic, bytes)) = cancel else { return };
        if let Err(e) = self.transport.publish(&topic, bytes).await {
            tracing::debug!(%topic, error = %e, "cancel after deadline not sent");
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
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
