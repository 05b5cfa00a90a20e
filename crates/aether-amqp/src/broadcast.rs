//! Broadcast subscriptions: an exclusive, auto-delete queue per subscription, bound to the
//! union's topic exchange with the filter, consumed on the connection's subscription
//! channel and declared again on every new connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use aether_core::transport::{InvalidMessage, Message};
use aether_core::{Received, Result, Subscription, Topic, TopicFilter};
use amqprs::FieldTable;
use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicQosArguments,
    ConsumerMessage, QueueBindArguments, QueueDeclareArguments,
};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::channel::{Chan, lock};
use crate::error::AmqpError;
use crate::session::Session;
use crate::topology::{Decl, IntoField, insert};
use crate::transport::Shared;

/// Messages a subscription queue keeps for a slow subscriber before dropping the oldest.
const SUB_QUEUE_MAX: i64 = 100_000;

/// Consumer tags, unique in the process.
static TAGS: AtomicU64 = AtomicU64::new(1);

/// One subscription, alive across reconnections.
pub(crate) struct SubState {
    id: u64,
    filter: TopicFilter,
    decls: Vec<Decl>,
    exchange: String,
    binding: String,
    capacity: usize,
    /// Where messages go; `None` once the subscription or the transport is closed.
    tx: Mutex<Option<mpsc::Sender<Received>>>,
    attached: tokio::sync::Mutex<Attached>,
}

/// Where a subscription consumes now.
#[derive(Default)]
struct Attached {
    generation: u64,
    chan: Option<Chan>,
    tag: String,
}

