//! Reading the cache for its owner (`chatcache cache …` and the admin API): its counts, the
//! most recently used entries, one entry, and every entry (for export).

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::cache::storage::{Newest, StorageResult};
use crate::cache::Cache;

#[derive(Debug, Serialize)]
pub struct CacheStats {
    /// Where the answers live.
    pub store: String,
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

impl Cache {
    /// The counts as the writer last left them (`settle` first to include what waits).
    pub fn stats(&self) -> CacheStats {
        let s = &self.shared;
        CacheStats {
            store: s.storage.location(),
            entries: s.entries.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            max_bytes: s.limits.max_bytes,
            on_disk_bytes: s.storage.size_on_disk(),
            evictions: s.evictions.load(Ordering::Relaxed),
            dropped_corrupt: s.corrupt.load(Ordering::Relaxed),
        }
    }

    /// Summaries of up to `limit` entries, most recently used first. Blocking.
    pub fn list(&self, limit: usize) -> StorageResult<Vec<EntrySummary>> {
        self.settle()?;
        let mut newest = Newest::new(limit);
        self.shared.storage.scan(&mut |key, s| {
            newest.offer(key, s);
            true
        })?;
        let newest = newest.into_keys();
        let mut out = Vec::with_capacity(newest.len());
        for key in newest {
            if let Some(s) = self.shared.storage.summary(&key)? {
                out.push(EntrySummary {
                    key: key.to_hex(),
                    method: s.method,
                    path: s.path,
                    model: s.model,
                    stream: s.stream,
                    status: s.status,
                    bytes: s.bytes,
                    created_ms: s.created_ms,
                    last_used_ms: s.last_used,
                });
            }
        }
        Ok(out)
    }

    /// The intact stored entry under `key`, without noting a use. Blocking.
    pub fn show(&self, key: CacheKey) -> StorageResult<Option<Entry>> {
        self.settle()?;
        Ok(self
            .shared
            .storage
            .lookup(&key)?
            .and_then(|r| Entry::decode(r).ok()))
    }

    /// Visits every intact stored entry. Blocking.
    pub fn for_each(&self, mut visit: impl FnMut(CacheKey, Entry)) -> StorageResult<()> {
        self.settle()?;
        let storage = &self.shared.storage;
        let mut failure = None;
        storage.scan(&mut |key, _| match storage.lookup(&key) {
            Ok(Some(record)) => {
                if let Ok(e) = Entry::decode(record) {
                    visit(key, e);
                }
                true
            }
            Ok(None) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        })?;
        failure.map_or(Ok(()), Err)
    }
}
