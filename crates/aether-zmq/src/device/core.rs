//! [`Core`]: the device's state and what each message does to it, without the socket:
//! batches in, messages to send out ([`Core::take_out`]).

use std::collections::HashMap;
use std::sync::Arc;

use aether_core::kit::QueueEngine;
use aether_core::{DeadLetter, Delivery, Error, Topic, TopicFilter, WorkQueue};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Counters;
use super::peer::{OUTBOX_LIMIT, Peer};
use crate::config::ZmqConfig;
use crate::wire::{OK_IDS, Refusal, ToDevice, ToPeer};

/// Maps keyed by routing ids and numbers: looked up for every message, by ids no peer
/// chooses freely enough to flood a bucket (routing ids are the peers' own, but a peer
/// can only hurt its own lookups), so a fast hash.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A perform an engine consumer handed out for a peer's consumer.
#[derive(Debug)]
pub(crate) struct Handout {
    pub(crate) owner: u64,
    pub(crate) consumer: u64,
    pub(crate) delivery: Delivery,
}

/// A message for a peer.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The peer's routing id.
    pub(crate) to: Bytes,
    pub(crate) msg: ToPeer,
    /// Kept in the peer's outbox when its socket queue is full (deliveries, answers);
    /// otherwise dropped (broadcasts, whose numbers show the gap, and heartbeats).
    pub(crate) reliable: bool,
}

pub(crate) struct Core {
    config: ZmqConfig,
    engine: Arc<QueueEngine>,
    counters: Arc<Counters>,
    handouts: mpsc::Sender<Handout>,
    peers: FastMap<Bytes, Peer>,
    owners: FastMap<u64, Bytes>,
    next_owner: u64,
    out: Vec<Outgoing>,
    /// The requests of the batch being read that were carried out: one `O` at its end.
    oks: Vec<u64>,
}

impl Core {
    pub(crate) fn new(
        config: ZmqConfig,
        engine: Arc<QueueEngine>,
        counters: Arc<Counters>,
        handouts: mpsc::Sender<Handout>,
    ) -> Core {
        Core {
            config,
            engine,
            counters,
            handouts,
            peers: FastMap::default(),
            owners: FastMap::default(),
            next_owner: 1,
            out: Vec::new(),
            oks: Vec::new(),
        }
    }

