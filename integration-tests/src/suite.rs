//! The conformance cases, written once and run against every transport by
//! [`conformance!`](crate::conformance).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether::{
    Action, AetherTask, Bytes, Capabilities, Codec, Error, Header, Subscription, TaskContext,
    Topic, TopicFilter,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::harness::{Harness, capabilities, eventually, node, union};

/// The path of the `aether-test-worker` binary, known only to integration test targets;
/// [`conformance!`](crate::conformance) sets it.
pub static WORKER_BIN: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// How long any one wait in a case may take before the case fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// A short lease for cases about dead workers.
const SHORT_LEASE: Duration = Duration::from_millis(1000);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn next_msg(sub: &mut Subscription, what: &str) -> (Topic, Bytes) {
    let m = within(what, sub.next())
        .await
        .unwrap_or_else(|| panic!("subscription ended: {what}"))
        .unwrap_or_else(|e| panic!("invalid message: {e:?}"));
    (m.topic, m.payload)
}

fn t(union: &str, rest: &str) -> Topic {
    format!("{union}/{rest}").parse().expect("topic")
}

fn f(union: &str, rest: &str) -> TopicFilter {
    format!("{union}/{rest}").parse().expect("filter")
}

fn announce(b: aether::WorkerBuilder) -> aether::WorkerBuilder {
    b.announce(false)
}

/// A name and what the case needs of a transport. Every case is listed here.
#[derive(Debug)]
pub struct Case {
    /// The case's function name.
    pub name: &'static str,
    /// `Err(why)` when a transport with these capabilities cannot pass it.
    pub requires: fn(&Capabilities, bool) -> Result<(), &'static str>,
}

fn always(_: &Capabilities, _: bool) -> Result<(), &'static str> {
    Ok(())
}

/// Every case, with its requirement. `check_listing` holds each transport's list to it.
pub const CASES: &[Case] = &[
    Case {
        name: "broadcast_reaches_matching_subscribers_only",
        requires: always,
    },
    Case {
        name: "wildcard_filters",
        requires: |c, _| {
            if c.wildcards {
                Ok(())
            } else {
                Err("no wildcard subscriptions")
            }
        },
    },
    Case {
        name: "one_of_n_exactly_once",
        requires: always,
    },
    Case {
        name: "every_workgroup_gets_every_task",
        requires: always,
    },
    Case {
        name: "progress_arrives_in_order",
        requires: always,
    },
    Case {
        name: "typed_result_round_trip_in_both_codecs",
        requires: always,
    },
    Case {
        name: "handler_error_fails_the_task",
        requires: always,
    },
    Case {
        name: "handler_panic_fails_the_task_and_worker_survives",
        requires: always,
    },
    Case {
        name: "cancel_reaches_the_running_handler",
        requires: always,
    },
    Case {
        name: "deadline_expiry",
        requires: always,
    },
    Case {
        name: "dropped_worker_task_completed_by_another",
        requires: always,
    },
    Case {
        name: "repeated_perform_is_handled_once",
        requires: always,
    },
    Case {
        name: "malformed_input_is_dead_lettered_and_worker_keeps_serving",
        requires: always,
    },
    Case {
        name: "oversized_payload_is_a_typed_error",
        requires: always,
    },
    Case {
        name: "graceful_shutdown_finishes_in_flight_tasks",
        requires: always,
    },
    Case {
        name: "invalid_segments_are_refused",
        requires: always,
    },
    Case {
        name: "workers_announce_online_and_idle",
        requires: |c, _| {
            if c.wildcards {
                Ok(())
            } else {
                Err("no wildcard subscriptions")
            }
        },
    },
    Case {
        name: "callback_style_round_trip",
        requires: always,
    },
    Case {
        name: "task_enqueued_before_any_worker_is_handled",
        requires: |c, _| {
            if c.durable {
                Ok(())
            } else {
                Err("not durable")
            }
        },
    },
    Case {
        name: "worker_process_killed_mid_task",
        requires: |c, _| {
            if c.shared_between_processes {
                Ok(())
            } else {
                Err("no broker shared between processes")
            }
        },
    },
    Case {
        name: "broker_restart_workers_resume",
        requires: |_, private| {
            if private {
                Ok(())
            } else {
                Err("no broker to restart")
            }
        },
    },
];

