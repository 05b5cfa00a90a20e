//! [`Link`]: a peer's WebSocket to the hub, kept up by one I/O task that reconnects with
//! backoff. On every new connection it says hello, subscribes and consumes again, sends
//! again the requests the old connection left unanswered, and once the hub confirms the
//! restore, reports a gap to every subscription so clients dispatch again what they may
//! have missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_core::kit::{Gate, Outlet, Retry, SettleOnce};
use aether_core::{Bytes, Delivery, Error, InvalidMessage, Message, Received, Result, Topic};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message as WsMessage, http::HeaderValue};

use crate::config::{FRAME_OVERHEAD, WsConfig, socket_config};
use crate::error::WsError;
use crate::tls::Stream;
use crate::wire::{QueueSpec, Refusal, ToHub, ToPeer, WireCaps, decode, encode};

type Ws = WebSocketStream<Stream>;

/// What the I/O task writes.
#[derive(Debug)]
pub(crate) enum Out {
    /// The pending request `req` (its frame is in `State::pending`).
    Request(u64),
    /// A frame for connection `epoch` only (a settle), or for any (`None`).
    Frame(Option<u64>, Bytes),
    Stop,
}

#[derive(Debug)]
pub(crate) struct LocalSub {
    pub(crate) filter: String,
    pub(crate) tx: mpsc::Sender<Received>,
    pub(crate) gaps: watch::Sender<u64>,
}

#[derive(Debug)]
pub(crate) struct LocalConsumer {
    pub(crate) queue: QueueSpec,
    pub(crate) prefetch: u32,
    pub(crate) lease_ms: u64,
    pub(crate) max_deliveries: u32,
    pub(crate) outlet: Outlet,
}

#[derive(Debug)]
struct Pending {
    frame: Bytes,
    /// The connection it was last written on.
    written: Option<u64>,
    tx: oneshot::Sender<Result<()>>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) subs: HashMap<u64, LocalSub>,
    pub(crate) consumers: HashMap<u64, LocalConsumer>,
    pending: HashMap<u64, Pending>,
    /// The connection (1 for the first), and the last broadcast number on it.
    epoch: u64,
    seq: u64,
    /// The `Sync` that ends the restore of a reconnection.
    restore: Option<u64>,
    caps: Option<WireCaps>,
}

/// A peer's connection to the hub, shared by the transport, its guards and ackers.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) config: WsConfig,
    /// For `wss://`: the roots trusted and the host name checked.
    tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) gate: Gate,
    pub(crate) state: Mutex<State>,
    out: mpsc::Sender<Out>,
    ids: AtomicU64,
    /// The connection epoch once welcomed (0 before).
    welcomed: watch::Sender<u64>,
    /// Frames from the hub that did not decode, and error frames it sent.
    pub(crate) malformed: AtomicU64,
    /// Connections made (1 + reconnections).
    pub(crate) connections: AtomicU64,
}

impl Link {
    /// Opens the first connection, then starts the I/O task and waits for the hub's
    /// welcome. A first connection that cannot be made fails at once, with its reason
    /// (nothing listening, a certificate not trusted, a refused upgrade), as the other
    /// adapters' first connections do; later losses are retried with backoff.
    pub(crate) async fn connect(config: WsConfig) -> Result<Arc<Link>> {
        config.validate()?;
        let tls = match config.tls {
            true => Some(crate::tls::client_config(config.tls_ca.as_deref())?),
            false => None,
        };
        let first = open(&config, tls.as_ref()).await?;
        let (out, out_rx) = mpsc::channel(4096);
        let link = Arc::new(Link {
            gate: Gate::new(config.max_payload),
            tls,
            config,
            state: Mutex::new(State::default()),
            out,
            ids: AtomicU64::new(1),
            welcomed: watch::Sender::new(0),
            malformed: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        tokio::spawn(io(link.clone(), out_rx, first));
        let mut welcomed = link.welcomed.subscribe();
        let wait = welcomed.wait_for(|e| *e != 0);
        if !matches!(
            tokio::time::timeout(link.config.operation_timeout, wait).await,
            Ok(Ok(_))
        ) {
            link.stop();
            return Err(WsError::Unreachable(format!(
                "no welcome from {} within {:?}: is it an aether-ws hub?",
                link.config.endpoint(),
                link.config.operation_timeout
            ))
            .into());
        }
        Ok(link)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// The hub backend's capabilities, as welcomed.
    pub(crate) fn caps(&self) -> Option<WireCaps> {
        lock(&self.state).caps.clone()
    }

    /// The current connection.
    pub(crate) fn epoch(&self) -> u64 {
        lock(&self.state).epoch
    }

    async fn queue(&self, item: Out) -> Result<()> {
        let send = self.out.send(item);
        match tokio::time::timeout(self.config.operation_timeout, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout("ws send")),
        }
    }

    /// Queues a frame without an answer.
    pub(crate) async fn send(&self, epoch: Option<u64>, frame: &ToHub) -> Result<()> {
        self.queue(Out::Frame(epoch, encode(frame))).await
    }

    /// Queues a frame without waiting (from `Drop`): when the queue is full, a task sends it.
    pub(crate) fn send_soon(&self, epoch: Option<u64>, frame: &ToHub) {
        let item = Out::Frame(epoch, encode(frame));
        if let Err(mpsc::error::TrySendError::Full(item)) = self.out.try_send(item) {
            let out = self.out.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { out.send(item).await });
            }
        }
    }

