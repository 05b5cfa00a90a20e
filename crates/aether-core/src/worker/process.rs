//! What a worker does with one delivery, from checks to completion.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::handler::{Failure, Produce};
use super::{Kill, Registration, WorkerShared, lock};
use crate::action::Action;
use crate::client::unix_ms;
use crate::context::{ContextInner, Reporter, TaskContext};
use crate::envelope::{Envelope, empty_object};
use crate::error::DecodeError;
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

/// How a handler run ended.
pub(super) enum RunEnd {
    Done(Result<Produce, Failure>),
    Cancelled,
    DeadlineExceeded,
    Killed(Kill),
}

pub(super) async fn process(
    shared: Arc<WorkerShared>,
    reg: Arc<Registration>,
    mut delivery: Delivery,
) {
    let node = &shared.node;
    let counters = node.counters();
    let config = node.config();
    counters.received.fetch_add(1, Ordering::Relaxed);

    if delivery.payload.len() > shared.limit {
        counters.oversized.fetch_add(1, Ordering::Relaxed);
        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let size = delivery.payload.len();
        let reason = DeadLetterReason::Oversized {
            size,
            limit: shared.limit,
        };
        return settle(delivery, Settle::Reject(reason)).await;
    }
    let env = match Envelope::decode(delivery.payload.clone()) {
        Ok(env) if env.header().action == Action::Perform => env,
        Ok(env) => {
            counters.unexpected_action.fetch_add(1, Ordering::Relaxed);
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            let reason = DeadLetterReason::UnexpectedAction(env.header().action.to_string());
            return settle(delivery, Settle::Reject(reason)).await;
        }
        Err(e) => {
            let counter = match e {
                DecodeError::UnknownAction(_) => &counters.unknown_action,
                _ => &counters.malformed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %delivery.topic, error = %e, "undecodable perform dead-lettered");
            return settle(
                delivery,
                Settle::Reject(DeadLetterReason::Malformed(e.to_string())),
            )
            .await;
        }
    };
    let header = env.header();
    let tid = delivery.topic.tid().to_owned();
    let done_key = format!("{}/{tid}", header.client);
    // Heartbeats must satisfy both the client's lease and the transport's reclaim of idle
    // work, which uses this worker's lease.
    let lease = header
        .lease
        .map(Duration::from_millis)
        .unwrap_or(config.lease)
        .min(config.lease)
        .max(Duration::from_millis(30));
    let reporter = Arc::new(Reporter {
        transport: shared.transport.clone(),
        topic: delivery.topic.clone(),
        codec: env.codec(),
        host: config.host.clone(),
        client: config.client_id.clone(),
        lease,
        limit: shared.limit,
        seq: Default::default(),
        published: Default::default(),
        accepted: Default::default(),
    });

    // Already completed here: repeat the completion, if kept, and drop the perform.
    let repeat = lock(&shared.done).get(&done_key).cloned();
    if let Some(completion) = repeat {
        counters.duplicate_performs.fetch_add(1, Ordering::Relaxed);
        if let Some(bytes) = completion {
            let _ = reporter.send(Action::Complete, bytes).await;
        }
        return settle(delivery, Settle::Ack).await;
    }
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let running_here = {
        let mut inflight = lock(&shared.inflight);
        let present = inflight.contains_key(&tid);
        if !present {
            inflight.insert(tid.clone(), cancel_tx);
        }
        present
    };
    if running_here {
        counters.duplicate_performs.fetch_add(1, Ordering::Relaxed);
        return settle(delivery, Settle::Ack).await;
    }
    let _inflight = InflightGuard(&shared, &tid);

    if let Some(deadline) = header.deadline
        && deadline <= unix_ms()
    {
        // The client has reported the deadline itself; nobody waits for a completion.
        counters.expired.fetch_add(1, Ordering::Relaxed);
        lock(&shared.done).insert(done_key, None);
        return settle(delivery, Settle::Ack).await;
    }
    if delivery.redeliveries >= shared.max_deliveries {
        let attempts = delivery.redeliveries + 1;
        let bytes = reporter.failure_bytes(&format!("delivered {attempts} times; dead-lettered"));
        let _ = reporter.send(Action::Complete, bytes).await;
        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        return settle(
            delivery,
            Settle::Reject(DeadLetterReason::AttemptsExhausted { attempts }),
        )
        .await;
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
        return settle(delivery, Settle::Requeue).await;
    }

    let mut attempt = header.attempt.unwrap_or(1).max(delivery.redeliveries + 1);
    let max_runs = shared.retry.map_or(1, |r| r.max_attempts);
    let mut runs = 0;
    let outcome = loop {
        runs += 1;
        let ctx = TaskContext {
            inner: Arc::new(ContextInner {
                reporter: reporter.clone(),
                attempt,
                deadline: header.deadline,
                headers: header.headers.clone(),
                progress: AtomicU8::new(0),
                cancel: cancel_rx.clone(),
            }),
        };
        let end = run_once(&shared, &reg, &mut delivery, ctx, env.clone(), lease, defer).await;
        match end {
            RunEnd::Done(Ok(produce)) => {
                counters.handled.fetch_add(1, Ordering::Relaxed);
                break Ok(produce);
            }
            RunEnd::Done(Err(failure)) => {
                if runs < max_runs {
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = shared
                        .retry
                        .map_or(Duration::ZERO, |r| r.backoff.delay(runs + 1));
                    tracing::info!(topic = %delivery.topic, error = %failure.message, runs, "handler failed; retrying");
                    let mut kill = shared.kill.subscribe();
                    let mut cancel = cancel_rx.clone();
                    let interrupted = tokio::select! {
                        _ = tokio::time::sleep(delay) => None,
                        _ = cancelled(&mut cancel) => Some(None),
                        k = killed(&mut kill) => Some(Some(k)),
                    };
                    match interrupted {
                        None => {}
                        Some(None) => break Err(Failure::message("cancelled".into())),
                        Some(Some(k)) => return finish_killed(delivery, k).await,
                    }
                    attempt += 1;
                    continue;
                }
                break Err(failure);
            }
            RunEnd::Cancelled => {
                counters.cancelled_in_worker.fetch_add(1, Ordering::Relaxed);
                break Err(Failure::message("cancelled".into()));
            }
            RunEnd::DeadlineExceeded => {
                // The client reports the deadline itself; a completion could only race it.
                counters.expired.fetch_add(1, Ordering::Relaxed);
                lock(&shared.done).insert(done_key, None);
                return settle(delivery, Settle::Ack).await;
            }
            RunEnd::Killed(k) => return finish_killed(delivery, k).await,
        }
    };

    let exhausted = shared.retry.is_some() && outcome.is_err() && runs >= max_runs;
    let bytes = match outcome {
        Ok(produce) => match produce(reporter.codec) {
            Ok(data) => reporter.complete_bytes(None, &data),
            Err(e) => reporter.failure_bytes(&format!("result could not be encoded: {e}")),
        },
        Err(failure) => match failure.data.map(|p| p(reporter.codec)) {
            Some(Ok(data)) => reporter.complete_bytes(Some(&failure.message), &data),
            _ => reporter.failure_bytes(&failure.message),
        },
    };
    let bytes = if bytes.len() > shared.limit {
        reporter.failure_bytes(&format!(
            "result of {} bytes exceeds the limit of {} bytes",
            bytes.len(),
            shared.limit
        ))
    } else {
        bytes
    };
    let last_error = exhausted.then(|| failure_text(&bytes));
    // Remembered before it is sent: a repeat that arrives meanwhile, or a redelivery after a
    // failed send, is answered with this completion instead of running the handler again.
    lock(&shared.done).insert(done_key, Some(bytes.clone()));
    if let Err(e) = reporter.send(Action::Complete, bytes).await {
        tracing::warn!(topic = %delivery.topic, error = %e, "could not publish the completion; handing the task back");
        return settle(delivery, Settle::Requeue).await;
    }
    match last_error {
        Some(error) => {
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            let reason = DeadLetterReason::RetriesExhausted {
                attempts: runs,
                error,
            };
            settle(delivery, Settle::Reject(reason)).await
        }
        None => settle(delivery, Settle::Ack).await,
    }
}

