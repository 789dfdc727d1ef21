//! The storage seam: the only file that names sled. Everything persisted outside the
//! ledger and the cache's own files (spend rollups, daemon facts, and what earlier versions
//! kept of the cache) goes through the small key-value API here, grouped in named spaces.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// The separate key spaces the daemon keeps. Each maps to one sled tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Cache key → encoded cache entry, where earlier versions kept entries; the cache
    /// moves them to its answer files when it opens.
    Entries,
    /// Cache key → access record (the entry's place and times), where earlier versions
    /// kept the index; the cache carries them into its journal when it opens.
    Access,
    /// Spend rollup key → aggregate, plus the ledger watermark.
    Rollups,
    /// Small daemon facts: accepted credential fingerprints and the like.
    Meta,
}

impl Space {
    fn tree_name(self) -> &'static str {
        match self {
            Space::Entries => "entries.v1",
            Space::Access => "access.v1",
            Space::Rollups => "rollups.v1",
            Space::Meta => "meta.v1",
        }
    }
}

/// One write in an atomic batch.
#[derive(Debug, Clone)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("the data directory {0} is in use by another chatcache process")]
    Locked(PathBuf),
    #[error("storage error: {0}")]
    Sled(String),
    #[error("answer file error: {0}")]
    Files(#[from] std::io::Error),
    #[error("an entry of {0} bytes is too large to store")]
    TooLarge(usize),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A handle on the sled database. Cheap to clone; all calls are blocking and belong on
/// a blocking thread (`tokio::task::spawn_blocking`), never on an async worker.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    entries: sled::Tree,
    access: sled::Tree,
    rollups: sled::Tree,
    meta: sled::Tree,
}

impl Store {
    /// Opens (creating if needed) the database in `dir` with a page cache of at most
    /// `cache_capacity` bytes.
    pub fn open(dir: &Path, cache_capacity: u64) -> StoreResult<Store> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked(dir.to_path_buf())
                }
                sled::Error::Io(ref io) if io.to_string().contains("lock") => {
                    StoreError::Locked(dir.to_path_buf())
                }
                other => StoreError::from(other),
            })?;
        let tree = |s: Space| db.open_tree(s.tree_name());
        Ok(Store {
            entries: tree(Space::Entries)?,
            access: tree(Space::Access)?,
            rollups: tree(Space::Rollups)?,
            meta: tree(Space::Meta)?,
            db,
        })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        match space {
            Space::Entries => &self.entries,
            Space::Access => &self.access,
            Space::Rollups => &self.rollups,
            Space::Meta => &self.meta,
        }
    }

    pub fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.tree(space).get(key)?.map(|v| v.to_vec()))
    }

    pub fn put(&self, space: Space, key: &[u8], value: &[u8]) -> StoreResult<()> {
        self.tree(space).insert(key, value)?;
        Ok(())
    }

    pub fn remove(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.tree(space).remove(key)?.map(|v| v.to_vec()))
    }

    /// Applies every op to one space atomically: after a crash either all or none are there.
    pub fn apply(&self, space: Space, ops: Vec<Op>) -> StoreResult<()> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k, v),
                Op::Remove(k) => batch.remove(k),
            }
        }
        self.tree(space).apply_batch(batch)?;
        Ok(())
    }

    /// Visits every pair whose key starts with `prefix`, in key order, until `visit`
    /// returns false.
    pub fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        for item in self.tree(space).scan_prefix(prefix) {
            let (k, v) = item?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Visits every pair with `start <= key < end`, in key order, until `visit` returns false.
    pub fn scan_range(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        for item in self.tree(space).range(start..end) {
            let (k, v) = item?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Number of pairs in a space (walks the space: not for hot paths).
    pub fn count(&self, space: Space) -> usize {
        self.tree(space).len()
    }

    /// Removes everything in a space.
    pub fn clear(&self, space: Space) -> StoreResult<()> {
        self.tree(space).clear()?;
        Ok(())
    }

    /// Writes everything buffered to disk.
    pub fn flush(&self) -> StoreResult<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_are_separate_and_batches_apply() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        store.put(Space::Entries, b"k", b"entry").unwrap();
        assert_eq!(store.get(Space::Meta, b"k").unwrap(), None);
        store
            .apply(
                Space::Rollups,
                vec![
                    Op::Put(b"a1".to_vec(), b"1".to_vec()),
                    Op::Put(b"a2".to_vec(), b"2".to_vec()),
                    Op::Put(b"b1".to_vec(), b"3".to_vec()),
                    Op::Remove(b"a1".to_vec()),
                ],
            )
            .unwrap();
        let mut seen = Vec::new();
        store
            .scan_prefix(Space::Rollups, b"a", |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        assert_eq!(seen, vec![(b"a2".to_vec(), b"2".to_vec())]);
        assert_eq!(store.get(Space::Entries, b"k").unwrap().unwrap(), b"entry");
    }

    #[test]
    fn second_open_of_same_dir_reports_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), 1 << 20).unwrap();
        match Store::open(dir.path(), 1 << 20) {
            Err(StoreError::Locked(_)) => {}
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("second open succeeded"),
        }
    }
}
