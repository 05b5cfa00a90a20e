//! One WebSocket connection on the hub: its reader (frames in order), its writer (the
//! bounded outbox, pings), and what it opened on the backend: subscriptions, consumers,
//! and the deliveries it holds until the peer settles them. When the connection ends,
//! for whatever reason, those deliveries are dropped and the backend gives them back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_core::{
    Bytes, ConsumeOptions, Consumer, DeadLetter, Delivery, Subscription, Topic, TopicFilter,
    WorkQueue,
};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsErr, Message as WsMessage};

use super::http::Prefixed;
use super::outbox::Outbox;
use super::{Shared, bump};
use crate::wire::{Refusal, ToHub, ToPeer, WireCaps, decode};

/// Completes the WebSocket handshake and serves the connection.
pub(crate) async fn upgrade(shared: Arc<Shared>, stream: Prefixed, peer: SocketAddr) {
    let config = crate::config::socket_config(shared.config.max_frame());
    match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
        Ok(ws) => Conn::run(shared, ws).await,
        Err(e) => {
            bump(&shared.counters.bad_frames);
            tracing::debug!(%peer, error = %e, "WebSocket handshake failed");
        }
    }
}

/// Deliveries a connection holds, by tag.
#[derive(Default)]
pub(crate) struct Held {
    map: Mutex<HashMap<u64, Delivery>>,
}

impl Held {
    fn put(&self, tag: u64, d: Delivery) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tag, d);
    }
    fn take(&self, tag: u64) -> Option<Delivery> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&tag)
    }
    fn drain(&self) -> Vec<Delivery> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.drain().map(|(_, d)| d).collect()
    }
}

pub(crate) struct Conn {
    pub(crate) shared: Arc<Shared>,
    pub(crate) out: Arc<Outbox>,
    pub(crate) held: Arc<Held>,
    pub(crate) tasks: JoinSet<()>,
    subs: HashMap<u64, AbortHandle>,
    consumers: HashMap<u64, AbortHandle>,
    /// Seed-protocol subscriptions, by their topic string.
    pub(crate) seed_subs: HashMap<String, super::seed::SeedSub>,
    /// Names this connection where the hub holds work for it across connections.
    pub(crate) id: u64,
    enqueues: mpsc::Sender<(u64, Topic, Bytes)>,
}

/// Why a connection ended.
enum End {
    Closed,
    Expired,
    Stalled,
    TooLarge,
    Broken,
}

impl Conn {
    async fn run(shared: Arc<Shared>, ws: WebSocketStream<Prefixed>) {
        let (sink, mut stream) = ws.split();
        let (outbox, rx) = Outbox::new(shared.config.send_queue);
        let out = Arc::new(outbox);
        let mut tasks = JoinSet::new();
        let heartbeat = shared.config.heartbeat;
        tasks.spawn(write(sink, rx, out.clone(), heartbeat));
        let (enqueues, enqueue_rx) = mpsc::channel(1024);
        tasks.spawn(enqueue_in_order(shared.clone(), out.clone(), enqueue_rx));
        let mut conn = Conn {
            shared: shared.clone(),
            out,
            held: Arc::new(Held::default()),
            tasks,
            subs: HashMap::new(),
            consumers: HashMap::new(),
            seed_subs: HashMap::new(),
            id: shared.next_id(),
            enqueues,
        };
        let c = &shared.counters;
        bump(&c.accepted);
        c.connections.fetch_add(1, Ordering::Relaxed);
        let end = conn.read(&mut stream, heartbeat * 3).await;
        match end {
            End::Expired => bump(&c.expired),
            End::TooLarge => {
                bump(&c.bad_frames);
                let close = CloseFrame {
                    code: CloseCode::Size,
                    reason: "frame larger than the hub's max_payload".into(),
                };
                conn.out.push(WsMessage::Close(Some(close)), &c.stalled);
                // The writer ends after flushing a close frame and says so through `cut`;
                // wait for that (bounded, for a peer that stopped reading) before the
                // connection is dropped.
                let _ = tokio::time::timeout(heartbeat, conn.out.cut.notified()).await;
            }
            End::Closed | End::Stalled | End::Broken => {}
        }
        conn.tasks.shutdown().await;
        for (topic, sub) in conn.seed_subs.drain() {
            if let super::seed::SeedSub::Replies = sub {
                shared.replies.forget(&topic, &conn.out);
            }
        }
        let seed_back = shared.seed_work.release(&shared, conn.id);
        c.given_back.fetch_add(seed_back, Ordering::Relaxed);
        let held = conn.held.drain();
        let n = held.len() as u64;
        drop(held); // unsettled: the backend gives them back
        c.given_back.fetch_add(n, Ordering::Relaxed);
        c.in_flight.fetch_sub(n, Ordering::Relaxed);
        c.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reads frames until the connection ends.
    async fn read(
        &mut self,
        stream: &mut futures::stream::SplitStream<WebSocketStream<Prefixed>>,
        silence: Duration,
    ) -> End {
        let out = self.out.clone();
        loop {
            tokio::select! {
                next = tokio::time::timeout(silence, stream.next()) => match next {
                    Err(_) => return End::Expired,
                    Ok(None) | Ok(Some(Ok(WsMessage::Close(_)))) => return End::Closed,
                    Ok(Some(Ok(WsMessage::Binary(b)))) => self.on_binary(&b).await,
                    Ok(Some(Ok(WsMessage::Text(t)))) => self.on_text(t.as_str()).await,
                    Ok(Some(Ok(_))) => {} // ping, pong: alive
                    Ok(Some(Err(WsErr::Capacity(_)))) => return End::TooLarge,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %e, "WebSocket read failed");
                        return End::Broken;
                    }
                },
                () = out.cut.notified() => return End::Stalled,
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
        }
    }

