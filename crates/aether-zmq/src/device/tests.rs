//! The device's [`Core`] without a socket: messages in, frames out, under paused time.

use std::sync::Arc;
use std::time::Duration;

use aether_core::kit::{EngineConfig, QueueEngine};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Counters;
use super::core::{Core, Handout};
use crate::config::ZmqConfig;
use crate::wire::{Refusal, ToDevice, ToPeer, frames_of};

struct Rig {
    core: Core,
    counters: Arc<Counters>,
    handed: mpsc::Receiver<Handout>,
}

fn rig(queue_capacity: usize) -> Rig {
    let config = ZmqConfig::default()
        .heartbeat(Duration::from_millis(100))
        .max_payload(8);
    let mut engine = EngineConfig::default();
    engine.queue_capacity = queue_capacity;
    let counters = Arc::new(Counters::default());
    let (tx, handed) = mpsc::channel(64);
    Rig {
        core: Core::new(config, QueueEngine::new(engine), counters.clone(), tx),
        counters,
        handed,
    }
}

impl Rig {
    async fn send(&mut self, from: &str, msg: ToDevice) -> Vec<(String, ToPeer)> {
        self.send_batch(from, &[msg]).await
    }

    /// Messages in one batch, as one ZeroMQ message.
    async fn send_batch(&mut self, from: &str, msgs: &[ToDevice]) -> Vec<(String, ToPeer)> {
        let frames = frames_of(msgs, ToDevice::encode);
        self.core
            .on_batch(from.as_bytes(), frames, Instant::now())
            .await;
        self.out()
    }

    fn out(&mut self) -> Vec<(String, ToPeer)> {
        self.core
            .take_out()
            .into_iter()
            .map(|o| {
                let to = String::from_utf8(o.to.to_vec()).unwrap();
                (to, o.msg)
            })
            .collect()
    }

    /// Forwards what the engine handed out, as the device loop does.
    async fn hand_out(&mut self) -> Vec<(String, ToPeer)> {
        let h = tokio::time::timeout(Duration::from_secs(1), self.handed.recv())
            .await
            .expect("a handout")
            .expect("open");
        self.core.on_handout(h);
        self.out()
    }
}

fn perform(tid: &str) -> ToDevice {
    ToDevice::Enqueue {
        req: 1,
        topic: format!("u/j/t/x/{tid}/perform"),
        payload: Bytes::from_static(b"{}"),
    }
}

fn ready(consumer: u64) -> ToDevice {
    ToDevice::Ready {
        req: 2,
        consumer,
        prefetch: 1,
        queue: "u/j/t/x/g".into(),
    }
}

