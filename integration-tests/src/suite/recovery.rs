//! Recovery: dead workers, killed processes, repeated performs, broker restarts.

use super::*;

/// A worker dropped mid-task without acknowledging: another worker of its workgroup
/// completes the task, and the client sees exactly one outcome.
pub async fn dropped_worker_task_completed_by_another(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let lease = |b: aether::AetherBuilder| b.lease(SHORT_LEASE);
    let started = Arc::new(Notify::new());
    let node_a = node(h, &u, lease).await;
    let s = started.clone();
    let worker_a = announce(node_a.worker())
        .handle("k", "work", "x", move |_ctx: TaskContext, _: u32| {
            let s = s.clone();
            async move {
                s.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, Error>("a")
            }
        })
        .start()
        .await
        .unwrap();
    let client_node = node(h, &u, lease).await;
    let task = client_node
        .client()
        .perform("k", "work", "x", &7u32)
        .await
        .unwrap();
    within("worker A to start the task", started.notified()).await;

    let runs_b = Arc::new(AtomicUsize::new(0));
    let node_b = node(h, &u, lease).await;
    let r = runs_b.clone();
    let _worker_b = announce(node_b.worker())
        .handle("k", "work", "x", move |_ctx: TaskContext, n: u32| {
            r.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Error>(format!("b{n}")) }
        })
        .start()
        .await
        .unwrap();
    // A dies: nothing acknowledged, its connection gone.
    worker_a.abort();
    node_a.close().await.unwrap();

    let r: String = within("another worker to complete it", task.result())
        .await
        .unwrap();
    assert_eq!(r, "b7");
    assert!(runs_b.load(Ordering::SeqCst) >= 1);
    let stats = client_node.stats();
    assert_eq!(stats.succeeded, 1, "exactly one outcome: {stats:?}");
    assert_eq!(stats.failed + stats.lost, 0, "{stats:?}");
}

