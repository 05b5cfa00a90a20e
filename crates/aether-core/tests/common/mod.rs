//! A transport for tests: the in-memory one, with faults a test switches on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aether_core::{
    Action, Bytes, Capabilities, ConsumeOptions, Consumer, DeadLetter, MemoryTransport, Result,
    Subscription, Topic, TopicFilter, Transport, WorkQueue,
};
use async_trait::async_trait;
use tokio::sync::watch;

/// The in-memory transport, saying whether it redelivers as told, and with a gap counter
/// (`gap_signals`) if it has one.
#[derive(Debug)]
pub(crate) struct Faulty {
    pub(crate) inner: MemoryTransport,
    pub(crate) redelivers: bool,
    pub(crate) gaps: Option<Arc<watch::Sender<u64>>>,
    /// Completions still to drop on publish (shared by the transports that hold a clone);
    /// each dropped one is reported as a gap, once the subscriber would be back, where
    /// there is a counter.
    pub(crate) drop_completions: Arc<AtomicUsize>,
    /// Report a gap while the next enqueue is under way (as a Redis enqueue waiting for its
    /// subscriptions to come back does).
    pub(crate) gap_in_enqueue: AtomicBool,
    /// Statuses published.
    pub(crate) statuses: Arc<AtomicUsize>,
    /// Hold every message of a subscription to statuses only this long (as a broker with a
    /// queue per subscription may, under load): the transport then says it is not
    /// `ordered` across subscriptions, while each subscription keeps its own order.
    pub(crate) slow_status_subscriptions: Option<Duration>,
}

impl Faulty {
    pub(crate) fn new(
        inner: MemoryTransport,
        redelivers: bool,
        gaps: Option<&Arc<watch::Sender<u64>>>,
    ) -> Faulty {
        Faulty {
            inner,
            redelivers,
            gaps: gaps.cloned(),
            drop_completions: Arc::default(),
            gap_in_enqueue: AtomicBool::new(false),
            statuses: Arc::default(),
            slow_status_subscriptions: None,
        }
    }

    fn gap(&self) {
        if let Some(gaps) = &self.gaps {
            gaps.send_modify(|n| *n += 1);
        }
    }
}

#[async_trait]
impl Transport for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner
            .capabilities()
            .redelivers_on_crash(self.redelivers)
            // A dropped completion is a silent loss unless reported as a gap.
            .gap_signals(self.gaps.is_some())
            .ordered(self.slow_status_subscriptions.is_none())
    }
    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        if topic.action() == Action::Status {
            self.statuses.fetch_add(1, Ordering::SeqCst);
        }
        if topic.action() == Action::Complete
            && self
                .drop_completions
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            if let Some(gaps) = self.gaps.clone() {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    gaps.send_modify(|n| *n += 1);
                });
            }
            return Ok(());
        }
        self.inner.publish(topic, payload).await
    }
    async fn subscribe(&self, filter: &TopicFilter) -> Result<Subscription> {
        let mut sub = self.inner.subscribe(filter).await?;
        if let Some(delay) = self.slow_status_subscriptions
            && filter.as_str().ends_with("/status")
        {
            // Forwarded in order, each message `delay` late.
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    tokio::time::sleep(delay).await;
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            });
            sub = Subscription::new(rx, None);
        }
        Ok(match &self.gaps {
            Some(gaps) => sub.with_gaps(gaps.subscribe()),
            None => sub,
        })
    }
    async fn enqueue(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        if self.gap_in_enqueue.swap(false, Ordering::SeqCst) {
            self.gap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.inner.enqueue(topic, payload).await
    }
    async fn consume(&self, queue: &WorkQueue, options: ConsumeOptions) -> Result<Consumer> {
        self.inner.consume(queue, options).await
    }
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.inner.dead_letter(letter).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