    /// What to send now.
    pub(crate) fn take_out(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.out)
    }

    /// Whether peer `id` has messages waiting for room (new ones wait behind them).
    pub(crate) fn is_held_back(&self, id: &Bytes) -> bool {
        self.peers.get(id).is_some_and(|p| !p.outbox.is_empty())
    }

    /// Whether some peer has messages waiting for room.
    pub(crate) fn has_backlog(&self) -> bool {
        self.peers.values().any(|p| !p.outbox.is_empty())
    }

    /// A reliable message the socket could not take: into its peer's outbox (the peer is
    /// dropped as dead when that is full).
    pub(crate) fn hold_back(&mut self, msg: Outgoing) {
        let Some(peer) = self.peers.get_mut(&msg.to) else {
            return;
        };
        if peer.outbox.len() >= OUTBOX_LIMIT {
            tracing::warn!(peer = %Peer::label(&msg.to), "a peer's outbox is full; dropping it as dead");
            self.drop_peer(&msg.to);
            return;
        }
        peer.outbox.push_back(msg.msg);
    }

    /// The held-back messages of every peer, oldest first, to try again.
    pub(crate) fn take_backlog(&mut self) -> Vec<Outgoing> {
        let mut all = Vec::new();
        for (id, peer) in self.peers.iter_mut() {
            all.extend(peer.outbox.drain(..).map(|msg| Outgoing {
                to: id.clone(),
                msg,
                reliable: true,
            }));
        }
        all
    }

    fn send(&mut self, to: &Bytes, msg: ToPeer, reliable: bool) {
        self.out.push(Outgoing {
            to: to.clone(),
            msg,
            reliable,
        });
    }

    fn refuse(&mut self, to: &Bytes, req: u64, why: Refusal, limit: u64, text: String) {
        let msg = ToPeer::Refused {
            req,
            why,
            limit,
            text,
        };
        self.send(to, msg, true);
    }

    /// The routing id of peer `id` as the device keeps it, and whether the peer was known:
    /// created (and welcomed) on its first message.
    fn touch(&mut self, id: &[u8], now: Instant) -> (Bytes, bool) {
        if let Some(peer) = self.peers.get_mut(id) {
            peer.last_heard = now;
            return (peer.id.clone(), true);
        }
        let id = Bytes::copy_from_slice(id);
        let owner = self.next_owner;
        self.next_owner += 1;
        let session = uuid::Uuid::new_v4().as_u64_pair().0;
        self.owners.insert(owner, id.clone());
        self.peers
            .insert(id.clone(), Peer::new(id.clone(), owner, session, now));
        self.counters.peers.store(
            self.peers.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::debug!(peer = %Peer::label(&id), "peer joined");
        self.welcome(&id, session);
        (id, false)
    }

    fn welcome(&mut self, id: &Bytes, session: u64) {
        let msg = ToPeer::Welcome {
            session,
            heartbeat_ms: self.config.heartbeat.as_millis().min(u32::MAX as u128) as u32,
            max_payload: self.config.max_payload as u64,
        };
        self.send(id, msg, true);
    }

    /// One ZeroMQ message from peer `id`: its frames after the routing id, a batch. The
    /// requests in it carried out are answered by one `O` after it.
    pub(crate) async fn on_batch(&mut self, id: &[u8], frames: Vec<Bytes>, now: Instant) {
        let (id, mut known) = self.touch(id, now);
        for msg in ToDevice::decode(frames) {
            match msg {
                Ok(msg) => {
                    if !self.on_message(&id, msg, known).await {
                        // It left (bye): what follows in the batch was never meant to be read.
                        break;
                    }
                }
                Err(e) => {
                    Counters::bump(&self.counters.malformed);
                    tracing::debug!(peer = %Peer::label(&id), error = %e, "malformed message dropped");
                }
            }
            known = true;
        }
        if !self.oks.is_empty() {
            let oks = std::mem::take(&mut self.oks);
            for reqs in oks.chunks(OK_IDS) {
                let reqs = reqs.to_vec();
                self.send(&id, ToPeer::Ok { reqs }, true);
            }
            self.oks = oks;
            self.oks.clear();
        }
    }

    /// One message from peer `id` (known before this batch, or not); false when it left.
    async fn on_message(&mut self, id: &Bytes, msg: ToDevice, known: bool) -> bool {
        let Some(peer) = self.peers.get(id) else {
            return false;
        };
        let session = peer.session;
        let id = id.clone();
        match msg {
            // A new peer was welcomed when it was created.
            ToDevice::Hello if known => self.welcome(&id, session),
            ToDevice::Hello => {}
            ToDevice::Ping => {}
            ToDevice::Subscribe { req, sub, filter } => match filter.parse::<TopicFilter>() {
                Ok(filter) => {
                    self.peer(&id).subscribe(sub, filter);
                    self.oks.push(req);
                }
                Err(e) => self.refuse(&id, req, Refusal::Invalid, 0, e.to_string()),
            },
            ToDevice::Unsubscribe { sub } => self.peer(&id).subs.retain(|(s, _)| *s != sub),
            ToDevice::Publish { topic, payload } => self.publish(&id, &topic, payload),
            ToDevice::Enqueue {
                req,
                topic,
                payload,
            } => self.enqueue(&id, req, &topic, payload),
            ToDevice::Ready {
                req,
                consumer,
                prefetch,
                queue,
            } => self.ready(&id, req, consumer, prefetch, &queue),
            ToDevice::Cancel { consumer } => {
                if let Some(task) = self.peer(&id).consumers.remove(&consumer) {
                    task.abort();
                }
            }
            ToDevice::Ack {
                session: s,
                delivery,
            } => {
                if let Some(d) = self.settled(&id, s, delivery) {
                    let _ = d.ack().await;
                }
            }
            ToDevice::Nack {
                session: s,
                delivery,
                requeue,
            } => {
                if let Some(d) = self.settled(&id, s, delivery) {
                    let _ = d.nack(requeue).await;
                }
            }
            ToDevice::Reject {
                session: s,
                delivery,
                reason,
            } => {
                if let Some(d) = self.settled(&id, s, delivery) {
                    let _ = d.reject(reason).await;
                }
            }
            ToDevice::DeadLetter {
                req,
                topic,
                payload,
                reason,
            } => {
                self.engine.dead_letter(DeadLetter {
                    topic,
                    payload,
                    reason,
                });
                self.oks.push(req);
            }
            ToDevice::Bye => {
                self.drop_peer(&id);
                return false;
            }
        }
        true
    }

    fn peer(&mut self, id: &Bytes) -> &mut Peer {
        self.peers.get_mut(id).expect("touched before")
    }

    /// The delivery a settlement names, if it is of the peer's current session.
    fn settled(&mut self, id: &Bytes, session: u64, delivery: u64) -> Option<Delivery> {
        let peer = self.peer(id);
        if peer.session != session {
            return None;
        }
        peer.held.remove(&delivery)
    }

    fn oversized(&self, payload: &Bytes) -> bool {
        if payload.len() > self.config.max_payload {
            Counters::bump(&self.counters.oversized);
            return true;
        }
        false
    }

    fn publish(&mut self, from: &Bytes, topic: &str, payload: Bytes) {
        let Ok(parsed) = topic.parse::<Topic>() else {
            Counters::bump(&self.counters.malformed);
            tracing::debug!(peer = %Peer::label(from), topic, "broadcast on an invalid topic dropped");
            return;
        };
        if self.oversized(&payload) {
            tracing::debug!(peer = %Peer::label(from), topic, "oversized broadcast dropped");
            return;
        }
        for (id, peer) in self.peers.iter_mut() {
            if !peer.wants(&parsed) {
                continue;
            }
            peer.seq += 1;
            let msg = ToPeer::Broadcast {
                seq: peer.seq,
                topic: topic.to_owned(),
                payload: payload.clone(),
            };
            self.out.push(Outgoing {
                to: id.clone(),
                msg,
                reliable: false,
            });
        }
    }

    fn enqueue(&mut self, from: &Bytes, req: u64, topic: &str, payload: Bytes) {
        let parsed = match topic.parse::<Topic>() {
            Ok(t) if t.action() == aether_core::Action::Perform => t,
            Ok(_) => {
                let why = format!("{topic} is not a perform");
                return self.refuse(from, req, Refusal::Invalid, 0, why);
            }
            Err(e) => return self.refuse(from, req, Refusal::Invalid, 0, e.to_string()),
        };
        if self.oversized(&payload) {
            let (size, limit) = (payload.len(), self.config.max_payload);
            let text = format!("payload of {size} bytes over the device's {limit}");
            return self.refuse(from, req, Refusal::TooLarge, limit as u64, text);
        }
        match self.engine.try_enqueue(&parsed, payload) {
            Ok(()) => self.oks.push(req),
            Err(Error::QueueFull { limit }) => {
                Counters::bump(&self.counters.queue_full);
                tracing::warn!(%parsed, limit, "work queue full; perform refused");
                self.refuse(from, req, Refusal::QueueFull, limit, String::new());
            }
            Err(e) => self.refuse(from, req, Refusal::Invalid, 0, e.to_string()),
        }
    }

    fn ready(&mut self, from: &Bytes, req: u64, consumer: u64, prefetch: u32, queue: &str) {
        let parts: Vec<&str> = queue.split('/').collect();
        let parsed = match parts.as_slice() {
            [u, j, t, c, g] => WorkQueue::new(u, j, t, c, g).map_err(|e| e.to_string()),
            _ => Err(format!("{queue:?} is not union/job/task/context/workgroup")),
        };
        let q = match parsed {
            Ok(q) => q,
            Err(why) => return self.refuse(from, req, Refusal::Invalid, 0, why),
        };
        let peer = self.peers.get_mut(from).expect("touched before");
        if !peer.consumers.contains_key(&consumer) {
            let mut engine_consumer = self
                .engine
                .consume(&q, prefetch.max(1) as usize, peer.owner);
            let (owner, handouts) = (peer.owner, self.handouts.clone());
            let task = tokio::spawn(async move {
                while let Some(next) = engine_consumer.next().await {
                    let Ok(delivery) = next else { continue };
                    let handout = Handout {
                        owner,
                        consumer,
                        delivery,
                    };
                    if handouts.send(handout).await.is_err() {
                        return;
                    }
                }
            });
            peer.consumers.insert(consumer, task.abort_handle());
        }
        self.oks.push(req);
    }

    /// A perform for a peer's consumer: held until settled, sent to the peer.
    pub(crate) fn on_handout(&mut self, h: Handout) {
        let Some(id) = self.owners.get(&h.owner).cloned() else {
            // The peer is gone: dropping the delivery gives it back.
            Counters::bump(&self.counters.redelivered);
            return;
        };
        let peer = self.peer(&id);
        if !peer.consumers.contains_key(&h.consumer) {
            Counters::bump(&self.counters.redelivered);
            return;
        }
        let delivery = peer.next_delivery;
        peer.next_delivery += 1;
        let msg = ToPeer::Delivery {
            session: peer.session,
            consumer: h.consumer,
            delivery,
            redeliveries: h.delivery.redeliveries,
            topic: h.delivery.topic.to_string(),
            payload: h.delivery.payload.clone(),
        };
        peer.held.insert(delivery, h.delivery);
        self.send(&id, msg, true);
    }

    /// Every heartbeat interval: peers silent for 3 intervals are dead; the others get a
    /// heartbeat naming their session and last broadcast.
    pub(crate) fn on_tick(&mut self, now: Instant) {
        let limit = super::dead_after(self.config.heartbeat);
        let dead: Vec<Bytes> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_heard) > limit)
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            tracing::info!(peer = %Peer::label(&id), "peer silent for 3 heartbeats; its work goes back");
            Counters::bump(&self.counters.peers_expired);
            self.drop_peer(&id);
        }
        let beats: Vec<(Bytes, ToPeer)> = self
            .peers
            .iter()
            .map(|(id, p)| {
                let beat = ToPeer::Heartbeat {
                    session: p.session,
                    seq: p.seq,
                };
                (id.clone(), beat)
            })
            .collect();
        for (id, beat) in beats {
            self.send(&id, beat, false);
        }
    }

    /// Forgets a peer: its subscriptions end, its consumers stop, and every perform it held
    /// goes back to its workgroup.
    pub(crate) fn drop_peer(&mut self, id: &Bytes) {
        let Some(mut peer) = self.peers.remove(id) else {
            return;
        };
        self.owners.remove(&peer.owner);
        peer.stop_consumers();
        self.engine.disconnect(peer.owner);
        let held = peer.held.len() as u64;
        self.counters
            .redelivered
            .fetch_add(held, std::sync::atomic::Ordering::Relaxed);
        // Dropped unsettled, each comes back to its workgroup.
        drop(peer);
        self.counters.peers.store(
            self.peers.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Ends every peer (the device stops).
    pub(crate) fn drop_all(&mut self) {
        let ids: Vec<Bytes> = self.peers.keys().cloned().collect();
        for id in ids {
            self.drop_peer(&id);
        }
    }
}
