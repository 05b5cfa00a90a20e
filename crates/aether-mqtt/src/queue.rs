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
//!
//! Each consumer has `prefetch` credits. A perform arriving for a consumer with credit is
//! handed out at once, from paho's callback thread, with no task in between; otherwise it
//! waits in the consumer's line (at most [`subscription_capacity`](crate::MqttConfig::subscription_capacity) long) until
//! a delivery is settled.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use aether_core::kit::{Credit, CreditUnit, Outlet, Settle, SettleOnce};
use aether_core::{
    Bytes, Consumed, DeadLetter, DeadLetterReason, Delivery, Error, InvalidMessage, Result, Topic,
};
use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::router::{Local, REDELIVERIES};
use crate::transport::{Inner, Publish};

/// A perform taken from the broker.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) topic: Topic,
    pub(crate) payload: Bytes,
    pub(crate) redeliveries: u32,
}

struct SlotState {
    /// Performs waiting for credit.
    waiting: VecDeque<Job>,
    /// The consumer's channel; `None` once closed, which ends the consumer.
    outlet: Option<Outlet>,
}

impl SlotState {
    /// The channel, if the consumer is still there.
    fn open(&self) -> Option<&Outlet> {
        self.outlet.as_ref().filter(|o| !o.is_closed())
    }
}

/// One local consumer: its channel, its credit and its line.
pub(crate) struct Slot {
    inner: Weak<Inner>,
    line: usize,
    credit: Credit,
    state: Mutex<SlotState>,
}

impl Slot {
    /// A consumer with `prefetch` credits and a line of `line` performs; returns the
    /// receiving end of its channel too.
    pub(crate) fn new(
        inner: Weak<Inner>,
        prefetch: usize,
        line: usize,
    ) -> (Arc<Slot>, mpsc::Receiver<Consumed>) {
        let (outlet, rx) = Outlet::new(prefetch);
        let slot = Slot {
            inner,
            line,
            credit: Credit::new(prefetch),
            state: Mutex::new(SlotState {
                waiting: VecDeque::new(),
                outlet: Some(outlet),
            }),
        };
        (Arc::new(slot), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a perform offered now would be handed out at once.
    pub(crate) fn has_credit(&self) -> bool {
        self.credit.available() > 0
    }

    /// Hands `job` out, or puts it in line; gives it back when the line is full or the
    /// consumer gone. Performs in line go first: a unit of credit returned while some wait
    /// is theirs ([`Slot::release`]).
    pub(crate) fn offer(self: &Arc<Self>, job: Job) -> Result<(), Job> {
        let mut st = self.lock();
        let Some(outlet) = st.open().cloned() else {
            return Err(job);
        };
        if st.waiting.is_empty()
            && let Some(unit) = self.credit.try_take()
        {
            drop(st);
            self.hand_out(&outlet, job, unit);
            return Ok(());
        }
        if st.waiting.len() >= self.line {
            return Err(job);
        }
        st.waiting.push_back(job);
        Ok(())
    }

    /// Publishes a refused perform as a dead letter and tells the consumer about it.
    pub(crate) fn refuse(&self, invalid: InvalidMessage) {
        if let Some(inner) = self.inner.upgrade() {
            let letter = DeadLetter {
                topic: invalid.raw_topic.clone(),
                payload: invalid.payload.clone(),
                reason: DeadLetterReason::InvalidTopic(invalid.error.to_string()),
            };
            inner.dead_letter_detached(&letter);
        }
        let outlet = self.lock().open().cloned();
        if let Some(outlet) = outlet {
            outlet.report(invalid);
        }
    }

    /// Sends a delivery holding `unit`, outside the slot's lock. The channel has room for
    /// every unit; if the consumer is gone, the delivery is dropped and so given back.
    fn hand_out(self: &Arc<Self>, outlet: &Outlet, job: Job, unit: CreditUnit) {
        let settle = MqttSettle {
            slot: self.clone(),
            topic: job.topic.clone(),
            payload: job.payload.clone(),
            redeliveries: job.redeliveries,
        };
        let acker = SettleOnce::new(settle, Some(unit));
        outlet.deliver(Delivery::new(
            job.topic,
            job.payload,
            job.redeliveries,
            Box::new(acker),
        ));
    }

    /// A delivery was settled and its credit returned: the performs in line take what is
    /// free.
    fn release(self: &Arc<Self>) {
        let mut ready = Vec::new();
        {
            let mut st = self.lock();
            let Some(outlet) = st.open().cloned() else {
                return;
            };
            while !st.waiting.is_empty() {
                let Some(unit) = self.credit.try_take() else {
                    break;
                };
                let job = st.waiting.pop_front().expect("checked non-empty");
                ready.push((outlet.clone(), job, unit));
            }
        }
        for (outlet, job, unit) in ready {
            self.hand_out(&outlet, job, unit);
        }
    }

    /// Stops handing out and ends the consumer's channel; returns the performs still in
    /// line.
    pub(crate) fn close(&self) -> VecDeque<Job> {
        let mut st = self.lock();
        st.outlet = None;
        std::mem::take(&mut st.waiting)
    }
}

/// Stops consuming when the [`Consumer`](aether_core::Consumer) is dropped, and gives the
/// performs it had not handed out back to the workgroup.
pub(crate) struct ConsumerGuard {
    inner: Weak<Inner>,
    local: Local,
    slot: Arc<Slot>,
}

impl ConsumerGuard {
    pub(crate) fn new(inner: Weak<Inner>, local: Local, slot: Arc<Slot>) -> Self {
        ConsumerGuard { inner, local, slot }
    }
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        let waiting = self.slot.close();
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        // Unsubscribed first, so the broker does not route them to this connection again.
        inner.remove(self.local);
        if !waiting.is_empty() {
            tracing::debug!(
                count = waiting.len(),
                "consumer dropped; waiting performs given back"
            );
        }
        for job in waiting {
            give_back(&inner, &job.topic, &job.payload, job.redeliveries);
        }
    }
}

fn give_back(inner: &Inner, topic: &Topic, payload: &[u8], redeliveries: u32) {
    let count = redeliveries.to_string();
    inner.publish_detached(Publish {
        topic: topic.as_str(),
        payload,
        retain: false,
        user: &[(REDELIVERIES, &count)],
        expiry: None,
    });
}

/// What settling an MQTT delivery means; see the [module docs](self).
struct MqttSettle {
    slot: Arc<Slot>,
    topic: Topic,
    payload: Bytes,
    redeliveries: u32,
}

impl MqttSettle {
    fn inner(&self) -> Result<Arc<Inner>> {
        self.slot.inner.upgrade().ok_or(Error::Closed)
    }
}

impl fmt::Debug for MqttSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttSettle")
            .field("topic", &self.topic)
            .field("redeliveries", &self.redeliveries)
            .finish()
    }
}

