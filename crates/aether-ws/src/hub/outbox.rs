//! [`Outbox`]: one connection's bounded send queue. Nothing waits on it: a peer that lets
//! it fill is cut off (counted), so a stalled consumer never stalls the hub or the others.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::bump;
use crate::wire::{ToPeer, encode};

#[derive(Debug)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<WsMessage>,
    /// The number of the last broadcast queued; taken with the queueing, so numbers go
    /// out in order.
    seq: Mutex<u64>,
    /// Signalled once when the queue overflowed: the connection ends.
    pub(crate) cut: Notify,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> (Outbox, mpsc::Receiver<WsMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        let outbox = Outbox {
            tx,
            seq: Mutex::new(0),
            cut: Notify::new(),
        };
        (outbox, rx)
    }

    /// Queues a frame; false (and the connection cut, `stalled` counted) if the queue is
    /// full, false if the connection is gone.
    pub(crate) fn push(&self, msg: WsMessage, stalled: &AtomicU64) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(stalled);
                tracing::warn!("a peer's send queue is full: cutting it off");
                self.cut.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues an aether frame.
    pub(crate) fn frame(&self, frame: &ToPeer, stalled: &AtomicU64) -> bool {
        self.push(WsMessage::Binary(encode(frame)), stalled)
    }

    /// Queues a broadcast for subscription `sub`, numbered.
    pub(crate) fn message(
        &self,
        sub: u64,
        topic: String,
        payload: &[u8],
        stalled: &AtomicU64,
    ) -> bool {
        let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        let frame = ToPeer::Message {
            sub,
            seq: *seq + 1,
            topic,
            payload: payload.to_vec(),
        };
        let queued = self.frame(&frame, stalled);
        if queued {
            *seq += 1;
        }
        queued
    }

    /// Skips a number: the peer sees a gap (the backend reported one).
    pub(crate) fn skip(&self) {
        *self.seq.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }
}
