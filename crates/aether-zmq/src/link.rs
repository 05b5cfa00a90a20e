//! [`Link`]: one DEALER connection to the device, its I/O task and what it dispatches:
//! broadcasts to local subscriptions, deliveries to local consumers, answers to waiting
//! requests. It notices a new device session (the device restarted, or forgot this peer
//! after a silence), subscribes and consumes again, then reports the gap.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use aether_core::kit::{Fanout, Gate, Outlet, Retry};
use aether_core::{Error, Message, Result, Topic, TopicFilter};
use bytes::Bytes;
use futures::{FutureExt, Sink, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ZmqConfig;
use crate::error::{ZmqError, socket_err};
use crate::wire::{Batch, Refusal, ToDevice, ToPeer};

/// What the I/O task sends.
#[derive(Debug)]
pub(crate) enum Out {
    /// A message, sent in one batch with what else is queued.
    Msg(ToDevice),
    /// Send what is queued before this, then end.
    Stop,
}

/// A consumer of this connection, to announce again in a new session.
#[derive(Debug)]
pub(crate) struct Local {
    pub(crate) queue: String,
    pub(crate) prefetch: u32,
    pub(crate) outlet: Outlet,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) fanout: Fanout,
    pub(crate) subs: HashMap<u64, TopicFilter>,
    pub(crate) consumers: HashMap<u64, Local>,
    pending: HashMap<u64, oneshot::Sender<Result<()>>, foldhash::fast::RandomState>,
    /// The device's session for this connection; 0 before the first welcome.
    session: u64,
    /// The number of the last broadcast received in this session.
    seq: u64,
}

/// A connection to the device, shared by the transport, its guards and its ackers.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) config: ZmqConfig,
    pub(crate) gate: Gate,
    pub(crate) state: Mutex<State>,
    out: mpsc::Sender<Out>,
    ids: AtomicU64,
    /// The current session, once welcomed.
    session: watch::Sender<u64>,
    /// Messages from the device that did not decode.
    pub(crate) malformed: AtomicU64,
    /// The heartbeat interval in ms: the device's, once welcomed.
    heartbeat_ms: AtomicU64,
}

impl Link {
    /// Connects a DEALER to `endpoint` and waits for the device's welcome.
    pub(crate) async fn connect(endpoint: &str, config: ZmqConfig) -> Result<Arc<Link>> {
        let routing_id = routing_id();
        let mut builder = tmq::dealer(crate::device::context());
        if let Some(server) = config
            .curve_server_key
            .as_deref()
            .filter(|_| endpoint.starts_with("tcp://"))
        {
            let server = crate::curve::decode_key("curve_server_key", server)?;
            let own = match (&config.curve_public_key, &config.curve_secret_key) {
                (Some(public), Some(secret)) => crate::curve::CurveKeys {
                    public: public.clone(),
                    secret: secret.clone(),
                },
                _ => crate::curve::CurveKeys::generate()?,
            };
            let public = crate::curve::decode_key("curve_public_key", &own.public)?;
            let secret = crate::curve::decode_key("curve_secret_key", own.secret.expose())?;
            builder = builder
                .set_curve_serverkey(&server)
                .set_curve_publickey(&public)
                .set_curve_secretkey(&secret);
        }
        let dealer = builder
            .set_identity(&routing_id)
            .set_linger(500)
            .set_sndhwm(config.hwm as i32)
            .set_rcvhwm(config.hwm as i32)
            .set_maxmsgsize(config.max_message())
            .set_reconnect_ivl(50)
            .set_reconnect_ivl_max(1000)
            .connect(endpoint)
            .map_err(|e| socket_err(format!("connect {endpoint}"), e))?;
        let (out, out_rx) = mpsc::channel(4096);
        let config_heartbeat_ms = config.heartbeat.as_millis() as u64;
        let link = Arc::new(Link {
            gate: Gate::new(config.max_payload),
            config,
            state: Mutex::new(State::default()),
            out,
            ids: AtomicU64::new(1),
            session: watch::Sender::new(0),
            malformed: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(config_heartbeat_ms),
        });
        tokio::spawn(io(link.clone(), dealer, out_rx));
        link.send(ToDevice::Hello).await?;
        let mut session = link.session.subscribe();
        let welcomed =
            tokio::time::timeout(link.config.operation_timeout, session.wait_for(|s| *s != 0))
                .await;
        if !matches!(welcomed, Ok(Ok(_))) {
            link.stop();
            return Err(Error::transport(
                crate::error::BACKEND,
                ZmqError::Device(format!(
                    "no aether-zmq device answered at {endpoint} within {:?}; start one \
                     (aether-zmq-device, or a transport with bind=true){}",
                    link.config.operation_timeout,
                    if link.config.curve_server_key.is_some() {
                        ", and check the CURVE keys (curve_server_key must be the device's \
                         public key, and the device must admit this client's key)"
                    } else {
                        ""
                    }
                )),
            ));
        }
        Ok(link)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues `msg` for the device, waiting for room up to the operation timeout.
    pub(crate) async fn send(&self, msg: ToDevice) -> Result<()> {
        let send = self.out.send(Out::Msg(msg));
        match tokio::time::timeout(self.config.operation_timeout, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout("zmq send")),
        }
    }

