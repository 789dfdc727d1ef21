//! Which keys may be in the store: a fixed-size bit filter indexed by bits of the key
//! itself (keys are already uniform hashes), so that a request for an answer that was
//! never stored is known to miss without a store call. False positives only cost that
//! call; removals leave their bits set.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::key::CacheKey;

/// 2^23 bits (1 MiB): about 3% false positives at a million entries with three probes.
const BITS_LOG2: u32 = 23;
const PROBES: usize = 3;

pub struct Presence {
    words: Box<[AtomicU64]>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            words: (0..(1usize << (BITS_LOG2 - 6)))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl Presence {
    fn probes(key: &CacheKey) -> impl Iterator<Item = (usize, u64)> + '_ {
        (0..PROBES).map(move |i| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&key.0[i * 4..i * 4 + 4]);
            let bit = (u32::from_le_bytes(b) & ((1 << BITS_LOG2) - 1)) as usize;
            (bit / 64, 1u64 << (bit % 64))
        })
    }

    pub fn insert(&self, key: &CacheKey) {
        for (word, mask) in Self::probes(key) {
            self.words[word].fetch_or(mask, Ordering::Relaxed);
        }
    }

    /// False means the key is certainly not stored.
    pub fn may_contain(&self, key: &CacheKey) -> bool {
        Self::probes(key).all(|(word, mask)| self.words[word].load(Ordering::Relaxed) & mask != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::cache_key;

    #[test]
    fn inserted_keys_are_always_found_and_others_mostly_not() {
        let p = Presence::default();
        let keys: Vec<CacheKey> = (0..10_000)
            .map(|i| cache_key("POST", "/x", "p", format!("{i}").as_bytes()))
            .collect();
        for k in &keys {
            p.insert(k);
        }
        assert!(keys.iter().all(|k| p.may_contain(k)), "no false negatives");
        let strangers = (0..10_000)
            .filter(|i| p.may_contain(&cache_key("POST", "/y", "p", format!("{i}").as_bytes())))
            .count();
        assert!(
            strangers < 10,
            "{strangers} false positives in 10,000 at 10,000 entries"
        );
    }
}