/// Checks a transport's listing: every case present, and each `#[ignore]` matching what
/// the transport reports through its capabilities at run time.
pub async fn check_listing(h: &dyn Harness, listed: &[(&str, bool)]) {
    let caps = capabilities(h).await;
    let private = h.private_broker().await.is_some();
    for case in CASES {
        let Some((_, ignored)) = listed.iter().find(|(n, _)| *n == case.name) else {
            panic!("{}: case {} is not listed", h.name(), case.name);
        };
        match ((case.requires)(&caps, private), ignored) {
            (Ok(()), true) => panic!(
                "{}: {} is ignored, but the transport's capabilities say it can pass",
                h.name(),
                case.name
            ),
            (Err(why), false) => panic!(
                "{}: {} is not ignored, but the transport cannot pass it: {why}",
                h.name(),
                case.name
            ),
            _ => {}
        }
    }
    for (name, _) in listed {
        assert!(
            CASES.iter().any(|c| c.name == *name),
            "{name} is listed but is not a case"
        );
    }
}

/// Broadcast reaches every subscriber whose filter matches, on other connections and its
/// own, and no other. (Absence is checked by ordering: a later message arrives first.)
pub async fn broadcast_reaches_matching_subscribers_only(h: &dyn Harness) {
    let u = union();
    let publisher = h.connect().await;
    let other = h.connect().await;
    let a = t(&u, "j/t/x/1/status");
    let b = t(&u, "j/t/x/2/status");
    let mut sub_a1 = other.subscribe(&TopicFilter::exact(&a)).await.unwrap();
    let mut sub_a2 = publisher.subscribe(&TopicFilter::exact(&a)).await.unwrap();
    let mut sub_b = other.subscribe(&TopicFilter::exact(&b)).await.unwrap();
    publisher
        .publish(&a, Bytes::from_static(b"A"))
        .await
        .unwrap();
    publisher
        .publish(&b, Bytes::from_static(b"B"))
        .await
        .unwrap();
    for sub in [&mut sub_a1, &mut sub_a2] {
        let (topic, payload) = next_msg(sub, "message on A").await;
        assert_eq!((topic, &payload[..]), (a.clone(), &b"A"[..]));
    }
    let (topic, payload) = next_msg(&mut sub_b, "message on B").await;
    assert_eq!(
        (topic, &payload[..]),
        (b.clone(), &b"B"[..]),
        "the subscriber of B received A"
    );
    // Unsubscribing by dropping: a new message on A reaches the remaining subscriber only.
    drop(sub_a2);
    publisher
        .publish(&a, Bytes::from_static(b"A2"))
        .await
        .unwrap();
    let (_, payload) = next_msg(&mut sub_a1, "second message on A").await;
    assert_eq!(&payload[..], b"A2");
}

/// `+` matches one level, `#` the rest; literal levels still filter.
pub async fn wildcard_filters(h: &dyn Harness) {
    let u = union();
    let p = h.connect().await;
    let s = h.connect().await;
    let mut plus = s.subscribe(&f(&u, "j/+/x/+/status")).await.unwrap();
    let mut hash = s.subscribe(&f(&u, "j/#")).await.unwrap();
    let mut narrow = s.subscribe(&f(&u, "j/t2/x/+/complete")).await.unwrap();
    // The last two match every filter between them, so a message that should not have
    // arrived would show up before them: no waiting for absence.
    let published = [
        t(&u, "j/t1/x/1/status"),
        t(&u, "j/t2/y/2/status"),
        t(&u, "j/t2/x/3/complete"),
        t(&u, "k/t1/x/4/status"),
        t(&u, "j/t3/x/5/idle"),
        t(&u, "j/t9/x/9/status"),
        t(&u, "j/t2/x/9/complete"),
    ];
    for topic in &published {
        p.publish(topic, Bytes::from(topic.to_string()))
            .await
            .unwrap();
    }
    for (sub, pattern) in [
        (&mut plus, "j/+/x/+/status"),
        (&mut hash, "j/#"),
        (&mut narrow, "j/t2/x/+/complete"),
    ] {
        let filter = f(&u, pattern);
        let want: Vec<String> = published
            .iter()
            .filter(|t| filter.matches(t))
            .map(|t| t.to_string())
            .collect();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let (topic, payload) = next_msg(sub, pattern).await;
            assert_eq!(payload, topic.to_string().as_bytes());
            got.push(topic.to_string());
        }
        assert_eq!(got, want, "{pattern}");
    }
}