    /// Queues `msg` without waiting (from `Drop`): when the queue is full, a task sends it.
    pub(crate) fn send_soon(&self, msg: ToDevice) {
        if let Err(mpsc::error::TrySendError::Full(frames)) = self.out.try_send(Out::Msg(msg)) {
            let out = self.out.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { out.send(frames).await });
            }
        }
    }

    /// Sends a request and waits for the device's answer.
    pub(crate) async fn request(&self, make: impl FnOnce(u64) -> ToDevice) -> Result<()> {
        let req = self.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.state).pending.insert(req, tx);
        let sent = self.send(make(req)).await;
        if let Err(e) = sent {
            lock(&self.state).pending.remove(&req);
            return Err(e);
        }
        match tokio::time::timeout(self.config.operation_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                lock(&self.state).pending.remove(&req);
                Err(Error::Timeout("zmq request to the device"))
            }
        }
    }

    /// The sender ackers use.
    pub(crate) fn sender(&self) -> mpsc::Sender<Out> {
        self.out.clone()
    }

    /// Ends the I/O task after what is queued; ends subscriptions, consumers and requests.
    pub(crate) fn stop(&self) {
        let _ = self.out.try_send(Out::Stop);
        let mut state = lock(&self.state);
        state.fanout.clear();
        state.subs.clear();
        state.consumers.clear();
        state.pending.clear();
    }

    /// One ZeroMQ message from the device: a batch.
    fn on_batch(self: &Arc<Self>, frames: Vec<Bytes>) {
        let mut state = lock(&self.state);
        for msg in ToPeer::decode(frames) {
            match msg {
                Ok(msg) => self.on_message(&mut state, msg),
                Err(e) => {
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "malformed message from the device dropped");
                }
            }
        }
    }

    /// One message from the device.
    fn on_message(self: &Arc<Self>, state: &mut State, msg: ToPeer) {
        match msg {
            ToPeer::Welcome {
                session,
                heartbeat_ms,
                ..
            } => {
                // The device's interval wins: it declares this connection dead after 3.
                let ms = u64::from(heartbeat_ms).max(10);
                self.heartbeat_ms.store(ms, Ordering::Relaxed);
                self.on_session(state, session, 0);
            }
            ToPeer::Heartbeat { session, seq } => {
                if session != state.session {
                    self.on_session(state, session, seq);
                } else if seq > state.seq {
                    // The last broadcasts sent were lost.
                    state.seq = seq;
                    state.fanout.gap_all();
                }
            }
            ToPeer::Broadcast {
                seq,
                topic,
                payload,
            } => {
                if seq != state.seq + 1 {
                    state.fanout.gap_all();
                }
                state.seq = seq;
                match topic.parse::<Topic>() {
                    Ok(topic) => {
                        let msg = Ok(Message {
                            topic: topic.clone(),
                            payload,
                        });
                        state.fanout.offer(&topic, &msg);
                    }
                    Err(e) => {
                        self.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%topic, error = %e, "broadcast on an invalid topic dropped");
                    }
                }
            }
            ToPeer::Delivery {
                session,
                consumer,
                delivery,
                redeliveries,
                topic,
                payload,
            } => {
                let settle = crate::transport::ZmqSettle::new(self.sender(), session, delivery);
                let acker = aether_core::kit::SettleOnce::new(settle, None);
                let Ok(topic) = topic.parse::<Topic>() else {
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                    return; // dropped unsettled: the acker gives it back
                };
                let d = aether_core::Delivery::new(topic, payload, redeliveries, Box::new(acker));
                match state.consumers.get(&consumer) {
                    // A full or closed outlet drops it, which gives it back.
                    Some(local) => drop(local.outlet.deliver(d)),
                    None => drop(d),
                }
            }
            ToPeer::Ok { reqs } => {
                for req in reqs {
                    if let Some(tx) = state.pending.remove(&req) {
                        let _ = tx.send(Ok(()));
                    }
                }
            }
            ToPeer::Refused {
                req,
                why,
                limit,
                text,
            } => {
                if let Some(tx) = state.pending.remove(&req) {
                    let e = match why {
                        Refusal::QueueFull => Error::QueueFull { limit },
                        Refusal::TooLarge | Refusal::Invalid => ZmqError::Refused(text).into(),
                    };
                    let _ = tx.send(Err(e));
                }
            }
        }
    }

    /// A session other than the current one: the first, or the device forgot this
    /// connection. Subscribes and consumes again, then reports the gap.
    fn on_session(self: &Arc<Self>, state: &mut State, session: u64, seq: u64) {
        if session == state.session {
            return;
        }
        let first = state.session == 0;
        state.session = session;
        state.seq = seq;
        self.session.send_replace(session);
        if first {
            return;
        }
        // libzmq reconnects TCP by itself; a new session is where the link sees it (the
        // device restarted, or dropped this peer after missed heartbeats).
        aether_core::observe::metrics::reconnected("zmq");
        tracing::info!("the zmq device has a new session for this connection; restoring");
        let subs: Vec<(u64, String)> = state
            .subs
            .iter()
            .map(|(id, f)| (*id, f.as_str().to_owned()))
            .collect();
        let consumers: Vec<(u64, String, u32)> = state
            .consumers
            .iter()
            .map(|(id, l)| (*id, l.queue.clone(), l.prefetch))
            .collect();
        let link = self.clone();
        tokio::spawn(async move {
            let mut restores = Vec::new();
            for (sub, filter) in subs {
                let link = link.clone();
                restores.push(tokio::spawn(async move {
                    link.request(|req| ToDevice::Subscribe { req, sub, filter })
                        .await
                }));
            }
            for (consumer, queue, prefetch) in consumers {
                let link = link.clone();
                restores.push(tokio::spawn(async move {
                    link.request(|req| ToDevice::Ready {
                        req,
                        consumer,
                        prefetch,
                        queue,
                    })
                    .await
                }));
            }
            let mut failed = 0;
            for r in restores {
                if !matches!(r.await, Ok(Ok(()))) {
                    failed += 1;
                }
            }
            if failed > 0 {
                tracing::warn!(
                    failed,
                    "restoring subscriptions and consumers on the zmq device failed"
                );
            }
            // Back (or as far as it goes): whatever was sent meanwhile may be lost.
            lock(&link.state).fanout.gap_all();
        });
    }
}

