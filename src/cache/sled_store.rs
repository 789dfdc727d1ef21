//! The answer cache's storage on the data dir's sled database (`Space::Answers`). One
//! tree holds every kind of record, so that one atomic batch changes them together:
//! `e‖key` → the entry's record, `m‖key` → its summary, `u‖last use stamp (BE)‖key` → its
//! size (entries in order of use, for eviction without reading them), `r‖request‖key` →
//! nothing (entries by their request whatever the partition, for `cache explain`), and
//! `x‖key` → why an entry is gone and when.
//!
//! A record up to `PIECE` bytes is one value. A larger one keeps only its head under
//! `e‖key`, its body in `PIECE`-sized values `c‖key‖generation‖index`, written one at a
//! time before the batch that makes the entry visible: no write or read of an answer ever
//! holds it twice in memory. `p‖key‖generation` marks pieces written for an entry not yet
//! visible, so that those a crash left behind are removed at the next start.

use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use crate::cache::key::CacheKey;
use crate::cache::storage::{Gone, Storage, StorageResult, Summary};
use crate::store::{Op, Space, Store};

mod layout;

use layout::{layout_of, pending_key, piece_key, Layout, PENDING, PIECE, PIECED, WHOLE};

const ENTRY: u8 = b'e';
const SUMMARY: u8 = b'm';
const USE: u8 = b'u';
const REQUEST: u8 = b'r';
const GONE: u8 = b'x';
pub struct SledStore {
    store: Store,
    /// Changes read a summary and then write a batch that depends on it: one at a time.
    /// Lookups never take it.
    writes: Mutex<()>,
}

/// Pieces written between flushes of a large answer (1 MiB).
const FLUSH_PIECES: u32 = 16;

fn record_key(kind: u8, key: &CacheKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(kind);
    k.extend_from_slice(&key.0);
    k
}

fn use_key(last_used: u64, key: &CacheKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(USE);
    k.extend_from_slice(&last_used.to_be_bytes());
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
    /// The store over `store`'s answers, after removing the pieces of entries a crash
    /// left unfinished.
    pub fn new(store: Store) -> SledStore {
        let s = SledStore {
            store,
            writes: Mutex::new(()),
        };
        if let Err(e) = s.remove_unfinished() {
            tracing::warn!(error = %e, "could not remove the pieces of unfinished cache entries");
        }
        s
    }

    fn writing(&self) -> MutexGuard<'_, ()> {
        // The guard protects no data, only the order of changes.
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove_unfinished(&self) -> StorageResult<()> {
        let mut unfinished = Vec::new();
        self.store.scan_prefix(Space::Answers, &[PENDING], |k, v| {
            let key = k.get(1..33).and_then(key_of);
            let generation = k.get(33..41).and_then(|g| g.try_into().ok());
            let count = v.try_into().ok().map(u32::from_le_bytes);
            if let (Some(key), Some(g), Some(count)) = (key, generation, count) {
                unfinished.push((key, u64::from_be_bytes(g), count));
            }
            true
        })?;
        for (key, generation, count) in unfinished {
            self.discard_pieces(&key, generation, count)?;
        }
        Ok(())
    }

    /// Removes pieces of generation `generation` and their mark.
    fn discard_pieces(&self, key: &CacheKey, generation: u64, count: u32) -> StorageResult<()> {
        let mut ops: Vec<Op> = (0..count)
            .map(|i| Op::Remove(piece_key(key, generation, i)))
            .collect();
        ops.push(Op::Remove(pending_key(key, generation)));
        self.store.apply(Space::Answers, ops)
    }

    /// Writes `body` as `count` pieces of generation `generation`, marked unfinished.
    fn write_pieces(
        &self,
        key: &CacheKey,
        generation: u64,
        body: &[Bytes],
        count: u32,
    ) -> StorageResult<()> {
        self.store.put(
            Space::Answers,
            &pending_key(key, generation),
            &count.to_le_bytes(),
        )?;
        let mut buf = Vec::with_capacity(PIECE);
        let mut index = 0u32;
        for part in body {
            let mut part = &part[..];
            while !part.is_empty() {
                let take = (PIECE - buf.len()).min(part.len());
                buf.extend_from_slice(&part[..take]);
                part = &part[take..];
                if buf.len() == PIECE {
                    self.store
                        .put(Space::Answers, &piece_key(key, generation, index), &buf)?;
                    buf.clear();
                    index += 1;
                    if index % FLUSH_PIECES == 0 {
                        // What sled has written but not yet flushed stays in its memory:
                        // flushed as it goes, a large answer is never held twice.
                        self.store.flush()?;
                    }
                }
            }
        }
        if !buf.is_empty() {
            self.store
                .put(Space::Answers, &piece_key(key, generation, index), &buf)?;
        }
        Ok(())
    }

    fn layout(&self, key: &CacheKey) -> StorageResult<Option<Layout>> {
        Ok(self
            .store
            .get(Space::Answers, &record_key(ENTRY, key))?
            .and_then(layout_of))
    }

    /// The ops that remove the pieces of the entry now under `key`, if it has any.
    fn remove_pieces(&self, key: &CacheKey, ops: &mut Vec<Op>) -> StorageResult<()> {
        if let Some(Layout::Pieced {
            generation, count, ..
        }) = self.layout(key)?
        {
            ops.extend((0..count).map(|i| Op::Remove(piece_key(key, generation, i))));
        }
        Ok(())
    }
}

