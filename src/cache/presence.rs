//! Which keys the store may hold: a Bloom filter over the keys of stored entries, so that a
//! key the store certainly lacks is a miss at once, without a read of the store on a
//! blocking thread. It is never wrong about a stored key; about 1 in 100 keys that are not
//! stored it says "maybe", and those cost the read they always cost.
//!
//! Only the cache's writer changes it: it notes each key before the entry is stored (so a
//! reader that finds the entry gone from the answers waiting to be stored finds its key
//! here), and builds it anew from the store's keys at start and whenever it has noted more
//! keys than it was built for (removed entries stay in it until then). Until the first
//! build, every key may be stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use fastbloom::AtomicBloomFilter;

use crate::cache::key::CacheKey;

/// Keys a filter is built for at least, however few entries there are (in unit tests, few
/// enough that their caches fill it and have it built anew).
pub const MIN_KEYS: u64 = if cfg!(test) { 64 } else { 65_536 };
/// Share of absent keys the filter may take for present ones.
const FALSE_POSITIVES: f64 = 0.01;

#[derive(Default)]
pub struct Presence {
    current: RwLock<Option<Filter>>,
}

struct Filter {
    bloom: AtomicBloomFilter,
    /// Keys it was built for, and keys noted in it so far.
    room: u64,
    noted: AtomicU64,
}

/// The keys of a filter being built.
pub struct Build {
    filter: Filter,
}

/// Cache keys are blake3 hashes: their first eight bytes serve the filter as the hash.
fn hash_of(key: &CacheKey) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&key.0[..8]);
    u64::from_le_bytes(first)
}

impl Build {
    /// A filter for `entries` keys and as many again (at least `min_keys`).
    pub fn new(entries: u64, min_keys: u64) -> Build {
        let room = entries.saturating_mul(2).max(min_keys).max(1);
        let bloom = AtomicBloomFilter::with_false_pos(FALSE_POSITIVES)
            .expected_items(usize::try_from(room).unwrap_or(usize::MAX));
        Build {
            filter: Filter {
                bloom,
                room,
                noted: AtomicU64::new(0),
            },
        }
    }

    pub fn add(&mut self, key: &CacheKey) {
        self.filter.note(key);
    }
}

impl Filter {
    fn note(&self, key: &CacheKey) {
        self.bloom.insert_hash(hash_of(key));
        self.noted.fetch_add(1, Ordering::Relaxed);
    }
}

impl Presence {
    fn current(&self) -> RwLockReadGuard<'_, Option<Filter>> {
        // A poisoned lock still holds a whole filter: it is only ever replaced whole.
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// False only if no entry is stored under `key`.
    pub fn may_hold(&self, key: &CacheKey) -> bool {
        self.current()
            .as_ref()
            .is_none_or(|f| f.bloom.contains_hash(hash_of(key)))
    }

    /// Notes that an entry is about to be stored under `key`. True when the filter has
    /// taken as many keys as it was built for: time to build it anew.
    pub fn note(&self, key: &CacheKey) -> bool {
        self.current().as_ref().is_some_and(|f| {
            f.note(key);
            f.noted.load(Ordering::Relaxed) > f.room
        })
    }

    /// Puts `build` in place of the filter in use.
    pub fn install(&self, build: Build) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(build.filter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> CacheKey {
        CacheKey(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    #[test]
    fn before_its_first_build_every_key_may_be_held() {
        let p = Presence::default();
        assert!(p.may_hold(&key(1)));
        assert!(!p.note(&key(1)), "nothing to fill yet");
    }

    #[test]
    fn noted_keys_are_held_and_most_others_are_not() {
        let p = Presence::default();
        let mut b = Build::new(0, 1_000);
        for i in 0..500 {
            b.add(&key(i));
        }
        p.install(b);
        for i in 500..1_000 {
            assert!(!p.note(&key(i)), "room for 1,000 keys");
        }
        assert!(
            (0..1_000).all(|i| p.may_hold(&key(i))),
            "a stored key missed"
        );
        let taken = (1_000..11_000).filter(|&i| p.may_hold(&key(i))).count();
        // 1% expected: 100 of 10,000.
        assert!(
            taken < 300,
            "{taken} of 10,000 absent keys taken for present ones"
        );
    }

    #[test]
    fn a_full_filter_asks_to_be_built_anew() {
        let p = Presence::default();
        p.install(Build::new(0, 10));
        let full = (0..11).map(|i| p.note(&key(i))).collect::<Vec<_>>();
        assert_eq!(full.iter().filter(|f| **f).count(), 1, "{full:?}");
        assert!(full[10]);
    }
}
