//! What a worker does with one delivery: admit it, run the handler (with retries), complete.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tracing::{Instrument, Span};

use super::handler::{Failure, Produce};
use super::reporter::Reporter;
use super::run::{RunEnd, cancelled, killed, run_once};
use super::{Kill, Registration, WorkerShared, lock};
use crate::action::Action;
use crate::context::{ContextInner, TaskContext};
use crate::envelope::{Envelope, unix_ms};
use crate::error::DecodeError;
use crate::observe;
use crate::topic::Topic;
use crate::transport::{DeadLetterReason, Delivery};

/// Settles a delivery, logging a failed acknowledgement (the broker will redeliver).
pub(super) async fn settle(delivery: Delivery, how: Settle) {
    let topic = delivery.topic.clone();
    let result = match how {
        Settle::Ack => delivery.ack().await,
        Settle::Requeue => delivery.nack(true).await,
        Settle::Reject(reason) => delivery.reject(reason).await,
    };
    if let Err(e) = result {
        tracing::warn!(%topic, error = %e.error, "acknowledgement failed; the broker may deliver it again");
    }
}

pub(super) enum Settle {
    Ack,
    Requeue,
    Reject(DeadLetterReason),
}

/// A perform admitted to run here, and what its runs and its completion need.
struct Admitted {
    delivery: Delivery,
    env: Envelope,
    reporter: Arc<Reporter>,
    /// `client/tid`: the key of the worker's memory of completed tasks.
    done_key: String,
    /// The lease this worker heartbeats within.
    lease: Duration,
    /// How long the acceptance may be held back, if the perform allows it.
    defer: Option<Duration>,
    cancel: watch::Receiver<bool>,
    _inflight: InflightGuard,
}

impl Admitted {
    /// The handler's view of run number `attempt`.
    fn context(&self, attempt: u32) -> TaskContext {
        let header = self.env.header();
        TaskContext {
            inner: Arc::new(ContextInner {
                reporter: self.reporter.clone(),
                attempt,
                deadline: header.deadline,
                headers: header.headers.clone(),
                progress: AtomicU8::new(0),
                cancel: self.cancel.clone(),
            }),
        }
    }
}

/// How the runs of an admitted task ended.
enum Ran {
    /// The handler's last result, after `runs` runs.
    Finished {
        result: Result<Produce, Failure>,
        runs: u32,
    },
    /// The deadline passed: the client reports it itself; a completion could only race it.
    Expired,
    /// The worker is being stopped.
    Killed(Kill),
}

pub(super) async fn process(shared: Arc<WorkerShared>, reg: Arc<Registration>, delivery: Delivery) {
    let counters = shared.node.counters();
    counters.received.fetch_add(1, Ordering::Relaxed);
    let system = shared.transport.name();
    let span = observe::process_span(system, &delivery.topic, reg.queue.workgroup());
    let Some(mut task) = admit(&shared, &reg, delivery, &span).await else {
        return;
    };
    reg.metrics.accepted.increment(1);
    if let Some(sent) = task.env.header().sent {
        // Across hosts this includes their clock difference; a clock behind reads 0.
        let waited = unix_ms().saturating_sub(sent);
        reg.metrics.queue_wait.record(waited as f64 / 1000.0);
    }
    let ran = run_with_retries(&shared, &reg, &mut task)
        .instrument(span.clone())
        .await;
    match ran {
        Ran::Finished { result, runs } => {
            complete(&shared, &reg, task, result, runs)
                .instrument(span)
                .await
        }
        Ran::Expired => {
            observe::failed(&span, "deadline_exceeded");
            counters.expired.fetch_add(1, Ordering::Relaxed);
            lock(&shared.done).insert(&task.done_key, None);
            settle(task.delivery, Settle::Ack).await
        }
        Ran::Killed(k) => {
            observe::failed(&span, "worker_stopped");
            finish_killed(task.delivery, k).await
        }
    }
}

/// The perform in a delivery, or why it goes to the dead-letter place: too large, not an
/// envelope, not a perform. Counted either way.
fn decode(shared: &WorkerShared, delivery: &Delivery) -> Result<Envelope, DeadLetterReason> {
    let counters = shared.node.counters();
    let size = delivery.payload.len();
    if size > shared.limit {
        counters.oversized.fetch_add(1, Ordering::Relaxed);
        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let limit = shared.limit;
        return Err(DeadLetterReason::Oversized { size, limit });
    }
    match Envelope::decode(delivery.payload.clone()) {
        Ok(env) if env.header().action == Action::Perform => Ok(env),
        Ok(env) => {
            counters.unexpected_action.fetch_add(1, Ordering::Relaxed);
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            let action = env.header().action.to_string();
            Err(DeadLetterReason::UnexpectedAction(action))
        }
        Err(e) => {
            let counter = match e {
                DecodeError::UnknownAction(_) => &counters.unknown_action,
                _ => &counters.malformed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %delivery.topic, error = %e, "undecodable perform dead-lettered");
            Err(DeadLetterReason::Malformed(e.to_string()))
        }
    }
}

