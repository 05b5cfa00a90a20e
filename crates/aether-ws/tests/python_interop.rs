//! Live interop with real Python AetherMagic 0.2.9 services on their WebSocket protocol,
//! through an aether hub this test starts: a Python client on an aether worker, an aether
//! client on a Python worker, and aether and Python workers in one `$share` workgroup with
//! many tasks in flight, each task handled once and its progress seen in order.
//!
//! The Python interpreter is `AETHER_TEST_PYTHON` (default `python3`); it must import
//! `aethermagic` with `aiohttp` and `websockets` older than 14 (AetherMagic 0.2.9 passes
//! `timeout=` to `websockets.connect`, which 14 refused: the peer then runs HTTP-only and
//! never receives anything). `scripts/test.sh` builds such a venv from
//! `scripts/python-requirements.txt`. The tests fail, never skip, when it is missing.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_core::{Aether, Error, TaskContext, TopicFilter};
use aether_ws::{Hub, HubConfig, WsTransport};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const WAIT: Duration = Duration::from_secs(30);

fn union() -> String {
    format!("py{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The interpreter, checked once: a clear failure when AetherMagic's WebSocket mode cannot
/// run with it.
fn python() -> String {
    static CHECKED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let python = std::env::var("AETHER_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
            let check = "import aethermagic, aiohttp, asgiref, websockets\n\
                         major = int(websockets.__version__.split('.')[0])\n\
                         assert major < 14, f'websockets {websockets.__version__}: AetherMagic 0.2.9 needs < 14'";
            let out = std::process::Command::new(&python)
                .args(["-c", check])
                .output();
            match out {
                Ok(o) if o.status.success() => python,
                Ok(o) => panic!(
                    "Python AetherMagic's WebSocket mode cannot run with {python:?}: {}\n\
                     Set AETHER_TEST_PYTHON to the python of a venv with it, e.g.\n  \
                     python3 -m venv target/pyenv && target/pyenv/bin/pip install -r scripts/python-requirements.txt\n  \
                     AETHER_TEST_PYTHON=$PWD/target/pyenv/bin/python\n\
                     (scripts/test.sh does both)",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => panic!("cannot run {python:?} ({e}); set AETHER_TEST_PYTHON"),
            }
        })
        .clone()
}

/// A hub on a free loopback port, without a token: Python peers send none.
async fn hub() -> Hub {
    Hub::start(HubConfig::from_url("ws://127.0.0.1:0?no_auth=true").unwrap())
        .await
        .expect("start the hub")
}

/// A Python AetherMagic process (`tests/python/aethermagic_ws_peer.py`), killed on drop.
struct Peer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    fn spawn(port: u16, args: &[&str]) -> Peer {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/aethermagic_ws_peer.py"
        );
        let port = port.to_string();
        let mut child = Command::new(python())
            .arg("-u")
            .arg(script)
            .arg(args[0])
            .args(["127.0.0.1", port.as_str()])
            .args(&args[1..])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the Python peer");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Peer { child, lines }
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

    /// Collects the events into `into` from now on, in the background, so the peer never
    /// blocks on a full pipe; the process is still killed when the returned child drops.
    fn collect(self, into: Arc<Mutex<Vec<Value>>>) -> Child {
        let mut lines = self.lines;
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(json) = line.strip_prefix("@@ ") {
                    if let Ok(v) = serde_json::from_str(json) {
                        into.lock().unwrap().push(v);
                    }
                }
            }
        });
        self.child
    }
}

async fn node(hub: &Hub, union: &str) -> Aether {
    let url = format!("ws://127.0.0.1:{}/ws", hub.port());
    let t = WsTransport::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test's hub at {url}: {e}"));
    Aether::builder()
        .union(union)
        .transport(t)
        .build()
        .expect("node")
}

/// Handler runs per tid.
type Runs = Arc<Mutex<HashMap<String, usize>>>;

