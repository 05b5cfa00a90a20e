//! Work-queue consumers: each on its own channel with `basic.qos` prefetch = the worker's
//! concurrency and manual acknowledgements; declared and consumed again on every new
//! connection, and after the broker closes the channel.
//!
//! A delivery whose channel closed while its handler still runs (RabbitMQ closes a channel
//! whose delivery outlived its consumer timeout) is not lost: when the broker delivers it
//! to this consumer again, the running delivery takes over the new delivery tag instead of
//! the handler being started a second time.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use aether_core::kit::{Settle, SettleOnce};
use aether_core::transport::InvalidMessage;
use aether_core::{
    Action, ConsumeOptions, Consumed, Consumer, DeadLetter, DeadLetterReason, Delivery, Error,
    Result, WorkQueue,
};
use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicGetArguments,
    BasicNackArguments, BasicQosArguments, BasicRejectArguments, ConsumerMessage,
};
use amqprs::{BasicProperties, FieldTable, FieldValue};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::attach::{Attach, Attachment, attach_first, consumer_tag, reattach};
use crate::channel::{Chan, lock};
use crate::error::AmqpError;
use crate::session::Session;
use crate::topology::{Decl, IntoField, insert};
use crate::transport::Shared;

/// One consumer of a work queue, alive across reconnections.
pub(crate) struct ConsumerState {
    id: u64,
    queue: WorkQueue,
    name: String,
    holding: String,
    work_exchange: String,
    decls: Vec<Decl>,
    prefetch: u16,
    /// `None` once the consumer or the transport is closed.
    tx: Mutex<Option<mpsc::Sender<Consumed>>>,
    attached: tokio::sync::Mutex<Attachment>,
    /// Deliveries handed out and not settled, by tid, to take back redeliveries of them
    /// after their channel closed. At most prefetch per channel the consumer has had open
    /// while they ran, and emptied as handlers finish.
    outstanding: Mutex<HashMap<String, Arc<Slot>>>,
}

impl ConsumerState {
    /// Starts consuming `queue`; active when this returns.
    pub(crate) async fn consume(
        shared: &Arc<Shared>,
        queue: &WorkQueue,
        options: &ConsumeOptions,
    ) -> Result<Consumer> {
        let t = &shared.topology;
        let prefetch = u16::try_from(options.prefetch.max(1)).unwrap_or(u16::MAX);
        let (tx, rx) = mpsc::channel(usize::from(prefetch));
        let state = Arc::new(ConsumerState {
            id: shared.next_id(),
            queue: queue.clone(),
            name: t.work_queue(queue)?,
            holding: t.holding_queue(queue)?,
            work_exchange: t.work(queue.union()),
            decls: t.consume_decls(queue)?,
            prefetch,
            tx: Mutex::new(Some(tx)),
            attached: Default::default(),
            outstanding: Default::default(),
        });
        lock(&shared.consumers).insert(state.id, state.clone());
        let guard = ConsumerGuard {
            shared: Arc::downgrade(shared),
            state: state.clone(),
        };
        attach_first(shared, &state).await?;
        Ok(Consumer::new(rx, Some(Box::new(guard))))
    }

    pub(crate) fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    /// Ends the consumer: `next` returns `None` once the deliveries in flight are read.
    pub(crate) fn close(&self) {
        lock(&self.tx).take();
    }

    /// Declares the queue (and what it hangs on), moves performs waiting in the holding
    /// queue to the workgroup queues, and consumes on a new channel, unless that is done.
    async fn attach_to(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        session: &Arc<Session>,
        ended: Option<&str>,
    ) -> Result<(), AmqpError> {
        let mut attached = self.attached.lock().await;
        if attached.is_current(session, ended) {
            return Ok(());
        }
        let Some(tx) = lock(&self.tx).clone() else {
            return Ok(());
        };
        // Forced: the queue may have been deleted since this connection declared it.
        session.ensure(&self.decls, true).await?;
        self.drain_holding_queue(session).await?;
        let chan = Chan::open(&session.conn, "consumer", false).await?;
        chan.channel
            .basic_qos(BasicQosArguments::new(0, self.prefetch, false))
            .await
            .map_err(|e| chan.failure(e))?;
        let tag = consumer_tag("work");
        let mut args = FieldTable::new();
        let timeout = shared.config.consumer_timeout.as_millis() as i64;
        insert(&mut args, "x-consumer-timeout", timeout.into_field());
        let (_, rx) = chan
            .channel
            .basic_consume_rx(
                BasicConsumeArguments::new(&self.name, &tag)
                    .manual_ack(true)
                    .arguments(args)
                    .finish(),
            )
            .await
            .map_err(|e| chan.failure(e))?;
        tokio::spawn(forward(
            Arc::downgrade(self),
            Arc::downgrade(shared),
            session.generation,
            chan.clone(),
            tag.clone(),
            rx,
            tx,
        ));
        *attached = Attachment {
            generation: session.generation,
            chan: Some(chan),
            tag,
        };
        Ok(())
    }