pub(super) fn failure_text(completion: &Bytes) -> String {
    Envelope::decode(completion.clone())
        .ok()
        .and_then(|e| e.header().error.clone())
        .unwrap_or_default()
}

pub(super) async fn finish_killed(delivery: Delivery, kill: Kill) {
    match kill {
        Kill::Requeue => settle(delivery, Settle::Requeue).await,
        // A crash: the delivery is dropped unacknowledged.
        _ => drop(delivery),
    }
}

pub(super) struct InflightGuard<'a>(&'a WorkerShared, &'a str);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.inflight).remove(self.1);
    }
}

/// Runs the handler once, heartbeating, watching cancellation, deadline and shutdown.
pub(super) async fn run_once(
    shared: &WorkerShared,
    reg: &Registration,
    delivery: &mut Delivery,
    ctx: TaskContext,
    env: Envelope,
    lease: Duration,
    defer: Option<Duration>,
) -> RunEnd {
    let reporter = ctx.inner.reporter.clone();
    let mut cancel = ctx.inner.cancel.clone();
    let deadline = env.header().deadline;
    let mut kill = shared.kill.subscribe();
    let mut handle: JoinHandle<Result<Produce, Failure>> =
        tokio::spawn(reg.handler.call(ctx.clone(), env));
    let beat = lease / 3;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline_at = deadline.map(|ms| {
        let left = ms.saturating_sub(unix_ms());
        tokio::time::Instant::now() + Duration::from_millis(left)
    });
    let counters = shared.node.counters();
    let mut accept_at = defer
        .filter(|_| !reporter.accepted.initialized())
        .map(|d| tokio::time::Instant::now() + d);
    let stopped = loop {
        tokio::select! {
            joined = &mut handle => return RunEnd::Done(joined_result(joined, counters)),
            _ = sleep_until_opt(accept_at) => {
                accept_at = None;
                if let Err(e) = reporter.accept().await {
                    tracing::debug!(error = %e, "acceptance not sent; the next heartbeat tries again");
                }
            }
            _ = heartbeat.tick() => {
                let p = ctx.current_progress();
                if let Err(e) = reporter.status(p, empty_object(reporter.codec)).await {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
                if let Err(e) = delivery.keep_alive().await {
                    tracing::debug!(error = %e, "keep-alive failed");
                }
            }
            _ = cancelled(&mut cancel) => break RunEnd::Cancelled,
            _ = sleep_until_opt(deadline_at) => break RunEnd::DeadlineExceeded,
            k = killed(&mut kill) => {
                if k == Kill::Abort {
                    handle.abort();
                    return RunEnd::Killed(k);
                }
                break RunEnd::Killed(k);
            }
        }
    };
    // Cancelled, past the deadline or shutting down: tell the handler and give it a grace
    // period to return before aborting it.
    if let Some(tx) = lock(&shared.inflight).get(reporter.topic.tid()) {
        let _ = tx.send(true);
    }
    match tokio::time::timeout(shared.cancel_grace, &mut handle).await {
        // Shutting down: a handler that finished within the grace period reports its
        // result rather than handing the task back.
        Ok(joined) if matches!(stopped, RunEnd::Killed(Kill::Requeue)) => {
            match joined_result(joined, counters) {
                Ok(p) => RunEnd::Done(Ok(p)),
                Err(_) => stopped,
            }
        }
        Ok(_) => stopped,
        Err(_) => {
            handle.abort();
            stopped
        }
    }
}

pub(super) fn joined_result(
    joined: Result<Result<Produce, Failure>, tokio::task::JoinError>,
    counters: &crate::stats::Counters,
) -> Result<Produce, Failure> {
    match joined {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(f)) => {
            counters.handler_errors.fetch_add(1, Ordering::Relaxed);
            Err(f)
        }
        Err(e) if e.is_panic() => {
            counters.handler_panics.fetch_add(1, Ordering::Relaxed);
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_owned());
            Err(Failure::message(format!("handler panicked: {msg}")))
        }
        Err(_) => Err(Failure::message("handler was aborted".into())),
    }
}

/// Completes when the switch turns on; never if its sender is gone.
pub(super) async fn cancelled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Completes when the worker is killed, with how.
pub(super) async fn killed(rx: &mut watch::Receiver<Kill>) -> Kill {
    match rx.wait_for(|k| *k != Kill::No).await {
        Ok(k) => *k,
        Err(_) => Kill::Abort,
    }
}

pub(super) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