fn kinds(out: &[(String, ToPeer)]) -> Vec<(String, &'static str)> {
    out.iter()
        .map(|(to, m)| {
            let kind = match m {
                ToPeer::Welcome { .. } => "welcome",
                ToPeer::Heartbeat { .. } => "heartbeat",
                ToPeer::Broadcast { .. } => "broadcast",
                ToPeer::Delivery { .. } => "delivery",
                ToPeer::Ok { .. } => "ok",
                ToPeer::Refused { .. } => "refused",
            };
            (to.clone(), kind)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn requests_answers_and_refusals() {
    let mut r = rig(1);
    let s = |to: &str, k: &'static str| (to.to_owned(), k);
    // (from, message, what comes out)
    type Step = (&'static str, ToDevice, Vec<(String, &'static str)>);
    let table: Vec<Step> = vec![
        ("a", ToDevice::Hello, vec![s("a", "welcome")]),
        ("a", ToDevice::Hello, vec![s("a", "welcome")]),
        ("a", perform("1"), vec![s("a", "ok")]),
        ("a", perform("2"), vec![s("a", "refused")]),
        (
            "a",
            ToDevice::Enqueue {
                req: 3,
                topic: "u/j/t/x/3/status".into(),
                payload: Bytes::new(),
            },
            vec![s("a", "refused")],
        ),
        (
            "a",
            ToDevice::Publish {
                topic: "u/j/t/x/3/status".into(),
                payload: Bytes::from_static(b"123456789"),
            },
            vec![],
        ),
        (
            "a",
            ToDevice::Subscribe {
                req: 4,
                sub: 1,
                filter: "u/j/+/x/+/status".into(),
            },
            vec![s("a", "ok")],
        ),
        (
            "b",
            ToDevice::Publish {
                topic: "u/j/t/x/3/status".into(),
                payload: Bytes::new(),
            },
            vec![s("b", "welcome"), s("a", "broadcast")],
        ),
        (
            "b",
            ToDevice::Publish {
                topic: "not a topic".into(),
                payload: Bytes::new(),
            },
            vec![],
        ),
    ];
    for (i, (from, msg, want)) in table.into_iter().enumerate() {
        let out = r.send(from, msg).await;
        assert_eq!(kinds(&out), want, "step {i}");
    }
    assert_eq!(
        r.counters
            .queue_full
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        r.counters
            .oversized
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        r.counters
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Frames that do not decode are counted and dropped; the peer is still served.
    r.core
        .on_batch(b"a", vec![Bytes::from_static(b"\xff")], Instant::now())
        .await;
    assert!(r.out().is_empty());
    assert_eq!(
        r.counters
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_worker_s_perform_goes_to_another_and_stale_settlements_are_ignored() {
    let mut r = rig(16);
    r.send("w1", ready(7)).await;
    r.send("c", perform("1")).await;
    let out = r.hand_out().await;
    let ToPeer::Delivery {
        session, delivery, ..
    } = out[0].1.clone()
    else {
        panic!("a delivery: {out:?}");
    };
    assert_eq!(out[0].0, "w1");
    r.send("w2", ready(8)).await;
    // An ack from another session settles nothing.
    r.send(
        "w1",
        ToDevice::Ack {
            session: session + 1,
            delivery,
        },
    )
    .await;
    // w1 falls silent; the others keep talking.
    for _ in 0..4 {
        tokio::time::advance(Duration::from_millis(100)).await;
        r.send("w2", ToDevice::Ping).await;
        r.send("c", ToDevice::Ping).await;
        r.core.on_tick(Instant::now());
        r.out();
    }
    let out = r.hand_out().await;
    let (to, ToPeer::Delivery { redeliveries, .. }) = &out[0] else {
        panic!("a delivery: {out:?}");
    };
    assert_eq!((to.as_str(), *redeliveries), ("w2", 1));
    assert_eq!(
        r.counters
            .peers_expired
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        r.counters
            .redelivered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn refusals_carry_the_reason() {
    let mut r = rig(1);
    r.send("a", perform("1")).await;
    let out = r.send("a", perform("2")).await;
    let (_, ToPeer::Refused { why, limit, .. }) = &out[0] else {
        panic!("a refusal: {out:?}");
    };
    assert_eq!((*why, *limit), (Refusal::QueueFull, 1));
}

#[tokio::test(start_paused = true)]
async fn one_batch_is_answered_by_its_refusals_then_one_ok_listing_the_rest() {
    let mut r = rig(2);
    r.send("a", ToDevice::Hello).await;
    let enqueue = |req: u64, tid: &str| ToDevice::Enqueue {
        req,
        topic: format!("u/j/t/x/{tid}/perform"),
        payload: Bytes::from_static(b"{}"),
    };
    let batch = [
        enqueue(7, "1"),
        ToDevice::Ping,
        enqueue(3, "2"),
        enqueue(9, "3"), // the queue holds 2
        ToDevice::Subscribe {
            req: 4,
            sub: 1,
            filter: "u/#".into(),
        },
        enqueue(5, "bad topic"),
    ];
    let out = r.send_batch("a", &batch).await;
    let got: Vec<ToPeer> = out.into_iter().map(|(_, m)| m).collect();
    let [
        ToPeer::Refused {
            req: 9,
            why: Refusal::QueueFull,
            limit: 2,
            ..
        },
        ToPeer::Refused {
            req: 5,
            why: Refusal::Invalid,
            ..
        },
        ToPeer::Ok { reqs },
    ] = &got[..]
    else {
        panic!("two refusals, then one ok: {got:?}");
    };
    assert_eq!(reqs, &[7, 3, 4]);
    // A malformed message inside a batch is skipped and counted; the rest is served.
    let mut frames = frames_of(&[enqueue(11, "4")], ToDevice::encode);
    let mut body = frames[0].to_vec();
    body.extend_from_slice(&[1, 0, 0, 0, b'Z']);
    frames[0] = Bytes::from(body);
    r.core.on_batch(b"a", frames, Instant::now()).await;
    let out = r.out();
    assert!(
        matches!(&out[..], [(_, ToPeer::Refused { req: 11, .. })]),
        "{out:?}"
    );
    assert_eq!(
        r.counters
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
