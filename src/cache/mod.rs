//! The answer cache: lookups with checksum and age checks, stores, approximate LRU
//! eviction under `cache.max_bytes`, and the operations behind `chatcache cache …`.
//! Entries live in the answer files, found through the in-memory index; every change to
//! the index goes to the index journal, from which it is rebuilt at start. Calls that read
//! or write entries block: async callers use `spawn_blocking`.

pub mod answers;
pub mod bundle;
pub mod entry;
pub mod flight;
pub mod index;
pub mod journal;
pub mod key;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::cache::answers::{Answers, Place, SEGMENT_BYTES};
use crate::cache::entry::{DecodeError, Entry};
use crate::cache::index::{Index, Slot};
use crate::cache::journal::{Access, Change, Journal};
use crate::cache::key::CacheKey;
use crate::sized_lru::SizedLru;
use crate::store::{Space, Store, StoreError, StoreResult};

/// How often the daemon makes stored answers and the journal durable (`sync_stale`): a
/// power loss costs the cache at most the answers stored in that time. The ledger is
/// synced on its own.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn secs(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// The length of an access record that earlier versions kept in the store (size, created,
/// last), whose entry is in `Space::Entries`.
const EARLIER_ACCESS_LEN: usize = 24;

/// An entry's age against `cache.max_age` (past it: `Expired`, to be removed) and against
/// what the caller accepts (past that: `TooOld`).
enum Age {
    Fresh,
    TooOld,
    Expired,
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
    /// To the second.
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

/// What readers need: the index and the open segments with their sizes.
#[derive(Default)]
struct State {
    index: Index,
    segments: BTreeMap<u32, (Arc<File>, u64)>,
}

/// The segment being appended to and the index journal. Its lock is taken first, by
/// every change: changes happen one at a time, while lookups only take the state's lock
/// for a moment.
struct Writer {
    segment: u32,
    file: Arc<File>,
    size: u64,
    journal: Journal,
}

impl Writer {
    /// Makes what was appended durable: the segment's data, then the journal (every
    /// record appended to a segment has its line in the journal).
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.journal.sync()
    }
}