/// Admits a delivery to run here, or settles it: not a perform, already completed or
/// running here, past its deadline, delivered too often. Sends the acceptance unless the
/// perform lets it be held back. `span` continues the perform's trace.
async fn admit(
    shared: &Arc<WorkerShared>,
    reg: &Registration,
    delivery: Delivery,
    span: &Span,
) -> Option<Admitted> {
    let env = match decode(shared, &delivery) {
        Ok(env) => env,
        Err(reason) => {
            reg.metrics.dead_lettered.increment(1);
            return refuse(delivery, Settle::Reject(reason)).await;
        }
    };
    let counters = shared.node.counters();
    let header = env.header();
    observe::continue_trace(span, header);
    let tid = delivery.topic.tid();
    let mut done_key = String::with_capacity(header.client.len() + 1 + tid.len());
    done_key.push_str(&header.client);
    done_key.push('/');
    done_key.push_str(tid);
    let lease = worker_lease(shared, header.lease);
    let reporter = Reporter::new(shared, &delivery, env.codec(), lease, span.clone());
    let reporter = Arc::new(reporter);

    // Already completed here: repeat the completion, if kept, and drop the perform.
    let repeat = lock(&shared.done).get(&done_key).cloned();
    if let Some(completion) = repeat {
        counters.duplicate_performs.fetch_add(1, Ordering::Relaxed);
        if let Some(bytes) = completion {
            let _ = reporter.send(Action::Complete, bytes).await;
        }
        return refuse(delivery, Settle::Ack).await;
    }
    let Some((inflight, cancel)) = InflightGuard::claim(shared, &delivery.topic) else {
        counters.duplicate_performs.fetch_add(1, Ordering::Relaxed);
        return refuse(delivery, Settle::Ack).await;
    };
    if header.deadline.is_some_and(|d| d <= unix_ms()) {
        // The client has reported the deadline itself; nobody waits for a completion.
        counters.expired.fetch_add(1, Ordering::Relaxed);
        lock(&shared.done).insert(&done_key, None);
        return refuse(delivery, Settle::Ack).await;
    }
    if delivery.redeliveries >= shared.max_deliveries {
        let attempts = delivery.redeliveries + 1;
        let bytes = reporter.failure_bytes(&format!("delivered {attempts} times; dead-lettered"));
        let _ = reporter.send(Action::Complete, bytes).await;
        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        reg.metrics.dead_lettered.increment(1);
        let reason = DeadLetterReason::AttemptsExhausted { attempts };
        return refuse(delivery, Settle::Reject(reason)).await;
    }

    // Accept: progress 0, with the lease this worker heartbeats within. A client that
    // allows it gets the acceptance only if the task is still running after a short while
    // (never later than the first heartbeat would be due), or reports progress first.
    let defer = header
        .defer
        .map(Duration::from_millis)
        .filter(|d| !d.is_zero())
        .map(|d| d.min(lease / 3));
    if defer.is_none()
        && let Err(e) = reporter.accept().await
    {
        tracing::warn!(topic = %delivery.topic, error = %e, "could not acknowledge; handing the task back");
        return refuse(delivery, Settle::Requeue).await;
    }
    Some(Admitted {
        delivery,
        env,
        reporter,
        done_key,
        lease,
        defer,
        cancel,
        _inflight: inflight,
    })
}

/// Settles a delivery that is not admitted.
async fn refuse(delivery: Delivery, how: Settle) -> Option<Admitted> {
    settle(delivery, how).await;
    None
}

/// The lease a worker heartbeats within: it must satisfy both the client's lease (the
/// perform's) and the transport's reclaim of idle work, which uses this worker's lease.
fn worker_lease(shared: &WorkerShared, perform: Option<u64>) -> Duration {
    let own = shared.node.config().lease;
    perform
        .map(Duration::from_millis)
        .unwrap_or(own)
        .min(own)
        .max(Duration::from_millis(30))
}

/// Runs the handler until it succeeds, fails its last retry, or is stopped.
async fn run_with_retries(shared: &WorkerShared, reg: &Registration, task: &mut Admitted) -> Ran {
    let counters = shared.node.counters();
    let header = task.env.header();
    let mut attempt = header
        .attempt
        .unwrap_or(1)
        .max(task.delivery.redeliveries + 1);
    let max_runs = shared.retry.map_or(1, |r| r.max_attempts);
    let cancelled_failure = || Failure::message("cancelled".into());
    let mut runs = 0;
    loop {
        runs += 1;
        let ctx = task.context(attempt);
        let started = std::time::Instant::now();
        let end = run_once(
            shared,
            reg,
            &mut task.delivery,
            ctx,
            &task.env,
            task.lease,
            task.defer,
        )
        .await;
        reg.metrics.handler_duration.record(started.elapsed());
        let failure = match end {
            RunEnd::Done(Ok(produce)) => {
                counters.handled.fetch_add(1, Ordering::Relaxed);
                return Ran::Finished {
                    result: Ok(produce),
                    runs,
                };
            }
            RunEnd::Done(Err(failure)) if runs < max_runs => failure,
            RunEnd::Done(Err(failure)) => {
                return Ran::Finished {
                    result: Err(failure),
                    runs,
                };
            }
            RunEnd::Cancelled => {
                counters.cancelled_in_worker.fetch_add(1, Ordering::Relaxed);
                reg.metrics.cancelled.increment(1);
                return Ran::Finished {
                    result: Err(cancelled_failure()),
                    runs,
                };
            }
            RunEnd::DeadlineExceeded => return Ran::Expired,
            RunEnd::Killed(k) => return Ran::Killed(k),
        };
        counters.retries.fetch_add(1, Ordering::Relaxed);
        let delay = shared
            .retry
            .map_or(Duration::ZERO, |r| r.backoff.delay(runs + 1));
        tracing::info!(topic = %task.delivery.topic, error = %failure.message, runs, "handler failed; retrying");
        let mut kill = shared.kill.subscribe();
        let mut cancel = task.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancelled(&mut cancel) => return Ran::Finished { result: Err(cancelled_failure()), runs },
            k = killed(&mut kill) => return Ran::Killed(k),
        }
        attempt += 1;
    }
}

