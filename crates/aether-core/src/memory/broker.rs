//! The in-process broker behind [`MemoryTransport`](super::MemoryTransport): broadcast
//! subscriptions here, work queues in the kit's [`QueueEngine`].

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};

use super::MemoryConfig;
use crate::kit::{EngineConfig, Fanout, QueueEngine};

pub(super) struct Broker {
    pub(super) config: MemoryConfig,
    pub(super) ids: AtomicU64,
    pub(super) subs: Mutex<Fanout>,
    pub(super) engine: Arc<QueueEngine>,
}

impl Broker {
    pub(super) fn new(config: MemoryConfig) -> Broker {
        let engine = EngineConfig {
            queue_capacity: config.queue_capacity,
            redeliver: config.redeliver,
            dead_letter_capacity: config.dead_letter_capacity,
        };
        Broker {
            config,
            ids: AtomicU64::new(1),
            subs: Mutex::new(Fanout::new()),
            engine: QueueEngine::new(engine),
        }
    }

    /// Ends everything a connection opened.
    pub(super) fn disconnect(&self, conn: u64) {
        lock(&self.subs).remove_owner(conn);
        self.engine.disconnect(conn);
    }
}

pub(super) struct SubGuard {
    pub(super) broker: Weak<Broker>,
    pub(super) id: u64,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        if let Some(b) = self.broker.upgrade() {
            lock(&b.subs).remove(self.id);
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
