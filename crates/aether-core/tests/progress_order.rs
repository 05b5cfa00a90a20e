//! Every progress report a worker sends before its completion is surfaced before the
//! outcome, from any worker: a Python AetherMagic worker numbers nothing (no `seq`), so the
//! client relies on the order in which its subscriptions deliver, on transports that keep
//! one order across subscriptions and on those that do not.

mod common;

use std::time::Duration;

use aether_core::envelope::encode;
use aether_core::{
    Action, Aether, Codec, ConsumeOptions, Header, MemoryConfig, MemoryTransport, Status,
    Transport, WorkQueue,
};
use common::Faulty;
use serde_json::{Value, json};

const TASKS: usize = 40;

/// Serves `j/t` like Python AetherMagic 0.2.9: status 0, status 50, then the completion,
/// published back to back, without `seq`.
async fn python_like_worker(transport: impl Transport) {
    let queue = WorkQueue::new(aether_core::DEFAULT_UNION, "j", "t", "x", "workgroup").unwrap();
    let mut consumer = transport
        .consume(&queue, ConsumeOptions::new().prefetch(TASKS))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let topic = delivery.topic.clone();
            let reply = |action, status, progress| {
                let mut h = Header::new(action, "py-host", "py-worker")
                    .status(status)
                    .progress(progress);
                h.seq = None;
                h
            };
            for p in [0u8, 50] {
                let h = reply(Action::Status, Status::Progress, p);
                let bytes = encode(Codec::Json, &h, &json!({})).unwrap();
                transport
                    .publish(&topic.with_action(Action::Status), bytes)
                    .await
                    .unwrap();
            }
            let h = reply(Action::Complete, Status::Succeed, 100);
            let bytes = encode(Codec::Json, &h, &json!({"tid": topic.tid()})).unwrap();
            transport
                .publish(&topic.with_action(Action::Complete), bytes)
                .await
                .unwrap();
            delivery.ack().await.unwrap();
        }
    });
}

async fn every_task_sees_its_progress_before_its_result(client_transport: Faulty) {
    let node = Aether::builder()
        .transport(client_transport)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        tasks.push(
            node.client()
                .task("j", "t")
                .deadline(Duration::from_secs(10))
                .perform(&i)
                .await
                .unwrap(),
        );
    }
    let mut short = Vec::new();
    for mut task in tasks {
        let mut percents = Vec::new();
        while let Some(p) = task.next_progress().await {
            percents.push(p.percent);
        }
        let tid = task.tid().to_owned();
        let r: Value = task.result().await.unwrap();
        assert_eq!(r["tid"], tid);
        if percents != [0, 50] {
            short.push((tid, percents));
        }
    }
    assert!(short.is_empty(), "tasks without [0, 50]: {short:?}");
    assert_eq!(node.stats().duplicate_updates, 0, "{:?}", node.stats());
}

/// Statuses reach their subscriptions later than completions reach theirs (a broker queue
/// per subscription): the client still surfaces both statuses of every task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_before_the_result_where_subscriptions_are_not_ordered() {
    let broker = MemoryTransport::new(MemoryConfig::default());
    python_like_worker(broker.reconnect()).await;
    let mut client = Faulty::new(broker.reconnect(), true, None);
    client.slow_status_subscriptions = Some(Duration::from_millis(20));
    every_task_sees_its_progress_before_its_result(client).await;
}

/// A transport ordered across subscriptions, many tasks at once: the statuses of each task
/// come before its completion, whichever subscription is read first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_before_the_result_where_subscriptions_are_ordered() {
    for _ in 0..10 {
        let broker = MemoryTransport::new(MemoryConfig::default());
        python_like_worker(broker.reconnect()).await;
        every_task_sees_its_progress_before_its_result(Faulty::new(broker.reconnect(), true, None))
            .await;
    }
}
