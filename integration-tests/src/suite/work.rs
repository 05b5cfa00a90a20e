//! Work queues: one-of-N, workgroups, progress, results, shutdown, durability.

use super::*;

/// 1,000 tasks over 3 workers of one workgroup: each handled exactly once, every worker
/// gets some, every result comes back right.
pub async fn one_of_n_exactly_once(h: &dyn Harness, u: &str) {
    const N: usize = 1000;
    let u = u.to_owned();
    let seen: Arc<Mutex<HashMap<usize, Vec<usize>>>> = Default::default();
    let mut workers = Vec::new();
    for w in 0..3 {
        let node = node(h, &u, |b| b).await;
        let seen = seen.clone();
        let worker = announce(node.worker())
            .concurrency(8)
            .handle("lb", "square", "x", move |_ctx: TaskContext, i: usize| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().entry(i).or_default().push(w);
                    Ok::<_, Error>(i * i)
                }
            })
            .start()
            .await
            .unwrap();
        workers.push((node, worker));
    }
    let client = node(h, &u, |b| b).await.client();
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        handles.push(client.perform("lb", "square", "x", &i).await.unwrap());
    }
    for (i, handle) in handles.into_iter().enumerate() {
        let r: usize = within("result", handle.result()).await.unwrap();
        assert_eq!(r, i * i);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), N, "every task handled");
    let mut per_worker = [0usize; 3];
    for (i, by) in seen.iter() {
        assert_eq!(by.len(), 1, "task {i} handled by workers {by:?}");
        per_worker[by[0]] += 1;
    }
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "every worker gets some: {per_worker:?}"
    );
}

/// Two workgroups on one queue: each gets every task once.
pub async fn every_workgroup_gets_every_task(h: &dyn Harness, u: &str) {
    const N: usize = 50;
    let u = u.to_owned();
    let seen: Arc<Mutex<HashMap<(&'static str, usize), usize>>> = Default::default();
    let mut workers = Vec::new();
    for group in ["audit", "audit", "billing"] {
        let node = node(h, &u, |b| b).await;
        let seen = seen.clone();
        let w = announce(node.worker())
            .workgroup(group)
            .handle(
                "order",
                "placed",
                "x",
                move |_ctx: TaskContext, i: usize| {
                    let seen = seen.clone();
                    async move {
                        *seen.lock().unwrap().entry((group, i)).or_default() += 1;
                        Ok::<_, Error>(group)
                    }
                },
            )
            .start()
            .await
            .unwrap();
        workers.push((node, w));
    }
    let client = node(h, &u, |b| b).await.client();
    for i in 0..N {
        let r: String = within(
            "result",
            client
                .perform("order", "placed", "x", &i)
                .await
                .unwrap()
                .result(),
        )
        .await
        .unwrap();
        assert!(r == "audit" || r == "billing");
    }
    eventually(WAIT, "both workgroups to handle every task", || {
        seen.lock().unwrap().len() == 2 * N
    })
    .await;
    for (key, n) in seen.lock().unwrap().iter() {
        assert_eq!(*n, 1, "{key:?} handled {n} times");
    }
}

/// Progress reports reach the client in the order they were sent, acceptance first.
pub async fn progress_arrives_in_order(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let wn = node(h, &u, |b| b).await;
    let _w = announce(wn.worker())
        .handle("p", "steps", "x", |ctx: TaskContext, n: u8| async move {
            for i in 1..=n {
                ctx.progress_with(i * 10, &json!({ "step": i })).await?;
            }
            Ok::<_, Error>("done")
        })
        .start()
        .await
        .unwrap();
    let client = node(h, &u, |b| b).await.client();
    let mut task = client.perform("p", "steps", "x", &9u8).await.unwrap();
    let mut percents = Vec::new();
    while let Some(p) = within("progress", task.next_progress()).await {
        if p.percent > 0 {
            let data: Value = p.data().unwrap();
            assert_eq!(data["step"], p.percent / 10);
        }
        percents.push(p.percent);
    }
    assert_eq!(percents, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]);
    let r: String = task.result().await.unwrap();
    assert_eq!(r, "done");
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    items: Vec<(String, u32)>,
    note: Option<String>,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
    nested: HashMap<String, Vec<f64>>,
}

/// A typed payload and result survive the trip in JSON and in MessagePack, and the worker
/// answers in the codec the request came in.
pub async fn typed_result_round_trip_in_both_codecs(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let wn = node(h, &u, |b| b).await;
    let _w = announce(wn.worker())
        .handle(
            "shop",
            "price",
            "x",
            |_ctx: TaskContext, mut o: Order| async move {
                o.id += 1;
                o.note = Some(format!("{} items", o.items.len()));
                o.blob.reverse();
                Ok::<_, Error>(o)
            },
        )
        .start()
        .await
        .unwrap();
    let client = node(h, &u, |b| b).await.client();
    let order = Order {
        id: 41,
        items: vec![("tea".into(), 2), ("ünïcode ✓".into(), 1)],
        note: None,
        blob: vec![0, 1, 2, 255],
        nested: HashMap::from([("w".into(), vec![0.5, -1.25])]),
    };
    for codec in [Codec::Json, Codec::MsgPack] {
        let task = client
            .task("shop", "price")
            .codec(codec)
            .perform(&order)
            .await
            .unwrap();
        let env = within("outcome", task.outcome()).await.unwrap();
        assert_eq!(
            env.codec(),
            codec,
            "the worker answers in the request's codec"
        );
        let got: Order = env.data().unwrap();
        let mut want = order.clone();
        want.id = 42;
        want.note = Some("2 items".into());
        want.blob = vec![255, 2, 1, 0];
        assert_eq!(got, want, "{codec:?}");
    }
}

