//! The answer cache's storage on the data dir's sled database (`Space::Answers`). One
//! tree holds every kind of record, so that one atomic batch changes them together:
//! `e‖key` → the entry's record, `m‖key` → its summary (what eviction, listing and purges
//! read), `r‖request‖key` → nothing (entries by their request whatever the partition, for
//! `cache explain`), and `x‖key` → why an entry is gone and when.
//!
//! Entries are not kept in order of use: such an index, written at every store and every
//! use, made the store a third larger on disk (bench/README.md). Eviction samples
//! summaries instead (see `writer`). Stores written by earlier versions have that index
//! under `u‖…`; it is deleted when the store opens.
//!
//! A record up to `INLINE_MAX` bytes is one value. A larger one keeps its head under
//! `e‖key` and its body in a file of its own (`bodies`), written before the batch that
//! makes the entry visible and deleted after the batch that drops it; files no entry
//! names (a crash between the two) are deleted at the next start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use crate::cache::key::CacheKey;
use crate::cache::storage::{Gone, Storage, StorageResult, Summary};
use crate::store::{Op, Space, Store};

mod bodies;
mod layout;

use bodies::Bodies;
use layout::{layout_of, Layout, INLINE_MAX};

const ENTRY: u8 = b'e';
const SUMMARY: u8 = b'm';
/// The order-of-use index of earlier versions, deleted at open.
const OLD_USE_INDEX: u8 = b'u';
const REQUEST: u8 = b'r';
const GONE: u8 = b'x';
pub struct SledStore {
    store: Store,
    bodies: Bodies,
    /// Changes read a summary and then write a batch that depends on it: one at a time.
    /// Lookups never take it.
    writes: Mutex<()>,
}

fn record_key(kind: u8, key: &CacheKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(kind);
    k.extend_from_slice(&key.0);
    k
}

fn request_key(request: &[u8; 16], key: &CacheKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(49);
    k.push(REQUEST);
    k.extend_from_slice(request);
    k.extend_from_slice(&key.0);
    k
}

fn key_of(bytes: &[u8]) -> Option<CacheKey> {
    <[u8; 32]>::try_from(bytes).ok().map(CacheKey)
}

impl SledStore {
    /// The store over `store`'s answers, with large bodies in `bodies` (created when
    /// needed), after deleting body files no entry names and an earlier version's index.
    pub fn new(store: Store, bodies: PathBuf) -> SledStore {
        let s = SledStore {
            store,
            bodies: Bodies::new(bodies),
            writes: Mutex::new(()),
        };
        if let Err(e) = s.remove_unnamed_bodies() {
            tracing::warn!(error = %e, "could not remove the files of unfinished cache entries");
        }
        if let Err(e) = s.remove_old_use_index() {
            tracing::warn!(error = %e, "could not remove an earlier version's index of the cache");
        }
        s
    }

    fn remove_old_use_index(&self) -> StorageResult<()> {
        let mut keys = Vec::new();
        self.store
            .scan_prefix(Space::Answers, &[OLD_USE_INDEX], |k, _| {
                keys.push(k.to_vec());
                true
            })?;
        for chunk in keys.chunks(4096) {
            let ops = chunk.iter().map(|k| Op::Remove(k.clone())).collect();
            self.store.apply(Space::Answers, ops)?;
        }
        Ok(())
    }

    fn writing(&self) -> MutexGuard<'_, ()> {
        // The guard protects no data, only the order of changes.
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove_unnamed_bodies(&self) -> StorageResult<()> {
        let mut named = HashMap::new();
        for (name, key, generation) in self.bodies.list()? {
            let current = *named.entry(key).or_insert(match self.layout(&key)? {
                Some(Layout::Filed { generation, .. }) => Some(generation),
                _ => None,
            });
            if current != Some(generation) {
                self.bodies.remove_file(&name)?;
            }
        }
        Ok(())
    }

    fn layout(&self, key: &CacheKey) -> StorageResult<Option<Layout>> {
        Ok(self
            .store
            .get(Space::Answers, &record_key(ENTRY, key))?
            .and_then(layout_of))
    }

    /// Deletes the body file of what was under `key` before a change, once the change is in.
    fn drop_body(&self, key: &CacheKey, before: Option<Layout>) -> StorageResult<()> {
        if let Some(Layout::Filed { generation, .. }) = before {
            // Left behind if this fails: deleted at the next start.
            self.bodies.remove(key, generation)?;
        }
        Ok(())
    }
}

impl Storage for SledStore {
    fn lookup(&self, key: &CacheKey) -> StorageResult<Option<Vec<Bytes>>> {
        let (generation, head) = match self.layout(key)? {
            None => return Ok(None),
            Some(Layout::Whole(record)) => return Ok(Some(vec![record])),
            Some(Layout::Packed { len, frame }) => {
                return Ok(Some(vec![layout::unpack(len, &frame)]))
            }
            Some(Layout::Filed { generation, head }) => (generation, head),
        };
        let mut record = vec![head];
        match self.bodies.read(key, generation)? {
            Some(body) => record.extend(body),
            None => match self.layout(key)? {
                // Still this entry: its body is lost, and the head alone fails its checksum.
                Some(Layout::Filed { generation: g, .. }) if g == generation => {}
                // Replaced or removed while being read: as if it had gone a moment sooner.
                _ => return Ok(None),
            },
        }
        Ok(Some(record))
    }

