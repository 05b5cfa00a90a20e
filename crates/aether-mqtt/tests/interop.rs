//! Live interop with real Python AetherMagic 0.2.9 services on the broker at
//! `AETHER_TEST_MQTT_URL` (default `mqtt://127.0.0.1:1883`), both ways: a Python client on
//! an aether worker, an aether client on a Python worker, and aether and Python workers
//! sharing one workgroup.
//!
//! The Python interpreter is `AETHER_TEST_PYTHON` (default `python3`); it must import
//! `aethermagic` (`pip install aethermagic==0.2.9 aiomqtt paho-mqtt asgiref`). The tests
//! fail, never skip, when it does not.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_core::{Aether, Error, TaskContext, TopicFilter};
use aether_mqtt::{MqttConfig, MqttTransport};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const WAIT: Duration = Duration::from_secs(30);

fn url() -> String {
    std::env::var("AETHER_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

fn union() -> String {
    format!("py{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The interpreter, checked once: a clear failure when AetherMagic is not importable.
fn python() -> String {
    static CHECKED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let python = std::env::var("AETHER_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
            let out = std::process::Command::new(&python)
                .args(["-c", "import aethermagic, aiomqtt, asgiref"])
                .output();
            match out {
                Ok(o) if o.status.success() => python,
                Ok(o) => panic!(
                    "Python AetherMagic is not importable with {python:?}: {}\n\
                     Set AETHER_TEST_PYTHON to the python of a venv with it, e.g.\n  \
                     python3 -m venv /work/pyenv && /work/pyenv/bin/pip install aethermagic==0.2.9 aiomqtt paho-mqtt asgiref\n  \
                     AETHER_TEST_PYTHON=/work/pyenv/bin/python",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => panic!("cannot run {python:?} ({e}); set AETHER_TEST_PYTHON"),
            }
        })
        .clone()
}

/// A Python AetherMagic process (`tests/python/aethermagic_peer.py`), killed on drop.
struct Peer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    fn spawn(args: &[&str]) -> Peer {
        let config = MqttConfig::from_url(&url()).expect("AETHER_TEST_MQTT_URL");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/aethermagic_peer.py"
        );
        let port = config.port.to_string();
        let mut child = Command::new(python())
            .arg("-u")
            .arg(script)
            .arg(args[0])
            .args([config.host.as_str(), port.as_str()])
            .args(&args[1..])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the Python peer");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Peer { child, lines }
    }

    /// Reads and discards the peer's output from now on, so a peer that prints a line per
    /// task never blocks on a full pipe; the process is still killed when this is dropped.
    fn discard_output(self) -> Child {
        let mut lines = self.lines;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child
    }

    /// The next protocol event (`@@ {json}` line); AetherMagic's own output is skipped.
    async fn event(&mut self) -> Value {
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.next_line())
                .await
                .expect("the Python peer to report within 30 s")
                .expect("read the Python peer's output");
            let Some(line) = line else {
                let status = self.child.wait().await.expect("peer status");
                panic!("the Python peer exited ({status}) before reporting");
            };
            if let Some(json) = line.strip_prefix("@@ ") {
                return serde_json::from_str(json).expect("an event line");
            }
        }
    }
}

async fn node(union: &str) -> Aether {
    let t = MqttTransport::connect(&url())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}. Is Mosquitto running?", url()));
    Aether::builder()
        .union(union)
        .transport(t)
        .build()
        .expect("node")
}

/// An aether worker like the Python one: progress 50, then echo, or fail on request.
async fn rust_worker(node: &Aether) -> aether_core::Worker {
    node.worker()
        .handle(
            "interop",
            "echo",
            "x",
            |ctx: TaskContext, data: Value| async move {
                ctx.progress_with(50, &json!({"stage": "half"})).await?;
                if data["fail"] == json!(true) {
                    return Err(Error::Config("asked to fail".into()));
                }
                Ok(json!({"echo": data, "by": "rust"}))
            },
        )
        .start()
        .await
        .expect("start the aether worker")
}

