//! Raw tokio-tungstenite baseline: aether-ws's topology written directly on
//! tokio-tungstenite. A hub thread (its own current-thread runtime, as the bench gives
//! aether's hub) accepts WebSocket connections on a spare loopback port; a worker
//! connection says `worker`, the client connection `client`; each connection has a reader
//! and a writer fed by a bounded queue, as the aether hub's have. The client sends
//! `[i: u64 LE][payload]` as a binary frame, the hub forwards it to the worker, the worker
//! sends it back, the hub forwards that to the client, which matches it to the waiting
//! request by `i`. No envelope, no acknowledgement, no credit, no heartbeat: what
//! WebSocket framing and tungstenite cost alone over the same hops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aether::aether_ws::tokio_tungstenite::{self, tungstenite::Message};
use anyhow::Context;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::runner::{Report, closed_loop};

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;
type Outbox = mpsc::Sender<Message>;

/// Frames queued per connection, as the aether hub's default `send_queue`.
const QUEUE: usize = 8192;

/// The raw hub: forwards the client's frames to the worker and the worker's to the client.
fn hub() -> anyhow::Result<u16> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = match TcpListener::bind("127.0.0.1:0").await {
                Ok(l) => l,
                Err(e) => return drop(bound_tx.send(Err(e.to_string()))),
            };
            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            let _ = bound_tx.send(Ok(port));
            let peers: Arc<Mutex<HashMap<&'static str, Outbox>>> = Arc::default();
            // Two connections; the thread ends with them.
            let mut served = Vec::new();
            for _ in 0..2 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                served.push(tokio::spawn(serve(stream, peers.clone())));
            }
            for s in served {
                let _ = s.await;
            }
        });
    });
    bound_rx
        .recv()
        .context("raw ws hub")?
        .map_err(anyhow::Error::msg)
}

/// One connection on the raw hub: its role first, then frames forwarded to the other role.
async fn serve(stream: TcpStream, peers: Arc<Mutex<HashMap<&'static str, Outbox>>>) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
    });
    let (me, other) = match stream.next().await {
        Some(Ok(Message::Text(t))) if t.as_str() == "worker" => ("worker", "client"),
        Some(Ok(Message::Text(t))) if t.as_str() == "client" => ("client", "worker"),
        _ => return,
    };
    peers.lock().unwrap().insert(me, tx);
    let mut to: Option<Outbox> = None;
    while let Some(Ok(m)) = stream.next().await {
        if !m.is_binary() {
            continue;
        }
        if to.is_none() {
            to = peers.lock().unwrap().get(other).cloned();
        }
        if let Some(to) = &to {
            if to.try_send(m).is_err() {
                return;
            }
        }
    }
}

pub(crate) async fn run(
    _url: &str,
    tasks: usize,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    let port = hub()?;
    let endpoint = format!("ws://127.0.0.1:{port}/ws");

    // The worker: sends each frame back.
    let (worker, _) = tokio_tungstenite::connect_async(&endpoint).await?;
    let (mut wtx, mut wrx) = worker.split();
    wtx.send(Message::text("worker")).await?;
    let worker = tokio::spawn(async move {
        while let Some(Ok(m)) = wrx.next().await {
            if m.is_binary() && wtx.send(m).await.is_err() {
                return;
            }
        }
    });

    // The client: a writer task owns the sink (requests through a channel), a reader task
    // completes the waiting requests.
    let (client, _) = tokio_tungstenite::connect_async(&endpoint).await?;
    let (mut ctx, mut crx) = client.split();
    ctx.send(Message::text("client")).await?;
    let waiting: Waiting = Arc::default();
    let (requests, mut queued) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(m) = queued.recv().await {
            if ctx.send(m).await.is_err() {
                return;
            }
        }
    });
    let w = waiting.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = crx.next().await {
            let Message::Binary(b) = m else { continue };
            let Some(head) = b.get(..8) else { continue };
            let i = u64::from_le_bytes(head.try_into().expect("8 bytes"));
            if let Some(tx) = w.lock().unwrap().remove(&i) {
                let _ = tx.send(());
            }
        }
    });

    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let body = vec![b'x'; payload];
    let one = || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        waiting.lock().unwrap().insert(i, tx);
        let mut frame = Vec::with_capacity(8 + body.len());
        frame.extend_from_slice(&i.to_le_bytes());
        frame.extend_from_slice(&body);
        let requests = requests.clone();
        async move {
            requests
                .send(Message::binary(frame))
                .await
                .map_err(|_| anyhow::anyhow!("raw ws client gone"))?;
            rx.await.map_err(|_| anyhow::anyhow!("raw ws reply lost"))?;
            Ok(())
        }
    };
    closed_loop(1000.min(tasks), inflight, one).await?; // warm-up
    let sample = closed_loop(tasks, inflight, one).await?;
    worker.abort();
    writer.abort();
    reader.abort();
    Ok(Report::new(
        "raw tokio-tungstenite".into(),
        inflight,
        sample,
    ))
}
