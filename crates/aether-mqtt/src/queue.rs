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
//! waits in the consumer's line (at most [`buffer`](crate::MqttConfig::buffer) long) until
//! a delivery is settled.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use aether_core::{
    Acker, Bytes, Consumed, DeadLetter, DeadLetterReason, Delivery, Error, InvalidMessage, Result,
    Topic,
};
use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::router::{Local, REDELIVERIES};
use crate::transport::{Inner, Publish};

/// Room in a consumer's channel beyond its prefetch, for refused messages (which hold no
/// credit).
const REFUSED_SLACK: usize = 16;

/// A perform taken from the broker.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) topic: Topic,
    pub(crate) payload: Bytes,
    pub(crate) redeliveries: u32,
}

struct SlotState {
    /// Deliveries this consumer may still hand out.
    credit: usize,
    /// Performs waiting for credit.
    waiting: VecDeque<Job>,
    /// The consumer's channel; `None` once closed, which ends the consumer.
    tx: Option<mpsc::Sender<Consumed>>,
}

impl SlotState {
    /// The channel, if the consumer is still there.
    fn open(&self) -> Option<&mpsc::Sender<Consumed>> {
        self.tx.as_ref().filter(|tx| !tx.is_closed())
    }
}

/// One local consumer: its channel, its credit and its line.
pub(crate) struct Slot {
    inner: Weak<Inner>,
    line: usize,
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
        let prefetch = prefetch.max(1);
        let (tx, rx) = mpsc::channel(prefetch + REFUSED_SLACK);
        let slot = Slot {
            inner,
            line,
            state: Mutex::new(SlotState {
                credit: prefetch,
                waiting: VecDeque::new(),
                tx: Some(tx),
            }),
        };
        (Arc::new(slot), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a perform offered now would be handed out at once.
    pub(crate) fn has_credit(&self) -> bool {
        self.lock().credit > 0
    }

    /// Hands `job` out, or puts it in line; gives it back when the line is full or the
    /// consumer gone.
    pub(crate) fn offer(self: &Arc<Self>, job: Job) -> Result<(), Job> {
        let mut st = self.lock();
        let Some(tx) = st.open().cloned() else {
            return Err(job);
        };
        if st.credit > 0 {
            st.credit -= 1;
            drop(st);
            self.hand_out(&tx, job);
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
        let tx = self.lock().open().cloned();
        if tx.is_some_and(|tx| tx.try_send(Err(invalid)).is_err()) {
            tracing::warn!("a refused perform was not reported: the consumer is behind");
        }
    }

    /// Sends a delivery holding one credit, outside the slot's lock. The channel has room
    /// for every credit; if the consumer is gone, the delivery is dropped and so given back.
    fn hand_out(self: &Arc<Self>, tx: &mpsc::Sender<Consumed>, job: Job) {
        let acker = MqttAcker {
            slot: self.clone(),
            topic: job.topic.clone(),
            payload: job.payload.clone(),
            redeliveries: job.redeliveries,
            settled: false,
        };
        let delivery = Delivery::new(job.topic, job.payload, job.redeliveries, Box::new(acker));
        let _ = tx.try_send(Ok(delivery));
    }

    /// A delivery was settled: its credit goes to the next perform in line, if any.
    fn release(self: &Arc<Self>) {
        let next = {
            let mut st = self.lock();
            let next = match st.open().cloned() {
                Some(tx) => st.waiting.pop_front().map(|job| (tx, job)),
                None => None,
            };
            if next.is_none() {
                st.credit += 1;
            }
            next
        };
        if let Some((tx, job)) = next {
            self.hand_out(&tx, job);
        }
    }

    /// Stops handing out and ends the consumer's channel; returns the performs still in
    /// line.
    pub(crate) fn close(&self) -> VecDeque<Job> {
        let mut st = self.lock();
        st.tx = None;
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
    });
}

/// The acknowledgement handle of an MQTT delivery; see the [module docs](self).
struct MqttAcker {
    slot: Arc<Slot>,
    topic: Topic,
    payload: Bytes,
    redeliveries: u32,
    settled: bool,
}

impl MqttAcker {
    fn unsettled(&self) -> Result<()> {
        if self.settled {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn inner(&self) -> Result<Arc<Inner>> {
        self.slot.inner.upgrade().ok_or(Error::Closed)
    }

    fn settle(&mut self) {
        self.settled = true;
        self.slot.release();
    }
}

impl fmt::Debug for MqttAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttAcker")
            .field("topic", &self.topic)
            .field("redeliveries", &self.redeliveries)
            .field("settled", &self.settled)
            .finish()
    }
}

#[async_trait]
impl Acker for MqttAcker {
    /// Frees the prefetch slot; the broker had its PUBACK on arrival.
    async fn ack(&mut self) -> Result<()> {
        self.unsettled()?;
        self.settle();
        Ok(())
    }

    /// With `requeue`, publishes the perform again on its topic (and waits for the
    /// broker's acknowledgement); without, drops it.
    async fn nack(&mut self, requeue: bool) -> Result<()> {
        self.unsettled()?;
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
        self.settle();
        Ok(())
    }

    /// Publishes the dead letter; without a dead-letter topic, logs it and drops it.
    async fn reject(&mut self, letter: DeadLetter) -> Result<()> {
        self.unsettled()?;
        match self.inner()?.dead_letter(&letter).await {
            Ok(()) => {}
            Err(Error::Unsupported { .. }) => {
                tracing::warn!(topic = %letter.topic, reason = %letter.reason, "dead letter dropped: no dead_letter_topic");
            }
            Err(e) => return Err(e),
        }
        self.settle();
        Ok(())
    }
}

impl Drop for MqttAcker {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Some(inner) = self.slot.inner.upgrade()
            && !inner.is_closed()
        {
            tracing::debug!(topic = %self.topic, "delivery dropped unacknowledged; given back");
            give_back(&inner, &self.topic, &self.payload, self.redeliveries + 1);
        }
        self.settle();
    }
}