/// A routing id for a new connection: random, never starting with a zero byte (which
/// ZeroMQ reserves).
fn routing_id() -> Vec<u8> {
    let mut id = vec![b'a'];
    id.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    id
}

/// Most messages read from the socket in one wake-up.
const BATCH: usize = 256;

/// A batch's frames, not copied.
fn frames(msg: tmq::Multipart) -> Vec<Bytes> {
    msg.0.into_iter().map(crate::wire::frame).collect()
}

enum Event {
    In(tmq::Multipart),
    Ping,
    Stop,
    Failed(tmq::TmqError),
}

/// The connection's I/O: one task polls the socket's sending and receiving sides with the
/// same waker (tmq's socket is one object; two tasks would steal each other's wake-ups).
async fn io(link: Arc<Link>, mut dealer: tmq::dealer::Dealer, mut out: mpsc::Receiver<Out>) {
    let mut period = link.config.heartbeat;
    let mut ping = tokio::time::interval(period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a socket error the next attempt waits (doubling, reset by a message read).
    let mut failing = Retry::new(Duration::from_millis(1), Duration::from_millis(500));
    loop {
        let event = poll_fn(|cx| poll_io(cx, &mut dealer, &mut out, &mut ping)).await;
        match event {
            Event::In(msg) => {
                failing.reset();
                link.on_batch(frames(msg));
                // Take what else the socket holds in one go; the next poll registers the
                // wake-up again.
                for _ in 1..BATCH {
                    match dealer.next().now_or_never() {
                        Some(Some(Ok(msg))) => link.on_batch(frames(msg)),
                        _ => break,
                    }
                }
            }
            Event::Ping => {
                let _ = link.out.try_send(Out::Msg(ToDevice::Ping));
                let wanted = Duration::from_millis(link.heartbeat_ms.load(Ordering::Relaxed));
                if wanted != period {
                    period = wanted;
                    ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
            Event::Stop => {
                // Flush what was queued before the stop, for at most a moment.
                let flush =
                    poll_fn(|cx| Sink::<tmq::Multipart>::poll_flush(Pin::new(&mut dealer), cx));
                let _ = tokio::time::timeout(Duration::from_millis(500), flush).await;
                break;
            }
            Event::Failed(e) => {
                tracing::warn!(error = %e, "zmq socket error");
                failing.wait().await;
            }
        }
    }
    link.gate.close();
}

fn poll_io(
    cx: &mut Context<'_>,
    dealer: &mut tmq::dealer::Dealer,
    out: &mut mpsc::Receiver<Out>,
    ping: &mut tokio::time::Interval,
) -> Poll<Event> {
    // Sending: move what is queued into the socket while it takes it, as batches.
    loop {
        match Sink::<tmq::Multipart>::poll_ready(Pin::new(&mut *dealer), cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Event::Failed(e)),
            Poll::Pending => break,
        }
        let mut batch = Batch::default();
        let mut stop = false;
        while !batch.is_full() {
            match out.poll_recv(cx) {
                Poll::Ready(Some(Out::Msg(msg))) => msg.encode(&mut batch),
                Poll::Ready(Some(Out::Stop) | None) => {
                    stop = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if batch.is_empty() && !stop {
            break;
        }
        if !batch.is_empty() {
            let (body, ext) = batch.into_frames();
            let mut msg = tmq::Multipart::default();
            msg.push_back(tmq::Message::from(body));
            for frame in ext {
                msg.push_back(tmq::Message::from(&frame[..]));
            }
            if let Err(e) = Pin::new(&mut *dealer).start_send(msg) {
                return Poll::Ready(Event::Failed(e));
            }
        }
        if stop {
            return Poll::Ready(Event::Stop);
        }
    }
    if let Poll::Ready(Err(e)) = Sink::<tmq::Multipart>::poll_flush(Pin::new(&mut *dealer), cx) {
        return Poll::Ready(Event::Failed(e));
    }
    if ping.poll_tick(cx).is_ready() {
        return Poll::Ready(Event::Ping);
    }
    match Pin::new(&mut *dealer).poll_next(cx) {
        Poll::Ready(Some(Ok(msg))) => Poll::Ready(Event::In(msg)),
        Poll::Ready(Some(Err(e))) => Poll::Ready(Event::Failed(e)),
        Poll::Ready(None) => Poll::Ready(Event::Stop),
        Poll::Pending => Poll::Pending,
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
