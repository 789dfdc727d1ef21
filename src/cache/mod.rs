//! The answer cache: an in-memory tier of hot answers over a `Storage` (sled), lookups
//! with checksum and age checks, and the operations behind `chatcache cache …`. Lookups
//! never wait for a change: every store, removal, eviction and expiry is done by the
//! cache's writer thread (`writer`), and an answer handed to it is served from memory
//! until it is stored. Behind both, a team may share a third level on Redis
//! (`redis_tier`), which the proxy asks after a local miss.

pub mod bundle;
pub mod entry;
pub mod explain;
pub mod flight;
mod inspect;
pub mod key;
mod presence;
pub mod redis_tier;
pub mod sled_store;
pub mod storage;
mod writer;

pub use inspect::{CacheStats, EntrySummary};

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foldhash::HashMap;

use crate::cache::entry::Entry;
use crate::cache::key::{CacheKey, KeyParts};
use crate::cache::presence::Presence;
use crate::cache::storage::{Gone, Storage, StorageResult};
use crate::sized_lru::SizedLru;
use crate::store::StoreError;
use writer::Job;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Stamps of use: the time in milliseconds, made strictly increasing, so that eviction's
/// order of use has no ties (answers stored in one millisecond keep their order).
#[derive(Default)]
pub(crate) struct UseStamps(AtomicU64);

impl UseStamps {
    pub(crate) fn next(&self) -> u64 {
        let now = now_ms();
        let prev = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_add(1).max(now))
            })
            .unwrap_or(now);
        prev.saturating_add(1).max(now)
    }
}

/// Uses noted in memory and not yet written; more than this in one second are dropped
/// (eviction order is approximate anyway).
const MAX_NOTED_USES: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Fresh,
    /// Present but older than the caller accepts.
    Stale,
    Missing,
    /// Present but failed its checksum: to be dropped.
    Corrupt,
}

/// What `cache purge` removes.
#[derive(Debug, Clone, Default)]
pub struct Purge {
    pub older_than: Option<Duration>,
    pub model: Option<String>,
    pub all: bool,
}

/// How much the cache keeps and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of stored records above which the least recently used are evicted.
    pub max_bytes: u64,
    /// Entries older than this are not served and get removed.
    pub max_age: Duration,
    /// Bytes of decoded answers kept in memory for hot hits.
    pub hot_bytes: u64,
    /// Bytes of answers waiting for the writer; past it, new answers go unstored.
    pub pending_bytes: u64,
}

#[derive(Clone)]
pub struct Cache {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

/// Answers handed to the writer and not yet stored, served from here meanwhile.
#[derive(Default)]
struct Pending {
    entries: HashMap<CacheKey, Arc<Entry>>,
    bytes: u64,
}

/// What the cache's handles and its writer thread share.
struct Shared {
    storage: Box<dyn Storage>,
    /// The in-memory tier: recently served entries, decoded and verified, so that a hot
    /// hit is answered without leaving the async worker.
    hot: SizedLru<CacheKey, Arc<Entry>>,
    pending: Mutex<Pending>,
    /// Which keys the storage may hold.
    presence: Presence,
    /// Uses noted by lookups, written to the store by the writer each second.
    uses: Mutex<HashMap<CacheKey, u64>>,
    stamps: UseStamps,
    limits: Limits,
    entries: AtomicU64,
    bytes: AtomicU64,
    evictions: AtomicU64,
    corrupt: AtomicU64,
    /// The writer thread, for whoever must wait for it to end (it ends after the last
    /// handle is dropped).
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    #[cfg(test)]
    evict_gate: writer::Gate,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is a single insert or removal: a panic cannot leave
    // the data half-written, so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The entry's age against `cache.max_age` (past it: expired, to be removed) and
    /// against what the caller accepts.
    fn age(&self, entry: &Entry, now: u64, max_age: Option<Duration>) -> Lookup {
        let age = Duration::from_millis(now.saturating_sub(entry.meta.created_ms));
        if age > self.limits.max_age || max_age.is_some_and(|m| age > m) {
            Lookup::Stale
        } else {
            Lookup::Fresh
        }
    }

    fn expired(&self, created_ms: u64, now: u64) -> bool {
        Duration::from_millis(now.saturating_sub(created_ms)) > self.limits.max_age
    }

    fn note_use(&self, key: CacheKey) {
        let stamp = self.stamps.next();
        let mut uses = lock(&self.uses);
        if uses.len() < MAX_NOTED_USES || uses.contains_key(&key) {
            uses.insert(key, stamp);
        }
    }

    fn pending(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        lock(&self.pending).entries.get(key).cloned()
    }
}

impl Cache {
    /// Opens the cache over `storage`, counting what it holds (a walk over the entries'
    /// summaries), and starts its writer thread.
    pub fn open(storage: Box<dyn Storage>, limits: Limits) -> StorageResult<Cache> {
        let (mut entries, mut bytes) = (0u64, 0u64);
        storage.scan(&mut |_, s| {
            entries += 1;
            bytes += s.bytes;
            true
        })?;
        let shared = Arc::new(Shared {
            storage,
            hot: SizedLru::new(limits.hot_bytes),
            pending: Mutex::default(),
            presence: Presence::default(),
            uses: Mutex::default(),
            stamps: UseStamps::default(),
            limits,
            entries: AtomicU64::new(entries),
            bytes: AtomicU64::new(bytes),
            evictions: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            thread: Mutex::new(None),
            #[cfg(test)]
            evict_gate: writer::Gate::default(),
        });
        let jobs = writer::spawn(shared.clone()).map_err(|e| {
            StoreError::Sled(format!("cannot start the cache's writer thread: {e}"))
        })?;
        Ok(Cache { shared, jobs })
    }

