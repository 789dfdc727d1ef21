//! The in-memory tier of the cache: recently served entries, decoded and verified, kept
//! within a byte budget, so that a hot hit is answered without leaving the async worker.

// Keys are blake3 hashes; foldhash (seeded per process, so still not steerable from
// outside) hashes them for a fraction of what the default SipHash costs on every hit.
use foldhash::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;

struct Slot {
    entry: Arc<Entry>,
    size: u64,
    /// Logical clock of the last use, for least-recently-used eviction.
    used: u64,
    /// When the store's access record was last asked to refresh (ms since the epoch).
    touched_ms: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<CacheKey, Slot>,
    bytes: u64,
    clock: u64,
}

pub struct Hot {
    inner: Mutex<Inner>,
    max_bytes: u64,
}

impl Hot {
    pub fn new(max_bytes: u64) -> Hot {
        Hot {
            inner: Mutex::new(Inner::default()),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the map and its byte count consistent before it can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry, and whether its access record in the store is due a refresh (once per
    /// `touch_every_ms`; the caller does it off the async worker).
    pub fn get(
        &self,
        key: &CacheKey,
        now_ms: u64,
        touch_every_ms: u64,
    ) -> Option<(Arc<Entry>, bool)> {
        let mut inner = self.lock();
        inner.clock += 1;
        let tick = inner.clock;
        let slot = inner.map.get_mut(key)?;
        slot.used = tick;
        let due = now_ms.saturating_sub(slot.touched_ms) >= touch_every_ms;
        if due {
            slot.touched_ms = now_ms;
        }
        Some((slot.entry.clone(), due))
    }

    /// Keeps `entry`; entries over an eighth of the budget are not kept at all. When over
    /// budget, the least recently used quarter of the entries goes.
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>, now_ms: u64) {
        let size = entry.stored_size();
        let mut inner = self.lock();
        if let Some(old) = inner.map.remove(&key) {
            inner.bytes -= old.size;
        }
        if size > self.max_bytes / 8 {
            return;
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.map.insert(
            key,
            Slot {
                entry,
                size,
                used,
                touched_ms: now_ms,
            },
        );
        inner.bytes += size;
        if inner.bytes > self.max_bytes {
            let mut by_use: Vec<(u64, CacheKey)> =
                inner.map.iter().map(|(k, s)| (s.used, *k)).collect();
            by_use.sort_unstable();
            let drop_n = (by_use.len() / 4).max(1);
            for (_, k) in by_use.into_iter().take(drop_n) {
                if let Some(old) = inner.map.remove(&k) {
                    inner.bytes -= old.size;
                }
            }
        }
    }

    pub fn remove(&self, key: &CacheKey) {
        let mut inner = self.lock();
        if let Some(old) = inner.map.remove(key) {
            inner.bytes -= old.size;
        }
    }

    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;

    #[test]
    fn stays_within_budget_and_keeps_the_recently_used() {
        let one = sample(false).stored_size();
        let hot = Hot::new(one * 8);
        for i in 0..12u8 {
            hot.insert(CacheKey([i; 32]), Arc::new(sample(false)), 0);
            assert!(
                hot.get(&CacheKey([0; 32]), 0, 60).is_some(),
                "the entry in use is kept"
            );
        }
        assert!(hot.bytes() <= one * 8);
        assert!(
            hot.get(&CacheKey([1; 32]), 0, 60).is_none(),
            "the least recently used went"
        );
        assert_eq!(
            hot.get(&CacheKey([0; 32]), 10, 60).map(|g| g.1),
            Some(false)
        );
        assert_eq!(
            hot.get(&CacheKey([0; 32]), 70, 60).map(|g| g.1),
            Some(true),
            "touch due"
        );
        assert_eq!(
            hot.get(&CacheKey([0; 32]), 80, 60).map(|g| g.1),
            Some(false),
            "once"
        );
        hot.remove(&CacheKey([0; 32]));
        assert!(hot.get(&CacheKey([0; 32]), 0, 60).is_none());
    }
}
