//! The cache's writer: one thread that makes every change to the store, so that no lookup
//! ever waits for one. It stores handed-over answers, drops damaged and expired entries
//! that lookups found, writes the uses lookups noted (once a second), sweeps out expired
//! entries, and evicts the least recently used while the cache is over `max_bytes`.
//!
//! Eviction works as Redis's does: it reads a sample of summaries from a random key on and
//! removes the least recently used few, until the cache is under its limit. Exact order of
//! use would need an index written at every store and use; a cache no larger than one
//! sample is evicted in exact order.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::cache::entry::Entry;
use crate::cache::key::{CacheKey, KeyParts};
use crate::cache::presence::{Build, MIN_KEYS};
use crate::cache::storage::{Gone, StorageResult, Summary};
use crate::cache::{lock, now_ms, Purge, Shared};

/// How often noted uses are written.
const TICK: Duration = Duration::from_secs(1);
/// How often all entries are swept for expired ones (lookups drop those they meet).
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Most entries removed by one sweep; the rest wait for the next.
const SWEEP_MAX: usize = 10_000;
/// Summaries read for each choice of what to evict.
const EVICTION_SAMPLE: usize = 64;
/// How many of a sample's least recently used go, at most.
const EVICTED_PER_SAMPLE: usize = 8;

pub(crate) type Reply = mpsc::Sender<StorageResult<()>>;

pub(crate) enum Job {
    /// Store the answer; reply once stored, if asked.
    Put(CacheKey, KeyParts, Arc<Entry>, Option<Reply>),
    /// Note why there is no entry under the key.
    Bury(CacheKey, Gone),
    /// A lookup found the entry damaged or expired: drop it if it still is.
    Check(CacheKey),
    Purge(Purge, mpsc::Sender<StorageResult<u64>>),
    /// Write the noted uses and make everything durable.
    Flush(Reply),
    /// Reply once every job before this one is done.
    Settle(Reply),
}

/// Starts the writer. It ends once every `Cache` handle is gone, after a last flush.
pub(crate) fn spawn(shared: Arc<Shared>) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("chatcache-cache".into())
        .spawn({
            let shared = shared.clone();
            move || Writer { shared }.run(rx)
        })?;
    *lock(&shared.thread) = Some(thread);
    Ok(tx)
}

struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    fn run(&self, rx: mpsc::Receiver<Job>) {
        self.log("learn which keys are stored", self.learn_keys());
        let mut last_tick = Instant::now();
        // The first sweep comes one tick after start, not at once: opening stays quick.
        let mut last_sweep = Instant::now() - SWEEP_EVERY + TICK;
        loop {
            match rx.recv_timeout(TICK) {
                Ok(job) => self.handle(job),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.log("write noted uses", self.write_uses());
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    last_sweep = Instant::now();
                    self.log("sweep expired entries", self.sweep());
                }
            }
            if self.over_limit() {
                self.log("evict", self.evict());
            }
        }
        let flushed = self.write_uses().and_then(|()| self.shared.storage.flush());
        self.log("flush the cache", flushed);
    }

    fn log<T>(&self, what: &str, r: StorageResult<T>) {
        if let Err(e) = r {
            tracing::error!(error = %e, "could not {what}");
        }
    }

    fn handle(&self, job: Job) {
        match job {
            Job::Put(key, parts, entry, reply) => {
                let r = self.put(key, parts, &entry);
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "could not store an answer; it was served uncached");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Job::Check(key) => self.log("drop a cache entry", self.check(key)),
            Job::Bury(key, why) => {
                let buried = self.shared.storage.bury(&key, why, now_ms());
                self.log("note a missing answer", buried);
            }
            Job::Purge(what, reply) => {
                let _ = reply.send(self.purge(&what));
            }
            Job::Settle(reply) => {
                let _ = reply.send(Ok(()));
            }
            Job::Flush(reply) => {
                let r = self.write_uses().and_then(|()| self.shared.storage.flush());
                let _ = reply.send(r);
            }
        }
    }

    fn put(&self, key: CacheKey, parts: KeyParts, entry: &Arc<Entry>) -> StorageResult<()> {
        let s = &self.shared;
        let head = entry.encode_head();
        let summary = entry.summary(head.len() + entry.body_len(), s.stamps.next(), parts);
        // A key the filter has not seen has no entry to replace: none is looked for.
        let replacing = s.presence.may_hold(&key);
        // Noted before it is stored: a lookup that no longer finds it waiting finds its key.
        let filter_full = s.presence.note(&key);
        let stored = s
            .storage
            .put(&key, &head, entry.body_pieces(), &summary, replacing);
        if filter_full {
            self.log("learn which keys are stored", self.learn_keys());
        }
        // Stored or not, it no longer waits: on failure the answer goes unstored.
        {
            let mut p = lock(&s.pending);
            if p.entries.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
                p.entries.remove(&key);
                p.bytes = p.bytes.saturating_sub(entry.memory_size());
            }
        }
        let old = stored?;
        self.forget(old.as_ref());
        s.entries.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(summary.bytes, Ordering::Relaxed);
        s.hot.remove(&key);
        Ok(())
    }

    /// Builds the filter of stored keys from the summaries. No key is stored meanwhile:
    /// this thread is the one that stores them.
    fn learn_keys(&self) -> StorageResult<()> {
        let s = &self.shared;
        let mut build = Build::new(s.entries.load(Ordering::Relaxed), MIN_KEYS);
        s.storage.keys(&mut |key| {
            build.add(&key);
            true
        })?;
        s.presence.install(build);
        Ok(())
    }

    /// Takes a removed entry out of the counts.
    fn forget(&self, old: Option<&Summary>) {
        if let Some(o) = old {
            let s = &self.shared;
            let _ = s
                .entries
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
            let _ = s
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(o.bytes))
                });
        }
    }

    /// Removes the entry under `key`, noting why.
    fn remove(&self, key: &CacheKey, why: Gone) -> StorageResult<bool> {
        self.shared.hot.remove(key);
        let old = self.shared.storage.remove(key, why, now_ms())?;
        self.forget(old.as_ref());
        Ok(old.is_some())
    }

    fn check(&self, key: CacheKey) -> StorageResult<()> {
        let Some(record) = self.shared.storage.lookup(&key)? else {
            return Ok(());
        };
        let doomed = match Entry::decode(record) {
            Ok(e) => self
                .shared
                .expired(e.meta.created_ms, now_ms())
                .then_some(Gone::Expired),
            Err(_) => Some(Gone::Damaged),
        };
        if let Some(why) = doomed {
            self.remove(&key, why)?;
        }
        Ok(())
    }

    fn write_uses(&self) -> StorageResult<()> {
        let uses = std::mem::take(&mut *lock(&self.shared.uses));
        if uses.is_empty() {
            return Ok(());
        }
        let mut uses: Vec<(CacheKey, u64)> = uses.into_iter().collect();
        uses.sort_unstable();
        for chunk in uses.chunks(4096) {
            self.shared.storage.touch(chunk)?;
        }
        Ok(())
    }

    fn sweep(&self) -> StorageResult<()> {
        let now = now_ms();
        let mut doomed = Vec::new();
        self.shared.storage.scan(&mut |key, summary| {
            if self.shared.expired(summary.created_ms, now) {
                doomed.push(key);
            }
            doomed.len() < SWEEP_MAX
        })?;
        for key in &doomed {
            self.remove(key, Gone::Expired)?;
        }
        if !doomed.is_empty() {
            tracing::info!(removed = doomed.len(), "removed expired cache entries");
        }
        // What was gone before the oldest entry kept could have been stored is not worth
        // explaining any more.
        let horizon = now.saturating_sub(self.shared.limits.max_age.as_millis() as u64);
        self.shared.storage.forget_gone(horizon)
    }

    fn over_limit(&self) -> bool {
        self.shared.bytes.load(Ordering::Relaxed) > self.shared.limits.max_bytes
    }

    /// Removes the least recently used entries of samples until the cache is at 90% of
    /// `max_bytes`.
    fn evict(&self) -> StorageResult<()> {
        #[cfg(test)]
        self.shared.evict_gate.pass();
        let s = &self.shared;
        // Uses noted since the last tick count: a hot entry must not go for want of them.
        self.write_uses()?;
        let target = s.limits.max_bytes / 10 * 9;
        let mut removed = 0u64;
        while s.bytes.load(Ordering::Relaxed) > target {
            let mut gone = 0;
            for key in self.least_recently_used_of_a_sample()? {
                if s.bytes.load(Ordering::Relaxed) <= target {
                    break;
                }
                gone += u64::from(self.remove(&key, Gone::Evicted)?);
            }
            if gone == 0 {
                break;
            }
            removed += gone;
        }
        s.evictions.fetch_add(removed, Ordering::Relaxed);
        if removed > 0 {
            tracing::debug!(removed, "evicted cache entries");
        }
        Ok(())
    }

    /// The `EVICTED_PER_SAMPLE` least recently used of `EVICTION_SAMPLE` entries read from
    /// a random key on (wrapping around past the last), least recent first.
    fn least_recently_used_of_a_sample(&self) -> StorageResult<Vec<CacheKey>> {
        let storage = &self.shared.storage;
        let mut from = [0u8; 32];
        // Without randomness the sample starts at the first key: still the least recently
        // used of a sample, only always the same one.
        let _ = getrandom::fill(&mut from);
        let mut sample = Vec::with_capacity(EVICTION_SAMPLE);
        storage.scan_around(&CacheKey(from), &mut |key, s| {
            sample.push((s.last_used, key));
            sample.len() < EVICTION_SAMPLE
        })?;
        sample.sort_unstable();
        sample.truncate(EVICTED_PER_SAMPLE);
        Ok(sample.into_iter().map(|(_, key)| key).collect())
    }

    fn purge(&self, what: &Purge) -> StorageResult<u64> {
        let now = now_ms();
        let filtered = what.older_than.is_some() || what.model.is_some();
        if !what.all && !filtered {
            return Ok(0);
        }
        let mut doomed = Vec::new();
        self.shared.storage.scan(&mut |key, s| {
            let old_enough = what
                .older_than
                .is_none_or(|d| now.saturating_sub(s.created_ms) > d.as_millis() as u64);
            let model_matches = (what.model.as_ref()).is_none_or(|m| s.model.as_ref() == Some(m));
            if what.all || (old_enough && model_matches) {
                doomed.push(key);
            }
            true
        })?;
        let mut removed = 0;
        for key in &doomed {
            removed += u64::from(self.remove(key, Gone::Purged)?);
        }
        Ok(removed)
    }
}

/// Test hook: holds the next eviction at its start until released.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Gate {
    armed: std::sync::Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

#[cfg(test)]
impl Gate {
    /// Arms the gate: the first receiver hears when an eviction arrives at it, and the
    /// eviction goes on once the sender sends (or is dropped).
    pub(crate) fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (arrived_tx, arrived_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *lock(&self.armed) = Some((arrived_tx, release_rx));
        (arrived_rx, release_tx)
    }

    fn pass(&self) {
        let armed = lock(&self.armed).take();
        if let Some((arrived, release)) = armed {
            let _ = arrived.send(());
            let _ = release.recv();
        }
    }
}