/// A perform repeated with the same tid (a redelivery or redispatch) runs the handler once;
/// the repeat is answered from the worker's memory of completed tasks.
pub async fn repeated_perform_is_handled_once(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let runs = Arc::new(AtomicUsize::new(0));
    let wn = node(h, &u, |b| b).await;
    let r = runs.clone();
    let _w = announce(wn.worker())
        .handle("r", "once", "x", move |_ctx: TaskContext, v: u32| {
            r.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Error>(v + 1) }
        })
        .start()
        .await
        .unwrap();
    let cn = node(h, &u, |b| b).await;
    let task = cn
        .client()
        .task("r", "once")
        .tid("fixedtid01")
        .perform(&1u32)
        .await
        .unwrap();
    assert_eq!(within("result", task.result::<u32>()).await.unwrap(), 2);
    // The same perform again, as a redelivery would bring it.
    let transport = cn.transport("").unwrap().clone();
    let topic = t(&u, "r/once/x/fixedtid01/perform");
    let mut header = Header::new(Action::Perform, &cn.config().host, &cn.config().client_id);
    header.attempt = Some(2);
    let mut sub = transport
        .subscribe(&TopicFilter::exact(&topic.with_action(Action::Complete)))
        .await
        .unwrap();
    transport
        .enqueue(
            &topic,
            aether::envelope::encode(Codec::Json, &header, &1u32).unwrap(),
        )
        .await
        .unwrap();
    let (_, repeated) = next_msg(&mut sub, "the repeated completion").await;
    let env = aether::Envelope::decode(repeated).unwrap();
    assert_eq!(env.data::<u32>().unwrap(), 2);
    eventually(WAIT, "the duplicate to be counted", || {
        wn.stats().duplicate_performs >= 1
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A worker process killed with SIGKILL mid-task: another worker completes the task.
pub async fn worker_process_killed_mid_task(h: &dyn Harness, u: &str) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let url = h.url().expect("capability says shared between processes");
    let u = u.to_owned();
    let bin = WORKER_BIN
        .get()
        .expect("conformance! sets the worker binary");
    let mut child = tokio::process::Command::new(bin)
        .args([&url, &u, "kill", "work", "x"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn aether-test-worker");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = within("the worker process to start", lines.next_line())
        .await
        .unwrap();
    assert_eq!(ready.as_deref(), Some("ready"));
    let lease = |b: aether::AetherBuilder| b.lease(SHORT_LEASE);
    let cn = node(h, &u, lease).await;
    let task = cn
        .client()
        .perform("kill", "work", "x", &5u32)
        .await
        .unwrap();
    let started = within("the worker process to take the task", lines.next_line())
        .await
        .unwrap();
    assert_eq!(
        started.as_deref(),
        Some(format!("started {}", task.tid()).as_str())
    );
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "killed");

    let wn = node(h, &u, lease).await;
    let _w = announce(wn.worker())
        .handle(
            "kill",
            "work",
            "x",
            |_ctx: TaskContext, v: u32| async move { Ok::<_, Error>(v + 100) },
        )
        .start()
        .await
        .unwrap();
    let r: u32 = within("another worker to complete it", task.result())
        .await
        .unwrap();
    assert_eq!(r, 105);
    assert_eq!(cn.stats().succeeded, 1);
}

/// A worker process killed with SIGKILL while it holds several tasks, beside two live
/// workers that hold others: each task the dead worker held runs once more, on one
/// worker (the transport's redelivery or, where it has none, the client's lease
/// redispatch), every other task runs once, and every task has exactly one outcome. Runs
/// are counted where each worker records them: the process's `started` lines, and the
/// live workers' handlers.
pub async fn killed_worker_tasks_run_once_more(h: &dyn Harness, u: &str) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    const HELD: usize = 6;
    const MORE: usize = 10;
    let url = h.url().expect("capability says shared between processes");
    let u = u.to_owned();
    let bin = WORKER_BIN
        .get()
        .expect("conformance! sets the worker binary");
    let mut child = tokio::process::Command::new(bin)
        .args([&url, &u, "kill", "many", "x"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn aether-test-worker");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = within("the worker process to start", lines.next_line())
        .await
        .unwrap();
    assert_eq!(ready.as_deref(), Some("ready"));
    // The process's runs, read until its output ends.
    let killed_runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let k = killed_runs.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(tid) = line.strip_prefix("started ") {
                *k.lock().unwrap().entry(tid.to_owned()).or_default() += 1;
            }
        }
    });
    let lease = |b: aether::AetherBuilder| b.lease(SHORT_LEASE);
    let cn = node(h, &u, lease).await;
    let client = cn.client();
    let mut tasks = Vec::new();
    for i in 0..HELD {
        tasks.push(client.perform("kill", "many", "x", &i).await.unwrap());
    }
    eventually(WAIT, "the worker process to take its tasks", || {
        killed_runs.lock().unwrap().len() == HELD
    })
    .await;

    let live_runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut live = Vec::new();
    for _ in 0..2 {
        let wn = node(h, &u, lease).await;
        let r = live_runs.clone();
        let w = announce(wn.worker())
            .handle("kill", "many", "x", move |ctx: TaskContext, v: usize| {
                *r.lock().unwrap().entry(ctx.tid().to_owned()).or_default() += 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Ok::<_, Error>(v)
                }
            })
            .start()
            .await
            .unwrap();
        live.push((wn, w));
    }
    for i in HELD..HELD + MORE {
        tasks.push(client.perform("kill", "many", "x", &i).await.unwrap());
    }
    eventually(WAIT, "every task to be running somewhere", || {
        let killed = killed_runs.lock().unwrap().len();
        let live = live_runs.lock().unwrap().len();
        killed + live == HELD + MORE
    })
    .await;
    assert!(
        !live_runs.lock().unwrap().is_empty(),
        "the live workers hold tasks too"
    );
    child.start_kill().unwrap();
    assert!(!child.wait().await.unwrap().success(), "killed");
    within("the process's output to end", reader).await.unwrap();

    for (i, task) in tasks.into_iter().enumerate() {
        let r: usize = within("every task's outcome", task.result())
            .await
            .unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!(r, i);
    }
    // A second run would start within a lease or two of the outcomes (a late redelivery or
    // redispatch); there is no event to await for one that must not happen.
    tokio::time::sleep(3 * SHORT_LEASE).await;

    let killed = killed_runs.lock().unwrap().clone();
    let live = live_runs.lock().unwrap().clone();
    let mut wrong = Vec::new();
    let tids: std::collections::BTreeSet<&String> = killed.keys().chain(live.keys()).collect();
    for tid in &tids {
        let by_killed = killed.get(*tid).copied().unwrap_or(0);
        let by_live = live.get(*tid).copied().unwrap_or(0);
        let want = if by_killed > 0 { (1, 1) } else { (0, 1) };
        if (by_killed, by_live) != want {
            wrong.push(format!("{tid}: {by_killed} killed + {by_live} live runs"));
        }
    }
    assert_eq!(tids.len(), HELD + MORE, "every task ran");
    assert!(
        wrong.is_empty(),
        "{}: {} of {} tasks ran a wrong number of times ({} held by the killed worker): {wrong:?}",
        h.name(),
        wrong.len(),
        tids.len(),
        killed.len()
    );
    let stats = cn.stats();
    println!(
        "{}: {} tasks, {} held by the killed worker and run once more, {} redispatched",
        h.name(),
        tids.len(),
        killed.len(),
        stats.redispatched
    );
    assert_eq!(
        stats.succeeded,
        (HELD + MORE) as u64,
        "one outcome each: {stats:?}"
    );
    assert_eq!(stats.failed + stats.lost, 0, "{stats:?}");
}

