//! A map that keeps what was used most recently within a byte budget, shared between
//! threads: the cache's in-memory tier of served answers and the memo of parsed bodies.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

// Keys are blake3 hashes or request bodies; foldhash (seeded per process, so not steerable
// from outside) hashes them for a fraction of what the default SipHash costs per lookup.
use foldhash::fast::RandomState;
use lru::LruCache;

struct Inner<K, V> {
    /// In order of use, each value with the bytes it counts for.
    map: LruCache<K, (V, u64), RandomState>,
    bytes: u64,
}

pub struct SizedLru<K, V> {
    inner: Mutex<Inner<K, V>>,
    max_bytes: u64,
}

impl<K: Hash + Eq, V: Clone> SizedLru<K, V> {
    pub fn new(max_bytes: u64) -> SizedLru<K, V> {
        SizedLru {
            inner: Mutex::new(Inner {
                map: LruCache::unbounded_with_hasher(RandomState::default()),
                bytes: 0,
            }),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        // Every update leaves the map and its byte count consistent before it can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value, now the most recently used.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.lock().map.get(key).map(|(v, _)| v.clone())
    }

    /// Keeps `value`, counted as `size` bytes, in place of any value under `key`. A value
    /// over an eighth of the budget is not kept (and its key is not copied). Over budget,
    /// the least recently used go one by one, so no single call pays for clearing a batch.
    pub fn insert<Q>(&self, key: &Q, value: V, size: u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut inner = self.lock();
        if let Some((_, old)) = inner.map.pop(key) {
            inner.bytes -= old;
        }
        if size > self.max_bytes / 8 {
            return;
        }
        inner.map.put(key.to_owned(), (value, size));
        inner.bytes += size;
        while inner.bytes > self.max_bytes {
            let Some((_, (_, old))) = inner.map.pop_lru() else {
                break;
            };
            inner.bytes -= old;
        }
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        let mut inner = self.lock();
        if let Some((_, old)) = inner.map.pop(key) {
            inner.bytes -= old;
        }
    }

    /// Whether `key` is kept, without counting as a use.
    pub fn contains<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.lock().map.contains(key)
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().map.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_keeps_the_recently_used() {
        let lru: SizedLru<u8, u8> = SizedLru::new(80);
        for i in 0..12u8 {
            lru.insert(&i, i, 10);
            assert_eq!(lru.get(&0), Some(0), "the value in use is kept");
        }
        assert_eq!((lru.bytes(), lru.len()), (80, 8));
        assert_eq!(lru.get(&1), None, "the least recently used went");
        lru.insert(&0, 100, 5);
        assert_eq!(
            (lru.get(&0), lru.bytes()),
            (Some(100), 75),
            "replaced in place"
        );
        lru.remove(&0);
        assert_eq!((lru.get(&0), lru.bytes()), (None, 70));
    }

    #[test]
    fn a_value_over_an_eighth_of_the_budget_is_not_kept_and_drops_the_old_one() {
        let lru: SizedLru<String, u8> = SizedLru::new(80);
        lru.insert("k", 1, 10);
        assert!(lru.contains("k"));
        lru.insert("k", 2, 11);
        assert!(!lru.contains("k") && lru.is_empty());
        assert_eq!(lru.bytes(), 0);
    }
}