#[async_trait]
impl Settle for MqttSettle {
    /// Frees the prefetch slot; the broker had its PUBACK on arrival.
    async fn ack(&mut self) -> Result<()> {
        Ok(())
    }

    /// With `requeue`, publishes the perform again on its topic (and waits for the
    /// broker's acknowledgement); without, drops it.
    async fn nack(&mut self, requeue: bool) -> Result<()> {
        if requeue {
            let count = (self.redeliveries + 1).to_string();
            self.inner()?
                .publish(Publish {
                    topic: self.topic.as_str(),
                    payload: &self.payload,
                    retain: false,
                    user: &[(REDELIVERIES, &count)],
                    expiry: None,
                })
                .await?;
        }
        Ok(())
    }

    /// Publishes the dead letter; without a dead-letter topic, logs it and drops it.
    async fn reject(&mut self, letter: DeadLetter) -> Result<()> {
        match self.inner()?.dead_letter(&letter).await {
            Ok(()) => Ok(()),
            Err(Error::Unsupported { .. }) => {
                tracing::warn!(topic = %letter.topic, reason = %letter.reason, "dead letter dropped: no dead_letter_topic");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Publishes the perform again, inside a live process.
    fn give_back(&mut self) {
        if let Some(inner) = self.slot.inner.upgrade()
            && !inner.is_closed()
        {
            tracing::debug!(topic = %self.topic, "delivery dropped unacknowledged; given back");
            give_back(&inner, &self.topic, &self.payload, self.redeliveries + 1);
        }
    }

    fn settled(&mut self) {
        self.slot.release();
    }
}