    /// Republishes performs sent while no workgroup queue existed through the work
    /// exchange, which now routes them to every workgroup queue (this one included).
    async fn drain_holding_queue(&self, session: &Session) -> Result<(), AmqpError> {
        let control = session.control().await?;
        let mut moved = 0usize;
        loop {
            let got = control
                .channel
                .basic_get(BasicGetArguments::new(&self.holding))
                .await
                .map_err(|e| control.failure(e))?;
            let Some((get_ok, properties, body)) = got else {
                break;
            };
            session
                .publish(
                    &self.work_exchange,
                    get_ok.routing_key(),
                    &properties,
                    &body,
                )
                .await?;
            control
                .channel
                .basic_ack(BasicAckArguments::new(get_ok.delivery_tag(), false))
                .await
                .map_err(|e| control.failure(e))?;
            moved += 1;
        }
        if moved > 0 {
            tracing::info!(queue = %self.queue, moved, "performs sent before any worker moved to the workgroup queues");
        }
        Ok(())
    }

    /// If `tid` is a delivery still running here whose channel closed, it takes over this
    /// redelivery of it.
    fn reclaim(&self, tid: &str, chan: &Chan, tag: u64) -> bool {
        let slot = lock(&self.outstanding).get(tid).cloned();
        slot.is_some_and(|slot| slot.take_over(chan, tag))
    }
}

/// Delivers what the broker sends, until the channel ends; then consumes again if the
/// connection lives (the supervisor restores consumers on a new connection).
async fn forward(
    state: Weak<ConsumerState>,
    shared: Weak<Shared>,
    generation: u64,
    chan: Chan,
    consumer_tag: String,
    mut rx: mpsc::UnboundedReceiver<ConsumerMessage>,
    tx: mpsc::Sender<Consumed>,
) {
    loop {
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            // The `Consumer` was dropped.
            _ = tx.closed() => break,
        };
        let Some(msg) = msg else {
            // The channel (or connection) ended: consume again below.
            drop(tx);
            return resume(state, shared, generation, consumer_tag).await;
        };
        let (Some(deliver), Some(properties), Some(content)) =
            (msg.deliver, msg.basic_properties, msg.content)
        else {
            continue;
        };
        let Some(st) = state.upgrade() else { break };
        let tag = deliver.delivery_tag();
        let payload = Bytes::from(content);
        let tid = properties.message_id().map_or("", String::as_str);
        let topic = match st.queue.topic(tid, Action::Perform) {
            Ok(topic) => topic,
            Err(error) => {
                let invalid = InvalidMessage {
                    raw_topic: format!("{}.{tid}.perform", deliver.routing_key()),
                    payload,
                    error,
                };
                refuse(&shared, &chan, tag, &invalid);
                if tx.send(Err(invalid)).await.is_err() {
                    break;
                }
                continue;
            }
        };
        if deliver.redelivered() && st.reclaim(topic.tid(), &chan, tag) {
            tracing::debug!(%topic, "a running task took over its redelivery");
            continue;
        }
        let slot = Arc::new(Slot {
            inner: Mutex::new(SlotInner {
                chan: chan.clone(),
                tag,
                settled: false,
            }),
        });
        lock(&st.outstanding).insert(topic.tid().to_owned(), slot.clone());
        let acker = SettleOnce::new(
            AmqpSettle {
                slot,
                tid: topic.tid().to_owned(),
                state: state.clone(),
                shared: shared.clone(),
            },
            // `basic.qos` bounds the prefetch on the broker.
            None,
        );
        let redeliveries = redeliveries(&properties, deliver.redelivered());
        drop(st);
        let delivery = Delivery::new(topic, payload, redeliveries, Box::new(acker));
        // A consumer that is gone drops the delivery, which gives it back.
        if tx.send(Ok(delivery)).await.is_err() {
            break;
        }
    }
    // The consumer is gone: stop the broker sending (after cancel-ok nothing more comes),
    // then give back everything it sent meanwhile.
    let _ = chan
        .channel
        .basic_cancel(BasicCancelArguments::new(&consumer_tag))
        .await;
    while let Some(msg) = rx.recv().await {
        if let Some(deliver) = msg.deliver {
            let nack = BasicNackArguments::new(deliver.delivery_tag(), false, true);
            let _ = chan.channel.basic_nack(nack).await;
        }
    }
}