/// Graceful shutdown stops taking tasks and lets the running ones finish.
pub async fn graceful_shutdown_finishes_in_flight_tasks(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let started = Arc::new(AtomicUsize::new(0));
    let wn = node(h, &u, |b| b).await;
    let s = started.clone();
    let worker = announce(wn.worker())
        .concurrency(4)
        .handle("g", "slow", "x", move |_ctx: TaskContext, i: u32| {
            s.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok::<_, Error>(i)
            }
        })
        .start()
        .await
        .unwrap();
    let client = node(h, &u, |b| b).await.client();
    let mut tasks = Vec::new();
    for i in 0..3u32 {
        tasks.push(client.perform("g", "slow", "x", &i).await.unwrap());
    }
    eventually(WAIT, "all three to start", || {
        started.load(Ordering::SeqCst) == 3
    })
    .await;
    let report = within("shutdown", worker.shutdown(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(report.handed_back, 0);
    for (i, task) in tasks.into_iter().enumerate() {
        let r: u32 = within("in-flight result", task.result()).await.unwrap();
        assert_eq!(r as usize, i);
    }
}

/// On a durable transport a perform sent while no worker runs is handled when one starts.
pub async fn task_enqueued_before_any_worker_is_handled(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let cn = node(h, &u, |b| b).await;
    let task = cn
        .client()
        .perform("late", "job", "x", &21u32)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wn = node(h, &u, |b| b).await;
    let _w = announce(wn.worker())
        .handle("late", "job", "x", |_ctx: TaskContext, v: u32| async move {
            Ok::<_, Error>(v * 2)
        })
        .start()
        .await
        .unwrap();
    let r: u32 = within("the late worker's result", task.result())
        .await
        .unwrap();
    assert_eq!(r, 42);
    assert_eq!(
        cn.stats().redispatched,
        0,
        "the broker kept it; no redispatch needed"
    );
}

/// The Python-style callback API: idle/on_perform/status/complete against
/// perform/on_status/on_complete.
pub async fn callback_style_round_trip(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let wn = node(h, &u, |b| b).await;
    let _worker = AetherTask::new(&wn, "interop", "echo")
        .on_perform(|task: AetherTask, data: Value| async move {
            task.status(50, json!({"stage": "half"})).await.unwrap();
            task.complete(true, json!({"echo": data, "by": "rust"}))
                .await
                .unwrap();
        })
        .idle()
        .await
        .unwrap();
    let cn = node(h, &u, |b| b).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let st = statuses.clone();
    let tid = AetherTask::new(&cn, "interop", "echo")
        .on_status(
            move |_t: AetherTask, complete: bool, succeed: bool, progress: u8, _d: Value| {
                st.lock().unwrap().push((complete, succeed, progress));
                async {}
            },
        )
        .on_complete(move |_t: AetherTask, succeed: bool, data: Value| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send((succeed, data));
            }
            async {}
        })
        .perform(json!({"i": 0}))
        .await
        .unwrap();
    assert_eq!(tid.len(), 8);
    let (succeed, data) = within("on_complete", rx).await.unwrap();
    assert!(succeed);
    assert_eq!(data, json!({"echo": {"i": 0}, "by": "rust"}));
    let statuses = statuses.lock().unwrap().clone();
    assert_eq!(
        statuses,
        [(false, false, 0), (false, false, 50), (true, true, 100)]
    );
}

/// A handler that runs for several heartbeat intervals: its worker's heartbeats (statuses
/// repeating the current progress to keep the lease) are not duplicates, while a status
/// the transport delivers twice still is.
pub async fn heartbeats_are_not_duplicates(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let release = Arc::new(Notify::new());
    // A 300 ms lease on the worker: it heartbeats every 100 ms.
    let wn = node(h, &u, |b| b.lease(Duration::from_millis(300))).await;
    let r = release.clone();
    let _w = announce(wn.worker())
        .handle("hb", "long", "x", move |ctx: TaskContext, v: u32| {
            let r = r.clone();
            async move {
                ctx.progress_with(50, &json!({ "half": true })).await?;
                r.notified().await;
                Ok::<_, Error>(v + 1)
            }
        })
        .start()
        .await
        .unwrap();
    let cn = node(h, &u, |b| b).await;
    let status = t(&u, "hb/long/x/heartbeat01/status");
    let raw = h.connect().await;
    let mut statuses = raw.subscribe(&TopicFilter::exact(&status)).await.unwrap();
    let task = cn
        .client()
        .task("hb", "long")
        .tid("heartbeat01")
        .perform(&1u32)
        .await
        .unwrap();
    // The progress report, then three heartbeats at 50 %.
    let mut at_half = Vec::new();
    while at_half.len() < 4 {
        let (_, bytes) = next_msg(&mut statuses, "a status at 50 %").await;
        let env = aether::Envelope::decode(bytes.clone()).unwrap();
        if env.header().progress == 50 {
            at_half.push(bytes);
        }
    }
    // The progress report and a heartbeat again, as an at-least-once transport may deliver
    // them: those two are duplicates.
    raw.publish(&status, at_half[0].clone()).await.unwrap();
    raw.publish(&status, at_half[3].clone()).await.unwrap();
    eventually(WAIT, "the repeated statuses to be counted", || {
        cn.stats().duplicate_updates >= 2
    })
    .await;
    release.notify_one();
    assert_eq!(within("result", task.result::<u32>()).await.unwrap(), 2);
    let stats = cn.stats();
    assert_eq!(
        stats.duplicate_updates, 2,
        "only the two repeated statuses are duplicates: {stats:?}"
    );
    assert!(stats.heartbeats >= 3, "the heartbeats counted: {stats:?}");
}