impl Storage for SledStore {
    fn lookup(&self, key: &CacheKey) -> StorageResult<Option<Vec<Bytes>>> {
        let (generation, count, head) = match self.layout(key)? {
            None => return Ok(None),
            Some(Layout::Whole(record)) => return Ok(Some(vec![record])),
            Some(Layout::Pieced {
                generation,
                count,
                head,
            }) => (generation, count, head),
        };
        let mut record = Vec::with_capacity(count as usize + 1);
        record.push(head);
        for i in 0..count {
            match self
                .store
                .get(Space::Answers, &piece_key(key, generation, i))?
            {
                Some(piece) => record.push(piece),
                // Replaced or removed while being read: as if it had gone a moment sooner.
                None => return Ok(None),
            }
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
    ) -> StorageResult<Option<Summary>> {
        let total: usize = body.iter().map(Bytes::len).sum();
        let _w = self.writing();
        let (value, generation) = if head.len() + total <= PIECE {
            let mut value = Vec::with_capacity(1 + head.len() + total);
            value.push(WHOLE);
            value.extend_from_slice(head);
            body.iter().for_each(|p| value.extend_from_slice(p));
            (value, None)
        } else {
            let generation = self.store.unique_id()?;
            let count = total.div_ceil(PIECE) as u32;
            if let Err(e) = self.write_pieces(key, generation, body, count) {
                // What was written goes now if it can, or at the next start.
                let _ = self.discard_pieces(key, generation, count);
                return Err(e);
            }
            let mut value = Vec::with_capacity(13 + head.len());
            value.push(PIECED);
            value.extend_from_slice(&generation.to_be_bytes());
            value.extend_from_slice(&count.to_le_bytes());
            value.extend_from_slice(head);
            (value, Some(generation))
        };
        let old = self.summary(key)?;
        let mut ops = Vec::with_capacity(8);
        self.remove_pieces(key, &mut ops)?;
        if let Some(o) = &old {
            ops.push(Op::Remove(use_key(o.last_used, key)));
            ops.push(Op::Remove(request_key(&o.parts.request, key)));
        }
        if let Some(g) = generation {
            ops.push(Op::Remove(pending_key(key, g)));
        }
        ops.push(Op::Remove(record_key(GONE, key)));
        ops.push(Op::Put(
            request_key(&summary.parts.request, key),
            Vec::new(),
        ));
        ops.push(Op::Put(record_key(ENTRY, key), value));
        ops.push(Op::Put(record_key(SUMMARY, key), summary.encode()));
        ops.push(Op::Put(
            use_key(summary.last_used, key),
            summary.bytes.to_le_bytes().to_vec(),
        ));
        self.store.apply(Space::Answers, ops)?;
        Ok(old)
    }

    fn remove(&self, key: &CacheKey) -> StorageResult<Option<Summary>> {
        let _w = self.writing();
        let old = self.summary(key)?;
        let mut ops = vec![
            Op::Remove(record_key(ENTRY, key)),
            Op::Remove(record_key(SUMMARY, key)),
        ];
        self.remove_pieces(key, &mut ops)?;
        if let Some(o) = &old {
            ops.push(Op::Remove(use_key(o.last_used, key)));
            ops.push(Op::Remove(request_key(&o.parts.request, key)));
        }
        self.store.apply(Space::Answers, ops)?;
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
            ops.push(Op::Remove(use_key(s.last_used, key)));
            s.last_used = *last_used;
            ops.push(Op::Put(
                use_key(s.last_used, key),
                s.bytes.to_le_bytes().to_vec(),
            ));
            ops.push(Op::Put(record_key(SUMMARY, key), s.encode()));
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.store.apply(Space::Answers, ops)
    }

    fn scan(&self, visit: &mut dyn FnMut(CacheKey, &Summary) -> bool) -> StorageResult<()> {
        self.store.scan_prefix(Space::Answers, &[SUMMARY], |k, v| {
            match (key_of(&k[1..]), Summary::decode(v)) {
                (Some(key), Some(s)) => visit(key, &s),
                _ => true,
            }
        })
    }

    fn scan_by_use(
        &self,
        newest_first: bool,
        visit: &mut dyn FnMut(CacheKey, u64, u64) -> bool,
    ) -> StorageResult<()> {
        let each = |k: &[u8], v: &[u8]| {
            let parsed = (|| {
                let last = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
                let key = key_of(k.get(9..)?)?;
                let bytes = u64::from_le_bytes(v.try_into().ok()?);
                Some((key, last, bytes))
            })();
            match parsed {
                Some((key, last, bytes)) => visit(key, last, bytes),
                None => true,
            }
        };
        if newest_first {
            self.store.scan_prefix_rev(Space::Answers, &[USE], each)
        } else {
            self.store.scan_prefix(Space::Answers, &[USE], each)
        }
    }

    fn flush(&self) -> StorageResult<()> {
        self.store.flush()
    }

    fn size_on_disk(&self) -> u64 {
        self.store.size_on_disk()
    }

    fn location(&self) -> String {
        format!("{} (sled)", self.store.dir().display())
    }
}

#[cfg(test)]
mod tests;