    async fn on_binary(&mut self, bytes: &[u8]) {
        match decode::<ToHub>(bytes) {
            Ok(frame) => self.on_frame(frame).await,
            Err(e) => self.bad(format!("undecodable frame: {e}")),
        }
    }

    /// A frame the hub cannot take: counted, answered with an error frame.
    pub(crate) fn bad(&self, text: String) {
        bump(&self.shared.counters.bad_frames);
        tracing::debug!(%text, "bad frame");
        self.out
            .frame(&ToPeer::Error { text }, &self.shared.counters.stalled);
    }

    fn answer(&self, req: u64, result: aether_core::Result<()>) {
        answer(&self.out, &self.shared, req, result);
    }

    async fn on_frame(&mut self, frame: ToHub) {
        let backend = self.shared.backend.clone();
        match frame {
            ToHub::Hello => {
                let caps = WireCaps::from(&backend.capabilities());
                let welcome = ToPeer::Welcome {
                    session: self.shared.session,
                    heartbeat_ms: self.shared.config.heartbeat.as_millis() as u64,
                    caps,
                };
                self.out.frame(&welcome, &self.shared.counters.stalled);
            }
            ToHub::Subscribe { req, sub, filter } => {
                let result = match filter.parse::<TopicFilter>() {
                    Ok(f) => backend.subscribe(&f).await,
                    Err(e) => Err(e.into()),
                };
                let result = result.map(|s| {
                    let task = forward_broadcasts(s, sub, self.out.clone(), self.shared.clone());
                    let handle = self.tasks.spawn(task);
                    if let Some(old) = self.subs.insert(sub, handle) {
                        old.abort();
                    }
                });
                self.answer(req, result);
            }
            ToHub::Unsubscribe { sub } => {
                if let Some(h) = self.subs.remove(&sub) {
                    h.abort();
                }
            }
            ToHub::Publish {
                req,
                topic,
                payload,
            } => {
                let result = match topic.parse::<Topic>() {
                    Ok(t) => backend.publish(&t, Bytes::from(payload)).await,
                    Err(e) => Err(e.into()),
                };
                self.answer(req, result);
            }
            ToHub::Enqueue {
                req,
                topic,
                payload,
            } => match topic.parse::<Topic>() {
                Ok(t) => {
                    let _ = self.enqueues.send((req, t, Bytes::from(payload))).await;
                }
                Err(e) => self.answer(req, Err(e.into())),
            },
            ToHub::Consume {
                req,
                consumer,
                queue,
                prefetch,
                lease_ms,
                max_deliveries,
            } => {
                let q = WorkQueue::new(
                    &queue.union,
                    &queue.job,
                    &queue.task,
                    &queue.context,
                    &queue.workgroup,
                );
                let options = ConsumeOptions::new()
                    .prefetch(prefetch as usize)
                    .lease(Duration::from_millis(lease_ms))
                    .max_deliveries(max_deliveries);
                let result = match q {
                    Ok(q) => backend.consume(&q, options).await,
                    Err(e) => Err(e.into()),
                };
                let result = result.map(|c| {
                    let handle = self.tasks.spawn(forward_deliveries(
                        c,
                        consumer,
                        self.out.clone(),
                        self.held.clone(),
                        self.shared.clone(),
                    ));
                    if let Some(old) = self.consumers.insert(consumer, handle) {
                        old.abort();
                    }
                });
                self.answer(req, result);
            }
            ToHub::Cancel { consumer } => {
                if let Some(h) = self.consumers.remove(&consumer) {
                    h.abort();
                }
            }
            ToHub::Ack { tag } => self.settle(tag, Settlement::Ack).await,
            ToHub::Nack { tag, requeue } => self.settle(tag, Settlement::Nack(requeue)).await,
            ToHub::Reject { tag, reason } => {
                self.settle(tag, Settlement::Reject(reason.into())).await
            }
            ToHub::KeepAlive { tag } => {
                if let Some(mut d) = self.held.take(tag) {
                    if let Err(e) = d.keep_alive().await {
                        tracing::debug!(error = %e, "keep-alive failed on the backend");
                    }
                    self.held.put(tag, d);
                }
            }
            ToHub::DeadLetter {
                req,
                topic,
                payload,
                reason,
            } => {
                let letter = DeadLetter {
                    topic,
                    payload: Bytes::from(payload),
                    reason: reason.into(),
                };
                let result = backend.dead_letter(letter).await;
                self.answer(req, result);
            }
            ToHub::Sync { req } => self.answer(req, Ok(())),
        }
    }

