//! ZeroMQ-specific recovery cases, beyond the conformance suite: a killed worker's task
//! comes back by the device's heartbeat (not the client's lease), and a device restart in
//! the middle of a task loses nothing the gap report cannot recover.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aether::{Aether, Error, SharedTransport, TaskContext};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::brokers::zmq::PrivateDevice;
use crate::harness::{PrivateBroker, union};

/// A lease no case waits for: recovery must come from the transport.
const LONG_LEASE: Duration = Duration::from_secs(300);

fn node(t: SharedTransport, u: &str) -> Aether {
    Aether::builder()
        .union(u)
        .lease(LONG_LEASE)
        .transport(t)
        .build()
        .expect("node settings")
}

async fn within<T>(limit: Duration, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// A worker process killed with SIGKILL mid-task: the device notices its silence after 3
/// heartbeats and hands the task to another worker, which runs it once; the client's
/// lease (5 min) plays no part.
pub async fn killed_worker_task_completes_within_the_heartbeat_timeout(worker_bin: &str) {
    let device = PrivateDevice::start();
    let u = union();
    let mut child = tokio::process::Command::new(worker_bin)
        .args([&device.url(), &u, "kill", "hb", "x"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn aether-test-worker");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = within(Duration::from_secs(30), "worker ready", lines.next_line()).await;
    assert_eq!(ready.expect("stdout").as_deref(), Some("ready"));

    let client = node(device.connect().await, &u);
    let task = client
        .client()
        .perform("kill", "hb", "x", &5u32)
        .await
        .expect("perform");
    let started = within(
        Duration::from_secs(30),
        "the task to start",
        lines.next_line(),
    )
    .await;
    assert_eq!(
        started.expect("stdout"),
        Some(format!("started {}", task.tid()))
    );

    let runs = Arc::new(AtomicUsize::new(0));
    let live = node(device.connect().await, &u);
    let r = runs.clone();
    let _w = live
        .worker()
        .announce(false)
        .handle("kill", "hb", "x", move |_ctx: TaskContext, v: u32| {
            r.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Error>(v * 2) }
        })
        .start()
        .await
        .expect("live worker");

    child.start_kill().expect("kill -9");
    let killed = tokio::time::Instant::now();
    child.wait().await.expect("reaped");
    // 3 heartbeats of 500 ms, plus a tick and the round trip.
    let limit = Duration::from_secs(4);
    let r: u32 = within(limit, "the task to complete elsewhere", task.result())
        .await
        .expect("the task's result");
    assert_eq!(r, 10);
    println!(
        "zmq: killed worker's task completed {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "run once elsewhere");
    let stats = client.stats();
    assert_eq!(
        stats.redispatched, 0,
        "the device, not the lease: {stats:?}"
    );
    assert_eq!(stats.succeeded, 1, "{stats:?}");
    assert_eq!(device.stats().peers_expired, 1);
}

/// The device restarts while a worker runs a task: worker and client come back by
/// themselves, the client's subscriptions report the gap, and the task's outcome arrives
/// (the completion, or the redispatch the gap triggers, answered from the worker's memory)
/// with the handler run once, long before the lease.
pub async fn device_restart_mid_task_recovers_by_the_gap_report() {
    let device = PrivateDevice::start();
    let u = union();
    let runs = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let worker_node = node(device.connect().await, &u);
    let r = runs.clone();
    let _w = worker_node
        .worker()
        .announce(false)
        .handle("restart", "slow", "x", move |_ctx: TaskContext, v: u32| {
            r.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, Error>(v + 1)
            }
        })
        .start()
        .await
        .expect("worker");
    let client = node(device.connect().await, &u);
    let task = client
        .client()
        .perform("restart", "slow", "x", &1u32)
        .await
        .expect("perform");
    crate::harness::eventually(Duration::from_secs(30), "the handler to start", || {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;

    device.restart().await;
    release.send(true).expect("release");
    let r: u32 = within(
        Duration::from_secs(20),
        "the outcome after the restart",
        task.result(),
    )
    .await
    .expect("the task's result");
    assert_eq!(r, 2);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    let stats = client.stats();
    println!("zmq: after the device restart: {stats:?}");
    assert_eq!(stats.succeeded, 1, "{stats:?}");
    // The device keeps serving the same connections.
    let again: u32 = within(Duration::from_secs(20), "a task after the restart", async {
        client
            .client()
            .perform("restart", "slow", "x", &5u32)
            .await
            .expect("perform")
            .result()
            .await
    })
    .await
    .expect("result");
    assert_eq!(again, 6);
}
