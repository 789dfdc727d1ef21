//! The storage seam of the answer cache: what a place that keeps answers must do (look
//! one up, put, remove, note uses, scan summaries for eviction, list, purge and export,
//! flush), and the summary of an entry that scans read instead of its body. The sled
//! implementation is `sled_store`; nothing above this seam knows where answers live.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use bytes::Bytes;

use crate::cache::key::{CacheKey, KeyParts};
use crate::store::StoreError;

pub type StorageResult<T> = Result<T, StoreError>;

/// What scans need of an entry, kept apart from it so that they never read bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Bytes the entry's record takes.
    pub bytes: u64,
    pub created_ms: u64,
    /// When it was last used: a use stamp (`cache::UseStamps`), milliseconds since the
    /// epoch made unique.
    pub last_used: u64,
    pub status: u16,
    pub stream: bool,
    pub method: String,
    /// Path as keyed (project prefix removed).
    pub path: String,
    pub model: Option<String>,
    /// What its key was made of (for `cache explain`).
    pub parts: KeyParts,
}

/// Why an entry that was stored is not any more (kept for `cache explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    Evicted,
    Expired,
    Purged,
    Damaged,
    /// Never stored: the answer was an error or broke off.
    NotCacheable,
}

impl Gone {
    pub fn as_str(self) -> &'static str {
        match self {
            Gone::Evicted => "evicted",
            Gone::Expired => "expired",
            Gone::Purged => "purged",
            Gone::Damaged => "damaged",
            Gone::NotCacheable => "not-cacheable",
        }
    }

    pub fn encode(self, at_ms: u64) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[0] = self as u8;
        out[1..].copy_from_slice(&at_ms.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Option<(Gone, u64)> {
        let why = match b.first()? {
            0 => Gone::Evicted,
            1 => Gone::Expired,
            2 => Gone::Purged,
            3 => Gone::Damaged,
            4 => Gone::NotCacheable,
            _ => return None,
        };
        Some((why, u64::from_le_bytes(b.get(1..9)?.try_into().ok()?)))
    }
}

const SUMMARY_VERSION: u8 = 3;