    /// Sends a request and waits for the hub's answer, across reconnections, up to the
    /// operation timeout.
    pub(crate) async fn request(&self, make: impl FnOnce(u64) -> ToHub) -> Result<()> {
        self.gate.check_open()?;
        let req = self.next_id();
        let (tx, rx) = oneshot::channel();
        let frame = encode(&make(req));
        lock(&self.state).pending.insert(
            req,
            Pending {
                frame,
                written: None,
                tx,
            },
        );
        let answered = async {
            self.queue(Out::Request(req)).await?;
            rx.await.map_err(|_| Error::Closed)?
        };
        match tokio::time::timeout(self.config.operation_timeout, answered).await {
            Ok(answer) => {
                if answer.is_err() {
                    lock(&self.state).pending.remove(&req);
                }
                answer
            }
            Err(_) => {
                lock(&self.state).pending.remove(&req);
                Err(Error::Timeout("ws request to the hub"))
            }
        }
    }

    /// Ends the I/O task; ends subscriptions, consumers and requests.
    pub(crate) fn stop(&self) {
        self.gate.close();
        let _ = self.out.try_send(Out::Stop);
        let mut state = lock(&self.state);
        state.subs.clear();
        state.consumers.clear();
        state.pending.clear();
    }

    /// One frame from the hub.
    fn on_frame(self: &Arc<Self>, bytes: &[u8], epoch: u64) {
        let frame = match decode::<ToPeer>(bytes) {
            Ok(f) => f,
            Err(e) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "undecodable frame from the hub dropped");
                return;
            }
        };
        let mut state = lock(&self.state);
        match frame {
            ToPeer::Welcome { caps, .. } => {
                state.caps = Some(caps);
                drop(state);
                self.welcomed.send_replace(epoch);
            }
            ToPeer::Ok { req } => {
                if state.restore == Some(req) {
                    state.restore = None;
                    gap_all(&state);
                } else if let Some(p) = state.pending.remove(&req) {
                    let _ = p.tx.send(Ok(()));
                }
            }
            ToPeer::Refused {
                req,
                why,
                limit,
                text,
            } => {
                if let Some(p) = state.pending.remove(&req) {
                    let e = match why {
                        Refusal::QueueFull => Error::QueueFull { limit },
                        Refusal::Unsupported => Error::unsupported("ws", text),
                        Refusal::Closed => Error::Closed,
                        _ => WsError::Refused(text).into(),
                    };
                    let _ = p.tx.send(Err(e));
                } else {
                    tracing::warn!(%text, "the hub refused restoring a subscription or consumer");
                }
            }
            ToPeer::Message {
                sub,
                seq,
                topic,
                payload,
            } => {
                if seq != state.seq + 1 {
                    gap_all(&state);
                }
                state.seq = seq;
                let Some(local) = state.subs.get(&sub) else {
                    return;
                };
                let payload = Bytes::from(payload);
                let item = match topic.parse::<Topic>() {
                    Ok(topic) => Ok(Message { topic, payload }),
                    Err(error) => Err(InvalidMessage {
                        raw_topic: topic,
                        payload,
                        error,
                    }),
                };
                if local.tx.try_send(item).is_err() {
                    local.gaps.send_modify(|g| *g += 1);
                }
            }
            ToPeer::Delivery {
                consumer,
                tag,
                redeliveries,
                topic,
                payload,
            } => {
                let settle = crate::transport::WsSettle::new(self.clone(), epoch, tag);
                let acker = SettleOnce::new(settle, None);
                let payload = Bytes::from(payload);
                let Some(local) = state.consumers.get(&consumer) else {
                    return; // dropped unsettled: the acker gives it back
                };
                match topic.parse::<Topic>() {
                    Ok(topic) => {
                        let d = Delivery::new(topic, payload, redeliveries, Box::new(acker));
                        // A full or closed outlet drops it, which gives it back.
                        let _ = local.outlet.deliver(d);
                    }
                    Err(error) => {
                        self.malformed.fetch_add(1, Ordering::Relaxed);
                        local.outlet.report(InvalidMessage {
                            raw_topic: topic,
                            payload,
                            error,
                        });
                    }
                }
            }
            ToPeer::Error { text } => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%text, "the hub could not take a frame");
            }
        }
    }

    /// The frames that restore a new connection: hello, subscriptions, consumers, the
    /// `Sync` that ends the restore (for a reconnection), the requests left unanswered.
    fn restore(&self, epoch: u64) -> Vec<Bytes> {
        let mut state = lock(&self.state);
        state.epoch = epoch;
        state.seq = 0;
        let mut frames = vec![encode(&ToHub::Hello)];
        if epoch == 1 {
            return frames;
        }
        for (sub, l) in &state.subs {
            let req = self.next_id();
            frames.push(encode(&ToHub::Subscribe {
                req,
                sub: *sub,
                filter: l.filter.clone(),
            }));
        }
        for (consumer, l) in &state.consumers {
            frames.push(encode(&ToHub::Consume {
                req: self.next_id(),
                consumer: *consumer,
                queue: l.queue.clone(),
                prefetch: l.prefetch,
                lease_ms: l.lease_ms,
                max_deliveries: l.max_deliveries,
            }));
        }
        let sync = self.next_id();
        state.restore = Some(sync);
        frames.push(encode(&ToHub::Sync { req: sync }));
        let mut again: Vec<(&u64, &mut Pending)> = state
            .pending
            .iter_mut()
            .filter(|(_, p)| p.written.is_some())
            .collect();
        again.sort_by_key(|(req, _)| **req);
        for (_, p) in again {
            p.written = Some(epoch);
            frames.push(p.frame.clone());
        }
        frames
    }

    /// The frame to write for `item` on connection `epoch`, if any.
    fn frame_for(&self, item: Out, epoch: u64) -> Option<Bytes> {
        match item {
            Out::Request(req) => {
                let mut state = lock(&self.state);
                let p = state.pending.get_mut(&req)?;
                if p.written == Some(epoch) {
                    return None; // resent by the restore already
                }
                p.written = Some(epoch);
                Some(p.frame.clone())
            }
            Out::Frame(Some(e), _) if e != epoch => None,
            Out::Frame(_, bytes) => Some(bytes),
            Out::Stop => None,
        }
    }
}