struct Inner {
    store: Store,
    answers: Answers,
    state: Mutex<State>,
    writer: Mutex<Writer>,
    /// The in-memory tier: recently served entries, decoded and verified, so that a hot
    /// hit is answered without leaving the async worker.
    hot: SizedLru<CacheKey, Arc<Entry>>,
    max_bytes: u64,
    max_age: Duration,
    evicting: AtomicBool,
    evictions: AtomicU64,
    corrupt: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change leaves the state consistent before anything in it can panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cache {
    /// Opens the cache over `store` and the answer files in `answers_dir`, rebuilding the
    /// index from the journal. Access records of earlier versions, kept in the store, are
    /// read first and carried into the journal; entries kept in the store itself move to
    /// the answer files. `hot_bytes` bounds the in-memory tier of recently served entries.
    pub fn open(
        store: Store,
        answers_dir: &Path,
        max_bytes: u64,
        max_age: Duration,
        hot_bytes: u64,
    ) -> StoreResult<Cache> {
        let (answers, found) = Answers::open(answers_dir)?;
        let mut state = State::default();
        let mut earlier = Vec::new();
        let mut carried = false;
        store.scan_prefix(Space::Access, b"", |k, v| {
            carried = true;
            if let Ok(key) = <[u8; 32]>::try_from(k) {
                match Access::decode(v) {
                    Some(a) => {
                        state.index.insert(&CacheKey(key), a.slot());
                    }
                    None if v.len() == EARLIER_ACCESS_LEN => earlier.push(CacheKey(key)),
                    None => {}
                }
            }
            true
        })?;
        let journal = Journal::open(answers_dir, |change| match change {
            Change::Put(key, access) => {
                state.index.insert(&key, access.slot());
            }
            Change::Remove(key) => {
                state.index.remove(&key);
            }
        })?;
        for &(segment, size) in &found {
            if state.index.live(segment) == 0 {
                answers.delete(segment)?;
            } else {
                let file = Arc::new(answers.open_segment(segment)?);
                state.segments.insert(segment, (file, size));
            }
        }
        // Appends always go to a new segment: a segment cut short by a crash is only read.
        let segment = found.last().map_or(0, |(s, _)| s.wrapping_add(1));
        let file = Arc::new(answers.create(segment)?);
        state.segments.insert(segment, (file.clone(), 0));
        let cache = Cache {
            inner: Arc::new(Inner {
                store,
                answers,
                state: Mutex::new(state),
                writer: Mutex::new(Writer {
                    segment,
                    file,
                    size: 0,
                    journal,
                }),
                hot: SizedLru::new(hot_bytes),
                max_bytes,
                max_age,
                evicting: AtomicBool::new(false),
                evictions: AtomicU64::new(0),
                corrupt: AtomicU64::new(0),
            }),
        };
        let mut w = cache.writer();
        cache.move_earlier_entries(&mut w, earlier)?;
        if carried {
            cache.rewrite_journal(&mut w)?;
            cache.inner.store.clear(Space::Access)?;
            cache.inner.store.clear(Space::Entries)?;
        }
        let all: Vec<u32> = found.iter().map(|(s, _)| *s).collect();
        cache.settle(&mut w, all)?;
        drop(w);
        Ok(cache)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        lock(&self.inner.writer)
    }

    /// Moves entries that earlier versions kept in the store to the answer files (the
    /// caller then clears the store's copies); a damaged one is left behind.
    fn move_earlier_entries(&self, w: &mut Writer, keys: Vec<CacheKey>) -> StoreResult<()> {
        for key in keys {
            if let Some(bytes) = self.inner.store.get(Space::Entries, &key.0)? {
                if let Ok(entry) = Entry::decode(&bytes) {
                    self.append(w, key, &bytes, entry.meta.created_ms, now_ms())?;
                }
            }
        }
        Ok(())
    }

    /// The entry under `key` from the in-memory tier, if it is there and young enough (its
    /// use noted); never blocks.
    pub fn get_hot(&self, key: CacheKey, max_age: Option<Duration>) -> Option<Arc<Entry>> {
        let now = now_ms();
        let entry = self.inner.hot.get(&key)?;
        match self.age(&entry, now, max_age) {
            Age::Fresh => {
                self.touch(key, now);
                Some(entry)
            }
            Age::TooOld | Age::Expired => None,
        }
    }

    /// The stored entry under `key`, its record read with `read`: `None` when there is
    /// none, an error when its record is damaged or cut short.
    fn load_with(
        &self,
        key: CacheKey,
        read: fn(&File, Place) -> std::io::Result<answers::Record>,
    ) -> StoreResult<Option<Result<Entry, DecodeError>>> {
        let (slot, file) = {
            let state = self.state();
            let Some(slot) = state.index.get(&key) else {
                return Ok(None);
            };
            let file = state
                .segments
                .get(&slot.place.segment)
                .map(|(f, _)| f.clone());
            (slot, file)
        };
        let record = match file {
            Some(f) => read(&f, slot.place)?,
            None => None,
        };
        Ok(Some(match record {
            Some((stored_key, bytes)) if stored_key == key => Entry::decode(&bytes),
            _ => Err(DecodeError::Truncated),
        }))
    }

    fn load(&self, key: CacheKey) -> StoreResult<Option<Result<Entry, DecodeError>>> {
        self.load_with(key, answers::read)
    }

    /// The entry under `key` if it can be had without blocking (its record is in the OS
    /// page cache), is intact, and is young enough. Anything else, `get` decides.
    pub fn get_now(&self, key: CacheKey, max_age: Option<Duration>) -> Option<Arc<Entry>> {
        let Ok(Some(Ok(entry))) = self.load_with(key, answers::read_now) else {
            return None;
        };
        let now = now_ms();
        match self.age(&entry, now, max_age) {
            Age::Fresh => Some(self.serve(key, entry, now)),
            Age::TooOld | Age::Expired => None,
        }
    }

    /// The entry under `key` if it is intact and younger than both `cache.max_age` and
    /// `max_age`. A damaged entry is removed and never returned.
    pub fn get(
        &self,
        key: CacheKey,
        max_age: Option<Duration>,
    ) -> StoreResult<(Lookup, Option<Arc<Entry>>)> {
        let entry = match self.load(key)? {
            None => return Ok((Lookup::Missing, None)),
            Some(Ok(entry)) => entry,
            Some(Err(e)) => {
                tracing::warn!(key = %key, error = %e, "dropping a damaged cache entry");
                self.inner.corrupt.fetch_add(1, Ordering::Relaxed);
                self.remove(key)?;
                return Ok((Lookup::Corrupt, None));
            }
        };
        let now = now_ms();
        match self.age(&entry, now, max_age) {
            Age::Fresh => Ok((Lookup::Fresh, Some(self.serve(key, entry, now)))),
            Age::TooOld => Ok((Lookup::Stale, None)),
            Age::Expired => {
                self.remove(key)?;
                Ok((Lookup::Stale, None))
            }
        }
    }

    fn age(&self, entry: &Entry, now: u64, max_age: Option<Duration>) -> Age {
        let age = Duration::from_millis(now.saturating_sub(entry.meta.created_ms));
        if age > self.inner.max_age {
            Age::Expired
        } else if max_age.is_some_and(|m| age > m) {
            Age::TooOld
        } else {
            Age::Fresh
        }
    }

    /// Hands out a fresh stored entry: its use noted, kept in the in-memory tier.
    fn serve(&self, key: CacheKey, entry: Entry, now: u64) -> Arc<Entry> {
        self.touch(key, now);
        let entry = Arc::new(entry);
        self.inner
            .hot
            .insert(&key, entry.clone(), entry.memory_size());
        entry
    }

    /// Notes a use of the entry at `now`, in memory: the journal gets it at `flush`.
    fn touch(&self, key: CacheKey, now: u64) {
        self.state().index.touch(&key, secs(now));
    }

    /// False when `key` is certainly not stored (no file is read to know).
    pub fn may_contain(&self, key: CacheKey) -> bool {
        self.state().index.contains(&key)
    }

    /// Stores `entry` under `key`, replacing any older one, then evicts if over the limit.
    pub fn put(&self, key: CacheKey, entry: &Entry) -> StoreResult<()> {
        self.write(key, &entry.encode(), entry.meta.created_ms)?;
        if self.bytes() > self.inner.max_bytes {
            self.evict()?;
        }
        Ok(())
    }

    fn write(&self, key: CacheKey, bytes: &[u8], created_ms: u64) -> StoreResult<()> {
        self.inner.hot.remove(&key);
        let mut w = self.writer();
        let old = self.append(&mut w, key, bytes, created_ms, now_ms())?;
        self.settle(&mut w, old.map(|o| o.place.segment))
    }

    /// Appends the record, then points the journal and the index at it: a crash in between
    /// leaves only unreferenced bytes. Returns the slot it replaces.
    fn append(
        &self,
        w: &mut Writer,
        key: CacheKey,
        bytes: &[u8],
        created_ms: u64,
        last_ms: u64,
    ) -> StoreResult<Option<Slot>> {
        let too_large = || StoreError::TooLarge(bytes.len());
        let len = u32::try_from(bytes.len()).map_err(|_| too_large())?;
        let record_len = answers::record_len(len);
        if w.size > 0 && w.size + record_len > SEGMENT_BYTES {
            self.roll(w)?;
        }
        let offset = u32::try_from(w.size).map_err(|_| too_large())?;
        answers::write(&w.file, w.size, &key, bytes)?;
        w.size += record_len;
        let access = Access {
            created_ms,
            last_ms,
            place: Place {
                segment: w.segment,
                offset,
                len,
            },
        };
        w.journal.append(&[Change::Put(key, access)])?;
        let mut state = self.state();
        if let Some((_, size)) = state.segments.get_mut(&w.segment) {
            *size = w.size;
        }
        Ok(state.index.insert(&key, access.slot()))
    }

    /// Closes the segment being appended to (synced) and starts the next one.
    fn roll(&self, w: &mut Writer) -> StoreResult<()> {
        w.sync()?;
        let segment = w.segment.wrapping_add(1);
        let file = Arc::new(self.inner.answers.create(segment)?);
        self.state().segments.insert(segment, (file.clone(), 0));
        w.segment = segment;
        w.file = file;
        w.size = 0;
        Ok(())
    }

    /// After removals from `segments`: deletes each that holds nothing live any more and
    /// rewrites each that is less than half live, so the files stay under twice what they
    /// hold; the journal is rewritten on the same rule.
    fn settle(&self, w: &mut Writer, segments: impl IntoIterator<Item = u32>) -> StoreResult<()> {
        for segment in segments {
            if segment == w.segment {
                continue;
            }
            let (live, size) = {
                let mut state = self.state();
                let live = state.index.live(segment);
                (live, state.segments.get(&segment).map(|(_, s)| *s))
            };
            let Some(size) = size else { continue };
            if live == 0 {
                self.delete_segment(segment)?;
            } else if live * 2 < size {
                self.compact(w, segment)?;
            }
        }
        if w.journal.is_due(self.state().index.len() as u64) {
            self.rewrite_journal(w)?;
        }
        Ok(())
    }

    /// Replaces the journal with one record per entry, noted uses included. The entries
    /// are copied under the state's lock and written without it, so lookups wait only for
    /// the copy (changes wait on the writer's lock, held here).
    fn rewrite_journal(&self, w: &mut Writer) -> StoreResult<()> {
        let started = std::time::Instant::now();
        let slots: Vec<(CacheKey, Slot)> = self.state().index.iter().collect();
        let copied_ms = started.elapsed().as_millis() as u64;
        let live = slots.iter().map(|(key, slot)| (*key, Access::of(*slot)));
        w.journal.rewrite(live)?;
        let mut state = self.state();
        for (key, slot) in slots.iter().filter(|(_, s)| s.dirty) {
            state.index.mark_saved(key, slot.last_s);
        }
        drop(state);
        tracing::debug!(
            entries = slots.len(),
            copied_ms,
            ms = started.elapsed().as_millis() as u64,
            "rewrote the index journal"
        );
        Ok(())
    }

    /// Moves the live records of `segment` to the end of the answer files and deletes it.
    fn compact(&self, w: &mut Writer, segment: u32) -> StoreResult<()> {
        let (file, mut slots) = {
            let state = self.state();
            let Some((file, _)) = state.segments.get(&segment) else {
                return Ok(());
            };
            let slots: Vec<(CacheKey, Slot)> = state
                .index
                .iter()
                .filter(|(_, s)| s.place.segment == segment)
                .collect();
            (file.clone(), slots)
        };
        slots.sort_unstable_by_key(|(_, s)| s.place.offset);
        for (key, slot) in slots {
            match answers::read(&file, slot.place)? {
                Some((stored, bytes)) if stored == key => {
                    let a = Access::of(slot);
                    self.append(w, key, &bytes, a.created_ms, a.last_ms)?;
                }
                // Unreadable: the next lookup finds it damaged and drops it.
                _ => {}
            }
        }
        if self.state().index.live(segment) == 0 {
            // The moved records and the journal lines pointing at them are on disk before
            // the only other copy goes.
            w.sync()?;
            self.delete_segment(segment)?;
        }
        Ok(())
    }

    fn delete_segment(&self, segment: u32) -> StoreResult<()> {
        self.state().segments.remove(&segment);
        Ok(self.inner.answers.delete(segment)?)
    }

    pub fn remove(&self, key: CacheKey) -> StoreResult<bool> {
        Ok(self.forget_all([key])? > 0)
    }

    /// Removes every key in `keys` (noted in the journal first), then settles the segments
    /// they were in. Returns how many were there.
    fn forget_all(&self, keys: impl IntoIterator<Item = CacheKey>) -> StoreResult<u64> {
        let mut w = self.writer();
        let mut touched = BTreeSet::new();
        let mut removed = 0;
        let keys: Vec<CacheKey> = keys.into_iter().collect();
        for chunk in keys.chunks(4096) {
            let present: Vec<Change> = {
                let state = self.state();
                (chunk.iter())
                    .filter(|key| state.index.contains(key))
                    .map(|key| Change::Remove(*key))
                    .collect()
            };
            w.journal.append(&present)?;
            for key in chunk {
                self.inner.hot.remove(key);
            }
            let mut state = self.state();
            for key in chunk {
                if let Some(old) = state.index.remove(key) {
                    removed += 1;
                    touched.insert(old.place.segment);
                }
            }
        }
        self.settle(&mut w, touched)?;
        Ok(removed)
    }

    fn bytes(&self) -> u64 {
        self.state().index.bytes()
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
        let now_s = secs(now_ms());
        let max_age_s = u32::try_from(self.inner.max_age.as_secs()).unwrap_or(u32::MAX);
        let target = self.inner.max_bytes / 10 * 9;
        let mut doomed = Vec::new();
        {
            let state = self.state();
            let mut bytes = state.index.bytes();
            let mut by_use = Vec::new();
            for (key, slot) in state.index.iter() {
                let len = slot.place.record_len();
                if now_s.saturating_sub(slot.created_s) > max_age_s {
                    doomed.push(key);
                    bytes = bytes.saturating_sub(len);
                } else {
                    // Equal times go in the order they were written.
                    by_use.push((slot.last_s, slot.place.segment, slot.place.offset, key, len));
                }
            }
            if bytes > self.inner.max_bytes {
                by_use.sort_unstable();
                for (_, _, _, key, len) in by_use {
                    if bytes <= target {
                        break;
                    }
                    bytes = bytes.saturating_sub(len);
                    doomed.push(key);
                }
            }
        }
        let removed = self.forget_all(doomed)?;
        self.inner.evictions.fetch_add(removed, Ordering::Relaxed);
        if removed > 0 {
            tracing::info!(removed, bytes = self.bytes(), "evicted cache entries");
        }
        Ok(removed)
    }

    pub fn stats(&self) -> CacheStats {
        let (entries, bytes, files) = {
            let state = self.state();
            let files: u64 = state.segments.values().map(|(_, s)| *s).sum();
            (state.index.len() as u64, state.index.bytes(), files)
        };
        CacheStats {
            entries,
            bytes,
            max_bytes: self.inner.max_bytes,
            on_disk_bytes: self.inner.store.size_on_disk()
                + files
                + journal::size_on_disk(self.inner.answers.dir()),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            dropped_corrupt: self.inner.corrupt.load(Ordering::Relaxed),
        }
    }

    /// Summaries of up to `limit` entries, most recently used first.
    pub fn list(&self, limit: usize) -> StoreResult<Vec<EntrySummary>> {
        let newest = {
            let state = self.state();
            // The `limit` most recently used, kept in a heap while the slots stream past
            // (a million entries must not mean a million summaries in memory).
            let mut heap = std::collections::BinaryHeap::with_capacity(limit.saturating_add(1));
            for (key, slot) in state.index.iter() {
                let p = slot.place;
                let entry = (slot.last_s, p.segment, p.offset, key, p.record_len());
                heap.push(std::cmp::Reverse(entry));
                if heap.len() > limit {
                    heap.pop();
                }
            }
            heap.into_sorted_vec()
        };
        let mut out = Vec::new();
        for std::cmp::Reverse((last_s, _, _, key, bytes)) in newest {
            if let Some(Ok(e)) = self.load(key)? {
                out.push(EntrySummary {
                    key: key.to_hex(),
                    bytes,
                    created_ms: e.meta.created_ms,
                    last_used_ms: u64::from(last_s) * 1000,
                    method: e.meta.method,
                    path: e.meta.path,
                    model: e.meta.model,
                    stream: e.meta.stream,
                    status: e.meta.status,
                });
            }
        }
        Ok(out)
    }

    /// The intact entry under `key`, without noting a use.
    pub fn show(&self, key: CacheKey) -> StoreResult<Option<Entry>> {
        Ok(self.load(key)?.and_then(Result::ok))
    }

    pub fn purge(&self, what: &Purge) -> StoreResult<u64> {
        let now = now_ms();
        let mut doomed = Vec::new();
        self.for_each_stored(|key, entry| {
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
        })?;
        self.forget_all(doomed)
    }

    /// Visits every intact entry.
    pub fn for_each(&self, mut visit: impl FnMut(CacheKey, Entry)) -> StoreResult<()> {
        self.for_each_stored(|key, entry| {
            if let Some(e) = entry {
                visit(key, e);
            }
        })
    }

    /// Visits every indexed key with its entry (`None` when damaged), in file order.
    fn for_each_stored(&self, mut visit: impl FnMut(CacheKey, Option<Entry>)) -> StoreResult<()> {
        let (mut slots, files) = {
            let state = self.state();
            let slots: Vec<(CacheKey, Slot)> = state.index.iter().collect();
            let files: BTreeMap<u32, Arc<File>> = (state.segments.iter())
                .map(|(s, (f, _))| (*s, f.clone()))
                .collect();
            (slots, files)
        };
        slots.sort_unstable_by_key(|(_, s)| (s.place.segment, s.place.offset));
        for (key, slot) in slots {
            let record = match files.get(&slot.place.segment) {
                Some(file) => answers::read(file, slot.place)?,
                None => None,
            };
            let entry = match record {
                Some((stored, bytes)) if stored == key => Entry::decode(&bytes).ok(),
                _ => None,
            };
            visit(key, entry);
        }
        Ok(())
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

    /// Makes what was stored or removed since the last sync durable; the daemon calls this
    /// every `SYNC_EVERY`. The files are synced without the writer's lock, so stores go on
    /// meanwhile: what they append is synced now or at the next call.
    pub fn sync_stale(&self) -> StoreResult<()> {
        let (segment, journal) = {
            let mut w = self.writer();
            let Some(journal) = w.journal.take_unsynced() else {
                return Ok(());
            };
            (w.file.clone(), journal)
        };
        let synced = segment.sync_data().and_then(|()| journal.sync_data());
        if synced.is_err() {
            self.writer().journal.sync_failed();
        }
        Ok(synced?)
    }

    /// Writes the noted uses to the journal and makes everything written durable.
    pub fn flush(&self) -> StoreResult<()> {
        let mut w = self.writer();
        let dirty: Vec<(CacheKey, Slot)> =
            self.state().index.iter().filter(|(_, s)| s.dirty).collect();
        for chunk in dirty.chunks(4096) {
            let changes: Vec<Change> = (chunk.iter())
                .map(|(key, slot)| Change::Put(*key, Access::of(*slot)))
                .collect();
            w.journal.append(&changes)?;
            let mut state = self.state();
            for (key, slot) in chunk {
                state.index.mark_saved(key, slot.last_s);
            }
        }
        self.settle(&mut w, [])?;
        w.sync()?;
        self.inner.store.flush()
    }

    /// Test hook: stores raw bytes as the entry under `key`, to damage it.
    pub fn raw_put(&self, key: CacheKey, bytes: &[u8]) -> StoreResult<()> {
        self.write(key, bytes, now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;
    use crate::cache::key::cache_key;

    fn open(max_bytes: u64) -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = reopen(&dir, max_bytes);
        (dir, cache)
    }

    fn reopen(dir: &tempfile::TempDir, max_bytes: u64) -> Cache {
        let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
        let answers = dir.path().join("answers");
        Cache::open(
            store,
            &answers,
            max_bytes,
            Duration::from_secs(3600),
            1 << 20,
        )
        .unwrap()
    }

    /// A sample entry created now.
    fn fresh() -> Entry {
        let mut e = sample(false);
        e.meta.created_ms = now_ms();
        e
    }

    fn record_len(e: &Entry) -> u64 {
        32 + e.encode().len() as u64
    }

    fn key(i: usize) -> CacheKey {
        cache_key("POST", "/x", "p", format!("{i}").as_bytes())
    }

    #[test]
    fn put_get_and_counts() {
        let (_d, c) = open(1 << 30);
        let e = fresh();
        c.put(key(1), &e).unwrap();
        let (l, got) = c.get(key(1), None).unwrap();
        assert_eq!(l, Lookup::Fresh);
        assert_eq!(got.unwrap().body, e.body);
        assert_eq!(c.get(key(2), None).unwrap().0, Lookup::Missing);
        assert_eq!(c.stats().entries, 1);
        c.put(key(1), &e).unwrap();
        assert_eq!(c.stats().entries, 1, "replacing does not double count");
        assert_eq!(c.stats().bytes, record_len(&e));
    }

    #[test]
    fn list_gives_the_most_recently_used_first_up_to_the_limit() {
        let (_d, c) = open(1 << 30);
        let e = fresh();
        for i in 0..5 {
            // Never used: equal times fall back to the order they were written in.
            c.put(key(i), &e).unwrap();
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
        let e = fresh();
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
        let per = record_len(&sample(false));
        let (_d, c) = open(per * 10);
        let e = fresh();
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
        let mut e = fresh();
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

    /// The segment files, by name, with their sizes.
    fn answer_files(dir: &tempfile::TempDir) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(dir.path().join("answers"))
            .unwrap()
            .map(|f| f.unwrap())
            .map(|f| {
                (
                    f.file_name().into_string().unwrap(),
                    f.metadata().unwrap().len(),
                )
            })
            .filter(|(name, _)| name.ends_with(".seg"))
            .collect();
        files.sort();
        files
    }

    /// An entry of about 1 MiB: sixteen fill a segment.
    fn large(i: usize) -> Entry {
        let mut e = fresh();
        e.body = bytes::Bytes::from(vec![b'a' + (i % 26) as u8; 1 << 20]);
        e
    }

    #[test]
    fn removals_shrink_the_answer_files_and_what_is_left_still_reads() {
        let (dir, c) = open(1 << 40);
        for i in 0..40 {
            c.put(key(i), &large(i)).unwrap();
        }
        assert!(answer_files(&dir).len() >= 3, "{:?}", answer_files(&dir));
        // Most of the first segments go: they are deleted or rewritten, never kept at
        // more than twice what they hold.
        for i in (0..36).filter(|i| i % 8 != 0) {
            assert!(c.remove(key(i)).unwrap());
        }
        let on_disk: u64 = answer_files(&dir).iter().map(|(_, len)| len).sum();
        let live = c.stats().bytes;
        assert!(
            on_disk <= 2 * live + SEGMENT_BYTES,
            "{on_disk} bytes of files for {live} live: {:?}",
            answer_files(&dir)
        );
        assert!(!answer_files(&dir)
            .iter()
            .any(|(name, _)| name == "00000000.seg"));
        let kept: Vec<usize> = (0..40).filter(|i| *i >= 36 || i % 8 == 0).collect();
        for &i in &kept {
            let (l, e) = c.get(key(i), None).unwrap();
            assert_eq!(l, Lookup::Fresh, "entry {i} after compaction");
            assert_eq!(e.unwrap().body, large(i).body);
        }
        assert_eq!(c.stats().entries, kept.len() as u64);
        drop(c);
        let c = reopen(&dir, 1 << 40);
        assert_eq!(c.stats().entries, kept.len() as u64);
        for &i in &kept {
            assert_eq!(c.show(key(i)).unwrap().unwrap().body, large(i).body);
        }
    }

    #[test]
    fn a_reopened_cache_finds_its_entries_and_the_noted_uses() {
        let (dir, c) = open(1 << 30);
        let e = fresh();
        for i in 0..3 {
            c.put(key(i), &e).unwrap();
        }
        // Entry 0, the oldest, is used in a later second than the others were written.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(c.get(key(0), None).unwrap().0, Lookup::Fresh);
        c.flush().unwrap();
        drop(c);
        let c = reopen(&dir, 1 << 30);
        assert_eq!(c.stats().entries, 3);
        assert_eq!(c.get(key(2), None).unwrap().0, Lookup::Fresh);
        let first = c.list(1).unwrap().remove(0).key;
        assert!(first == key(0).to_hex() || first == key(2).to_hex());
        assert_eq!(
            c.list(3).unwrap()[2].key,
            key(1).to_hex(),
            "never used since"
        );
        // Each open appends to a segment of its own.
        assert_eq!(answer_files(&dir).len(), 2);
    }

    #[test]
    fn a_hit_from_the_in_memory_tier_notes_its_use() {
        let (_d, c) = open(1 << 30);
        let e = fresh();
        for i in 0..2 {
            c.put(key(i), &e).unwrap();
            assert_eq!(c.get(key(i), None).unwrap().0, Lookup::Fresh);
        }
        // Both used in the same second; key(1), written later, counts as the more recent.
        assert_eq!(c.list(1).unwrap()[0].key, key(1).to_hex());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(c.get_hot(key(0), None).is_some());
        assert_eq!(c.list(1).unwrap()[0].key, key(0).to_hex());
    }

    #[test]
    fn stores_and_removals_wait_for_the_next_sync() {
        let (_d, c) = open(1 << 30);
        let e = fresh();
        let unsynced = |c: &Cache| c.writer().journal.is_unsynced();
        assert!(!unsynced(&c));
        c.put(key(1), &e).unwrap();
        assert!(unsynced(&c));
        c.sync_stale().unwrap();
        assert!(!unsynced(&c));
        assert!(c.remove(key(1)).unwrap());
        assert!(unsynced(&c));
        c.flush().unwrap();
        assert!(!unsynced(&c));
    }

    #[test]
    fn a_record_cut_short_is_dropped_as_damaged() {
        let (dir, c) = open(1 << 30);
        let e = fresh();
        c.put(key(1), &e).unwrap();
        c.put(key(2), &e).unwrap();
        drop(c);
        let (name, len) = answer_files(&dir).remove(0);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("answers").join(name))
            .unwrap();
        file.set_len(len - 3).unwrap();
        let c = reopen(&dir, 1 << 30);
        assert_eq!(c.get(key(1), None).unwrap().0, Lookup::Fresh);
        assert_eq!(c.get(key(2), None).unwrap().0, Lookup::Corrupt);
        assert_eq!(c.get(key(2), None).unwrap().0, Lookup::Missing);
        assert_eq!(c.stats().entries, 1);
    }

    #[test]
    fn entries_stored_by_earlier_versions_move_to_the_answer_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = fresh();
        {
            let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
            let earlier = |size: u64| {
                let mut r = size.to_le_bytes().to_vec();
                r.extend_from_slice(&e.meta.created_ms.to_le_bytes());
                r.extend_from_slice(&e.meta.created_ms.to_le_bytes());
                r
            };
            store.put(Space::Entries, &key(1).0, &e.encode()).unwrap();
            store.put(Space::Access, &key(1).0, &earlier(600)).unwrap();
            // An access record whose entry never made it.
            store.put(Space::Access, &key(2).0, &earlier(600)).unwrap();
        }
        let c = reopen(&dir, 1 << 30);
        assert_eq!(c.stats().entries, 1);
        let (l, got) = c.get(key(1), None).unwrap();
        assert_eq!(l, Lookup::Fresh);
        assert_eq!(got.unwrap().body, e.body);
        assert_eq!(c.get(key(2), None).unwrap().0, Lookup::Missing);
        drop(c);
        let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
        assert_eq!(store.count(Space::Entries), 0);
        assert_eq!(store.count(Space::Access), 0);
    }

    #[test]
    fn access_records_kept_in_the_store_are_carried_into_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let e = fresh();
        let bytes = e.encode();
        {
            let (answers, _) = Answers::open(&dir.path().join("answers")).unwrap();
            let file = answers.create(0).unwrap();
            answers::write(&file, 0, &key(1), &bytes).unwrap();
            let access = Access {
                created_ms: e.meta.created_ms,
                last_ms: e.meta.created_ms,
                place: Place {
                    segment: 0,
                    offset: 0,
                    len: bytes.len() as u32,
                },
            };
            let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
            store
                .put(Space::Access, &key(1).0, &access.encode())
                .unwrap();
        }
        for _ in 0..2 {
            let c = reopen(&dir, 1 << 30);
            assert_eq!(c.stats().entries, 1);
            let (l, got) = c.get(key(1), None).unwrap();
            assert_eq!(l, Lookup::Fresh);
            assert_eq!(got.unwrap().body, e.body);
            drop(c);
            let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
            assert_eq!(store.count(Space::Access), 0, "now in the journal only");
        }
    }

    #[test]
    fn replacements_and_removals_survive_a_reopen_and_the_journal_stays_small() {
        let (dir, c) = open(1 << 30);
        let e = fresh();
        for _ in 0..10_000 {
            c.put(key(1), &e).unwrap();
        }
        c.put(key(2), &e).unwrap();
        c.put(key(3), &e).unwrap();
        assert!(c.remove(key(2)).unwrap());
        drop(c);
        let journal = journal::size_on_disk(&dir.path().join("answers"));
        assert!(journal > 0 && journal < 8192 * 64, "rewritten: {journal}");
        let c = reopen(&dir, 1 << 30);
        assert_eq!(c.stats().entries, 2);
        assert_eq!(c.get(key(1), None).unwrap().0, Lookup::Fresh);
        assert_eq!(c.get(key(2), None).unwrap().0, Lookup::Missing);
        assert_eq!(c.get(key(3), None).unwrap().0, Lookup::Fresh);
    }
}
