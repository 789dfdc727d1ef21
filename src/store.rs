//! The data dir's sled database, the only file that names sled: opening it (a damaged one
//! is moved aside), and the small key-value API everything persisted outside the ledger
//! goes through, grouped in named spaces (the cache's answers, spend rollups, daemon facts).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use thiserror::Error;

/// The separate key spaces the daemon keeps. Each maps to one sled tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// The answer cache: entries, their summaries and their order of use (see
    /// `cache::sled_store`), in one tree so that one batch changes all three at once.
    Answers,
    /// Spend rollup key → aggregate, plus the ledger watermark.
    Rollups,
    /// Small daemon facts: accepted credential fingerprints and the like.
    Meta,
}

impl Space {
    fn tree_name(self) -> &'static str {
        match self {
            Space::Answers => "answers.v2",
            Space::Rollups => "rollups.v1",
            Space::Meta => "meta.v1",
        }
    }
}

/// Trees that earlier layouts kept and nothing reads any more: dropped at open.
const RETIRED_TREES: [&str; 2] = ["entries.v1", "access.v1"];

/// sled's own settings. Chosen by measurement: see README's storage paragraph.
const FLUSH_EVERY_MS: u64 = 500;

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
    #[error("cache file error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A handle on the sled database. Cheap to clone; all calls are blocking and belong on
/// a thread of their own or a blocking thread, never on an async worker.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    dir: PathBuf,
    answers: sled::Tree,
    rollups: sled::Tree,
    meta: sled::Tree,
}

impl Store {
    /// Opens (creating if needed) the database in `dir` with a page cache of at most
    /// `cache_capacity` bytes.
    pub fn open(dir: &Path, cache_capacity: u64) -> StoreResult<Store> {
        let config = |compressed: bool| {
            sled::Config::new()
                .path(dir)
                .cache_capacity(cache_capacity)
                .flush_every_ms(Some(FLUSH_EVERY_MS))
                .use_compression(compressed)
        };
        // Made without sled's compression: it creates a zstd context for every record it
        // writes or reads back, which cost the cache's writer three quarters of its time.
        // The answers compress themselves (`cache::sled_store::layout`). A database made
        // compressed stays so: sled refuses to change it on reopen.
        let db = match config(false).open() {
            Err(sled::Error::Unsupported(ref why)) if why.contains("use_compression") => {
                config(true).open()
            }
            other => other,
        };
        let db = db.map_err(|e| match e {
            sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                StoreError::Locked(dir.to_path_buf())
            }
            sled::Error::Io(ref io) if io.to_string().contains("lock") => {
                StoreError::Locked(dir.to_path_buf())
            }
            other => StoreError::from(other),
        })?;
        for name in RETIRED_TREES {
            if db
                .tree_names()
                .iter()
                .any(|t| t.as_ref() == name.as_bytes())
            {
                db.drop_tree(name)?;
            }
        }
        let tree = |s: Space| db.open_tree(s.tree_name());
        Ok(Store {
            answers: tree(Space::Answers)?,
            rollups: tree(Space::Rollups)?,
            meta: tree(Space::Meta)?,
            dir: dir.to_path_buf(),
            db,
        })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        match space {
            Space::Answers => &self.answers,
            Space::Rollups => &self.rollups,
            Space::Meta => &self.meta,
        }
    }

    /// The directory the database lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The value under `key`, sharing the database's own buffer (no copy is made).
    pub fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Bytes>> {
        Ok(self.tree(space).get(key)?.map(Bytes::from_owner))
    }

    /// A number never handed out before in this database, across restarts.
    pub fn unique_id(&self) -> StoreResult<u64> {
        Ok(self.db.generate_id()?)
    }

    pub fn put(&self, space: Space, key: &[u8], value: &[u8]) -> StoreResult<()> {
        self.tree(space).insert(key, value)?;
        Ok(())
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
        visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        visit_all(self.tree(space).scan_prefix(prefix), visit)
    }

    /// Visits every pair with `start <= key < end`, in key order, until `visit` returns false.
    pub fn scan_range(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        visit_all(self.tree(space).range(start..end), visit)
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

fn visit_all(
    items: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    mut visit: impl FnMut(&[u8], &[u8]) -> bool,
) -> StoreResult<()> {
    for item in items {
        let (k, v) = item?;
        if !visit(&k, &v) {
            break;
        }
    }
    Ok(())
}

/// Opens the store in `dir` for a test that reopens it in the same process: the store's own
/// I/O threads may hold its lock a moment after the last handle went, and nothing says when
/// they let go, so a locked store is retried until a deadline.
#[cfg(test)]
pub(crate) fn open_when_free(dir: &Path, cache_capacity: u64) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(dir, cache_capacity) {
            Ok(s) => return s,
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("cannot open the store in {}: {e}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_made_compressed_still_opens_with_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new()
                .path(dir.path())
                .use_compression(true)
                .open()
                .unwrap();
            let answers = db.open_tree(Space::Answers.tree_name()).unwrap();
            answers.insert(b"k", b"kept".as_slice()).unwrap();
            db.flush().unwrap();
        }
        let store = open_when_free(dir.path(), 1 << 20);
        assert_eq!(
            store.get(Space::Answers, b"k").unwrap().as_deref(),
            Some(&b"kept"[..])
        );
        drop(store);
        // A new one is made without sled's compression, and opens again as such.
        let fresh = tempfile::tempdir().unwrap();
        Store::open(fresh.path(), 1 << 20).unwrap();
        let conf = std::fs::read(fresh.path().join("conf")).unwrap();
        let said = b"use_compression: false";
        assert!(conf.windows(said.len()).any(|w| w == said));
    }

    #[test]
    fn spaces_are_separate_and_batches_apply() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        store.put(Space::Answers, b"k", b"entry").unwrap();
        assert_eq!(store.get(Space::Meta, b"k").unwrap(), None);
        store
            .apply(
                Space::Rollups,
                vec![
                    Op::Put(b"a1".to_vec(), b"1".to_vec()),
                    Op::Put(b"a2".to_vec(), b"2".to_vec()),
                    Op::Put(b"a3".to_vec(), b"3".to_vec()),
                    Op::Put(b"b1".to_vec(), b"4".to_vec()),
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
        let pair = |k: &[u8], v: &[u8]| (k.to_vec(), v.to_vec());
        assert_eq!(seen, vec![pair(b"a2", b"2"), pair(b"a3", b"3")]);
        assert_eq!(
            &store.get(Space::Answers, b"k").unwrap().unwrap()[..],
            b"entry"
        );
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

    #[test]
    fn trees_of_earlier_layouts_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("entries.v1")
                .unwrap()
                .insert(b"k", b"v")
                .unwrap();
            db.flush().unwrap();
        }
        let store = open_when_free(dir.path(), 1 << 20);
        assert!(!store
            .db
            .tree_names()
            .iter()
            .any(|t| t.as_ref() == b"entries.v1"));
    }
}
