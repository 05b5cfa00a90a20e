//! The window of completed tasks a worker remembers, to answer repeated performs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

/// A bounded memory of completed tasks: the oldest are forgotten past `cap` entries, and
/// the oldest completions' bytes are dropped (the tid is still remembered) past
/// [`CACHED_BYTES`].
///
/// Its keys come from the network (`client/tid` of each perform), so the map keeps std's
/// SipHash, which a sender cannot flood with colliding keys; a key is allocated once and
/// shared by the map and both queues.
pub(super) struct DedupWindow {
    pub(super) map: HashMap<Arc<str>, Option<Bytes>>,
    pub(super) order: VecDeque<Arc<str>>,
    pub(super) cap: usize,
    pub(super) bytes: usize,
    /// Keys whose completion is still cached, oldest first.
    pub(super) cached: VecDeque<Arc<str>>,
}

/// Total completion bytes a worker keeps to answer repeated performs.
pub(super) const CACHED_BYTES: usize = 16 << 20;

impl DedupWindow {
    pub(super) fn new(cap: usize) -> Self {
        DedupWindow {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            bytes: 0,
            cached: VecDeque::new(),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&Option<Bytes>> {
        self.map.get(key)
    }

    pub(super) fn insert(&mut self, key: &str, completion: Option<Bytes>) {
        let key: Arc<str> = key.into();
        let completion = completion.filter(|b| b.len() <= CACHED_BYTES / 16);
        if let Some(b) = &completion {
            self.bytes += b.len();
            self.cached.push_back(key.clone());
        }
        match self.map.insert(key.clone(), completion) {
            None => self.order.push_back(key),
            Some(Some(old)) => self.bytes -= old.len(),
            Some(None) => {}
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front()
                && let Some(Some(b)) = self.map.remove(&old)
            {
                self.bytes -= b.len();
            }
        }
        while self.bytes > CACHED_BYTES {
            let Some(old) = self.cached.pop_front() else {
                break;
            };
            if let Some(slot) = self.map.get_mut(&old)
                && let Some(b) = slot.take()
            {
                self.bytes -= b.len();
            }
        }
        // `cached` may hold keys already evicted or replaced; keep it from growing past
        // the window.
        while self.cached.len() > 2 * self.cap {
            self.cached.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn dedup_window_is_bounded_in_entries_and_bytes() {
        let mut w = DedupWindow::new(3);
        for i in 0..5 {
            w.insert(&format!("k{i}"), Some(Bytes::from(vec![0u8; 10])));
        }
        assert!(w.get("k0").is_none() && w.get("k1").is_none());
        assert!(matches!(w.get("k4"), Some(Some(_))));
        assert_eq!(w.bytes, 30);
        w.insert("k4", None);
        assert_eq!(w.bytes, 20);
        let mut w = DedupWindow::new(1000);
        let big = CACHED_BYTES / 16;
        for i in 0..40 {
            w.insert(&format!("b{i}"), Some(Bytes::from(vec![0u8; big])));
        }
        assert!(w.bytes <= CACHED_BYTES);
        assert!(
            matches!(w.get("b0"), Some(None)),
            "oldest bytes dropped, tid kept"
        );
        assert!(matches!(w.get("b39"), Some(Some(_))));
    }
}
