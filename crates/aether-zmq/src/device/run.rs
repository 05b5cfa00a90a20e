//! The device's thread: binds the ROUTER, then one loop reads messages, forwards the
//! engine's handouts, beats the heartbeat and sends what [`Core`] produced.

use std::sync::Arc;
use std::time::Duration;

use aether_core::Result;
use aether_core::kit::{QueueEngine, Retry};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tmq::AsZmqSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::Counters;
use super::core::{Core, Outgoing};
use crate::config::ZmqConfig;
use crate::error::{ZmqError, socket_err};
use crate::wire::Batch;

pub(super) struct Setup {
    pub(super) config: ZmqConfig,
    pub(super) inproc: String,
    pub(super) engine: Arc<QueueEngine>,
    pub(super) counters: Arc<Counters>,
    pub(super) stopped: watch::Receiver<bool>,
}

pub(super) fn thread_main(setup: Setup, bound: std::sync::mpsc::Sender<Result<String>>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = bound.send(Err(ZmqError::Device(e.to_string()).into()));
            return;
        }
    };
    rt.block_on(async move {
        let router = match bind(&setup.config, &setup.inproc).await {
            Ok((router, endpoint)) => {
                let _ = bound.send(Ok(endpoint));
                router
            }
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        };
        serve(router, setup).await;
    });
}