/// Workers and clients carry on by themselves after their broker restarts.
pub async fn broker_restart_workers_resume(h: &dyn Harness, u: &str) {
    let broker = h
        .private_broker()
        .await
        .expect("capability says a private broker");
    let u = u.to_owned();
    let wn = aether::Aether::builder()
        .union(&u)
        .transport(broker.connect().await)
        .build()
        .unwrap();
    let _w = announce(wn.worker())
        .handle("rs", "echo", "x", |_ctx: TaskContext, v: u32| async move {
            Ok::<_, Error>(v)
        })
        .start()
        .await
        .unwrap();
    let cn = aether::Aether::builder()
        .union(&u)
        .transport(broker.connect().await)
        .build()
        .unwrap();
    let client = cn.client();
    let r: u32 = within(
        "before restart",
        client
            .perform("rs", "echo", "x", &1u32)
            .await
            .unwrap()
            .result(),
    )
    .await
    .unwrap();
    assert_eq!(r, 1);
    broker.restart().await;
    // A perform sent while the connections are still coming back can fail (replies lost
    // before the client's subscriptions are back are recovered by the gap report): an
    // application retries such a task, as this loop does with a short deadline. What must
    // hold is that the worker and the client recover by themselves, without being rebuilt.
    let give_up = tokio::time::Instant::now() + 2 * WAIT;
    let mut failures = Vec::new();
    let r: u32 = loop {
        let attempt = async {
            let task = client
                .task("rs", "echo")
                .deadline(Duration::from_secs(5))
                .perform(&2u32)
                .await?;
            task.result::<u32>().await
        };
        match attempt.await {
            Ok(r) => break r,
            Err(e) => {
                failures.push(e.to_string());
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "never recovered after the restart: {failures:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(r, 2);
    // The worker keeps serving once it is back.
    let r: u32 = within(
        "a second task after the restart",
        client
            .perform("rs", "echo", "x", &3u32)
            .await
            .unwrap()
            .result(),
    )
    .await
    .unwrap();
    assert_eq!(r, 3);
}

/// A client whose connection breaks while its task completes misses the completion, and
/// gets the outcome anyway, with the handler run once. Where the transport reports the gap
/// in its subscriptions, the client dispatches the task again as soon as it is subscribed
/// again (the lease here is far longer than the wait, so nothing else could recover it);
/// elsewhere the lease does. The client lets the worker hold back its acceptance, so the
/// completion is its only reply.
pub async fn completion_lost_while_disconnected_is_recovered(h: &dyn Harness, u: &str) {
    let url = h
        .url()
        .expect("capability says a broker other processes reach");
    let target = crate::proxy::authority(&url).to_owned();
    let proxy = crate::proxy::Proxy::start(&target).await;
    let proxied = url.replacen(&target, &format!("127.0.0.1:{}", proxy.port()), 1);
    let gaps = capabilities(h).await.gap_signals;

    let wn = node(h, u, |b| b).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let r = runs.clone();
    let _w = announce(wn.worker())
        .handle("gap", "echo", "x", move |_ctx: TaskContext, v: u32| {
            r.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, Error>(v * 10)
            }
        })
        .start()
        .await
        .unwrap();
    let lease = if gaps {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(2)
    };
    let transport = within("the proxied connection", aether::connect(&proxied))
        .await
        .unwrap();
    let cn = aether::Aether::builder()
        .union(u)
        .lease(lease)
        .max_attempts(10)
        .defer_accept(Duration::from_secs(5))
        .transport(transport)
        .build()
        .unwrap();
    let task = cn
        .client()
        .perform("gap", "echo", "x", &4u32)
        .await
        .unwrap();
    eventually(WAIT, "the handler to start", || {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;

    // The client's connections break; the task completes while it cannot listen.
    proxy.cut();
    release.send(true).unwrap();
    eventually(WAIT, "the worker to complete the task", || {
        wn.stats().handled == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();

    let r: u32 = within("the outcome after the connection is back", task.result())
        .await
        .unwrap();
    assert_eq!(r, 40);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    let stats = cn.stats();
    assert!(stats.redispatched >= 1, "{stats:?}");
    if gaps {
        assert_eq!(stats.redispatched, 1, "one gap, one redispatch: {stats:?}");
    }
    assert_eq!(wn.stats().duplicate_performs, stats.redispatched);
}
