//! Raw fred baseline: the round trip aether makes, written directly on fred, hand-tuned.
//!
//! Streams mode (default): the client `XADD`s `{i, payload}`; a worker reads with
//! `XREADGROUP COUNT 64 BLOCK` on its own connection and answers each batch with one
//! pipeline of `PUBLISH` (the reply, on a channel the client subscribed to) and `XACK`.
//! List mode (`?mode=list`): `LPUSH`, `BLMOVE` into a processing list, then one pipeline
//! of `PUBLISH` and `LREM`. Replies are matched to waiting requests by `i`. No envelope,
//! no progress message, no heartbeat: the floor aether's cost is measured against.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use fred::prelude::*;
use fred::types::Value;
use fred::types::lists::LMoveDirection;
use tokio::sync::oneshot;

use crate::runner::{Report, closed_loop};

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

pub(crate) async fn run(
    url: &str,
    tasks: usize,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let list = match query.split('&').find_map(|kv| kv.strip_prefix("mode=")) {
        None | Some("streams") => false,
        Some("list") => true,
        Some(other) => bail!("raw redis: unknown mode {other}"),
    };
    let config = Config::from_url(base.trim_end_matches('/')).context("raw redis: URL")?;
    let tag = format!("rawbench{}-{}", std::process::id(), inflight);
    let (queue, processing, replies) = (format!("{tag}:q"), format!("{tag}:p"), format!("{tag}:r"));

    let client = Builder::from_config(config.clone()).build()?;
    client.init().await?;
    let worker_conn = Builder::from_config(config.clone()).build()?;
    worker_conn.init().await?;
    let blocking = Builder::from_config(config.clone()).build()?;
    blocking.init().await?;
    // Room for a burst of replies: fred's default broadcast capacity is 32.
    let subscriber = Builder::from_config(config)
        .with_performance_config(|p| p.broadcast_channel_capacity = 8192)
        .build_subscriber_client()?;
    subscriber.init().await?;

    // Client side: replies wake their waiting request.
    let waiters: Waiters = Arc::default();
    let mut messages = subscriber.message_rx();
    let w = waiters.clone();
    let router = tokio::spawn(async move {
        loop {
            let m = match messages.recv().await {
                Ok(m) => m,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("raw redis: {n} replies lost");
                    continue;
                }
                Err(_) => return,
            };
            if let Some(i) = m.value.as_u64()
                && let Some(tx) = w.lock().unwrap().remove(&i)
            {
                let _ = tx.send(());
            }
        }
    });
    subscriber.subscribe(replies.as_str()).await?;
    subscriber.ping::<Value>(None).await?;

    if !list {
        let _: Value = client.xgroup_create(queue.as_str(), "g", "$", true).await?;
    }
    let worker = {
        let (queue, processing, replies) = (queue.clone(), processing.clone(), replies.clone());
        tokio::spawn(async move {
            if list {
                list_worker(&blocking, &worker_conn, &queue, &processing, &replies).await
            } else {
                stream_worker(&blocking, &worker_conn, &queue, &replies).await
            }
        })
    };

    let next = Arc::new(AtomicU64::new(0));
    let body = "x".repeat(payload);
    let one = || {
        let (client, waiters, next, queue, body) = (
            client.clone(),
            waiters.clone(),
            next.clone(),
            queue.clone(),
            body.clone(),
        );
        async move {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            waiters.lock().unwrap().insert(i, tx);
            if list {
                let element = format!("{i}:{body}");
                let _: i64 = client.lpush(queue.as_str(), element).await?;
            } else {
                let _: Value = client
                    .xadd(
                        queue.as_str(),
                        false,
                        None,
                        "*",
                        vec![("i", Value::from(i as i64)), ("p", Value::from(body))],
                    )
                    .await?;
            }
            rx.await.context("reply")?;
            Ok::<_, anyhow::Error>(())
        }
    };
    closed_loop(200.min(tasks), inflight, one).await?;
    let sample = closed_loop(tasks, inflight, one).await?;

    worker.abort();
    router.abort();
    let _: i64 = client
        .del(vec![queue.as_str(), processing.as_str()])
        .await?;
    let _ = subscriber.quit().await;
    let _ = client.quit().await;
    let name = if list {
        "raw fred list"
    } else {
        "raw fred streams"
    };
    Ok(Report::new(name.to_owned(), inflight, sample))
}

async fn stream_worker(
    blocking: &Client,
    conn: &Client,
    queue: &str,
    replies: &str,
) -> anyhow::Result<()> {
    loop {
        let read: Value = blocking
            .xreadgroup("g", "w", Some(64), Some(1000), false, queue, ">")
            .await?;
        let Value::Array(streams) = read else {
            continue;
        };
        let pipe = conn.pipeline();
        let mut ids = Vec::new();
        for s in streams {
            let Value::Array(pair) = s else { continue };
            let Some(Value::Array(entries)) = pair.into_iter().nth(1) else {
                continue;
            };
            for e in entries {
                let Value::Array(e) = e else { continue };
                let mut e = e.into_iter();
                let (Some(id), Some(Value::Array(fields))) = (e.next(), e.next()) else {
                    continue;
                };
                let i = fields.get(1).and_then(Value::as_u64).unwrap_or(u64::MAX);
                let _: () = pipe.publish(replies, i as i64).await?;
                ids.push(id.as_string().unwrap_or_default());
            }
        }
        let _: () = pipe.xack(queue, "g", ids).await?;
        let _: Vec<Value> = pipe.all().await?;
    }
}

async fn list_worker(
    blocking: &Client,
    conn: &Client,
    queue: &str,
    processing: &str,
    replies: &str,
) -> anyhow::Result<()> {
    loop {
        let moved: Result<Value, Error> = blocking
            .blmove(
                queue,
                processing,
                LMoveDirection::Right,
                LMoveDirection::Left,
                1.0,
            )
            .await;
        let element = match moved {
            Ok(Value::Null) => continue,
            Ok(v) => v.as_bytes().map(<[u8]>::to_vec).unwrap_or_default(),
            // A BLMOVE that times out is an error in fred 10.1.
            Err(e) if *e.kind() == ErrorKind::Timeout => continue,
            Err(e) => return Err(e.into()),
        };
        let i: u64 = std::str::from_utf8(&element)
            .ok()
            .and_then(|s| s.split_once(':'))
            .and_then(|(i, _)| i.parse().ok())
            .unwrap_or(u64::MAX);
        let pipe = conn.pipeline();
        let _: () = pipe.publish(replies, i as i64).await?;
        let _: () = pipe.lrem(processing, 1, element).await?;
        let _: Vec<Value> = pipe.all().await?;
    }
}