/// 1,000 tasks over 3 workers of one workgroup: each handled exactly once, every worker
/// gets some, every result comes back right.
pub async fn one_of_n_exactly_once(h: &dyn Harness) {
    const N: usize = 1000;
    let u = union();
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
pub async fn every_workgroup_gets_every_task(h: &dyn Harness) {
    const N: usize = 50;
    let u = union();
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
pub async fn progress_arrives_in_order(h: &dyn Harness) {
    let u = union();
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
pub async fn typed_result_round_trip_in_both_codecs(h: &dyn Harness) {
    let u = union();
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

/// A handler's `Err` fails the task with its message; the worker keeps serving.
pub async fn handler_error_fails_the_task(h: &dyn Harness) {
    let u = union();
    let wn = node(h, &u, |b| b).await;
    let _w = announce(wn.worker())
        .handle(
            "e",
            "div",
            "x",
            |_ctx: TaskContext, (a, b): (i64, i64)| async move {
                if b == 0 {
                    return Err(format!("cannot divide {a} by zero"));
                }
                Ok(a / b)
            },
        )
        .start()
        .await
        .unwrap();
    let client = node(h, &u, |b| b).await.client();
    let err = within(
        "failure",
        client
            .perform("e", "div", "x", &(7, 0))
            .await
            .unwrap()
            .result::<i64>(),
    )
    .await
    .unwrap_err();
    match err {
        Error::TaskFailed { message, data, .. } => {
            assert_eq!(message, "cannot divide 7 by zero");
            assert_eq!(data["error"], "cannot divide 7 by zero");
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    let ok: i64 = within(
        "next task",
        client
            .perform("e", "div", "x", &(8, 2))
            .await
            .unwrap()
            .result(),
    )
    .await
    .unwrap();
    assert_eq!(ok, 4);
    assert_eq!(wn.stats().handler_errors, 1);
}

/// A handler's panic fails the task with the panic message; the worker keeps serving.
pub async fn handler_panic_fails_the_task_and_worker_survives(h: &dyn Harness) {
    let u = union();
    let wn = node(h, &u, |b| b).await;
    let _w = announce(wn.worker())
        .concurrency(1)
        .handle(
            "e",
            "risky",
            "x",
            |_ctx: TaskContext, boom: bool| async move {
                if boom {
                    panic!("kaboom in the handler");
                }
                Ok::<_, Error>("fine")
            },
        )
        .start()
        .await
        .unwrap();
    let client = node(h, &u, |b| b).await.client();
    let err = within(
        "failure",
        client
            .perform("e", "risky", "x", &true)
            .await
            .unwrap()
            .result::<String>(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed { message, .. } if message.contains("kaboom in the handler")),
        "{err:?}"
    );
    for _ in 0..3 {
        let r: String = within(
            "after panic",
            client
                .perform("e", "risky", "x", &false)
                .await
                .unwrap()
                .result(),
        )
        .await
        .unwrap();
        assert_eq!(r, "fine");
    }
    assert_eq!(wn.stats().handler_panics, 1);
}

/// Cancelling a task reaches its running handler; the client sees `Cancelled`.
pub async fn cancel_reaches_the_running_handler(h: &dyn Harness) {
    let u = union();
    let started = Arc::new(Notify::new());
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let wn = node(h, &u, |b| b).await;
    let (s, c) = (started.clone(), saw_cancel.clone());
    let _w = announce(wn.worker())
        .handle("c", "long", "x", move |ctx: TaskContext, _: ()| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                s.notify_one();
                ctx.cancelled().await;
                c.store(true, Ordering::SeqCst);
                Err::<(), _>("stopped")
            }
        })
        .start()
        .await
        .unwrap();
    let client = node(h, &u, |b| b).await.client();
    let task = client.perform("c", "long", "x", &()).await.unwrap();
    within("handler start", started.notified()).await;
    task.cancel().await.unwrap();
    let err = task.result::<()>().await.unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    eventually(WAIT, "the handler to see the cancellation", || {
        saw_cancel.load(Ordering::SeqCst)
    })
    .await;
}

/// A task past its deadline ends as `DeadlineExceeded`, and its handler is cancelled.
pub async fn deadline_expiry(h: &dyn Harness) {
    let u = union();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let wn = node(h, &u, |b| b).await;
    let c = saw_cancel.clone();
    let _w = announce(wn.worker())
        .handle("d", "slow", "x", move |ctx: TaskContext, _: ()| {
            let c = c.clone();
            async move {
                tokio::select! {
                    _ = ctx.cancelled() => c.store(true, Ordering::SeqCst),
                    _ = tokio::time::sleep(WAIT) => {}
                }
                Ok::<_, Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    let client = node(h, &u, |b| b).await.client();
    let started = tokio::time::Instant::now();
    let task = client
        .task("d", "slow")
        .deadline(Duration::from_millis(700))
        .perform(&())
        .await
        .unwrap();
    let err = within("deadline", task.result::<()>()).await.unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded { .. }), "{err:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_secs(10),
        "{took:?}"
    );
    eventually(WAIT, "the handler to be cancelled", || {
        saw_cancel.load(Ordering::SeqCst)
    })
    .await;
}

/// A worker dropped mid-task without acknowledging: another worker of its workgroup
/// completes the task, and the client sees exactly one outcome.
pub async fn dropped_worker_task_completed_by_another(h: &dyn Harness) {
    let u = union();
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
pub async fn repeated_perform_is_handled_once(h: &dyn Harness) {
    let u = union();
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

/// Malformed payloads, unknown actions and wrong actions on a work queue are counted and
/// dead-lettered; the worker keeps serving.
pub async fn malformed_input_is_dead_lettered_and_worker_keeps_serving(h: &dyn Harness) {
    let u = union();
    let wn = node(h, &u, |b| b).await;
    let _w = announce(wn.worker())
        .handle("m", "echo", "x", |_ctx: TaskContext, v: Value| async move {
            Ok::<_, Error>(v)
        })
        .start()
        .await
        .unwrap();
    let raw = h.connect().await;
    let topic = t(&u, "m/echo/x/bad1/perform");
    for bytes in [
        &b"\x00\x01garbage"[..],
        b"{not json",
        b"[1,2,3]",
        br#"{"action":"explode","status":"initialized","progress":0,"data":{}}"#,
        br#"{"action":"status","status":"progress","progress":5,"data":{}}"#,
        br#"{"action":"perform","status":"initialized","progress":500,"data":{}}"#,
    ] {
        raw.enqueue(&topic, Bytes::copy_from_slice(bytes))
            .await
            .unwrap();
    }
    let client = node(h, &u, |b| b).await.client();
    let v: Value = within(
        "a good task after bad ones",
        client
            .perform("m", "echo", "x", &json!({"ok": true}))
            .await
            .unwrap()
            .result(),
    )
    .await
    .unwrap();
    assert_eq!(v, json!({"ok": true}));
    eventually(WAIT, "bad input to be counted", || {
        let s = wn.stats();
        s.malformed >= 4
            && s.unknown_action >= 1
            && s.unexpected_action >= 1
            && s.dead_lettered >= 6
    })
    .await;
    assert_eq!(wn.stats().handled, 1);
}

/// A payload over the limit is a typed error on send, and is counted and dead-lettered on
/// receive.
pub async fn oversized_payload_is_a_typed_error(h: &dyn Harness) {
    let u = union();
    let small = |b: aether::AetherBuilder| b.max_payload(4096);
    let cn = node(h, &u, small).await;
    let big = "x".repeat(10_000);
    let err = cn
        .client()
        .perform("o", "big", "x", &big)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PayloadTooLarge { limit: 4096, size } if size > 10_000),
        "{err:?}"
    );
    // On receive: a worker with a small limit gets a big perform from a client without one.
    let wn = node(h, &u, small).await;
    let _w = announce(wn.worker())
        .handle("o", "big", "x", |_ctx: TaskContext, s: String| async move {
            Ok::<_, Error>(s.len())
        })
        .start()
        .await
        .unwrap();
    let generous = node(h, &u, |b| b).await.client();
    let _ignored = generous.perform("o", "big", "x", &big).await.unwrap();
    let n: usize = within(
        "a small task after a big one",
        generous
            .perform("o", "big", "x", "small")
            .await
            .unwrap()
            .result(),
    )
    .await
    .unwrap();
    assert_eq!(n, 5);
    eventually(WAIT, "the oversized perform to be counted", || {
        let s = wn.stats();
        s.oversized >= 1 && s.dead_lettered >= 1
    })
    .await;
}

/// Graceful shutdown stops taking tasks and lets the running ones finish.
pub async fn graceful_shutdown_finishes_in_flight_tasks(h: &dyn Harness) {
    let u = union();
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

/// Segments with separators or wildcards of any transport are refused before sending.
pub async fn invalid_segments_are_refused(h: &dyn Harness) {
    let u = union();
    let client = node(h, &u, |b| b).await.client();
    for (job, task, ctx) in [
        ("a.b", "t", "x"),
        ("j", "t:1", "x"),
        ("j", "t", "x y"),
        ("j", "", "x"),
    ] {
        let err = client.perform(job, task, ctx, &()).await.unwrap_err();
        assert!(
            matches!(err, Error::Topic(_)),
            "{job}/{task}/{ctx}: {err:?}"
        );
    }
    let err = client
        .task("j", "t")
        .tid("a/b")
        .perform(&())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Topic(_)), "{err:?}");
}

/// Starting a worker publishes `online` (status connected) and `idle` (status online),
/// on the topics Python services use.
pub async fn workers_announce_online_and_idle(h: &dyn Harness) {
    let u = union();
    let watcher = h.connect().await;
    let mut online = watcher
        .subscribe(&f(&u, "system/online/+/+/online"))
        .await
        .unwrap();
    let mut idle = watcher.subscribe(&f(&u, "a/b/x/+/idle")).await.unwrap();
    let wn = node(h, &u, |b| b).await;
    let _w = wn
        .worker()
        .handle("a", "b", "x", |_ctx: TaskContext, _: ()| async {
            Ok::<_, Error>(())
        })
        .start()
        .await
        .unwrap();
    let (topic, payload) = next_msg(&mut online, "online").await;
    assert_eq!(topic.tid(), wn.config().client_id);
    assert_eq!(topic.context(), wn.config().host);
    let env = aether::Envelope::decode(payload).unwrap();
    assert_eq!(env.header().status, aether::Status::Connected);
    let (_, payload) = next_msg(&mut idle, "idle").await;
    let env = aether::Envelope::decode(payload).unwrap();
    assert_eq!(
        (env.header().status, env.header().progress),
        (aether::Status::Online, 100)
    );
}

/// The Python-style callback API: idle/on_perform/status/complete against
/// perform/on_status/on_complete.
pub async fn callback_style_round_trip(h: &dyn Harness) {
    let u = union();
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

/// On a durable transport a perform sent while no worker runs is handled when one starts.
pub async fn task_enqueued_before_any_worker_is_handled(h: &dyn Harness) {
    let u = union();
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

/// A worker process killed with SIGKILL mid-task: another worker completes the task.
pub async fn worker_process_killed_mid_task(h: &dyn Harness) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let url = h.url().expect("capability says shared between processes");
    let u = union();
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

/// Workers and clients carry on by themselves after their broker restarts.
pub async fn broker_restart_workers_resume(h: &dyn Harness) {
    let broker = h
        .private_broker()
        .await
        .expect("capability says a private broker");
    let u = union();
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
    // The first perform after the restart may race the reconnection; the client's own
    // retry of a failed send is the caller's, so retry sending for a while.
    let deadline = tokio::time::Instant::now() + WAIT;
    let task = loop {
        match client
            .task("rs", "echo")
            .deadline(WAIT)
            .perform(&2u32)
            .await
        {
            Ok(task) => break task,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never reconnected: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let r: u32 = within("after restart", task.result()).await.unwrap();
    assert_eq!(r, 2);
}