    async fn settle(&mut self, tag: u64, how: Settlement) {
        let Some(d) = self.held.take(tag) else {
            // Settled already, or from an earlier connection: the backend gave it back.
            return;
        };
        self.shared
            .counters
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
        let result = match how {
            Settlement::Ack => d.ack().await,
            Settlement::Nack(requeue) => d.nack(requeue).await,
            Settlement::Reject(reason) => d.reject(reason).await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e.error, "settling a delivery on the backend failed");
        }
    }
}

enum Settlement {
    Ack,
    Nack(bool),
    Reject(aether_core::DeadLetterReason),
}

pub(crate) fn answer(out: &Outbox, shared: &Shared, req: u64, result: aether_core::Result<()>) {
    let frame = match result {
        Ok(()) => ToPeer::Ok { req },
        Err(e) => {
            let (why, limit) = Refusal::of(&e);
            ToPeer::Refused {
                req,
                why,
                limit,
                text: e.to_string(),
            }
        }
    };
    out.frame(&frame, &shared.counters.stalled);
}

/// Enqueues one connection's performs in the order sent, without holding up its reader
/// (a full queue makes the backend wait for room; acks must still get through).
async fn enqueue_in_order(
    shared: Arc<Shared>,
    out: Arc<Outbox>,
    mut rx: mpsc::Receiver<(u64, Topic, Bytes)>,
) {
    while let Some((req, topic, payload)) = rx.recv().await {
        let result = shared.backend.enqueue(&topic, payload).await;
        answer(&out, &shared, req, result);
    }
}

/// Forwards a backend subscription to the peer as numbered messages; a gap the backend
/// reports skips a number, so the peer sees it too.
async fn forward_broadcasts(mut s: Subscription, sub: u64, out: Arc<Outbox>, shared: Arc<Shared>) {
    let stalled = &shared.counters.stalled;
    let mut gaps = s.gaps();
    loop {
        let gap = async {
            match gaps.as_mut() {
                Some(g) => g.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = s.next() => {
                let queued = match next {
                    None => return,
                    Some(Ok(m)) => out.message(sub, m.topic.to_string(), &m.payload, stalled),
                    Some(Err(bad)) => out.message(sub, bad.raw_topic, &bad.payload, stalled),
                };
                if !queued {
                    return;
                }
            }
            open = gap => {
                if open {
                    out.skip();
                } else {
                    gaps = None;
                }
            }
        }
    }
}

/// Forwards a backend consumer's deliveries to the peer, holding each until settled.
async fn forward_deliveries(
    mut c: Consumer,
    consumer: u64,
    out: Arc<Outbox>,
    held: Arc<Held>,
    shared: Arc<Shared>,
) {
    let counters = &shared.counters;
    counters.consumers.fetch_add(1, Ordering::Relaxed);
    let _gone = scopeguard(|| {
        shared.counters.consumers.fetch_sub(1, Ordering::Relaxed);
    });
    while let Some(next) = c.next().await {
        let Ok(d) = next else { continue }; // the backend dead-lettered it
        let tag = shared.next_id();
        let frame = ToPeer::Delivery {
            consumer,
            tag,
            redeliveries: d.redeliveries,
            topic: d.topic.to_string(),
            payload: d.payload.to_vec(),
        };
        held.put(tag, d);
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        if !out.frame(&frame, &counters.stalled) {
            return;
        }
    }
}

/// Runs `f` when dropped (a task aborted runs it too).
pub(crate) fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Writes the outbox to the socket, batching what is queued, and pings every heartbeat.
async fn write(
    mut sink: futures::stream::SplitSink<WebSocketStream<Prefixed>, WsMessage>,
    mut rx: mpsc::Receiver<WsMessage>,
    out: Arc<Outbox>,
    heartbeat: Duration,
) {
    let mut ping = tokio::time::interval(heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = ping.tick() => Some(WsMessage::Ping(Bytes::new())),
        };
        let Some(msg) = msg else { break };
        let closing = matches!(msg, WsMessage::Close(_));
        if sink.feed(msg).await.is_err() {
            break;
        }
        while let Ok(more) = rx.try_recv() {
            if sink.feed(more).await.is_err() {
                break;
            }
        }
        if sink.flush().await.is_err() || closing {
            break;
        }
    }
    // The connection cannot be written to: end it.
    out.cut.notify_one();
}