/// A Python client performs on an aether worker: it gets the progress-0 acceptance, the
/// progress report and the completion, succeeded and failed.
#[tokio::test]
async fn python_client_performs_on_an_aether_worker() {
    let u = union();
    let wn = node(&u).await;
    let _w = rust_worker(&wn).await;

    let mut py = Peer::spawn(&["client", &u, "interop", "echo", r#"{"i": 0}"#]);
    let performed = py.event().await;
    assert_eq!(performed["event"], "performed");
    assert_eq!(performed["tid"].as_str().map(str::len), Some(8));
    // Python reports the completion through on_status (complete=true) and on_complete.
    let mut statuses = Vec::new();
    let mut complete = None;
    while complete.is_none() || statuses.last().map(|s: &(Value, Value)| &s.1) != Some(&json!(true))
    {
        let e = py.event().await;
        match e["event"].as_str() {
            Some("status") => statuses.push((e["progress"].clone(), e["complete"].clone())),
            Some("complete") => complete = Some(e),
            other => panic!("unexpected event {other:?}: {e}"),
        }
    }
    let complete = complete.unwrap();
    assert_eq!(complete["succeed"], true);
    assert_eq!(complete["data"], json!({"echo": {"i": 0}, "by": "rust"}));
    assert_eq!(
        statuses,
        [
            (json!(0), json!(false)),
            (json!(50), json!(false)),
            (json!(100), json!(true))
        ],
        "acceptance at 0, the handler's 50, the completion"
    );

    let mut py = Peer::spawn(&["client", &u, "interop", "echo", r#"{"i": 1, "fail": true}"#]);
    let complete = loop {
        let e = py.event().await;
        if e["event"] == "complete" {
            break e;
        }
    };
    assert_eq!(complete["succeed"], false);
    assert_eq!(
        complete["data"]["error"],
        "invalid configuration: asked to fail"
    );
    let stats = wn.stats();
    assert_eq!((stats.handled, stats.handler_errors), (1, 1), "{stats:?}");
}

/// An aether client performs on a Python worker and gets its progress and result, and its
/// failure as `TaskFailed`.
#[tokio::test]
async fn aether_client_performs_on_a_python_worker() {
    let u = union();
    let cn = node(&u).await;
    let transport = cn.transport("").unwrap().clone();
    // The worker announces idle after it subscribed: then a perform reaches it.
    let mut idle = transport
        .subscribe(&TopicFilter::from_levels(&[&*u, "interop", "echo", "x", "+", "idle"]).unwrap())
        .await
        .unwrap();
    let _py = Peer::spawn(&["worker", &u, "interop", "echo"]);
    tokio::time::timeout(WAIT, idle.next())
        .await
        .expect("the Python worker to announce idle")
        .expect("subscription open")
        .expect("a valid idle topic");

    let mut task = cn
        .client()
        .perform("interop", "echo", "x", &json!({"i": 0}))
        .await
        .unwrap();
    let mut percents = Vec::new();
    while let Some(p) = tokio::time::timeout(WAIT, task.next_progress())
        .await
        .unwrap()
    {
        if p.percent == 50 {
            assert_eq!(p.data::<Value>().unwrap(), json!({"stage": "half"}));
        }
        percents.push(p.percent);
    }
    assert_eq!(percents, [0, 50]);
    let r: Value = task.result().await.unwrap();
    assert_eq!(r, json!({"echo": {"i": 0}, "by": "python"}));

    let task = cn
        .client()
        .perform("interop", "echo", "x", &json!({"fail": true}))
        .await
        .unwrap();
    let err = tokio::time::timeout(WAIT, task.result::<Value>())
        .await
        .unwrap()
        .unwrap_err();
    match err {
        Error::TaskFailed { data, .. } => assert_eq!(data, json!({"reason": "asked to fail"})),
        other => panic!("expected TaskFailed, got {other:?}"),
    }
}

/// Many tasks in flight on a Python worker, over several runs: every task surfaces the
/// acceptance and the progress report before its result. The Python worker numbers no
/// status (`seq`), so this holds only if the client applies a task's replies in the order
/// the worker sent them.
#[tokio::test]
async fn every_python_progress_report_arrives_with_many_tasks_in_flight() {
    const IN_FLIGHT: usize = 20;
    const RUNS: usize = 10;
    let u = union();
    let cn = node(&u).await;
    let transport = cn.transport("").unwrap().clone();
    let mut idle = transport
        .subscribe(&TopicFilter::from_levels(&[&*u, "interop", "echo", "x", "+", "idle"]).unwrap())
        .await
        .unwrap();
    let _py = Peer::spawn(&["worker", &u, "interop", "echo"]).discard_output();
    tokio::time::timeout(WAIT, idle.next())
        .await
        .expect("the Python worker to announce idle");
    let client = cn.client();
    let mut short = Vec::new();
    for run in 0..RUNS {
        let mut tasks = Vec::new();
        for i in 0..IN_FLIGHT {
            tasks.push(
                client
                    .perform("interop", "echo", "x", &json!({"run": run, "i": i}))
                    .await
                    .unwrap(),
            );
        }
        for (i, mut task) in tasks.into_iter().enumerate() {
            let mut percents = Vec::new();
            while let Some(p) = tokio::time::timeout(WAIT, task.next_progress())
                .await
                .unwrap_or_else(|_| panic!("run {run}, task {i}: no outcome after {percents:?}"))
            {
                percents.push(p.percent);
            }
            let tid = task.tid().to_owned();
            let r: Value = tokio::time::timeout(WAIT, task.result())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r["echo"], json!({"run": run, "i": i}));
            if percents != [0, 50] {
                short.push((run, tid, percents));
            }
        }
    }
    assert!(
        short.is_empty(),
        "{} of {} tasks without [0, 50] (run, tid, progress): {short:?}",
        short.len(),
        IN_FLIGHT * RUNS
    );
    assert_eq!(cn.stats().duplicate_updates, 0, "{:?}", cn.stats());
}

/// aether and Python workers in the default workgroup share one shared subscription: each
/// task is handled once, by one of them, and both get some.
#[tokio::test]
async fn aether_and_python_workers_share_a_workgroup() {
    const N: usize = 24;
    let u = union();
    let cn = node(&u).await;
    let transport = cn.transport("").unwrap().clone();
    let mut idle = transport
        .subscribe(&TopicFilter::from_levels(&[&*u, "interop", "echo", "x", "+", "idle"]).unwrap())
        .await
        .unwrap();
    let _py = Peer::spawn(&["worker", &u, "interop", "echo"]);
    tokio::time::timeout(WAIT, idle.next())
        .await
        .expect("the Python worker to announce idle");
    let wn = node(&u).await;
    let _w = rust_worker(&wn).await;

    let client = cn.client();
    let mut tasks = Vec::new();
    for i in 0..N {
        tasks.push(
            client
                .perform("interop", "echo", "x", &json!({"i": i}))
                .await
                .unwrap(),
        );
    }
    let by: Arc<Mutex<HashMap<String, usize>>> = Default::default();
    for (i, task) in tasks.into_iter().enumerate() {
        let r: Value = tokio::time::timeout(WAIT, task.result())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r["echo"], json!({"i": i}));
        *by.lock()
            .unwrap()
            .entry(r["by"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let by = by.lock().unwrap().clone();
    assert_eq!(by.values().sum::<usize>(), N);
    assert!(by.get("python").copied().unwrap_or(0) > 0, "{by:?}");
    assert!(by.get("rust").copied().unwrap_or(0) > 0, "{by:?}");
    assert_eq!(wn.stats().handled, by["rust"] as u64, "each task once");
    assert_eq!(cn.stats().redispatched, 0, "{:?}", cn.stats());
}
