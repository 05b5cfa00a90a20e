//! The worker's reporter: a task's status and complete messages, numbered and in the
//! codec its perform came in, with the acceptance sent once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::WorkerShared;
use crate::action::{Action, Status};
use crate::envelope::{Codec, Header, empty_object, encode_as};
use crate::error::{Error, Result};
use crate::node::Aether;
use crate::topic::Topic;
use crate::transport::{Delivery, SharedTransport};

/// Publishes a task's status and complete messages, in the codec its perform came in.
#[derive(Debug)]
pub(crate) struct Reporter {
    pub(crate) transport: SharedTransport,
    /// The perform's topic.
    pub(crate) topic: Topic,
    pub(crate) codec: Codec,
    /// The node, whose host and client id sign every message.
    pub(crate) node: Aether,
    /// The lease this worker promises to heartbeat within.
    pub(crate) lease: Duration,
    pub(crate) limit: usize,
    /// Statuses numbered so far for this task.
    pub(crate) seq: std::sync::atomic::AtomicU32,
    /// Statuses the transport took: what a completion tells the client to wait for.
    pub(crate) published: std::sync::atomic::AtomicU32,
    /// Set once the acceptance (progress 0) is out.
    pub(crate) accepted: tokio::sync::OnceCell<()>,
    /// The task's process span, which records the reports as events.
    pub(crate) span: tracing::Span,
}

impl Reporter {
    /// The reporter of the task in `delivery`, whose perform came in `codec`.
    pub(super) fn new(
        shared: &WorkerShared,
        delivery: &Delivery,
        codec: Codec,
        lease: Duration,
        span: tracing::Span,
    ) -> Reporter {
        Reporter {
            transport: shared.transport.clone(),
            topic: delivery.topic.clone(),
            codec,
            node: shared.node.clone(),
            lease,
            limit: shared.limit,
            seq: Default::default(),
            published: Default::default(),
            accepted: Default::default(),
            span,
        }
    }

    /// A header whose host and client [`encode`](Reporter::encode) fills in.
    fn header(&self, action: Action, status: Status, progress: u8) -> Header {
        let mut h = Header::new(action, "", "")
            .status(status)
            .progress(progress);
        h.lease = Some(self.lease.as_millis() as u64);
        h
    }

    /// Sends the acceptance (progress 0, with the lease) unless it is out already.
    /// Concurrent callers wait for one send; a failed send is tried again by the next.
    pub(crate) async fn accept(&self) -> Result<()> {
        self.accept_with(empty_object(self.codec)).await.map(drop)
    }

    /// Sends a status, preceded by the acceptance if that was held back and is not out yet.
    /// A progress-0 report is itself the acceptance when it comes first.
    pub(crate) async fn status(&self, progress: u8, data: &[u8]) -> Result<()> {
        if !self.accepted.initialized() {
            let first = if progress == 0 {
                data
            } else {
                empty_object(self.codec)
            };
            if self.accept_with(first).await? && progress == 0 {
                return Ok(());
            }
        }
        self.send_status(progress, data).await
    }

    /// The acceptance with `data`, unless it is out already; true if this call sent it.
    async fn accept_with(&self, data: &[u8]) -> Result<bool> {
        let mut sent = false;
        self.accepted
            .get_or_try_init(|| {
                sent = true;
                self.send_status(0, data)
            })
            .await?;
        Ok(sent)
    }

    async fn send_status(&self, progress: u8, data: &[u8]) -> Result<()> {
        let mut header = self.header(Action::Status, Status::Progress, progress);
        // Numbered at encoding; concurrent reports of one task may still be published out
        // of order, which the client treats like any stale progress.
        header.seq = Some(self.seq.fetch_add(1, Ordering::AcqRel) + 1);
        let bytes = self.encode(&header, data);
        self.send(Action::Status, bytes).await?;
        self.published.fetch_add(1, Ordering::AcqRel);
        crate::observe::status_event(&self.span, progress);
        Ok(())
    }

    pub(crate) fn complete_bytes(&self, error: Option<&str>, data: &[u8]) -> Bytes {
        let status = if error.is_some() {
            Status::Failed
        } else {
            Status::Succeed
        };
        let mut h = self.header(Action::Complete, status, 100);
        h.error = error.map(str::to_owned);
        // The client counts arrivals: a status that failed to go out is not waited for.
        h.seq = Some(self.published.load(Ordering::Acquire));
        self.encode(&h, data)
    }

    fn encode(&self, header: &Header, data: &[u8]) -> Bytes {
        let config = self.node.config();
        let sender = (config.host.as_str(), config.client_id.as_str());
        encode_as(self.codec, header, sender, data)
    }

    /// A failed completion whose data is `{"error": message}`, readable by Python clients.
    pub(crate) fn failure_bytes(&self, message: &str) -> Bytes {
        let data = self
            .codec
            .to_vec(&serde_json::json!({ "error": message }))
            .unwrap_or_else(|_| empty_object(self.codec).to_vec());
        self.complete_bytes(Some(message), &data)
    }

    pub(crate) async fn send(&self, action: Action, bytes: Bytes) -> Result<()> {
        if bytes.len() > self.limit {
            return Err(Error::PayloadTooLarge {
                size: bytes.len(),
                limit: self.limit,
            });
        }
        self.transport
            .publish(&self.topic.with_action(action), bytes)
            .await
    }
}