fn gap_all(state: &State) {
    for s in state.subs.values() {
        s.gaps.send_modify(|g| *g += 1);
    }
}

/// Opens the WebSocket (TCP, TLS for `wss://`, the upgrade with the token as a bearer
/// header), each failure typed: [`WsError::Connect`] where nothing answers,
/// [`WsError::Tls`] for a certificate that does not verify, [`WsError::WebSocket`] for an
/// upgrade the hub refused (401, 403, 503).
async fn open(config: &WsConfig, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Ws> {
    let endpoint = config.endpoint();
    let mut request = endpoint
        .as_str()
        .into_client_request()
        .map_err(|e| ws_err(format!("request for {endpoint}"), e))?;
    if let Some(token) = &config.token {
        let value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| Error::Config("the token is not a valid header value".into()))?;
        request.headers_mut().insert("Authorization", value);
    }
    let ws_config = socket_config(config.max_payload + FRAME_OVERHEAD);
    // An IPv6 host keeps its brackets in the URL, not in a socket address or a TLS name.
    let host = config.host.trim_start_matches('[').trim_end_matches(']');
    let attempt = async {
        let tcp = TcpStream::connect((host, config.port))
            .await
            .map_err(|source| WsError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|_| Error::Config(format!("{host} is not a name TLS can verify")))?;
                let tls = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| match crate::tls::rustls_error(&e) {
                        Some(source) => WsError::Tls {
                            endpoint: endpoint.clone(),
                            source: source.clone(),
                        },
                        None => WsError::Io {
                            what: format!("TLS handshake with {endpoint}"),
                            source: e,
                        },
                    })?;
                Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)))
            }
        };
        let upgrade =
            tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config)).await;
        upgrade
            .map(|(ws, _)| ws)
            .map_err(|e| ws_err(format!("WebSocket upgrade at {endpoint}"), e))
    };
    match tokio::time::timeout(config.operation_timeout, attempt).await {
        Ok(opened) => opened,
        Err(_) => Err(Error::Timeout("ws connect")),
    }
}