/// Sends the completion of a task that ran, remembered first, and settles the delivery: a
/// task that failed every retry goes to the dead-letter place.
async fn complete(
    shared: &WorkerShared,
    reg: &Registration,
    task: Admitted,
    result: Result<Produce, Failure>,
    runs: u32,
) {
    let max_runs = shared.retry.map_or(1, |r| r.max_attempts);
    let failed = result.is_err();
    let exhausted = shared.retry.is_some() && failed && runs >= max_runs;
    let bytes = completion_bytes(shared, &task.reporter, result);
    let last_error = exhausted.then(|| failure_text(&bytes));
    // Remembered before it is sent: a repeat that arrives meanwhile, or a redelivery after a
    // failed send, is answered with this completion instead of running the handler again.
    lock(&shared.done).insert(&task.done_key, Some(bytes.clone()));
    if let Err(e) = task.reporter.send(Action::Complete, bytes).await {
        tracing::warn!(topic = %task.delivery.topic, error = %e, "could not publish the completion; handing the task back");
        return settle(task.delivery, Settle::Requeue).await;
    }
    let span = &task.reporter.span;
    observe::complete_event(span, if failed { "failed" } else { "succeed" });
    if failed {
        observe::failed(span, "task_failed");
        reg.metrics.failed.increment(1);
    } else {
        reg.metrics.succeeded.increment(1);
    }
    match last_error {
        Some(error) => {
            let counters = shared.node.counters();
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            reg.metrics.dead_lettered.increment(1);
            let reason = DeadLetterReason::RetriesExhausted {
                attempts: runs,
                error,
            };
            settle(task.delivery, Settle::Reject(reason)).await
        }
        None => settle(task.delivery, Settle::Ack).await,
    }
}

/// The completion message of a handler's result, within the payload limit.
fn completion_bytes(
    shared: &WorkerShared,
    reporter: &Reporter,
    result: Result<Produce, Failure>,
) -> Bytes {
    let bytes = match result {
        Ok(produce) => match produce(reporter.codec) {
            Ok(data) => reporter.complete_bytes(None, &data),
            Err(e) => reporter.failure_bytes(&format!("result could not be encoded: {e}")),
        },
        Err(failure) => match failure.data.map(|p| p(reporter.codec)) {
            Some(Ok(data)) => reporter.complete_bytes(Some(&failure.message), &data),
            _ => reporter.failure_bytes(&failure.message),
        },
    };
    if bytes.len() > shared.limit {
        reporter.failure_bytes(&format!(
            "result of {} bytes exceeds the limit of {} bytes",
            bytes.len(),
            shared.limit
        ))
    } else {
        bytes
    }
}

fn failure_text(completion: &Bytes) -> String {
    Envelope::decode(completion.clone())
        .ok()
        .and_then(|e| e.header().error.clone())
        .unwrap_or_default()
}

async fn finish_killed(delivery: Delivery, kill: Kill) {
    match kill {
        Kill::Requeue => settle(delivery, Settle::Requeue).await,
        // A crash: the delivery is dropped unacknowledged.
        _ => drop(delivery),
    }
}

/// A tid running here, with its cancel switch in the worker's table until dropped.
struct InflightGuard {
    shared: Arc<WorkerShared>,
    /// The perform's topic, whose tid is the entry's key.
    topic: Topic,
}

impl InflightGuard {
    /// Registers the tid of `topic` as running here; `None` if it already is.
    fn claim(shared: &Arc<WorkerShared>, topic: &Topic) -> Option<(Self, watch::Receiver<bool>)> {
        let mut inflight = lock(&shared.inflight);
        let std::collections::hash_map::Entry::Vacant(slot) =
            inflight.entry(topic.tid().to_owned())
        else {
            return None;
        };
        let (tx, rx) = watch::channel(false);
        slot.insert(tx);
        drop(inflight);
        let shared = shared.clone();
        let topic = topic.clone();
        Some((InflightGuard { shared, topic }, rx))
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        lock(&self.shared.inflight).remove(self.topic.tid());
    }
}