/// An aether worker like the Python one: progress 50, then echo, or fail on request; it
/// counts its handler's runs per tid.
async fn rust_worker(node: &Aether, runs: Runs) -> aether_core::Worker {
    node.worker()
        .concurrency(16)
        .handle(
            "interop",
            "echo",
            "x",
            move |ctx: TaskContext, data: Value| {
                *runs
                    .lock()
                    .unwrap()
                    .entry(ctx.tid().to_owned())
                    .or_default() += 1;
                async move {
                    ctx.progress_with(50, &json!({"stage": "half"})).await?;
                    if data["fail"] == json!(true) {
                        return Err(Error::Config("asked to fail".into()));
                    }
                    Ok(json!({"echo": data, "by": "rust"}))
                }
            },
        )
        .start()
        .await
        .expect("start the aether worker")
}

/// Waits until a Python worker announced itself idle (it subscribed before that).
async fn python_worker(hub: &Hub, node: &Aether, union: &str) -> Peer {
    let transport = node.transport("").unwrap().clone();
    let filter = TopicFilter::from_levels(&[union, "interop", "echo", "x", "+", "idle"]).unwrap();
    let mut idle = transport.subscribe(&filter).await.unwrap();
    let mut py = Peer::spawn(hub.port(), &["worker", union, "interop", "echo"]);
    assert_eq!(py.event().await["event"], "idle");
    tokio::time::timeout(WAIT, idle.next())
        .await
        .expect("the Python worker's idle to reach the hub")
        .expect("subscription open")
        .expect("a valid idle topic");
    py
}

/// A Python client's events for its tasks: statuses as (progress, complete) in the order
/// seen, and completions, by tid.
#[derive(Debug, Default)]
struct PyOutcomes {
    performed: Vec<(String, Value)>,
    statuses: HashMap<String, Vec<(Value, Value)>>,
    completes: HashMap<String, Vec<Value>>,
}

impl PyOutcomes {
    fn of(events: &[Value]) -> PyOutcomes {
        let mut o = PyOutcomes::default();
        for e in events {
            let tid = e["tid"].as_str().unwrap_or_default().to_owned();
            match e["event"].as_str() {
                Some("performed") => o.performed.push((tid, e["i"].clone())),
                Some("status") => o
                    .statuses
                    .entry(tid)
                    .or_default()
                    .push((e["progress"].clone(), e["complete"].clone())),
                Some("complete") => o.completes.entry(tid).or_default().push(e.clone()),
                _ => {}
            }
        }
        o
    }

    /// Checks each task: statuses 0, 50, 100 in that order and once each, one completion.
    fn check(&self, expect_by: &str) {
        let order = [
            (json!(0), json!(false)),
            (json!(50), json!(false)),
            (json!(100), json!(true)),
        ];
        for (tid, i) in &self.performed {
            let statuses = self.statuses.get(tid).cloned().unwrap_or_default();
            assert_eq!(statuses, order, "task {tid}: statuses in order, once each");
            let completes = &self.completes[tid];
            assert_eq!(
                completes.len(),
                1,
                "task {tid}: one completion: {completes:?}"
            );
            assert_eq!(completes[0]["succeed"], true);
            assert_eq!(completes[0]["data"]["echo"]["i"], *i);
            if !expect_by.is_empty() {
                assert_eq!(completes[0]["data"]["by"], expect_by);
            }
        }
    }
}

/// Runs a Python client of `count` tasks to its end; its outcomes.
async fn python_client(hub: &Hub, union: &str, data: &str, count: usize) -> PyOutcomes {
    let count = count.to_string();
    let mut py = Peer::spawn(
        hub.port(),
        &["client", union, "interop", "echo", data, &count],
    );
    let mut events = Vec::new();
    loop {
        let e = py.event().await;
        if e["event"] == "done" {
            break;
        }
        events.push(e);
    }
    PyOutcomes::of(&events)
}