    /// The entry under `key` if it can be had without blocking (it is in memory) and is
    /// young enough; its use noted.
    pub fn get_now(&self, key: CacheKey, max_age: Option<Duration>) -> Option<Arc<Entry>> {
        let s = &self.shared;
        let entry = s.hot.get(&key).or_else(|| s.pending(&key))?;
        let now = now_ms();
        match s.age(&entry, now, max_age) {
            Lookup::Fresh => {
                s.note_use(key);
                Some(entry)
            }
            _ => None,
        }
    }

    /// False only if nothing is stored under `key`: `get` would find it missing, so a
    /// caller need not move to a thread that may block to ask.
    pub fn may_be_stored(&self, key: &CacheKey) -> bool {
        self.shared.presence.may_hold(key)
    }

    /// The entry under `key` if it is intact and younger than both `cache.max_age` and
    /// `max_age`. Blocking. A damaged or expired entry is never returned; the writer is
    /// asked to drop it.
    pub fn get(
        &self,
        key: CacheKey,
        max_age: Option<Duration>,
    ) -> StorageResult<(Lookup, Option<Arc<Entry>>)> {
        if let Some(e) = self.get_now(key, max_age) {
            return Ok((Lookup::Fresh, Some(e)));
        }
        let s = &self.shared;
        if !s.presence.may_hold(&key) {
            return Ok((Lookup::Missing, None));
        }
        let Some(record) = s.storage.lookup(&key)? else {
            return Ok((Lookup::Missing, None));
        };
        let entry = match Entry::decode(record) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "dropping a damaged cache entry");
                s.corrupt.fetch_add(1, Ordering::Relaxed);
                self.send(Job::Check(key));
                return Ok((Lookup::Corrupt, None));
            }
        };
        let now = now_ms();
        if s.expired(entry.meta.created_ms, now) {
            self.send(Job::Check(key));
        }
        match s.age(&entry, now, max_age) {
            Lookup::Fresh => {
                s.note_use(key);
                let entry = Arc::new(entry);
                s.hot.insert(&key, entry.clone(), entry.memory_size());
                Ok((Lookup::Fresh, Some(entry)))
            }
            other => Ok((other, None)),
        }
    }

    /// Hands `entry` to the writer to be stored under `key`, replacing any older one, and
    /// serves it from memory until then. Never blocks. False when too many answers
    /// already wait to be stored: this one then goes unstored.
    pub fn store(&self, key: CacheKey, parts: KeyParts, entry: Arc<Entry>) -> bool {
        let size = entry.memory_size();
        {
            let mut p = lock(&self.shared.pending);
            if p.bytes + size > self.shared.limits.pending_bytes {
                tracing::warn!(%key, "the cache's writer is behind; an answer goes unstored");
                return false;
            }
            p.bytes += size;
            if let Some(old) = p.entries.insert(key, entry.clone()) {
                p.bytes = p.bytes.saturating_sub(old.memory_size());
            }
        }
        self.shared.hot.remove(&key);
        self.send(Job::Put(key, parts, entry, None));
        true
    }

    /// Stores `entry` under `key` and waits until it is. Blocking (for imports).
    pub fn put(&self, key: CacheKey, parts: KeyParts, entry: Entry) -> StorageResult<()> {
        self.ask(|reply| Job::Put(key, parts, Arc::new(entry), Some(reply)))
    }

    /// Notes that the answer to `key` was not stored because it was an error or broke off
    /// (for `cache explain`). Never blocks.
    pub fn not_cacheable(&self, key: CacheKey) {
        self.send(Job::Bury(key, Gone::NotCacheable));
    }

    /// Removes what `what` names; returns how many entries went. Blocking.
    pub fn purge(&self, what: &Purge) -> StorageResult<u64> {
        let what = what.clone();
        let (reply, done) = mpsc::channel();
        self.send(Job::Purge(what, reply));
        done.recv()
            .map_err(|_| StoreError::Sled("the cache's writer has stopped".into()))?
    }

    /// Writes the noted uses and makes everything stored durable. Blocking.
    pub fn flush(&self) -> StorageResult<()> {
        self.ask(Job::Flush)
    }

    /// Waits until every change handed to the writer so far is done (answers stored,
    /// evictions run), so that what follows sees them. Blocking.
    pub fn settle(&self) -> StorageResult<()> {
        self.ask(Job::Settle)
    }

    fn ask(&self, job: impl FnOnce(writer::Reply) -> Job) -> StorageResult<()> {
        let (reply, done) = mpsc::channel();
        self.send(job(reply));
        done.recv()
            .map_err(|_| StoreError::Sled("the cache's writer has stopped".into()))?
    }

    fn send(&self, job: Job) {
        if self.jobs.send(job).is_err() {
            tracing::error!("the cache's writer has stopped; a change is lost");
        }
    }
}