/// Binds the ROUTER on the TCP endpoint (retrying while a stopped device still holds it)
/// and the in-process one; returns the TCP endpoint bound.
async fn bind(config: &ZmqConfig, inproc: &str) -> Result<(tmq::router::Router, String)> {
    let endpoint = config.endpoint();
    let deadline = Instant::now() + Duration::from_secs(2);
    let router = loop {
        let mut builder = tmq::router(super::context());
        if let Some(secret) = &config.curve_secret_key {
            let secret = crate::curve::decode_key("curve_secret_key", secret.expose())?;
            builder = builder.set_curve_server(true).set_curve_secretkey(&secret);
            if !config.curve_clients.is_empty() {
                // The ZAP handler admits only the listed keys for this domain.
                crate::curve::allow(inproc, &config.curve_clients)?;
                builder = builder.set_zap_domain(inproc);
            }
        }
        let attempt = builder
            .set_linger(0)
            .set_maxmsgsize(config.max_message())
            .set_sndhwm(config.hwm as i32)
            .set_rcvhwm(config.hwm as i32)
            .bind(&endpoint);
        match attempt {
            Ok(r) => break r,
            Err(tmq::TmqError::Zmq(zmq::Error::EADDRINUSE)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(socket_err(format!("bind {endpoint}"), e)),
        }
    };
    // Unroutable and full peers are errors to handle (EHOSTUNREACH, EAGAIN), not silent
    // drops; a peer reconnecting under its routing id takes over its old connection.
    router
        .set_router_mandatory(true)
        .and_then(|()| router.set_router_handover(true))
        .map_err(|e| socket_err("set ROUTER options", e))?;
    let socket = router.get_socket();
    // Read before binding inproc, which becomes the last endpoint.
    let tcp = socket
        .get_last_endpoint()
        .map_err(|e| socket_err("read the bound endpoint", e))?
        .unwrap_or(endpoint);
    socket
        .bind(inproc)
        .map_err(|e| socket_err(format!("bind {inproc}"), e))?;
    Ok((router, tcp))
}

/// Most messages read from the socket in one wake-up before the loop sends what they
/// produced and looks at its other events.
const BATCH: usize = 256;

/// One message from the socket: its routing id, then a batch's frames (not copied).
async fn on_message(core: &mut Core, msg: tmq::Multipart) {
    let mut frames = msg.0.into_iter();
    let Some(id) = frames.next() else {
        return;
    };
    let frames = frames.map(crate::wire::frame).collect();
    core.on_batch(&id, frames, Instant::now()).await;
}

async fn serve(mut router: tmq::router::Router, setup: Setup) {
    let Setup {
        config,
        engine,
        counters,
        mut stopped,
        inproc: setup_inproc,
    } = setup;
    let heartbeat = config.heartbeat;
    let (handouts, mut handed) = mpsc::channel(1024);
    let mut core = Core::new(config, engine, counters.clone(), handouts);
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While messages wait for room, try again this often.
    let mut retry = tokio::time::interval(Duration::from_millis(5));
    // After a failed read, the next one waits (doubling, reset by a read that works).
    let mut failing = Retry::new(Duration::from_millis(1), Duration::from_millis(500));
    loop {
        let backlog = core.has_backlog();
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            next = router.next() => match next {
                Some(Ok(msg)) => {
                    failing.reset();
                    on_message(&mut core, msg).await;
                    // Take what else the socket holds in one go, then send once.
                    for _ in 1..BATCH {
                        match router.next().now_or_never() {
                            Some(Some(Ok(msg))) => on_message(&mut core, msg).await,
                            _ => break,
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "device socket read failed");
                    failing.wait().await;
                }
                None => break,
            },
            Some(h) = handed.recv() => {
                core.on_handout(h);
                // Take what else is ready in one go.
                while let Ok(h) = handed.try_recv() {
                    core.on_handout(h);
                }
            }
            _ = tick.tick() => core.on_tick(Instant::now()),
            _ = retry.tick(), if backlog => {
                let again = core.take_backlog();
                send_all(&router, &mut core, &counters, again);
            }
        }
        let out = core.take_out();
        send_all(&router, &mut core, &counters, out);
    }
    core.drop_all();
    crate::curve::forget(&setup_inproc);
}

/// Sends without blocking, one ZeroMQ message per peer (or a few, past a batch's size): a
/// message the socket cannot take now (the peer's queue is full, or it is reconnecting)
/// goes back to its peer's outbox when it must not be lost, and is dropped and counted
/// otherwise.
fn send_all(
    router: &tmq::router::Router,
    core: &mut Core,
    counters: &Counters,
    mut out: Vec<Outgoing>,
) {
    let socket = router.get_socket();
    // Each peer's messages together, in their order.
    out.sort_by(|a, b| a.to.cmp(&b.to));
    let mut out = out.into_iter().peekable();
    while let Some(first) = out.next() {
        let to = first.to.clone();
        // Keep a peer's order: once one of its messages waits, the rest wait behind it.
        let mut blocked = core.is_held_back(&to);
        let mut batch = Batch::default();
        let mut inside = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            if !blocked {
                msg.msg.encode(&mut batch);
                inside.push(msg);
            } else {
                hold_or_drop(core, counters, msg);
            }
            next = out.next_if(|m| m.to == to);
            if !batch.is_empty() && (batch.is_full() || next.is_none()) {
                let full = std::mem::take(&mut batch);
                if let Err(e) = send(socket, &to, full) {
                    if !matches!(e, zmq::Error::EAGAIN | zmq::Error::EHOSTUNREACH) {
                        tracing::warn!(error = %e, "device send failed");
                    }
                    blocked = true;
                    for msg in inside.drain(..) {
                        hold_or_drop(core, counters, msg);
                    }
                }
                inside.clear();
            }
        }
    }
}

/// A message the socket did not take: held back when it must not be lost, else counted.
fn hold_or_drop(core: &mut Core, counters: &Counters, msg: Outgoing) {
    if msg.reliable {
        core.hold_back(msg);
    } else {
        Counters::bump(&counters.broadcasts_dropped);
    }
}

fn send(socket: &zmq::Socket, to: &Bytes, batch: Batch) -> std::result::Result<(), zmq::Error> {
    let flags = zmq::DONTWAIT;
    socket.send(&to[..], flags | zmq::SNDMORE)?;
    let (body, ext) = batch.into_frames();
    let more = if ext.is_empty() { 0 } else { zmq::SNDMORE };
    // The batch frame is handed over, not copied.
    socket.send(zmq::Message::from(body), flags | more)?;
    let last = ext.len().saturating_sub(1);
    for (i, frame) in ext.iter().enumerate() {
        let more = if i < last { zmq::SNDMORE } else { 0 };
        socket.send(&frame[..], flags | more)?;
    }
    Ok(())
}
