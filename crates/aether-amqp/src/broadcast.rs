//! Broadcast subscriptions: an exclusive queue per subscription, bound to the union's topic
//! exchange with the filter, consumed on the connection's subscription channel and
//! declared again on every new connection.
//!
//! Broadcasts promise nothing to absent subscribers, so they are consumed without
//! acknowledgements (a third less work for RabbitMQ per message than acking each). The
//! subscription's buffer is still bounded: when it is full, the consumer is cancelled, so
//! further messages wait in the queue (itself bounded, oldest dropped first), and it
//! consumes again once the subscriber has caught up.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use aether_core::transport::{InvalidMessage, Message};
use aether_core::{Received, Result, Subscription, TopicFilter};
use amqprs::FieldTable;
use amqprs::channel::{
    BasicCancelArguments, BasicConsumeArguments, ConsumerMessage, QueueBindArguments,
    QueueDeclareArguments, QueueDeleteArguments,
};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::attach::{Attach, Attachment, attach_first, consumer_tag, reattach};
use crate::channel::{Chan, lock};
use crate::error::AmqpError;
use crate::session::Session;
use crate::topology::{self, Decl, IntoField, insert};
use crate::transport::Shared;

/// Messages a subscription queue keeps for a slow subscriber before dropping the oldest.
const SUB_QUEUE_MAX: i64 = 100_000;

/// One subscription, alive across reconnections.
pub(crate) struct SubState {
    id: u64,
    filter: TopicFilter,
    decls: Vec<Decl>,
    exchange: String,
    binding: String,
    /// Where messages go; `None` once the subscription or the transport is closed.
    tx: Mutex<Option<mpsc::Sender<Received>>>,
    attached: tokio::sync::Mutex<Attached>,
}

