//! Where every stored entry is, held in memory: key → place in the answer files, with the
//! times eviction needs, and the live bytes of each segment. Lookups never reach the store.

use std::collections::BTreeMap;

// Keys are blake3 hashes; foldhash (seeded per process) hashes them cheaply and cannot be
// steered from outside.
use foldhash::HashMap;

use crate::cache::answers::Place;
use crate::cache::key::CacheKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub place: Place,
    /// Seconds since the epoch.
    pub created_s: u32,
    pub last_s: u32,
    /// Used since the journal last had its times.
    pub dirty: bool,
}

#[derive(Default)]
pub struct Index {
    map: HashMap<CacheKey, Slot>,
    /// Segment → bytes of the records in it that the index points at.
    live: BTreeMap<u32, u64>,
    bytes: u64,
}

impl Index {
    pub fn get(&self, key: &CacheKey) -> Option<Slot> {
        self.map.get(key).copied()
    }

    pub fn contains(&self, key: &CacheKey) -> bool {
        self.map.contains_key(key)
    }

    /// Records `slot` for `key`, returning the one it replaces.
    pub fn insert(&mut self, key: &CacheKey, slot: Slot) -> Option<Slot> {
        *self.live.entry(slot.place.segment).or_default() += slot.place.record_len();
        self.bytes += slot.place.record_len();
        let old = self.map.insert(*key, slot);
        if let Some(o) = old {
            self.forget(o);
        }
        old
    }

    pub fn remove(&mut self, key: &CacheKey) -> Option<Slot> {
        let old = self.map.remove(key);
        if let Some(o) = old {
            self.forget(o);
        }
        old
    }

    fn forget(&mut self, old: Slot) {
        let len = old.place.record_len();
        self.bytes = self.bytes.saturating_sub(len);
        if let Some(live) = self.live.get_mut(&old.place.segment) {
            *live = live.saturating_sub(len);
        }
    }

    /// Notes a use at `now_s`.
    pub fn touch(&mut self, key: &CacheKey, now_s: u32) {
        if let Some(slot) = self.map.get_mut(key) {
            if slot.last_s != now_s {
                slot.last_s = now_s;
                slot.dirty = true;
            }
        }
    }

    /// Notes that the use at `last_s` is in the journal (a later one stays dirty).
    pub fn mark_saved(&mut self, key: &CacheKey, last_s: u32) {
        if let Some(slot) = self.map.get_mut(key) {
            if slot.last_s == last_s {
                slot.dirty = false;
            }
        }
    }

    /// Live bytes in `segment`; forgets a segment that has none left.
    pub fn live(&mut self, segment: u32) -> u64 {
        let live = self.live.get(&segment).copied().unwrap_or(0);
        if live == 0 {
            self.live.remove(&segment);
        }
        live
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of all records the index points at.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = (CacheKey, Slot)> + '_ {
        self.map.iter().map(|(k, s)| (*k, *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(segment: u32, len: u32) -> Slot {
        Slot {
            place: Place {
                segment,
                offset: 0,
                len,
            },
            created_s: 1,
            last_s: 1,
            dirty: false,
        }
    }

    #[test]
    fn live_bytes_follow_inserts_replacements_and_removals() {
        let mut index = Index::default();
        let (a, b) = (CacheKey([1; 32]), CacheKey([2; 32]));
        assert_eq!(index.insert(&a, slot(1, 100)), None);
        index.insert(&b, slot(1, 50));
        assert_eq!(index.live(1), 132 + 82);
        let replaced = index.insert(&a, slot(2, 10));
        assert_eq!(replaced, Some(slot(1, 100)));
        assert_eq!((index.live(1), index.live(2)), (82, 42));
        assert_eq!(index.bytes(), 82 + 42);
        index.remove(&b);
        assert_eq!(index.live(1), 0);
        assert_eq!(index.len(), 1);
        index.touch(&a, 9);
        let touched = index.get(&a).unwrap();
        assert_eq!((touched.last_s, touched.dirty), (9, true));
        index.mark_saved(&a, 8);
        assert!(
            index.get(&a).unwrap().dirty,
            "a later use is still to be saved"
        );
        index.mark_saved(&a, 9);
        assert!(!index.get(&a).unwrap().dirty);
        assert!(!index.contains(&b));
    }
}