impl SubState {
    /// Subscribes `filter`; active when this returns.
    pub(crate) async fn subscribe(
        shared: &Arc<Shared>,
        filter: &TopicFilter,
    ) -> Result<Subscription> {
        let union = filter.union().unwrap_or("");
        let capacity = shared.config.subscription_capacity;
        let (tx, rx) = mpsc::channel(capacity);
        let state = Arc::new(SubState {
            id: shared.next_id(),
            filter: filter.clone(),
            decls: shared.topology.broadcast_decls(union),
            exchange: shared.topology.broadcast(union),
            binding: filter.to_amqp_binding(),
            capacity,
            tx: Mutex::new(Some(tx)),
            attached: Default::default(),
        });
        lock(&shared.subs).insert(state.id, state.clone());
        let guard = SubGuard {
            shared: Arc::downgrade(shared),
            state: state.clone(),
        };
        let deadline = Instant::now() + shared.config.publish_timeout;
        loop {
            let session = shared.session(deadline).await?;
            match state.attach(shared, &session, None).await {
                Ok(()) => break,
                Err(e) if e.is_connection_loss() && !session.is_alive() => session.lost().await,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Subscription::new(rx, Some(Box::new(guard))))
    }

    pub(crate) fn filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// Ends the subscription: `next` returns `None` once the messages in flight are read.
    pub(crate) fn close(&self) {
        lock(&self.tx).take();
    }

    /// Declares the subscription's queue on `session` and consumes it, unless that is done.
    pub(crate) async fn attach(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        session: &Arc<Session>,
        ended: Option<&str>,
    ) -> Result<(), AmqpError> {
        let mut attached = self.attached.lock().await;
        let stale = ended.is_some_and(|tag| tag == attached.tag);
        if !stale
            && attached.generation == session.generation
            && attached.chan.as_ref().is_some_and(Chan::is_open)
        {
            return Ok(());
        }
        let Some(tx) = lock(&self.tx).clone() else {
            return Ok(());
        };
        session.ensure(&self.decls, false).await?;
        let queue = {
            let control = session.control().await?;
            let mut args = FieldTable::new();
            insert(&mut args, "x-max-length", SUB_QUEUE_MAX.into_field());
            let declared = control
                .channel
                .queue_declare(
                    QueueDeclareArguments::exclusive_server_named()
                        .auto_delete(true)
                        .arguments(args)
                        .finish(),
                )
                .await
                .map_err(|e| control.failure(e))?;
            let (queue, ..) = declared.expect("declared without no_wait");
            control
                .channel
                .queue_bind(QueueBindArguments::new(
                    &queue,
                    &self.exchange,
                    &self.binding,
                ))
                .await
                .map_err(|e| control.failure(e))?;
            queue
        };
        let tag = format!("aether-sub-{}", TAGS.fetch_add(1, Ordering::Relaxed));
        let (chan, rx) = {
            let subs = session.subscriptions().await?;
            let prefetch = u16::try_from(self.capacity).unwrap_or(u16::MAX);
            subs.channel
                .basic_qos(BasicQosArguments::new(0, prefetch, false))
                .await
                .map_err(|e| subs.failure(e))?;
            let (_, rx) = subs
                .channel
                .basic_consume_rx(BasicConsumeArguments::new(&queue, &tag))
                .await
                .map_err(|e| subs.failure(e))?;
            (subs.clone(), rx)
        };
        tokio::spawn(forward(
            Arc::downgrade(self),
            Arc::downgrade(shared),
            session.generation,
            chan.clone(),
            tag.clone(),
            rx,
            tx,
        ));
        *attached = Attached {
            generation: session.generation,
            chan: Some(chan),
            tag,
        };
        Ok(())
    }
}

/// Hands received messages to the subscription, acknowledging each to the broker once it
/// is in the subscription's buffer (so a slow subscriber leaves its backlog on the broker,
/// not in memory). When the channel ends while the connection lives, consumes
/// again.
async fn forward(
    state: Weak<SubState>,
    shared: Weak<Shared>,
    generation: u64,
    chan: Chan,
    consumer_tag: String,
    mut rx: mpsc::UnboundedReceiver<ConsumerMessage>,
    tx: mpsc::Sender<Received>,
) {
    while let Some(msg) = rx.recv().await {
        let (Some(deliver), Some(content)) = (msg.deliver, msg.content) else {
            continue;
        };
        let payload = Bytes::from(content);
        let received = match Topic::from_amqp(deliver.routing_key()) {
            Ok(topic) => Ok(Message { topic, payload }),
            Err(error) => Err(InvalidMessage {
                raw_topic: deliver.routing_key().clone(),
                payload,
                error,
            }),
        };
        if tx.send(received).await.is_err() {
            return;
        }
        // One by one: subscriptions share the channel, and a `multiple` ack would settle
        // another subscription's deliveries, which the broker refuses to see acked twice.
        let ack = BasicAckArguments::new(deliver.delivery_tag(), false);
        if chan.channel.basic_ack(ack).await.is_err() {
            break;
        }
    }
    drop(tx);
    // The channel or the connection ended. On a live connection, consume again at once;
    // after a lost one, the supervisor restores every subscription.
    let (Some(state), Some(shared)) = (state.upgrade(), shared.upgrade()) else {
        return;
    };
    let Some(session) = shared.session_now() else {
        return;
    };
    if session.generation != generation || lock(&state.tx).is_none() {
        return;
    }
    reattach(state, shared, session, consumer_tag).await;
}

/// Subscribes again; boxed as `Send` to cut the `attach` → `forward` → `attach` cycle the
/// compiler cannot prove `Send` through.
fn reattach(
    state: Arc<SubState>,
    shared: Arc<Shared>,
    session: Arc<Session>,
    consumer_tag: String,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        if let Err(e) = state.attach(&shared, &session, Some(&consumer_tag)).await {
            tracing::warn!(filter = %state.filter, error = %e, "could not subscribe again after the channel closed");
        }
    })
}

/// Unsubscribes when the [`Subscription`] is dropped.
struct SubGuard {
    shared: Weak<Shared>,
    state: Arc<SubState>,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        self.state.close();
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.subs).remove(&self.state.id);
        }
        let state = self.state.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let attached = state.attached.lock().await;
                if let Some(chan) = attached.chan.as_ref().filter(|c| c.is_open()) {
                    // The queue is auto-delete: cancelling its consumer deletes it.
                    let mut cancel = BasicCancelArguments::new(&attached.tag);
                    cancel.no_wait(true);
                    let _ = chan.channel.basic_cancel(cancel).await;
                }
            });
        }
    }
}
