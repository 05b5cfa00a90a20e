//! Scale-out: two hubs on one Redis (`AETHER_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`, streams mode, a key prefix of this test's own). A client on
//! hub A, two worker processes on hub B; the worker that takes the task is killed with
//! SIGKILL mid-task. Hub B drops its connection's unacknowledged delivery, the Redis
//! consumer it held it by gives the entry back to the workgroup, and the other worker
//! process completes the task: two runs (the killed one and the survivor's), one
//! completion, one outcome at the client.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::Aether;
use aether::aether_ws::Hub;
use integration_tests::brokers::redis::RedisHarness;
use integration_tests::brokers::ws;
use integration_tests::harness::Harness;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(30);

/// What the worker processes printed: `started`/`done` lines per tid, and per process.
type Runs = Arc<Mutex<HashMap<(usize, String, String), usize>>>;

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Starts worker process `n` on `url`, counting its lines into `runs`; returns once it is
/// ready.
async fn worker(n: usize, url: &str, union: &str, runs: Runs) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aether-test-worker"))
        .args([url, union, "scale", "work", "x", "1500"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn aether-test-worker");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = within("a worker process to start", lines.next_line())
        .await
        .unwrap();
    assert_eq!(ready.as_deref(), Some("ready"));
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((kind, tid)) = line.split_once(' ') {
                *runs
                    .lock()
                    .unwrap()
                    .entry((n, kind.to_owned(), tid.to_owned()))
                    .or_default() += 1;
            }
        }
    });
    child
}

fn count(runs: &Runs, kind: &str, tid: &str) -> usize {
    runs.lock()
        .unwrap()
        .iter()
        .filter(|((_, k, t), _)| k == kind && t == tid)
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_on_redis_a_killed_workers_task_completes_once_on_another() {
    let redis = RedisHarness::from_env("streams");
    let hub_a = Hub::start_with(ws::config(0, false), redis.connect().await)
        .await
        .expect("hub A");
    let hub_b = Hub::start_with(ws::config(0, false), redis.connect().await)
        .await
        .expect("hub B");
    let union = integration_tests::harness::union();
    let runs: Runs = Arc::default();
    let url_b = ws::url(hub_b.port(), false);
    let mut workers = [
        worker(0, &url_b, &union, runs.clone()).await,
        worker(1, &url_b, &union, runs.clone()).await,
    ];

    let client = Aether::builder()
        .union(&union)
        .transport(
            aether::connect(&ws::url(hub_a.port(), false))
                .await
                .unwrap(),
        )
        .build()
        .unwrap();
    let task = client
        .client()
        .perform("scale", "work", "x", &serde_json::json!({"n": 7}))
        .await
        .unwrap();
    let tid = task.tid().to_owned();
    integration_tests::harness::eventually(WAIT, "a worker on hub B to start the task", || {
        count(&runs, "started", &tid) == 1
    })
    .await;
    let first = runs
        .lock()
        .unwrap()
        .keys()
        .find(|(_, k, t)| k == "started" && *t == tid)
        .map(|(n, _, _)| *n)
        .unwrap();
    let victim = &mut workers[first];
    victim.start_kill().unwrap();
    assert!(!victim.wait().await.unwrap().success(), "killed");

    let result: serde_json::Value = within("the other worker to complete it", task.result())
        .await
        .unwrap();
    assert_eq!(result, serde_json::json!({"n": 7}));
    let other = 1 - first;
    let survivor_ran = runs
        .lock()
        .unwrap()
        .get(&(other, "done".to_owned(), tid.clone()))
        .copied();
    assert_eq!(survivor_ran, Some(1), "the survivor completed it");
    // Nothing more comes: a late redispatch or redelivery would start it a third time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&runs, "started", &tid),
        2,
        "killed run + survivor's run"
    );
    assert_eq!(count(&runs, "done", &tid), 1, "one completion");
    let stats = client.stats();
    assert_eq!(stats.succeeded, 1, "one outcome: {stats:?}");
    assert_eq!(stats.failed + stats.lost, 0, "{stats:?}");
    assert!(
        hub_b.stats().given_back >= 1,
        "hub B handed the dead connection's delivery back: {:?}",
        hub_b.stats()
    );
    assert_eq!(hub_a.stats().consumers, 0, "no worker on hub A");
}