/// Moves a perform whose topic is not valid to the dead-letter queue with its reason, then
/// acknowledges it; if that fails, rejects it, so the broker dead-letters it through the
/// queue's dead-letter exchange (without the reason). In a task of its own: the consumer
/// carries on meanwhile.
fn refuse(shared: &Weak<Shared>, chan: &Chan, tag: u64, invalid: &InvalidMessage) {
    let letter = DeadLetter {
        topic: invalid.raw_topic.clone(),
        payload: invalid.payload.clone(),
        reason: DeadLetterReason::InvalidTopic(invalid.error.to_string()),
    };
    let shared = shared.clone();
    let chan = chan.clone();
    tokio::spawn(async move {
        let stored = match shared.upgrade() {
            Some(shared) => shared.dead_letter(&letter).await,
            None => Err(Error::Closed),
        };
        let settled = match stored {
            Ok(()) => {
                chan.channel
                    .basic_ack(BasicAckArguments::new(tag, false))
                    .await
            }
            Err(e) => {
                tracing::warn!(topic = %letter.topic, error = %e, "amqp: dead letter not stored; rejecting it to the broker's dead-letter exchange");
                chan.channel
                    .basic_reject(BasicRejectArguments::new(tag, false))
                    .await
            }
        };
        if let Err(e) = settled {
            // The channel is gone: the broker delivers it again, and it is refused again.
            tracing::debug!(topic = %letter.topic, error = %e, "amqp: refused perform not settled");
        }
    });
}

/// After the consumer's channel ended: consume again if the connection lives (the
/// supervisor restores consumers on a new connection).
async fn resume(
    state: Weak<ConsumerState>,
    shared: Weak<Shared>,
    generation: u64,
    consumer_tag: String,
) {
    let (Some(state), Some(shared)) = (state.upgrade(), shared.upgrade()) else {
        return;
    };
    let Some(session) = shared.session_now() else {
        return;
    };
    if session.generation != generation || lock(&state.tx).is_none() {
        return;
    }
    tracing::info!(queue = %state.queue, "consumer channel closed; consuming again");
    reattach(state, shared, session, consumer_tag).await;
}

impl Attach for ConsumerState {
    fn attach<'a>(
        self: &'a Arc<Self>,
        shared: &'a Arc<Shared>,
        session: &'a Arc<Session>,
        ended: Option<&'a str>,
    ) -> impl Future<Output = Result<(), AmqpError>> + Send + 'a {
        self.attach_to(shared, session, ended)
    }

    fn describe(&self) -> &dyn fmt::Display {
        &self.queue
    }
}

/// How often the broker delivered this message before: quorum queues count
/// (`x-delivery-count`); classic queues only say whether it was delivered before.
fn redeliveries(properties: &BasicProperties, redelivered: bool) -> u32 {
    let counted = properties.headers().and_then(|h| {
        let key = "x-delivery-count".try_into().ok()?;
        match h.get(&key)? {
            FieldValue::l(n) => u32::try_from(*n).ok(),
            FieldValue::I(n) => u32::try_from(*n).ok(),
            FieldValue::i(n) => Some(*n),
            FieldValue::s(n) => u32::try_from(*n).ok(),
            FieldValue::u(n) => Some(u32::from(*n)),
            FieldValue::b(n) => u32::try_from(*n).ok(),
            FieldValue::B(n) => Some(u32::from(*n)),
            _ => None,
        }
    });
    counted.unwrap_or(u32::from(redelivered))
}

