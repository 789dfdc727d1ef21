//! The answer cache: lookups with checksum and age checks, stores, approximate LRU
//! eviction under `cache.max_bytes`, and the operations behind `chatcache cache …`.
//! Every call here is blocking (it reaches the store): async callers use `spawn_blocking`.

pub mod bundle;
pub mod entry;
pub mod flight;
pub mod hot;
pub mod key;
pub mod presence;
pub mod store;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::cache::entry::Entry;
use crate::cache::hot::Hot;
use crate::cache::key::CacheKey;
use crate::cache::presence::Presence;
use crate::cache::store::{Space, Store, StoreResult};

/// A hit is not written back to the access record more often than this.
const TOUCH_EVERY_MS: u64 = 60_000;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Size and times of one entry, kept apart from the entry so eviction never reads bodies.
#[derive(Debug, Clone, Copy)]
struct Access {
    size: u64,
    created_ms: u64,
    last_ms: u64,
}

impl Access {
    fn encode(self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.size.to_le_bytes());
        out[8..16].copy_from_slice(&self.created_ms.to_le_bytes());
        out[16..].copy_from_slice(&self.last_ms.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Access> {
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
        };
        Some(Access {
            size: word(0)?,
            created_ms: word(8)?,
            last_ms: word(16)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Fresh,
    /// Present but older than the caller accepts.
    Stale,
    Missing,
    /// Present but failed its checksum: dropped.
    Corrupt,
}

#[derive(Debug, Serialize)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub on_disk_bytes: u64,
    pub evictions: u64,
    pub dropped_corrupt: u64,
}

#[derive(Debug, Serialize)]
pub struct EntrySummary {
    pub key: String,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub bytes: u64,
    pub created_ms: u64,
    pub last_used_ms: u64,
}

/// What `cache purge` removes.
#[derive(Debug, Clone, Default)]
pub struct Purge {
    pub older_than: Option<Duration>,
    pub model: Option<String>,
    pub all: bool,
}

#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    hot: Hot,
    present: Presence,
    max_bytes: u64,
    max_age: Duration,
    total: AtomicU64,
    count: AtomicU64,
    evicting: AtomicBool,
    evictions: AtomicU64,
    corrupt: AtomicU64,
}

impl Cache {
    /// Wraps the store, counting what it holds (a walk over the small access records).
    /// `hot_bytes` bounds the in-memory tier of recently served entries.
    pub fn open(
        store: Store,
        max_bytes: u64,
        max_age: Duration,
        hot_bytes: u64,
    ) -> StoreResult<Cache> {
        let (mut total, mut count) = (0u64, 0u64);
        let present = Presence::default();
        store.scan_prefix(Space::Access, b"", |k, v| {
            if let (Some(a), Ok(key)) = (Access::decode(v), <[u8; 32]>::try_from(k)) {
                total += a.size;
                count += 1;
                present.insert(&CacheKey(key));
            }
            true
        })?;
        Ok(Cache {
            inner: Arc::new(Inner {
                store,
                hot: Hot::new(hot_bytes),
                present,
                max_bytes,
                max_age,
                total: AtomicU64::new(total),
                count: AtomicU64::new(count),
                evicting: AtomicBool::new(false),
                evictions: AtomicU64::new(0),
                corrupt: AtomicU64::new(0),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The entry under `key` if it is intact and younger than both `cache.max_age` and
    /// `max_age`. A damaged entry is removed and never returned.
    /// The entry under `key` from the in-memory tier, if it is there and young enough;
    /// never blocks. The flag says its access record may be due a refresh (`touch`).
    pub fn get_hot(&self, key: CacheKey, max_age: Option<Duration>) -> Option<(Arc<Entry>, bool)> {
        let now = now_ms();
        let (entry, due) = self.inner.hot.get(&key, now, TOUCH_EVERY_MS)?;
        let age = Duration::from_millis(now.saturating_sub(entry.meta.created_ms));
        if age > self.inner.max_age || max_age.is_some_and(|m| age > m) {
            return None;
        }
        Some((entry, due))
    }

    pub fn get(
        &self,
        key: CacheKey,
        max_age: Option<Duration>,
    ) -> StoreResult<(Lookup, Option<Arc<Entry>>)> {
        let s = &self.inner.store;
        let Some(bytes) = s.get(Space::Entries, &key.0)? else {
            return Ok((Lookup::Missing, None));
        };
        let entry = match Entry::decode(&bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "dropping a damaged cache entry");
                self.inner.corrupt.fetch_add(1, Ordering::Relaxed);
                self.remove(key)?;
                return Ok((Lookup::Corrupt, None));
            }
        };
        let now = now_ms();
        let age = Duration::from_millis(now.saturating_sub(entry.meta.created_ms));
        if age > self.inner.max_age {
            self.remove(key)?;
            return Ok((Lookup::Stale, None));
        }
        if max_age.is_some_and(|m| age > m) {
            return Ok((Lookup::Stale, None));
        }
        self.touch(key)?;
        let entry = Arc::new(entry);
        self.inner.hot.insert(key, entry.clone(), now);
        Ok((Lookup::Fresh, Some(entry)))
    }

    /// Refreshes the entry's last-use time in the store (at most once a minute).
    pub fn touch(&self, key: CacheKey) -> StoreResult<()> {
        let now = now_ms();
        let s = &self.inner.store;
        if let Some(mut a) = s
            .get(Space::Access, &key.0)?
            .and_then(|v| Access::decode(&v))
        {
            if now.saturating_sub(a.last_ms) >= TOUCH_EVERY_MS {
                a.last_ms = now;
                s.put(Space::Access, &key.0, &a.encode())?;
            }
        }
        Ok(())
    }

    /// Stores `entry` under `key`, replacing any older one, then evicts if over the limit.
    /// False when `key` was certainly never stored (no store call needed to know).
    pub fn may_contain(&self, key: CacheKey) -> bool {
        self.inner.present.may_contain(&key)
    }

    pub fn put(&self, key: CacheKey, entry: &Entry) -> StoreResult<()> {
        self.inner.hot.remove(&key);
        self.inner.present.insert(&key);
        let s = &self.inner.store;
        let size = entry.stored_size();
        let access = Access {
            size,
            created_ms: entry.meta.created_ms,
            last_ms: now_ms(),
        };
        let old = s
            .get(Space::Access, &key.0)?
            .and_then(|v| Access::decode(&v));
        // Access record first, entry second (and the reverse on removal): sled replays its
        // one log in order, so a crash between the two can leave a record without an entry
        // (a miss, and evicted like any other) but never an entry that lookups and
        // eviction cannot see.
        s.put(Space::Access, &key.0, &access.encode())?;
        s.put(Space::Entries, &key.0, &entry.encode())?;
        match old {
            Some(o) => {
                self.inner
                    .total
                    .fetch_sub(o.size.min(self.bytes()), Ordering::Relaxed);
            }
            None => {
                self.inner.count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.inner.total.fetch_add(size, Ordering::Relaxed);
        if self.bytes() > self.inner.max_bytes {
            self.evict()?;
        }
        Ok(())
    }

    pub fn remove(&self, key: CacheKey) -> StoreResult<bool> {
        self.inner.hot.remove(&key);
        let s = &self.inner.store;
        let had_entry = s.remove(Space::Entries, &key.0)?.is_some();
        let old = s
            .remove(Space::Access, &key.0)?
            .and_then(|v| Access::decode(&v));
        if let Some(o) = old {
            self.inner
                .total
                .fetch_sub(o.size.min(self.bytes()), Ordering::Relaxed);
            self.inner.count.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(had_entry || old.is_some())
    }

    fn bytes(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// Removes expired entries, then the least recently used until the cache is at 90% of
    /// `max_bytes`. One eviction runs at a time; a concurrent call returns at once.
    pub fn evict(&self) -> StoreResult<u64> {
        if self.inner.evicting.swap(true, Ordering::AcqRel) {
            return Ok(0);
        }
        let result = self.evict_now();
        self.inner.evicting.store(false, Ordering::Release);
        result
    }

    fn evict_now(&self) -> StoreResult<u64> {
        let now = now_ms();
        let max_age_ms = self.inner.max_age.as_millis() as u64;
        let mut all: Vec<(u64, [u8; 32], u64)> = Vec::new();
        let mut expired: Vec<[u8; 32]> = Vec::new();
        self.inner.store.scan_prefix(Space::Access, b"", |k, v| {
            if let (Ok(key), Some(a)) = (<[u8; 32]>::try_from(k), Access::decode(v)) {
                if now.saturating_sub(a.created_ms) > max_age_ms {
                    expired.push(key);
                } else {
                    all.push((a.last_ms, key, a.size));
                }
            }
            true
        })?;
        let mut removed = 0;
        for key in expired {
            removed += u64::from(self.remove(CacheKey(key))?);
        }
        let target = self.inner.max_bytes / 10 * 9;
        if self.bytes() > self.inner.max_bytes {
            all.sort_unstable_by_key(|(last, _, _)| *last);
            for (_, key, _) in all {
                if self.bytes() <= target {
                    break;
                }
                removed += u64::from(self.remove(CacheKey(key))?);
            }
        }
        self.inner.evictions.fetch_add(removed, Ordering::Relaxed);
        if removed > 0 {
            tracing::info!(removed, bytes = self.bytes(), "evicted cache entries");
        }
        Ok(removed)
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.inner.count.load(Ordering::Relaxed),
            bytes: self.bytes(),
            max_bytes: self.inner.max_bytes,
            on_disk_bytes: self.inner.store.size_on_disk(),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            dropped_corrupt: self.inner.corrupt.load(Ordering::Relaxed),
        }
    }

    /// Summaries of up to `limit` entries, most recently used first.
    pub fn list(&self, limit: usize) -> StoreResult<Vec<EntrySummary>> {
        // The `limit` most recently used, kept in a heap while the records stream past
        // (a million entries must not mean a million records in memory).
        let mut newest = std::collections::BinaryHeap::with_capacity(limit.saturating_add(1));
        self.inner.store.scan_prefix(Space::Access, b"", |k, v| {
            if let (Ok(key), Some(a)) = (<[u8; 32]>::try_from(k), Access::decode(v)) {
                newest.push(std::cmp::Reverse((a.last_ms, key, a.size, a.created_ms)));
                if newest.len() > limit {
                    newest.pop();
                }
            }
            true
        })?;
        let mut out = Vec::new();
        for std::cmp::Reverse((last_ms, key, size, created_ms)) in newest.into_sorted_vec() {
            if let Some(e) = self.show(CacheKey(key))? {
                out.push(EntrySummary {
                    key: CacheKey(key).to_hex(),
                    method: e.meta.method,
                    path: e.meta.path,
                    model: e.meta.model,
                    stream: e.meta.stream,
                    status: e.meta.status,
                    bytes: size,
                    created_ms,
                    last_used_ms: last_ms,
                });
            }
        }
        Ok(out)
    }

    /// The intact entry under `key`, without touching its access time.
    pub fn show(&self, key: CacheKey) -> StoreResult<Option<Entry>> {
        Ok(self
            .inner
            .store
            .get(Space::Entries, &key.0)?
            .and_then(|b| Entry::decode(&b).ok()))
    }

    pub fn purge(&self, what: &Purge) -> StoreResult<u64> {
        let now = now_ms();
        let mut doomed: Vec<[u8; 32]> = Vec::new();
        self.inner.store.scan_prefix(Space::Entries, b"", |k, v| {
            let Ok(key) = <[u8; 32]>::try_from(k) else {
                return true;
            };
            let entry = Entry::decode(v).ok();
            let old_enough = what.older_than.is_none_or(|d| {
                entry
                    .as_ref()
                    .is_none_or(|e| now.saturating_sub(e.meta.created_ms) > d.as_millis() as u64)
            });
            let model_matches = what.model.as_ref().is_none_or(|m| {
                entry
                    .as_ref()
                    .is_none_or(|e| e.meta.model.as_deref() == Some(m.as_str()))
            });
            let filtered = what.older_than.is_some() || what.model.is_some();
            if what.all || (filtered && old_enough && model_matches) {
                doomed.push(key);
            }
            true
        })?;
        let mut n = 0;
        for key in doomed {
            n += u64::from(self.remove(CacheKey(key))?);
        }
        Ok(n)
    }

    /// Visits every intact entry.
    pub fn for_each(&self, mut visit: impl FnMut(CacheKey, Entry)) -> StoreResult<()> {
        self.inner.store.scan_prefix(Space::Entries, b"", |k, v| {
            if let (Ok(key), Ok(e)) = (<[u8; 32]>::try_from(k), Entry::decode(v)) {
                visit(CacheKey(key), e);
            }
            true
        })
    }

    /// Records that upstream accepted the credential with this fingerprint (for `shared`).
    pub fn mark_accepted(&self, fingerprint: &str) -> StoreResult<()> {
        let key = format!("accepted:{fingerprint}");
        if self.inner.store.get(Space::Meta, key.as_bytes())?.is_none() {
            self.inner.store.put(Space::Meta, key.as_bytes(), b"1")?;
        }
        Ok(())
    }

    pub fn was_accepted(&self, fingerprint: &str) -> StoreResult<bool> {
        let key = format!("accepted:{fingerprint}");
        Ok(self.inner.store.get(Space::Meta, key.as_bytes())?.is_some())
    }

    pub fn flush(&self) -> StoreResult<()> {
        self.inner.store.flush()
    }

    /// Test hook: the raw stored bytes of an entry, to damage them.
    pub fn raw_put(&self, key: CacheKey, bytes: &[u8]) -> StoreResult<()> {
        self.inner.hot.remove(&key);
        self.inner.present.insert(&key);
        self.inner.store.put(Space::Entries, &key.0, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;
    use crate::cache::key::cache_key;

    fn open(max_bytes: u64) -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let cache = Cache::open(store, max_bytes, Duration::from_secs(3600), 1 << 20).unwrap();
        (dir, cache)
    }

    fn key(i: usize) -> CacheKey {
        cache_key("POST", "/x", "p", format!("{i}").as_bytes())
    }

    #[test]
    fn put_get_and_counts() {
        let (_d, c) = open(1 << 30);
        let mut e = sample(false);
        e.meta.created_ms = now_ms();
        c.put(key(1), &e).unwrap();
        let (l, got) = c.get(key(1), None).unwrap();
        assert_eq!(l, Lookup::Fresh);
        assert_eq!(got.unwrap().body, e.body);
        assert_eq!(c.get(key(2), None).unwrap().0, Lookup::Missing);
        assert_eq!(c.stats().entries, 1);
        c.put(key(1), &e).unwrap();
        assert_eq!(c.stats().entries, 1, "replacing does not double count");
        assert_eq!(c.stats().bytes, e.stored_size());
    }

    #[test]
    fn list_gives_the_most_recently_used_first_up_to_the_limit() {
        let (_d, c) = open(1 << 30);
        let mut e = sample(false);
        e.meta.created_ms = now_ms();
        for i in 0..5 {
            c.put(key(i), &e).unwrap();
            // Distinct use times (milliseconds).
            std::thread::sleep(Duration::from_millis(3));
        }
        let hex = |i: usize| key(i).to_hex();
        let listed =
            |limit| -> Vec<String> { c.list(limit).unwrap().into_iter().map(|s| s.key).collect() };
        assert_eq!(listed(3), [hex(4), hex(3), hex(2)]);
        assert_eq!(listed(10), [hex(4), hex(3), hex(2), hex(1), hex(0)]);
        assert!(listed(0).is_empty());
    }

    #[test]
    fn damaged_entry_is_dropped_not_served() {
        let (_d, c) = open(1 << 30);
        let mut e = sample(false);
        e.meta.created_ms = now_ms();
        c.put(key(1), &e).unwrap();
        let mut raw = e.encode();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        c.raw_put(key(1), &raw).unwrap();
        assert_eq!(c.get(key(1), None).unwrap().0, Lookup::Corrupt);
        assert_eq!(c.get(key(1), None).unwrap().0, Lookup::Missing);
        assert_eq!(c.stats().dropped_corrupt, 1);
    }

    #[test]
    fn age_limits_apply() {
        let (_d, c) = open(1 << 30);
        let mut e = sample(false);
        e.meta.created_ms = now_ms() - 10_000;
        c.put(key(1), &e).unwrap();
        assert_eq!(
            c.get(key(1), Some(Duration::from_secs(5))).unwrap().0,
            Lookup::Stale
        );
        assert_eq!(
            c.get(key(1), Some(Duration::from_secs(60))).unwrap().0,
            Lookup::Fresh
        );
        e.meta.created_ms = now_ms() - 7_200_000;
        c.put(key(2), &e).unwrap();
        assert_eq!(
            c.get(key(2), None).unwrap().0,
            Lookup::Stale,
            "past cache.max_age"
        );
    }

    #[test]
    fn eviction_keeps_under_limit_and_drops_least_recent() {
        let per = sample(false).stored_size();
        let (_d, c) = open(per * 10);
        let mut e = sample(false);
        e.meta.created_ms = now_ms();
        for i in 0..30 {
            c.put(key(i), &e).unwrap();
            assert!(c.stats().bytes <= per * 10, "over the limit after put {i}");
        }
        assert!(c.stats().evictions >= 20);
        assert_eq!(
            c.get(key(29), None).unwrap().0,
            Lookup::Fresh,
            "newest kept"
        );
        assert_eq!(
            c.get(key(0), None).unwrap().0,
            Lookup::Missing,
            "oldest evicted"
        );
    }

    #[test]
    fn purge_by_model_and_all() {
        let (_d, c) = open(1 << 30);
        let mut e = sample(false);
        e.meta.created_ms = now_ms();
        c.put(key(1), &e).unwrap();
        e.meta.model = Some("other".into());
        c.put(key(2), &e).unwrap();
        let n = c
            .purge(&Purge {
                model: Some("other".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(c.get(key(1), None).unwrap().0, Lookup::Fresh);
        assert_eq!(
            c.purge(&Purge::default()).unwrap(),
            0,
            "no filter purges nothing"
        );
        assert_eq!(
            c.purge(&Purge {
                all: true,
                ..Default::default()
            })
            .unwrap(),
            1
        );
        assert_eq!(c.stats().entries, 0);
    }
}