fn ws_err(what: String, e: tokio_tungstenite::tungstenite::Error) -> Error {
    WsError::WebSocket {
        what,
        source: Box::new(e),
    }
    .into()
}

/// Keeps the link connected until stopped, starting with the `first` connection.
async fn io(link: Arc<Link>, mut out: mpsc::Receiver<Out>, first: Ws) {
    let mut retry = Retry::new(Duration::from_millis(50), link.config.reconnect_max);
    let mut epoch = 0;
    let mut first = Some(first);
    while !link.gate.is_closed() {
        let ws = match first.take() {
            Some(ws) => ws,
            None => {
                let ws = tokio::select! {
                    ws = open(&link.config, link.tls.as_ref()) => ws,
                    Some(Out::Stop) = out.recv() => break,
                };
                match ws {
                    Ok(ws) => ws,
                    Err(e) => {
                        tracing::debug!(error = %e, "the hub is not reachable; retrying");
                        retry.wait().await;
                        continue;
                    }
                }
            }
        };
        retry.reset();
        epoch += 1;
        if link.connections.fetch_add(1, Ordering::Relaxed) > 0 {
            aether_core::observe::metrics::reconnected("ws");
        }
        if !serve(&link, ws, &mut out, epoch).await {
            break;
        }
        tracing::info!("the connection to the hub was lost; reconnecting");
    }
    link.gate.close();
    let mut state = lock(&link.state);
    state.subs.clear();
    state.consumers.clear();
    state.pending.clear();
}

/// Serves one connection; false once the link is stopped.
async fn serve(link: &Arc<Link>, ws: Ws, out: &mut mpsc::Receiver<Out>, epoch: u64) -> bool {
    let (mut sink, mut stream) = ws.split();
    for frame in link.restore(epoch) {
        if sink.feed(WsMessage::Binary(frame)).await.is_err() {
            return true;
        }
    }
    if sink.flush().await.is_err() {
        return true;
    }
    let heartbeat = link.config.heartbeat;
    let mut ping = tokio::time::interval(heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            item = out.recv() => {
                let Some(item) = item else { return false };
                if matches!(item, Out::Stop) {
                    let _ = sink.close().await;
                    return false;
                }
                let mut items = vec![item];
                while items.len() < 256 {
                    match out.try_recv() {
                        Ok(Out::Stop) => {
                            let _ = sink.close().await;
                            return false;
                        }
                        Ok(more) => items.push(more),
                        Err(_) => break,
                    }
                }
                for item in items {
                    if let Some(frame) = link.frame_for(item, epoch) {
                        if sink.feed(WsMessage::Binary(frame)).await.is_err() {
                            return true;
                        }
                    }
                }
                if sink.flush().await.is_err() {
                    return true;
                }
            }
            next = stream.next() => match next {
                Some(Ok(WsMessage::Binary(b))) => {
                    last_heard = tokio::time::Instant::now();
                    link.on_frame(&b, epoch);
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return true,
                Some(Ok(_)) => last_heard = tokio::time::Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > heartbeat * 3 {
                    tracing::warn!("the hub is silent; reconnecting");
                    return true;
                }
                if sink.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                    return true;
                }
            }
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
