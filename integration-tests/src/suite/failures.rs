//! Failures and bad input: errors, panics, cancel, deadlines, malformed and oversized messages.

use super::*;

/// A handler's `Err` fails the task with its message; the worker keeps serving.
pub async fn handler_error_fails_the_task(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
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
pub async fn handler_panic_fails_the_task_and_worker_survives(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
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
pub async fn cancel_reaches_the_running_handler(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
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
pub async fn deadline_expiry(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
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

/// Malformed payloads, unknown actions and wrong actions on a work queue are counted and
/// dead-lettered; the worker keeps serving.
pub async fn malformed_input_is_dead_lettered_and_worker_keeps_serving(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
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
    // Performs whose header is fine but whose data is not: each used to run the handler
    // (deep MessagePack aborted a debug build's worker instead).
    for bytes in invalid_data(Action::Perform) {
        raw.enqueue(&topic, bytes).await.unwrap();
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
        s.malformed >= 7
            && s.unknown_action >= 1
            && s.unexpected_action >= 1
            && s.dead_lettered >= 9
    })
    .await;
    assert_eq!(wn.stats().handled, 1);
}

/// Three messages of `action` with a valid header and data that is not valid: a string
/// that is not UTF-8 (JSON), 100,000 nested JSON arrays, 1,000 nested MessagePack arrays.
fn invalid_data(action: Action) -> [Bytes; 3] {
    let header = Header::new(action, "host", "client");
    let raw = aether::envelope::encode_raw;
    let deep_json = [vec![b'['; 100_000], vec![b']'; 100_000]].concat();
    let deep_msgpack = [vec![0x91; 999], vec![0x90]].concat();
    [
        raw(Codec::Json, &header, b"\"\xff\xfe\""),
        raw(Codec::Json, &header, &deep_json),
        raw(Codec::MsgPack, &header, &deep_msgpack),
    ]
}

/// A reply whose data is not valid is counted as malformed by the client, not taken as
/// the task's outcome; the real completion that follows is.
pub async fn invalid_reply_is_not_an_outcome(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
    let release = Arc::new(Notify::new());
    let wn = node(h, &u, |b| b).await;
    let r = release.clone();
    let _w = announce(wn.worker())
        .handle("m", "held", "x", move |_ctx: TaskContext, v: u32| {
            let r = r.clone();
            async move {
                r.notified().await;
                Ok::<_, Error>(v + 1)
            }
        })
        .start()
        .await
        .unwrap();
    let cn = node(h, &u, |b| b).await;
    let task = cn
        .client()
        .task("m", "held")
        .tid("badreply01")
        .perform(&1u32)
        .await
        .unwrap();
    let raw = h.connect().await;
    let topic = t(&u, "m/held/x/badreply01/complete");
    for bytes in invalid_data(Action::Complete) {
        raw.publish(&topic, bytes).await.unwrap();
    }
    eventually(WAIT, "the invalid replies to be counted", || {
        cn.stats().malformed >= 3
    })
    .await;
    release.notify_one();
    assert_eq!(within("result", task.result::<u32>()).await.unwrap(), 2);
}

/// A payload over the limit is a typed error on send, and is counted and dead-lettered on
/// receive.
pub async fn oversized_payload_is_a_typed_error(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
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

/// Segments with separators or wildcards of any transport are refused before sending.
pub async fn invalid_segments_are_refused(h: &dyn Harness, u: &str) {
    let u = u.to_owned();
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