/// A Python client performs on an aether worker: several tasks at once, each with the
/// progress-0 acceptance, the handler's 50 and the completion, in order and once each
/// (the hub drops the second copy of everything Python sends); then a failing task.
#[tokio::test]
async fn python_client_performs_on_an_aether_worker() {
    let hub = hub().await;
    let u = union();
    let wn = node(&hub, &u).await;
    let runs = Runs::default();
    let _w = rust_worker(&wn, runs.clone()).await;

    let outcomes = python_client(&hub, &u, r#"{"i": 0}"#, 4).await;
    assert_eq!(outcomes.performed.len(), 4);
    outcomes.check("rust");
    for (tid, _) in &outcomes.performed {
        assert_eq!(
            runs.lock().unwrap().get(tid),
            Some(&1),
            "task {tid} ran once"
        );
    }

    let outcomes = python_client(&hub, &u, r#"{"i": 1, "fail": true}"#, 1).await;
    let (tid, _) = &outcomes.performed[0];
    let completes = &outcomes.completes[tid];
    assert_eq!(completes.len(), 1, "{completes:?}");
    assert_eq!(completes[0]["succeed"], false);
    assert_eq!(
        completes[0]["data"]["error"],
        "invalid configuration: asked to fail"
    );
    let stats = wn.stats();
    assert_eq!((stats.handled, stats.handler_errors), (4, 1), "{stats:?}");
    assert!(hub.stats().duplicates >= 5, "{:?}", hub.stats());
}

/// An aether client performs on a Python worker and gets its progress and result, and its
/// failure as `TaskFailed`.
#[tokio::test]
async fn aether_client_performs_on_a_python_worker() {
    let hub = hub().await;
    let u = union();
    let cn = node(&hub, &u).await;
    let _py = python_worker(&hub, &cn, &u).await;

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
    assert_eq!(cn.stats().duplicate_updates, 0, "{:?}", cn.stats());
}

/// Two Python workers and an aether worker in AetherTask's workgroup (`$share` for the
/// Python ones, a consumer for aether's), an aether client with 64 tasks in flight and a
/// Python client with 8 more at the same time: every task is handled exactly once, by
/// one of them, both kinds get some, each outcome comes once and every task's progress
/// is seen in order.
#[tokio::test]
async fn aether_and_python_workers_share_a_workgroup() {
    const N: usize = 64;
    const PY_N: usize = 8;
    let hub = hub().await;
    let u = union();
    let cn = node(&hub, &u).await;
    let py_runs: Arc<Mutex<Vec<Value>>> = Default::default();
    let _py1 = python_worker(&hub, &cn, &u).await.collect(py_runs.clone());
    let _py2 = python_worker(&hub, &cn, &u).await.collect(py_runs.clone());
    let wn = node(&hub, &u).await;
    let runs = Runs::default();
    let _w = rust_worker(&wn, runs.clone()).await;

    let py_client = python_client(&hub, &u, r#"{"from": "python"}"#, PY_N);
    let aether_client = async {
        let client = cn.client();
        let mut tasks = Vec::new();
        for i in 0..N {
            let t = client
                .perform("interop", "echo", "x", &json!({"i": i}))
                .await
                .unwrap();
            tasks.push(t);
        }
        let mut results = Vec::new();
        for (i, mut task) in tasks.into_iter().enumerate() {
            let tid = task.tid().to_owned();
            let mut percents = Vec::new();
            while let Some(p) = tokio::time::timeout(WAIT, task.next_progress())
                .await
                .unwrap_or_else(|_| panic!("task {i} ({tid}): no outcome after {percents:?}"))
            {
                percents.push(p.percent);
            }
            let r: Value = tokio::time::timeout(WAIT, task.result())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r["echo"], json!({"i": i}));
            results.push((tid, r["by"].as_str().unwrap().to_owned(), percents));
        }
        results
    };
    let (py_outcomes, results) = tokio::join!(py_client, aether_client);

    // Handler runs per tid, over the three workers.
    let mut ran: HashMap<String, usize> = runs.lock().unwrap().clone();
    for e in py_runs.lock().unwrap().iter() {
        if e["event"] == "perform" {
            *ran.entry(e["tid"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let mut by: HashMap<String, usize> = HashMap::new();
    for (tid, who, percents) in &results {
        assert_eq!(
            ran.get(tid),
            Some(&1),
            "task {tid} ran once (completed by {who}; aether ran it {:?} times; hub {:?}; client {:?})",
            runs.lock().unwrap().get(tid),
            hub.stats(),
            cn.stats()
        );
        assert_eq!(percents, &[0, 50], "task {tid} ({who}): progress in order");
        *by.entry(who.clone()).or_default() += 1;
    }
    py_outcomes.check("");
    for (tid, _) in &py_outcomes.performed {
        assert_eq!(
            ran.get(tid),
            Some(&1),
            "Python client's task {tid} ran once"
        );
        let who = py_outcomes.completes[tid][0]["data"]["by"]
            .as_str()
            .unwrap();
        *by.entry(who.to_owned()).or_default() += 1;
    }
    assert_eq!(ran.len(), N + PY_N, "no other task ran: {ran:?}");
    assert!(by.get("python").copied().unwrap_or(0) > 0, "{by:?}");
    assert!(by.get("rust").copied().unwrap_or(0) > 0, "{by:?}");
    let stats = cn.stats();
    assert_eq!(stats.duplicate_updates, 0, "{stats:?}");
    assert_eq!(stats.redispatched, 0, "{stats:?}");
}

/// Many tasks in flight on Python workers alone: the hub hands each seed worker a few
/// performs at a time (a Python peer reads one frame per pass of its main loop and stops
/// answering pings once 32 wait), so none is cut off as silent and every task completes
/// once, with its progress in order.
#[tokio::test]
async fn python_workers_take_many_tasks_in_flight() {
    const N: usize = 64;
    let hub = hub().await;
    let u = union();
    let cn = node(&hub, &u).await;
    let py_runs: Arc<Mutex<Vec<Value>>> = Default::default();
    let _py1 = python_worker(&hub, &cn, &u).await.collect(py_runs.clone());
    let _py2 = python_worker(&hub, &cn, &u).await.collect(py_runs.clone());
    let client = cn.client();
    let mut tasks = Vec::new();
    for i in 0..N {
        let t = client
            .task("interop", "echo")
            .deadline(Duration::from_secs(60))
            .perform(&json!({"i": i}))
            .await
            .unwrap();
        tasks.push(t);
    }
    for (i, mut task) in tasks.into_iter().enumerate() {
        let tid = task.tid().to_owned();
        let mut percents = Vec::new();
        while let Some(p) = task.next_progress().await {
            percents.push(p.percent);
        }
        let r = task.result::<Value>().await;
        let r = r.unwrap_or_else(|e| panic!("task {i} ({tid}): {e}; hub {:?}", hub.stats()));
        assert_eq!(r["echo"], json!({"i": i}));
        assert_eq!(percents, [0, 50], "task {tid}: progress in order");
    }
    let mut ran: HashMap<String, usize> = HashMap::new();
    for e in py_runs.lock().unwrap().iter() {
        if e["event"] == "perform" {
            *ran.entry(e["tid"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(ran.len(), N, "{ran:?}");
    assert!(ran.values().all(|n| *n == 1), "each task ran once: {ran:?}");
    let stats = hub.stats();
    assert_eq!((stats.expired, stats.stalled), (0, 0), "{stats:?}");
}

/// A Python worker killed while it runs a task: the hub held the perform for it (a seed
/// worker cannot acknowledge) and gives it back when the socket closes, so an aether worker
/// of the group completes it.
#[tokio::test]
async fn a_killed_python_workers_task_goes_to_another_worker() {
    let hub = hub().await;
    let u = union();
    let cn = node(&hub, &u).await;
    let mut py = python_worker(&hub, &cn, &u).await;
    let task = cn
        .client()
        .task("interop", "echo")
        .deadline(Duration::from_secs(20))
        .perform(&json!({"hang": true}))
        .await
        .unwrap();
    let e = py.event().await;
    assert_eq!(
        (&e["event"], &e["tid"]),
        (&json!("perform"), &json!(task.tid()))
    );
    assert_eq!(hub.stats().in_flight, 1, "held for the Python worker");
    py.child.kill().await.unwrap();

    let wn = node(&hub, &u).await;
    let runs = Runs::default();
    let _w = rust_worker(&wn, runs.clone()).await;
    let r: Value = task.result().await.unwrap();
    assert_eq!(r["by"], "rust");
    assert_eq!(r["echo"], json!({"hang": true}));
    let stats = hub.stats();
    assert_eq!(stats.given_back, 1, "{stats:?}");
}
