//! The in-memory tier of the cache: recently served entries, decoded and verified, kept
//! within a byte budget, so that a hot hit is answered without leaving the async worker.

// Keys are blake3 hashes; foldhash (seeded per process, so still not steerable from
// outside) hashes them for a fraction of what the default SipHash costs on every hit.
use foldhash::fast::RandomState;
use lru::LruCache;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;

struct Slot {
    entry: Arc<Entry>,
    size: u64,
}

struct Inner {
    /// In order of use: an insert over budget drops the least recently used, one by one,
    /// so no single request pays for clearing a batch.
    map: LruCache<CacheKey, Slot, RandomState>,
    bytes: u64,
}

pub struct Hot {
    inner: Mutex<Inner>,
    max_bytes: u64,
}

impl Hot {
    pub fn new(max_bytes: u64) -> Hot {
        Hot {
            inner: Mutex::new(Inner {
                map: LruCache::unbounded_with_hasher(RandomState::default()),
                bytes: 0,
            }),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the map and its byte count consistent before it can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry, now the most recently used.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        Some(self.lock().map.get(key)?.entry.clone())
    }

    /// Keeps `entry`; entries over an eighth of the budget are not kept at all. When over
    /// budget, the least recently used go until it fits.
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        let size = entry.memory_size();
        let mut inner = self.lock();
        if let Some(old) = inner.map.pop(&key) {
            inner.bytes -= old.size;
        }
        if size > self.max_bytes / 8 {
            return;
        }
        inner.map.put(key, Slot { entry, size });
        inner.bytes += size;
        while inner.bytes > self.max_bytes {
            let Some((_, old)) = inner.map.pop_lru() else {
                break;
            };
            inner.bytes -= old.size;
        }
    }

    pub fn remove(&self, key: &CacheKey) {
        let mut inner = self.lock();
        if let Some(old) = inner.map.pop(key) {
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
        let one = sample(false).memory_size();
        let hot = Hot::new(one * 8);
        for i in 0..12u8 {
            hot.insert(CacheKey([i; 32]), Arc::new(sample(false)));
            assert!(
                hot.get(&CacheKey([0; 32])).is_some(),
                "the entry in use is kept"
            );
        }
        assert!(hot.bytes() <= one * 8);
        assert!(
            hot.get(&CacheKey([1; 32])).is_none(),
            "the least recently used went"
        );
        hot.remove(&CacheKey([0; 32]));
        assert!(hot.get(&CacheKey([0; 32])).is_none());
    }
}