impl Summary {
    /// `version | bytes | created_ms | last_used | status | stream | method | path | model`,
    /// integers little-endian, strings length-prefixed (u16), an absent model as 0xFFFF.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.method.len() + self.path.len());
        out.push(SUMMARY_VERSION);
        out.extend_from_slice(&self.bytes.to_le_bytes());
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.last_used.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        out.push(u8::from(self.stream));
        out.extend_from_slice(&self.parts.request);
        out.extend_from_slice(&self.parts.base);
        out.extend_from_slice(&self.parts.namespace);
        for text in [Some(&self.method), Some(&self.path), self.model.as_ref()] {
            match text {
                Some(t) => {
                    // Paths and model names longer than this are cut: a summary only names.
                    let t = &t.as_bytes()[..t.len().min(u16::MAX as usize - 1)];
                    out.extend_from_slice(&(t.len() as u16).to_le_bytes());
                    out.extend_from_slice(t);
                }
                None => out.extend_from_slice(&u16::MAX.to_le_bytes()),
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Summary> {
        let mut r = Reader(b);
        if r.take(1)?[0] != SUMMARY_VERSION {
            return None;
        }
        let bytes = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let created_ms = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let last_used = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let status = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let stream = r.take(1)?[0] != 0;
        let mut parts = KeyParts::default();
        parts.request.copy_from_slice(r.take(16)?);
        parts.base.copy_from_slice(r.take(8)?);
        parts.namespace.copy_from_slice(r.take(8)?);
        let method = r.text()??;
        let path = r.text()??;
        let model = r.text()?;
        Some(Summary {
            bytes,
            created_ms,
            last_used,
            status,
            stream,
            method,
            path,
            model,
            parts,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// `Some(None)` for an absent text; `None` when the bytes are not a summary.
    fn text(&mut self) -> Option<Option<String>> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        if len == u16::MAX {
            return Some(None);
        }
        let t = self.take(len as usize)?;
        Some(Some(String::from_utf8_lossy(t).into_owned()))
    }
}

/// The `n` most recently used of the entries offered, without holding more than `n`.
pub struct Newest {
    n: usize,
    heap: BinaryHeap<Reverse<(u64, CacheKey)>>,
}

impl Newest {
    pub fn new(n: usize) -> Newest {
        Newest {
            n,
            heap: BinaryHeap::with_capacity(n.saturating_add(1).min(1024)),
        }
    }

    pub fn offer(&mut self, key: CacheKey, s: &Summary) {
        self.heap.push(Reverse((s.last_used, key)));
        if self.heap.len() > self.n {
            self.heap.pop();
        }
    }

    /// Their keys, most recently used first.
    pub fn into_keys(self) -> Vec<CacheKey> {
        // Ascending by `Reverse` is descending by last use.
        let sorted = self.heap.into_sorted_vec();
        sorted.into_iter().map(|Reverse((_, key))| key).collect()
    }
}

/// A place that keeps answers. Every call blocks; callers run them on threads that may.
pub trait Storage: Send + Sync {
    /// The record stored under `key`, as pieces: the first holds at least the head `put`
    /// was given, the rest follow in order.
    fn lookup(&self, key: &CacheKey) -> StorageResult<Option<Vec<Bytes>>>;

    /// The summary of the entry under `key`.
    fn summary(&self, key: &CacheKey) -> StorageResult<Option<Summary>>;

    /// Stores the record `head` followed by `body` under `key` with its summary,
    /// replacing any entry there; returns the summary of the one it replaced. A large body
    /// is written a piece at a time, never joined into one buffer. `replacing` is false
    /// when the caller knows that no entry is stored under `key`: none is looked for.
    fn put(
        &self,
        key: &CacheKey,
        head: &[u8],
        body: &[Bytes],
        summary: &Summary,
        replacing: bool,
    ) -> StorageResult<Option<Summary>>;

    /// Removes the entry under `key`, returning its summary if there was one, and notes
    /// why it went and when in the same change (a reader never sees it gone unexplained).
    fn remove(&self, key: &CacheKey, why: Gone, at_ms: u64) -> StorageResult<Option<Summary>>;

    /// Notes that each key was last used at the given stamp (later stamps only).
    fn touch(&self, uses: &[(CacheKey, u64)]) -> StorageResult<()>;

    /// Visits every entry's summary, in the order of their keys, until `visit` returns
    /// false.
    fn scan(&self, visit: &mut dyn FnMut(CacheKey, &Summary) -> bool) -> StorageResult<()> {
        self.scan_from(&CacheKey([0; 32]), visit)
    }

    /// Visits every entry's key, until `visit` returns false (no summary is read).
    fn keys(&self, visit: &mut dyn FnMut(CacheKey) -> bool) -> StorageResult<()>;

    /// `scan` from the first key at or after `from`. Keys are hashes, so the entries from
    /// any point on are a sample of the whole cache, unrelated to when they were used:
    /// eviction takes the least recently used of such samples.
    fn scan_from(
        &self,
        from: &CacheKey,
        visit: &mut dyn FnMut(CacheKey, &Summary) -> bool,
    ) -> StorageResult<()>;

    /// `scan_from`, then on from the first key up to `from`: every entry once, in key
    /// order from anywhere.
    fn scan_around(
        &self,
        from: &CacheKey,
        visit: &mut dyn FnMut(CacheKey, &Summary) -> bool,
    ) -> StorageResult<()> {
        let mut go_on = true;
        self.scan_from(from, &mut |key, s| {
            go_on = visit(key, s);
            go_on
        })?;
        if go_on {
            self.scan(&mut |key, s| key < *from && visit(key, s))?;
        }
        Ok(())
    }

    /// Visits the entries whose request (without its partition) is `request`.
    fn same_request(
        &self,
        request: &[u8; 16],
        visit: &mut dyn FnMut(CacheKey, &Summary) -> bool,
    ) -> StorageResult<()>;

    /// Notes why the entry under `key` is gone (or was never stored), and when.
    fn bury(&self, key: &CacheKey, why: Gone, at_ms: u64) -> StorageResult<()>;

    /// Why the entry under `key` is gone, and when, if that was noted.
    fn gone(&self, key: &CacheKey) -> StorageResult<Option<(Gone, u64)>>;

    /// Forgets the notes of entries gone before `before_ms`.
    fn forget_gone(&self, before_ms: u64) -> StorageResult<()>;

    /// Makes everything stored so far durable.
    fn flush(&self) -> StorageResult<()>;

    /// Bytes it occupies on disk.
    fn size_on_disk(&self) -> u64;

    /// Where it keeps answers, for `cache stats`.
    fn location(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_round_trip_and_damage_is_refused() {
        let s = Summary {
            bytes: 1234,
            created_ms: 1_700_000_000_123,
            last_used: 1_700_000_001_000,
            status: 200,
            stream: true,
            method: "POST".into(),
            path: "/chat/completions".into(),
            model: Some("GPT-4 Turbo".into()),
            parts: KeyParts {
                request: [1; 16],
                base: [2; 8],
                namespace: [3; 8],
            },
        };
        assert_eq!(Summary::decode(&s.encode()), Some(s.clone()));
        let none = Summary { model: None, ..s };
        let bytes = none.encode();
        assert_eq!(Summary::decode(&bytes), Some(none));
        assert_eq!(Summary::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Summary::decode(&[9]), None);
        for why in [
            Gone::Evicted,
            Gone::Expired,
            Gone::Purged,
            Gone::Damaged,
            Gone::NotCacheable,
        ] {
            assert_eq!(Gone::decode(&why.encode(42)), Some((why, 42)));
        }
    }
}
