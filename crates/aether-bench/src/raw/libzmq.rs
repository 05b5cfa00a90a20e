//! Raw libzmq floor: the raw tmq loop's topology on blocking `zmq` sockets and plain
//! threads, no async runtime. A device thread reads its ROUTER and forwards requests to
//! the worker and replies to the client; a worker thread answers each request; the client
//! (a blocking thread of the bench's runtime) keeps `inflight` requests `[i, payload]`
//! outstanding and times each by `i`. All sockets share one context (one libzmq I/O
//! thread), as aether-zmq's do. What libzmq costs alone, each hop a wake-up of a thread
//! blocked in `recv`: the floor under the tmq loop and aether.
//!
//! With a `bind=true` URL the topology is the brokerless one: the client's DEALER joins
//! the ROUTER over `inproc://` (the process hosting the device), the worker's over TCP.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::runner::{Meter, Report};

/// Binds the device's ROUTER on a spare loopback port (and an in-process endpoint) and
/// starts its thread; returns the TCP and in-process endpoints.
fn device(context: &zmq::Context) -> anyhow::Result<(String, String, JoinHandle<()>)> {
    let router = context.socket(zmq::ROUTER)?;
    router.set_linger(0)?;
    router.bind("tcp://127.0.0.1:*")?;
    let tcp = router
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("the bound endpoint is not UTF-8"))?;
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let inproc = format!(
        "inproc://raw-libzmq-{}",
        IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    router.bind(&inproc)?;
    let thread = std::thread::Builder::new()
        .name("raw-libzmq-device".into())
        .spawn(move || {
            let mut worker: Option<Vec<u8>> = None;
            while let Ok(msg) = router.recv_multipart(0) {
                let mut frames = msg.into_iter();
                let (Some(from), Some(kind)) = (frames.next(), frames.next()) else {
                    continue;
                };
                let sent = match (kind.as_slice(), &worker) {
                    (b"ready", _) => {
                        worker = Some(from);
                        continue;
                    }
                    // A request from a client: to the worker, naming the client.
                    (b"req", Some(w)) => {
                        let head = [w.clone(), from];
                        router.send_multipart(head.into_iter().chain(frames), 0)
                    }
                    // A reply from the worker: `[client, i, payload]` to the client.
                    (b"rep", _) => router.send_multipart(frames, 0),
                    (b"stop", Some(w)) => {
                        // Delivered after the socket closes: the context waits for it.
                        let _ = router.set_linger(1000);
                        let _ = router.send_multipart([w.clone(), b"stop".to_vec()], 0);
                        return;
                    }
                    (b"stop", None) => return,
                    _ => continue,
                };
                if sent.is_err() {
                    return;
                }
            }
        })?;
    Ok((tcp, inproc, thread))
}

/// The worker: answers each request `[client, i, payload]` with `[rep, client, i, payload]`.
fn worker(context: &zmq::Context, endpoint: &str) -> anyhow::Result<JoinHandle<()>> {
    let dealer = context.socket(zmq::DEALER)?;
    dealer.set_linger(0)?;
    dealer.connect(endpoint)?;
    dealer.send("ready", 0)?;
    Ok(std::thread::Builder::new()
        .name("raw-libzmq-worker".into())
        .spawn(move || {
            while let Ok(msg) = dealer.recv_multipart(0) {
                if msg.first().map(Vec::as_slice) == Some(b"stop") {
                    return;
                }
                let reply = std::iter::once(b"rep".to_vec()).chain(msg);
                if dealer.send_multipart(reply, 0).is_err() {
                    return;
                }
            }
        })?)
}

/// `n` round trips with `inflight` outstanding; each one's latency.
fn closed_loop(
    client: &zmq::Socket,
    n: usize,
    inflight: usize,
    body: &[u8],
) -> anyhow::Result<Vec<Duration>> {
    let mut started = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    let send = |started: &mut Vec<Instant>| {
        let i = started.len() as u64;
        started.push(Instant::now());
        let parts: [&[u8]; 3] = [b"req", &i.to_le_bytes(), body];
        client.send_multipart(parts, 0)
    };
    while started.len() < inflight.clamp(1, n.max(1)) {
        send(&mut started)?;
    }
    while lat.len() < n {
        let reply = client.recv_multipart(0)?;
        let i = reply
            .first()
            .and_then(|f| <[u8; 8]>::try_from(f.as_slice()).ok())
            .map(u64::from_le_bytes)
            .context("a reply without its number")?;
        let t0 = started.get(i as usize).context("a reply to no request")?;
        lat.push(t0.elapsed());
        if started.len() < n {
            send(&mut started)?;
        }
    }
    Ok(lat)
}

/// The loop on blocking threads; call it where blocking is allowed.
pub(crate) fn run(
    url: &str,
    tasks: usize,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    let context = zmq::Context::new();
    let (tcp, inproc, device) = device(&context)?;
    let worker = worker(&context, &tcp)?;
    let brokerless = super::brokerless(url);
    let client = context.socket(zmq::DEALER)?;
    client.set_linger(0)?;
    client.connect(if brokerless { &inproc } else { &tcp })?;
    // Let the worker's announcement reach the device first.
    std::thread::sleep(Duration::from_millis(100));

    let body = vec![b'x'; payload];
    closed_loop(&client, 200.min(tasks), inflight, &body)?; // warm-up
    let meter = Meter::start();
    let lat = closed_loop(&client, tasks, inflight, &body)?;
    let sample = meter.sample(lat);

    client.send("stop", 0)?;
    device
        .join()
        .map_err(|_| anyhow::anyhow!("raw libzmq device thread panicked"))?;
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("raw libzmq worker thread panicked"))?;
    let name = format!("raw libzmq threads{}", crate::url_tags(url));
    Ok(Report::new(name, inflight, sample))
}
