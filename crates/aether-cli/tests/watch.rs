//! `aether watch -o json` sees a task's whole life and workers coming and going;
//! `aether workers` lists them.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Running, aether, finish, union, url};

const LIMIT: Duration = Duration::from_secs(30);

fn events(watch: &Running) -> Vec<Value> {
    watch
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

async fn watch_sees_a_tasks_whole_life(backend: &str) {
    let (url, union) = (url(backend), union());
    let watch = Running::start(
        aether(&["watch", &url, "--union", &union, "-o", "json"]),
        true,
    );
    // The watcher subscribes before the worker announces itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let script = "echo 'aether: progress 50' >&2; sleep 0.2; cat";
    let mut worker = Running::worker(&url, &union, "demo/life", &[], &["sh", "-c", script]).await;
    let out = finish(
        aether(&["perform", &url, "demo/life", "5", "--union", &union]),
        LIMIT,
    )
    .await;
    assert_eq!(out.code(), 0, "{out:?}");
    watch.wait_for(r#""event":"succeeded""#, LIMIT).await;
    support::signal(&worker.child, rustix::process::Signal::TERM);
    // Bounded: a worker that does not stop on SIGTERM is a failure, not a hung run.
    let status = tokio::time::timeout(LIMIT, worker.child.wait())
        .await
        .expect("the worker did not exit within 30 s of SIGTERM");
    assert!(status.unwrap().success());
    watch.wait_for(r#""event":"offline""#, LIMIT).await;

    let events = events(&watch);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let task: Vec<&Value> = events.iter().filter(|e| e["job"] == "demo").collect();
    let life: Vec<&str> = task.iter().map(|e| e["event"].as_str().unwrap()).collect();
    let expected: &[&str] = if backend == "mqtt" {
        &["idle", "perform", "accepted", "progress", "succeeded"]
    } else {
        &["idle", "accepted", "progress", "succeeded"]
    };
    assert_eq!(life, expected, "{events:#?}");
    assert!(names.contains(&"online"), "{names:?}");
    let done = task.last().unwrap();
    assert_eq!(done["data"], 5);
    // Measured where the watcher receives the messages, so a busy machine shortens or
    // stretches it: only its presence is certain.
    assert!(done["duration_ms"].as_f64().unwrap() > 0.0, "{done}");
    assert_eq!(task[task.len() - 2]["progress"], 50);
}

#[tokio::test]
async fn watch_sees_a_tasks_whole_life_on_redis() {
    watch_sees_a_tasks_whole_life("redis").await;
}

#[tokio::test]
async fn watch_sees_a_tasks_whole_life_on_mqtt() {
    watch_sees_a_tasks_whole_life("mqtt").await;
}

#[tokio::test]
async fn watch_sees_a_tasks_whole_life_on_amqp() {
    watch_sees_a_tasks_whole_life("amqp").await;
}

#[tokio::test]
async fn workers_lists_an_aether_worker_with_what_it_serves() {
    let (url, union) = (url("redis"), union());
    let _worker = Running::worker(
        &url,
        &union,
        "demo/listed",
        &["--concurrency", "2"],
        &["cat"],
    )
    .await;
    // The worker repeats its presence every 5 s; a 6 s window hears it at least once.
    let out = finish(
        aether(&[
            "workers", &url, "--union", &union, "--listen", "6s", "-o", "json",
        ]),
        LIMIT,
    )
    .await;
    assert_eq!(out.code(), 0, "{out:?}");
    let rows: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{out:?}");
    assert_eq!(rows[0]["state"], "idle");
    assert_eq!(rows[0]["serves"][0], "demo/listed/x");
    assert!(rows[0]["since_ms"].as_u64().unwrap() > 0);
}