/// The delivery tag a handed-out delivery is settled with, and its channel.
struct Slot {
    inner: Mutex<SlotInner>,
}

struct SlotInner {
    chan: Chan,
    tag: u64,
    settled: bool,
}

impl Slot {
    /// Moves the delivery to a redelivery of it on `chan`, if its own channel closed.
    fn take_over(&self, chan: &Chan, tag: u64) -> bool {
        let mut inner = lock(&self.inner);
        if inner.settled || inner.chan.is_open() {
            return false;
        }
        inner.chan = chan.clone();
        inner.tag = tag;
        true
    }

    /// The channel and tag to settle with, marking the delivery settled; an error if the
    /// channel is closed (the broker requeued the delivery).
    fn settle(&self) -> Result<(Chan, u64), AmqpError> {
        let mut inner = lock(&self.inner);
        if inner.settled {
            return Err(AmqpError::Client(amqprs::error::Error::ChannelUseError(
                "the delivery is already settled".into(),
            )));
        }
        if !inner.chan.is_open() {
            return Err(AmqpError::DeliveryChannelClosed);
        }
        inner.settled = true;
        Ok((inner.chan.clone(), inner.tag))
    }
}

/// Settles a delivery on the channel it currently belongs to.
struct AmqpSettle {
    slot: Arc<Slot>,
    tid: String,
    state: Weak<ConsumerState>,
    shared: Weak<Shared>,
}

impl AmqpSettle {
    fn forget(&self) {
        if let Some(state) = self.state.upgrade() {
            let mut outstanding = lock(&state.outstanding);
            if outstanding
                .get(&self.tid)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
            {
                outstanding.remove(&self.tid);
            }
        }
    }

    async fn settle(&mut self, requeue: Option<bool>) -> Result<()> {
        let (chan, tag) = self.slot.settle()?;
        self.forget();
        let sent = match requeue {
            None => {
                chan.channel
                    .basic_ack(BasicAckArguments::new(tag, false))
                    .await
            }
            Some(requeue) => {
                chan.channel
                    .basic_nack(BasicNackArguments::new(tag, false, requeue))
                    .await
            }
        };
        sent.map_err(|e| chan.failure(e).into())
    }
}

impl fmt::Debug for AmqpSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.slot.inner);
        f.debug_struct("AmqpSettle")
            .field("tid", &self.tid)
            .field("tag", &inner.tag)
            .field("settled", &inner.settled)
            .finish()
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(&mut self) -> Result<()> {
        self.settle(None).await
    }

    async fn nack(&mut self, requeue: bool) -> Result<()> {
        self.settle(Some(requeue)).await
    }

    /// Stores the letter, with its reason, in the dead-letter queue, then removes the
    /// delivery from its queue.
    async fn reject(&mut self, letter: DeadLetter) -> Result<()> {
        let shared = self.shared.upgrade().ok_or(Error::Closed)?;
        shared.dead_letter(&letter).await?;
        self.settle(None).await
    }

    /// The handler crashed: give the delivery back to the workgroup (unless its channel
    /// closed, and the broker requeued it already).
    fn give_back(&mut self) {
        self.forget();
        let Ok((chan, tag)) = self.slot.settle() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = chan
                    .channel
                    .basic_nack(BasicNackArguments::new(tag, false, true))
                    .await;
            });
        }
    }
}

/// Forgets the consumer when the [`Consumer`] is dropped (its forwarder stops consuming);
/// deliveries already handed out keep the channel open until they are settled.
struct ConsumerGuard {
    shared: Weak<Shared>,
    state: Arc<ConsumerState>,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        self.state.close();
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.consumers).remove(&self.state.id);
        }
        // The forwarder sees the `Consumer` gone, cancels and gives back what it holds.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_come_from_the_quorum_count_or_the_flag() {
        let plain = BasicProperties::default();
        assert_eq!(redeliveries(&plain, false), 0);
        assert_eq!(redeliveries(&plain, true), 1);
        let mut headers = FieldTable::new();
        insert(&mut headers, "x-delivery-count", 3i64.into_field());
        let counted = BasicProperties::default().with_headers(headers).finish();
        assert_eq!(redeliveries(&counted, true), 3);
    }
}
