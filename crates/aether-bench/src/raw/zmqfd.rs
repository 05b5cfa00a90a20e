//! Raw ZeroMQ on Tokio without tmq: the raw tmq loop's topology and tasks (a device
//! thread with its own current-thread runtime, a worker task, a client I/O task fed by a
//! channel), each socket read through its `ZMQ_FD` registered in Tokio's reactor
//! (`AsyncFd`): read until `EAGAIN`, then wait for the descriptor. tmq's poll instead
//! wakes its own task once more each time a socket runs dry (`clear_read_ready` calls
//! `wake_by_ref`), which on a multi-thread runtime can unpark another worker; this loop
//! shows what the same topology costs without that.
//!
//! `ZMQ_FD` is edge-triggered and signals commands, not messages: any send or receive may
//! take the readiness it announced, so every read tries the socket before waiting.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use crate::runner::{Report, closed_loop};

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

/// A socket's `ZMQ_FD`, for the reactor.
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A socket and its descriptor in the reactor (deregistered before the socket closes).
/// The lock is never contended (one task uses each socket); it makes the socket `Sync`, so
/// a future holding `&Socket` across an await can move between threads.
struct Socket {
    fd: AsyncFd<Fd>,
    socket: Mutex<zmq::Socket>,
}

impl Socket {
    fn new(socket: zmq::Socket) -> anyhow::Result<Socket> {
        // Deprecated for I/O safety in favour of the unsafe `register_with_interest`; the
        // descriptor stays valid while registered: `fd` is dropped (deregistered) before
        // `socket` closes it. tmq registers its sockets the same way.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(Fd(socket.get_fd()?), Interest::READABLE)?;
        Ok(Socket {
            fd,
            socket: Mutex::new(socket),
        })
    }

    /// The next message: what the socket holds, or once the descriptor signals.
    /// Cancel-safe: nothing is read unless it returns.
    async fn recv(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        loop {
            let received = self.socket.lock().unwrap().recv_multipart(zmq::DONTWAIT);
            match received {
                Ok(msg) => return Ok(msg),
                Err(zmq::Error::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
            self.fd.readable().await?.clear_ready();
        }
    }

    /// Sends without waiting (the loop never fills the socket's queue).
    fn send<I, T>(&self, parts: I) -> anyhow::Result<()>
    where
        I: IntoIterator<Item = T>,
        T: Into<zmq::Message>,
    {
        Ok(self
            .socket
            .lock()
            .unwrap()
            .send_multipart(parts, zmq::DONTWAIT)?)
    }
}

/// The raw device: a ROUTER forwarding requests to the worker and replies to clients,
/// bound on a spare loopback port and on `inproc`.
fn device(
    context: &zmq::Context,
    inproc: &str,
) -> anyhow::Result<(String, std::thread::JoinHandle<()>)> {
    let router = context.socket(zmq::ROUTER)?;
    router.set_linger(0)?;
    router.bind("tcp://127.0.0.1:*")?;
    let endpoint = router
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("the bound endpoint is not UTF-8"))?;
    router.bind(inproc)?;
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let Ok(router) = Socket::new(router) else {
                return;
            };
            let mut worker: Option<Vec<u8>> = None;
            while let Ok(msg) = router.recv().await {
                let mut frames = msg.into_iter();
                let (Some(from), Some(kind)) = (frames.next(), frames.next()) else {
                    continue;
                };
                let sent = match (kind.as_slice(), &worker) {
                    (b"ready", _) => {
                        worker = Some(from);
                        continue;
                    }
                    (b"req", Some(w)) => router.send([w.clone(), from].into_iter().chain(frames)),
                    (b"rep", _) => router.send(frames),
                    (b"stop", _) => return,
                    _ => continue,
                };
                if sent.is_err() {
                    return;
                }
            }
        });
    });
    Ok((endpoint, thread))
}

pub(crate) async fn run(
    url: &str,
    tasks: usize,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    let context = zmq::Context::new();
    static IDS: AtomicU64 = AtomicU64::new(0);
    let inproc = format!("inproc://raw-zmqfd-{}", IDS.fetch_add(1, Ordering::Relaxed));
    let (endpoint, device_thread) = device(&context, &inproc)?;

    // The worker: answers each request with its payload.
    let worker = context.socket(zmq::DEALER)?;
    worker.set_linger(0)?;
    worker.connect(&endpoint)?;
    let worker = Socket::new(worker)?;
    worker.send(["ready"])?;
    let worker = tokio::spawn(async move {
        while let Ok(msg) = worker.recv().await {
            let reply = std::iter::once(b"rep".to_vec()).chain(msg);
            if worker.send(reply).is_err() {
                return;
            }
        }
    });

    // The client: one task owns the socket; requests come through a channel.
    let client = context.socket(zmq::DEALER)?;
    client.set_linger(0)?;
    client.connect(if super::brokerless(url) {
        &inproc
    } else {
        &endpoint
    })?;
    let client = Socket::new(client)?;
    let waiting: Waiting = Arc::default();
    let (requests, mut queued) = mpsc::channel::<Vec<Vec<u8>>>(4096);
    let w = waiting.clone();
    let io = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(req) = queued.recv() => {
                    if client.send(req).is_err() {
                        return;
                    }
                }
                Ok(reply) = client.recv() => {
                    let i = reply
                        .first()
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
            let msg = vec![b"req".to_vec(), i.to_le_bytes().to_vec(), body];
            requests.send(msg).await.context("raw zmq client")?;
            rx.await.context("reply")?;
            Ok::<_, anyhow::Error>(())
        }
    };
    closed_loop(200.min(tasks), inflight, one).await?;
    let sample = closed_loop(tasks, inflight, one).await?;

    // Stop the device thread through a socket of its own, then the tasks.
    let stopper = context.socket(zmq::DEALER)?;
    stopper.set_linger(1000)?;
    stopper.connect(&endpoint)?;
    stopper.send("stop", 0)?;
    worker.abort();
    io.abort();
    // Their sockets must close before the context ends.
    let _ = worker.await;
    let _ = io.await;
    tokio::task::spawn_blocking(move || device_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("raw zmq AsyncFd device thread panicked"))?;
    let name = format!("raw zmq AsyncFd{}", crate::url_tags(url));
    Ok(Report::new(name, inflight, sample))
}
