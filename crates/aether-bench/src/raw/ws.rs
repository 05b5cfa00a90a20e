//! Raw tokio-tungstenite baseline: aether-ws's topology written directly on
//! tokio-tungstenite. A hub thread (its own current-thread runtime, as the bench gives
//! aether's hub) accepts WebSocket connections on a spare loopback port; a worker
//! connection says `worker`, the client connection `client`; each connection has a reader
//! and a writer fed by a bounded queue, as the aether hub's have, writing what is queued
//! before one flush, as aether's hub and peers do, through sockets with aether-ws's 8 KiB
//! read buffer (tungstenite's default 128 KiB buffer is zero-filled before every read,
//! which would make this floor slower than it need be). The client sends
//! `[i: u64 LE][payload]` as a binary frame, the hub forwards it to the worker, the worker
//! sends it back, the hub forwards that to the client, which matches it to the waiting
//! request by `i`. No envelope, no acknowledgement, no credit, no heartbeat: what
//! WebSocket framing and tungstenite cost alone over the same hops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aether::aether_ws::tokio_tungstenite::tungstenite::Message;
use aether::aether_ws::tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use aether::aether_ws::tokio_tungstenite::{self, WebSocketStream};
use anyhow::Context;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::runner::{Report, closed_loop};

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;
type Outbox = mpsc::Sender<Message>;

/// Frames queued per connection, as the aether hub's default `send_queue`.
const QUEUE: usize = 8192;

/// Sockets as aether-ws sets them up (its `config::READ_BUFFER`).
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 << 10)
}

/// Writes what `rx` queues to `sink`, every frame ready before one flush.
async fn write<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Message>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(m) = rx.recv().await {
        if sink.feed(m).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if sink.feed(more).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

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
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(socket_config())).await
    else {
        return;
    };
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel::<Message>(QUEUE);
    tokio::spawn(write(sink, rx));
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

    let connect = |endpoint: String| async move {
        let connecting =
            tokio_tungstenite::connect_async_with_config(endpoint, Some(socket_config()), true);
        Ok::<_, anyhow::Error>(connecting.await?.0)
    };

    // The worker: sends each frame back, what has been read before one flush.
    let (mut wtx, mut wrx) = connect(endpoint.clone()).await?.split();
    wtx.send(Message::text("worker")).await?;
    let worker = tokio::spawn(async move {
        while let Some(Ok(m)) = wrx.next().await {
            let mut frames = vec![m];
            while let Some(Some(Ok(more))) = wrx.next().now_or_never() {
                frames.push(more);
            }
            for m in frames.into_iter().filter(Message::is_binary) {
                if wtx.feed(m).await.is_err() {
                    return;
                }
            }
            if wtx.flush().await.is_err() {
                return;
            }
        }
    });

    // The client: a writer task owns the sink (requests through a channel), a reader task
    // completes the waiting requests.
    let (mut ctx, mut crx) = connect(endpoint).await?.split();
    ctx.send(Message::text("client")).await?;
    let waiting: Waiting = Arc::default();
    let (requests, queued) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::spawn(write(ctx, queued));
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
