//! One run of a handler: heartbeats while it runs, and what stops it (cancellation, the
//! deadline, the worker's shutdown) with a grace period to return.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::handler::{Failure, Produce};
use super::{Kill, Registration, WorkerShared, lock};
use crate::context::TaskContext;
use crate::envelope::{Envelope, empty_object, unix_ms};
use crate::transport::Delivery;

/// How a handler run ended.
pub(super) enum RunEnd {
    Done(Result<Produce, Failure>),
    Cancelled,
    DeadlineExceeded,
    Killed(Kill),
}

/// Runs the handler once, heartbeating, watching cancellation, deadline and shutdown.
pub(super) async fn run_once(
    shared: &WorkerShared,
    reg: &Registration,
    delivery: &mut Delivery,
    ctx: TaskContext,
    env: &Envelope,
    lease: Duration,
    defer: Option<Duration>,
) -> RunEnd {
    let counters = shared.node.counters();
    // The handler runs in a task of its own, so a handler that blocks its thread does
    // not stop this one heartbeating.
    let mut handle: JoinHandle<Result<Produce, Failure>> =
        tokio::spawn(reg.handler.call(ctx.clone(), env).in_current_span());
    // A short handler has returned by the time this task runs again: it needs none of
    // the timers below (arming and disarming them costs more than the rest of a task).
    tokio::select! {
        biased;
        joined = &mut handle => return RunEnd::Done(joined_result(joined, counters)),
        () = tokio::task::yield_now() => {}
    }
    let reporter = ctx.inner.reporter.clone();
    let mut cancel = ctx.inner.cancel.clone();
    let deadline = env.header().deadline;
    let mut kill = shared.kill.subscribe();
    let beat = lease / 3;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline_at = deadline.map(|ms| {
        let left = ms.saturating_sub(unix_ms());
        tokio::time::Instant::now() + Duration::from_millis(left)
    });
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

fn joined_result(
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

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
