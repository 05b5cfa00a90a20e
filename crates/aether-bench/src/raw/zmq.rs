//! Raw tmq baseline: aether-zmq's topology written directly on tmq. A device thread (its own
//! runtime, as `aether_zmq::Device` has) binds a ROUTER on a spare loopback port; a worker
//! DEALER announces itself; the client DEALER sends `[i, payload]`, the device forwards it
//! to the worker, the worker answers `[client, i, payload]`, the device forwards that to
//! the client, which matches it to the waiting request by `i`. No envelope, no credit, no
//! acknowledgement, no heartbeat: what ZeroMQ and tmq cost alone over the same hops.
//!
//! With a `bind=true` URL the topology is the brokerless one: the client's DEALER joins
//! the ROUTER over `inproc://` (the process hosting the device), the worker's over TCP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aether::aether_zmq::tmq::{self, Multipart};
use anyhow::Context;
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::runner::{Report, closed_loop};

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

fn frames(parts: Vec<Vec<u8>>) -> Multipart {
    parts.into_iter().map(tmq::Message::from).collect()
}

/// The raw device: a ROUTER forwarding requests to the worker and replies to clients,
/// bound on a spare loopback port and on `inproc`.
fn device(
    context: tmq::Context,
    inproc: String,
) -> anyhow::Result<(String, std::thread::JoinHandle<()>)> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let router = match tmq::router(&context)
                .set_linger(0)
                .bind("tcp://127.0.0.1:*")
            {
                Ok(r) => r,
                Err(e) => return drop(bound_tx.send(Err(e.to_string()))),
            };
            let socket = tmq::AsZmqSocket::get_socket(&router);
            let endpoint = socket
                .get_last_endpoint()
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            if let Err(e) = socket.bind(&inproc) {
                return drop(bound_tx.send(Err(e.to_string())));
            }
            let _ = bound_tx.send(Ok(endpoint));
            let (mut tx, mut rx) = router.split::<Multipart>();
            let mut worker: Option<Vec<u8>> = None;
            while let Some(Ok(mut msg)) = rx.next().await {
                let Some(from) = msg.pop_front().map(|m| m.to_vec()) else {
                    continue;
                };
                let Some(kind) = msg.pop_front().map(|m| m.to_vec()) else {
                    continue;
                };
                let out = match kind.as_slice() {
                    b"ready" => {
                        worker = Some(from);
                        continue;
                    }
                    // A request from a client: to the worker, naming the client.
                    b"req" => match &worker {
                        Some(w) => {
                            let mut parts = vec![w.clone(), from];
                            parts.extend(msg.iter().map(|m| m.to_vec()));
                            parts
                        }
                        None => continue,
                    },
                    // A reply from the worker: `[client, i, payload]` to the client.
                    b"rep" => msg.iter().map(|m| m.to_vec()).collect(),
                    b"stop" => return,
                    _ => continue,
                };
                if tx.send(frames(out)).await.is_err() {
                    return;
                }
            }
        });
    });
    let endpoint = bound_rx
        .recv()
        .context("raw zmq device")?
        .map_err(anyhow::Error::msg)?;
    Ok((endpoint, thread))
}

pub(crate) async fn run(
    url: &str,
    tasks: usize,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    let context = tmq::Context::new();
    static IDS: AtomicU64 = AtomicU64::new(0);
    let inproc = format!("inproc://raw-tmq-{}", IDS.fetch_add(1, Ordering::Relaxed));
    let (endpoint, device_thread) = device(context.clone(), inproc.clone())?;

    // The worker: answers each request with its payload.
    let worker = tmq::dealer(&context).set_linger(0).connect(&endpoint)?;
    let (mut wtx, mut wrx) = worker.split::<Multipart>();
    wtx.send(frames(vec![b"ready".to_vec()])).await?;
    let worker = tokio::spawn(async move {
        while let Some(Ok(mut msg)) = wrx.next().await {
            let mut parts = vec![b"rep".to_vec()];
            while let Some(m) = msg.pop_front() {
                parts.push(m.to_vec());
            }
            if wtx.send(frames(parts)).await.is_err() {
                return;
            }
        }
    });

    // The client: one task owns the socket; requests come through a channel.
    let client_endpoint = if super::brokerless(url) {
        &inproc
    } else {
        &endpoint
    };
    let client = tmq::dealer(&context)
        .set_linger(0)
        .connect(client_endpoint)?;
    let (mut ctx, mut crx) = client.split::<Multipart>();
    let waiting: Waiting = Arc::default();
    let (requests, mut queued) = mpsc::channel::<Multipart>(4096);
    let w = waiting.clone();
    let io = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(req) = queued.recv() => {
                    if ctx.send(req).await.is_err() {
                        return;
                    }
                }
                Some(Ok(reply)) = crx.next() => {
                    let i = reply
                        .iter()
                        .next()
                        .and_then(|m| <[u8; 8]>::try_from(&m[..]).ok())
                        .map(u64::from_le_bytes);
                    if let Some(tx) = i.and_then(|i| w.lock().unwrap().remove(&i)) {
                        let _ = tx.send(());
                    }
                }
                else => return,
            }
        }
    });
    // Let the worker's announcement reach the device first.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let next = Arc::new(AtomicU64::new(0));
    let body = vec![b'x'; payload];
    let one = || {
        let (requests, waiting, next, body) = (
            requests.clone(),
            waiting.clone(),
            next.clone(),
            body.clone(),
        );
        async move {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            waiting.lock().unwrap().insert(i, tx);
            let msg = frames(vec![b"req".to_vec(), i.to_le_bytes().to_vec(), body]);
            requests.send(msg).await.context("raw zmq client")?;
            rx.await.context("reply")?;
            Ok::<_, anyhow::Error>(())
        }
    };
    closed_loop(200.min(tasks), inflight, one).await?;
    let sample = closed_loop(tasks, inflight, one).await?;

    // Stop the device thread through its own socket, then the tasks.
    let stopper = tmq::dealer(&context).set_linger(1000).connect(&endpoint)?;
    let (mut stx, _srx) = stopper.split::<Multipart>();
    stx.send(frames(vec![b"stop".to_vec()])).await?;
    worker.abort();
    io.abort();
    tokio::task::spawn_blocking(move || device_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("raw zmq device thread panicked"))?;
    let name = format!("raw tmq{}", crate::url_tags(url));
    Ok(Report::new(name, inflight, sample))
}
