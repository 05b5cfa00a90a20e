//! Work-queue consumers: deliveries from a shared subscription, and what acknowledging one
//! means on MQTT.
//!
//! paho acknowledges a QoS 1 message to the broker (PUBACK) as soon as it is handed to the
//! routing table, so the broker forgets it before the handler runs. The acknowledgement of a
//! [`Delivery`] is therefore local:
//!
//! - [`ack`](Delivery::ack) frees the consumer's prefetch slot;
//! - [`nack(true)`](Delivery::nack) publishes the perform again on its topic, so its
//!   workgroup gets it back (one member, possibly this one; every *other* workgroup
//!   subscribed gets a copy too, which its workers' duplicate window answers), counting
//!   the redelivery in the MQTT 5 user property `aether-redeliveries`;
//! - [`reject`](Delivery::reject) publishes it as a dead letter;
//! - a delivery dropped unacknowledged inside a live process is published again like
//!   `nack(true)`. A process that dies takes its deliveries with it: the client's lease
//!   redispatch recovers those.

use std::fmt;
use std::sync::{Arc, Weak};

use aether_core::{
    Acker, Bytes, Consumed, Consumer, DeadLetter, DeadLetterReason, Delivery, Error, Result, Topic,
};
use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::router::{Inbound, Local, REDELIVERIES};
use crate::transport::{Inner, Publish};

/// Stops consuming when the [`Consumer`] is dropped.
pub(crate) struct ConsumerGuard {
    inner: Weak<Inner>,
    local: Local,
}

impl ConsumerGuard {
    pub(crate) fn new(inner: Weak<Inner>, local: Local) -> Self {
        ConsumerGuard { inner, local }
    }
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.remove(self.local);
        }
    }
}

/// A consumer fed by `jobs`, with at most `prefetch` deliveries outstanding.
pub(crate) fn consumer(
    inner: Weak<Inner>,
    jobs: mpsc::Receiver<Inbound>,
    prefetch: usize,
    guard: ConsumerGuard,
) -> Consumer {
    let (tx, rx) = mpsc::channel(1);
    let permits = Arc::new(Semaphore::new(prefetch.max(1)));
    tokio::spawn(forward(inner, jobs, tx, permits));
    Consumer::new(rx, Some(Box::new(guard)))
}

/// Turns buffered performs into deliveries, one per free prefetch slot. When the consumer
/// is dropped, gives the performs it had not handed out back to the workgroup.
async fn forward(
    inner: Weak<Inner>,
    mut jobs: mpsc::Receiver<Inbound>,
    out: mpsc::Sender<Consumed>,
    permits: Arc<Semaphore>,
) {
    loop {
        let permit = tokio::select! {
            biased;
            _ = out.closed() => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let item = tokio::select! {
            biased;
            _ = out.closed() => break,
            item = jobs.recv() => match item {
                Some(item) => item,
                // The transport closed or the consumer was removed.
                None => return,
            },
        };
        let consumed = match item {
            Inbound::Job {
                topic,
                payload,
                redeliveries,
            } => {
                let acker = MqttAcker {
                    inner: inner.clone(),
                    topic: topic.clone(),
                    payload: payload.clone(),
                    redeliveries,
                    permit: Some(permit),
                };
                Ok(Delivery::new(topic, payload, redeliveries, Box::new(acker)))
            }
            Inbound::Invalid(invalid) => {
                drop(permit);
                if let Some(inner) = inner.upgrade() {
                    let letter = DeadLetter {
                        topic: invalid.raw_topic.clone(),
                        payload: invalid.payload.clone(),
                        reason: DeadLetterReason::InvalidTopic(invalid.error.to_string()),
                    };
                    if let Err(e) = inner.dead_letter(&letter).await {
                        tracing::warn!(topic = %invalid.raw_topic, error = %e, "perform on an invalid topic not dead-lettered");
                    }
                }
                Err(invalid)
            }
        };
        // A delivery that cannot be handed over is dropped unacknowledged: it goes back.
        if out.send(consumed).await.is_err() {
            break;
        }
    }
    // Taken from the broker but never handed out: back to the workgroup. The guard has
    // unsubscribed by now, so the broker does not route them to this connection again.
    jobs.close();
    let Some(inner) = inner.upgrade() else { return };
    let mut given_back = 0;
    while let Ok(item) = jobs.try_recv() {
        if let Inbound::Job {
            topic,
            payload,
            redeliveries,
        } = item
        {
            give_back(&inner, &topic, &payload, redeliveries);
            given_back += 1;
        }
    }
    if given_back > 0 {
        tracing::debug!(given_back, "consumer dropped; buffered performs given back");
    }
}

fn give_back(inner: &Inner, topic: &Topic, payload: &[u8], redeliveries: u32) {
    let count = redeliveries.to_string();
    inner.publish_detached(Publish {
        topic: topic.as_str(),
        payload,
        retain: false,
        user: &[(REDELIVERIES, &count)],
    });
}

/// The acknowledgement handle of an MQTT delivery; see the [module docs](self).
struct MqttAcker {
    inner: Weak<Inner>,
    topic: Topic,
    payload: Bytes,
    redeliveries: u32,
    /// The prefetch slot; `None` once settled.
    permit: Option<OwnedSemaphorePermit>,
}

impl MqttAcker {
    fn settled(&self) -> Result<()> {
        if self.permit.is_none() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn inner(&self) -> Result<Arc<Inner>> {
        self.inner.upgrade().ok_or(Error::Closed)
    }
}

impl fmt::Debug for MqttAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttAcker")
            .field("topic", &self.topic)
            .field("redeliveries", &self.redeliveries)
            .field("settled", &self.permit.is_none())
            .finish()
    }
}

#[async_trait]
impl Acker for MqttAcker {
    /// Frees the prefetch slot; the broker had its PUBACK on arrival.
    async fn ack(&mut self) -> Result<()> {
        self.settled()?;
        self.permit = None;
        Ok(())
    }

    /// With `requeue`, publishes the perform again on its topic (and waits for the
    /// broker's acknowledgement); without, drops it.
    async fn nack(&mut self, requeue: bool) -> Result<()> {
        self.settled()?;
        if requeue {
            let count = (self.redeliveries + 1).to_string();
            self.inner()?
                .publish(Publish {
                    topic: self.topic.as_str(),
                    payload: &self.payload,
                    retain: false,
                    user: &[(REDELIVERIES, &count)],
                })
                .await?;
        }
        self.permit = None;
        Ok(())
    }

    /// Publishes the dead letter; without a dead-letter topic, logs it and drops it.
    async fn reject(&mut self, letter: DeadLetter) -> Result<()> {
        self.settled()?;
        match self.inner()?.dead_letter(&letter).await {
            Ok(()) => {}
            Err(Error::Unsupported { .. }) => {
                tracing::warn!(topic = %letter.topic, reason = %letter.reason, "dead letter dropped: no dead_letter_topic");
            }
            Err(e) => return Err(e),
        }
        self.permit = None;
        Ok(())
    }
}

impl Drop for MqttAcker {
    fn drop(&mut self) {
        if self.permit.is_some()
            && let Some(inner) = self.inner.upgrade()
            && !inner.is_closed()
        {
            tracing::debug!(topic = %self.topic, "delivery dropped unacknowledged; given back");
            give_back(&inner, &self.topic, &self.payload, self.redeliveries + 1);
        }
    }
}