/// Where a subscription consumes now.
#[derive(Default)]
struct Attached {
    on: Attachment,
    /// Its queue on that connection (exclusive: it goes with the connection).
    queue: Option<String>,
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
            binding: topology::binding(filter),
            tx: Mutex::new(Some(tx)),
            attached: Default::default(),
        });
        lock(&shared.subs).insert(state.id, state.clone());
        let guard = SubGuard {
            shared: Arc::downgrade(shared),
            state: state.clone(),
        };
        attach_first(shared, &state).await?;
        Ok(Subscription::new(rx, Some(Box::new(guard))).with_gaps(shared.gaps.subscribe()))
    }

    pub(crate) fn filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// Ends the subscription: `next` returns `None` once the messages in flight are read.
    pub(crate) fn close(&self) {
        lock(&self.tx).take();
    }

    /// Declares the subscription's queue on `session` and consumes it, unless that is done.
    async fn attach_to(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        session: &Arc<Session>,
        ended: Option<&str>,
    ) -> Result<(), AmqpError> {
        let mut attached = self.attached.lock().await;
        if attached.on.is_current(session, ended) {
            return Ok(());
        }
        let Some(tx) = lock(&self.tx).clone() else {
            return Ok(());
        };
        // The queue outlives a paused or cancelled consumer on the same connection, with
        // what arrived meanwhile, unless someone deleted it.
        let kept = if attached.on.generation == session.generation {
            exists(session, attached.queue.as_deref()).await
        } else {
            None
        };
        // A queue lost on the same connection (deleted by someone) is a gap of its own; on
        // a new connection the supervisor reports one for all subscriptions.
        let lost_here = attached.queue.is_some()
            && kept.is_none()
            && attached.on.generation == session.generation;
        let queue = match kept {
            Some(q) => q,
            None => self.declare_queue(session).await?,
        };
        attached.on.generation = session.generation;
        attached.queue = Some(queue.clone());
        let tag = consumer_tag("sub");
        let (chan, rx) = {
            let subs = session.subscriptions().await?;
            let (_, rx) = subs
                .channel
                .basic_consume_rx(
                    BasicConsumeArguments::new(&queue, &tag)
                        .auto_ack(true)
                        .finish(),
                )
                .await
                .map_err(|e| subs.failure(e))?;
            (subs.clone(), rx)
        };
        tokio::spawn(forward(
            Arc::downgrade(self),
            Arc::downgrade(shared),
            Arc::downgrade(session),
            chan.clone(),
            tag.clone(),
            rx,
            tx,
        ));
        attached.on.chan = Some(chan);
        attached.on.tag = tag;
        if lost_here {
            shared.gaps.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// A new exclusive queue bound with the filter.
    async fn declare_queue(&self, session: &Session) -> Result<String, AmqpError> {
        session.ensure(&self.decls, false).await?;
        let control = session.control().await?;
        let mut args = FieldTable::new();
        insert(&mut args, "x-max-length", SUB_QUEUE_MAX.into_field());
        let declared = control
            .channel
            .queue_declare(
                QueueDeclareArguments::exclusive_server_named()
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
        Ok(queue)
    }
}

/// Hands received messages to the subscription. When its buffer is full, cancels the
/// consumer (the broker confirms it, so every message it sent is here) and waits for room;
/// when the consumer has ended (paused, or its channel closed), consumes again on a live
/// connection. After a lost connection the supervisor restores every subscription.
async fn forward(
    state: Weak<SubState>,
    shared: Weak<Shared>,
    session: Weak<Session>,
    chan: Chan,
    consumer_tag: String,
    mut rx: mpsc::UnboundedReceiver<ConsumerMessage>,
    tx: mpsc::Sender<Received>,
) {
    let mut paused = false;
    while let Some(msg) = rx.recv().await {
        let (Some(deliver), Some(content)) = (msg.deliver, msg.content) else {
            continue;
        };
        let payload = Bytes::from(content);
        let received = match topology::parse_routing_key(deliver.routing_key()) {
            Ok(topic) => Ok(Message { topic, payload }),
            Err(error) => Err(InvalidMessage {
                raw_topic: deliver.routing_key().clone(),
                payload,
                error,
            }),
        };
        match tx.try_send(received) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => return,
            Err(TrySendError::Full(received)) => {
                if !paused {
                    paused = true;
                    pause(&session, &chan, &consumer_tag).await;
                }
                if tx.send(received).await.is_err() {
                    return;
                }
            }
        }
    }
    drop(tx);
    let (Some(state), Some(shared), Some(session)) =
        (state.upgrade(), shared.upgrade(), session.upgrade())
    else {
        return;
    };
    if !session.is_alive() || lock(&state.tx).is_none() {
        return;
    }
    if !paused {
        tracing::info!(filter = %state.filter, "subscription consumer ended; consuming again");
    }
    reattach(state, shared, session, consumer_tag).await;
}

/// `queue`, if it still exists. Asked on the control channel, which the broker closes if
/// the queue is gone (consuming a missing queue would close the subscription channel, and
/// every subscription on it).
async fn exists(session: &Session, queue: Option<&str>) -> Option<String> {
    let queue = queue?;
    let control = session.control().await.ok()?;
    control
        .channel
        .queue_declare(QueueDeclareArguments::new(queue).passive(true).finish())
        .await
        .ok()
        .map(|_| queue.to_owned())
}

/// Cancels a subscription's consumer until its subscriber catches up.
async fn pause(session: &Weak<Session>, chan: &Chan, consumer_tag: &str) {
    let Some(session) = session.upgrade() else {
        return;
    };
    // Under the channel's lock: amqprs keeps one responder per method and channel.
    let Ok(subs) = session.subscriptions().await else {
        return;
    };
    if subs.channel.channel_id() == chan.channel.channel_id() && subs.is_open() {
        let _ = subs
            .channel
            .basic_cancel(BasicCancelArguments::new(consumer_tag))
            .await;
    }
}

impl Attach for SubState {
    fn attach<'a>(
        self: &'a Arc<Self>,
        shared: &'a Arc<Shared>,
        session: &'a Arc<Session>,
        ended: Option<&'a str>,
    ) -> impl Future<Output = Result<(), AmqpError>> + Send + 'a {
        self.attach_to(shared, session, ended)
    }

    fn describe(&self) -> &dyn fmt::Display {
        &self.filter
    }
}

/// Unsubscribes when the [`Subscription`] is dropped.
struct SubGuard {
    shared: Weak<Shared>,
    state: Arc<SubState>,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        self.state.close();
        let shared = self.shared.upgrade();
        if let Some(shared) = &shared {
            lock(&shared.subs).remove(&self.state.id);
        }
        let state = self.state.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let attached = state.attached.lock().await;
                if let Some(chan) = attached.on.chan.as_ref().filter(|c| c.is_open()) {
                    let mut cancel = BasicCancelArguments::new(&attached.on.tag);
                    cancel.no_wait(true);
                    let _ = chan.channel.basic_cancel(cancel).await;
                }
                // The queue would go with the connection; delete it now.
                let session = shared.and_then(|s| s.session_now());
                if let (Some(session), Some(queue)) = (session, &attached.queue)
                    && session.generation == attached.on.generation
                    && let Ok(control) = session.control().await
                {
                    let _ = control
                        .channel
                        .queue_delete(QueueDeleteArguments::new(queue))
                        .await;
                }
            });
        }
    }
}