    fn summary(&self, key: &CacheKey) -> StorageResult<Option<Summary>> {
        Ok(self
            .store
            .get(Space::Answers, &record_key(SUMMARY, key))?
            .and_then(|b| Summary::decode(&b)))
    }

    fn put(
        &self,
        key: &CacheKey,
        head: &[u8],
        body: &[Bytes],
        summary: &Summary,
        replacing: bool,
    ) -> StorageResult<Option<Summary>> {
        let total: usize = body.iter().map(Bytes::len).sum();
        let _w = self.writing();
        let value = if head.len() + total <= INLINE_MAX {
            layout::inline(head, body)
        } else {
            let generation = self.store.unique_id()?;
            if let Err(e) = self.bodies.write(key, generation, body) {
                // What was written goes now if it can, or at the next start.
                let _ = self.bodies.remove(key, generation);
                return Err(e.into());
            }
            layout::filed(generation, head)
        };
        let (before, old) = match replacing {
            true => (self.layout(key)?, self.summary(key)?),
            false => (None, None),
        };
        let mut ops = Vec::with_capacity(8);
        if let Some(o) = &old {
            ops.push(Op::Remove(request_key(&o.parts.request, key)));
        }
        ops.push(Op::Remove(record_key(GONE, key)));
        ops.push(Op::Put(
            request_key(&summary.parts.request, key),
            Vec::new(),
        ));
        ops.push(Op::Put(record_key(ENTRY, key), value));
        ops.push(Op::Put(record_key(SUMMARY, key), summary.encode()));
        self.store.apply(Space::Answers, ops)?;
        self.drop_body(key, before)?;
        Ok(old)
    }

    fn remove(&self, key: &CacheKey, why: Gone, at_ms: u64) -> StorageResult<Option<Summary>> {
        let _w = self.writing();
        let old = self.summary(key)?;
        let before = self.layout(key)?;
        let mut ops = vec![
            Op::Remove(record_key(ENTRY, key)),
            Op::Remove(record_key(SUMMARY, key)),
        ];
        if let Some(o) = &old {
            ops.push(Op::Remove(request_key(&o.parts.request, key)));
            ops.push(Op::Put(record_key(GONE, key), why.encode(at_ms).to_vec()));
        }
        self.store.apply(Space::Answers, ops)?;
        self.drop_body(key, before)?;
        Ok(old)
    }

    fn same_request(
        &self,
        request: &[u8; 16],
        visit: &mut dyn FnMut(CacheKey, &Summary) -> bool,
    ) -> StorageResult<()> {
        let mut prefix = vec![REQUEST];
        prefix.extend_from_slice(request);
        let mut keys = Vec::new();
        self.store.scan_prefix(Space::Answers, &prefix, |k, _| {
            keys.extend(k.get(17..).and_then(key_of));
            true
        })?;
        for key in keys {
            if let Some(s) = self.summary(&key)? {
                if !visit(key, &s) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn bury(&self, key: &CacheKey, why: Gone, at_ms: u64) -> StorageResult<()> {
        self.store
            .put(Space::Answers, &record_key(GONE, key), &why.encode(at_ms))
    }

    fn gone(&self, key: &CacheKey) -> StorageResult<Option<(Gone, u64)>> {
        Ok(self
            .store
            .get(Space::Answers, &record_key(GONE, key))?
            .and_then(|b| Gone::decode(&b)))
    }

    fn forget_gone(&self, before_ms: u64) -> StorageResult<()> {
        let mut old = Vec::new();
        self.store.scan_prefix(Space::Answers, &[GONE], |k, v| {
            if Gone::decode(v).is_none_or(|(_, at)| at < before_ms) {
                old.push(Op::Remove(k.to_vec()));
            }
            true
        })?;
        for chunk in old.chunks(4096) {
            self.store.apply(Space::Answers, chunk.to_vec())?;
        }
        Ok(())
    }

    fn touch(&self, uses: &[(CacheKey, u64)]) -> StorageResult<()> {
        let _w = self.writing();
        let mut ops = Vec::new();
        for (key, last_used) in uses {
            let Some(mut s) = self.summary(key)? else {
                continue;
            };
            if s.last_used >= *last_used {
                continue;
            }
            s.last_used = *last_used;
            ops.push(Op::Put(record_key(SUMMARY, key), s.encode()));
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.store.apply(Space::Answers, ops)
    }

    fn keys(&self, visit: &mut dyn FnMut(CacheKey) -> bool) -> StorageResult<()> {
        self.store.scan_prefix(Space::Answers, &[SUMMARY], |k, _| {
            key_of(&k[1..]).is_none_or(&mut *visit)
        })
    }

    fn scan_from(
        &self,
        from: &CacheKey,
        visit: &mut dyn FnMut(CacheKey, &Summary) -> bool,
    ) -> StorageResult<()> {
        let start = record_key(SUMMARY, from);
        self.store
            .scan_range(Space::Answers, &start, &[SUMMARY + 1], |k, v| {
                match (key_of(&k[1..]), Summary::decode(v)) {
                    (Some(key), Some(s)) => visit(key, &s),
                    _ => true,
                }
            })
    }

    fn flush(&self) -> StorageResult<()> {
        self.store.flush()
    }

    fn size_on_disk(&self) -> u64 {
        self.store.size_on_disk() + self.bodies.size()
    }

    fn location(&self) -> String {
        format!(
            "{} (sled; answers over {} KiB in {})",
            self.store.dir().display(),
            INLINE_MAX / 1024,
            self.bodies.dir().display()
        )
    }
}

#[cfg(test)]
mod tests;
