//! The index journal: every change to where entries are (a record written, a key dropped,
//! a use noted) appended as a fixed-size, checksummed record to `index.log` beside the
//! answer files; replayed at start to rebuild the index, and rewritten from the index once
//! it holds more than twice what is live. The only code that touches that file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::answers::Place;
use crate::cache::index::Slot;
use crate::cache::key::CacheKey;
use crate::cache::secs;

const FILE_NAME: &str = "index.log";
const KEY_LEN: usize = 32;
const CHECK_LEN: usize = 4;
/// Key, access record, checksum.
const RECORD_LEN: usize = KEY_LEN + Access::LEN + CHECK_LEN;
/// The place a removal carries: no record is ever there.
const GONE: Place = Place {
    segment: u32::MAX,
    offset: u32::MAX,
    len: u32::MAX,
};
/// Below this many live entries, the journal is rewritten at twice this many records.
const MIN_LIVE: u64 = 4096;

/// An entry's times and its place in the answer files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub created_ms: u64,
    pub last_ms: u64,
    pub place: Place,
}

impl Access {
    pub const LEN: usize = 16 + Place::ENCODED_LEN;

    pub fn encode(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.created_ms.to_le_bytes());
        out[8..16].copy_from_slice(&self.last_ms.to_le_bytes());
        out[16..].copy_from_slice(&self.place.encode());
        out
    }

    pub fn decode(b: &[u8]) -> Option<Access> {
        if b.len() != Self::LEN {
            return None;
        }
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
        };
        Some(Access {
            created_ms: word(0)?,
            last_ms: word(8)?,
            place: Place::decode(&b[16..])?,
        })
    }

    /// The record for what the index holds (its times to the second).
    pub fn of(slot: Slot) -> Access {
        Access {
            created_ms: u64::from(slot.created_s) * 1000,
            last_ms: u64::from(slot.last_s) * 1000,
            place: slot.place,
        }
    }

    pub fn slot(self) -> Slot {
        Slot {
            place: self.place,
            created_s: secs(self.created_ms),
            last_s: secs(self.last_ms),
            dirty: false,
        }
    }
}

/// One change to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Put(CacheKey, Access),
    Remove(CacheKey),
}

impl Change {
    fn encode(self) -> [u8; RECORD_LEN] {
        let (key, access) = match self {
            Change::Put(key, access) => (key, access),
            Change::Remove(key) => {
                let gone = Access {
                    created_ms: 0,
                    last_ms: 0,
                    place: GONE,
                };
                (key, gone)
            }
        };
        let mut out = [0u8; RECORD_LEN];
        out[..KEY_LEN].copy_from_slice(&key.0);
        out[KEY_LEN..KEY_LEN + Access::LEN].copy_from_slice(&access.encode());
        let check = checksum(&out[..RECORD_LEN - CHECK_LEN]);
        out[RECORD_LEN - CHECK_LEN..].copy_from_slice(&check);
        out
    }

    /// `None` for a record that fails its checksum.
    fn decode(b: &[u8; RECORD_LEN]) -> Option<Change> {
        let (body, check) = b.split_at(RECORD_LEN - CHECK_LEN);
        if checksum(body) != check {
            return None;
        }
        let key = CacheKey(body[..KEY_LEN].try_into().ok()?);
        let access = Access::decode(&body[KEY_LEN..])?;
        Some(if access.place == GONE {
            Change::Remove(key)
        } else {
            Change::Put(key, access)
        })
    }
}

fn checksum(body: &[u8]) -> [u8; CHECK_LEN] {
    let hash = blake3::hash(body);
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&hash.as_bytes()[..CHECK_LEN]);
    out
}

pub struct Journal {
    dir: PathBuf,
    file: Arc<File>,
    /// Records in the file.
    records: u64,
    /// Records appended since the last sync.
    unsynced: bool,
}

impl Journal {
    /// Opens (creating, owner-only) the journal in `dir` and hands `apply` each intact
    /// record in the order written. A record that fails its checksum is skipped; a part
    /// record at the end (a crash mid-append) is cut off so appends stay aligned.
    pub fn open(dir: &Path, mut apply: impl FnMut(Change)) -> io::Result<Journal> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path(dir))?;
        let mut reader = BufReader::with_capacity(1 << 16, &file);
        let mut record = [0u8; RECORD_LEN];
        let mut records = 0u64;
        let mut damaged = 0u64;
        loop {
            match reader.read_exact(&mut record) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            records += 1;
            match Change::decode(&record) {
                Some(change) => apply(change),
                None => damaged += 1,
            }
        }
        drop(reader);
        if damaged > 0 {
            tracing::warn!(damaged, "skipped damaged index journal records");
        }
        let whole = records * RECORD_LEN as u64;
        if file.metadata()?.len() != whole {
            file.set_len(whole)?;
        }
        Ok(Journal {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            records,
            unsynced: false,
        })
    }

    /// Appends `changes`, in order, in one write. A write that fails is cut off again, so
    /// none of it is replayed later.
    pub fn append(&mut self, changes: &[Change]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(changes.len() * RECORD_LEN);
        for change in changes {
            buf.extend_from_slice(&change.encode());
        }
        let end = self.records * RECORD_LEN as u64;
        if let Err(e) = self.file.write_all_at(&buf, end) {
            if let Err(cut) = self.file.set_len(end) {
                tracing::warn!(error = %cut, "could not cut a failed index journal write");
            }
            return Err(e);
        }
        self.records += changes.len() as u64;
        self.unsynced |= !changes.is_empty();
        Ok(())
    }

    /// Whether the journal holds so many more records than the `live` entries that it
    /// should be rewritten.
    pub fn is_due(&self, live: u64) -> bool {
        self.records >= 2 * live.max(MIN_LIVE)
    }

    /// Replaces the journal with one record per entry in `live`: written to a new file,
    /// synced, then renamed over the old one, so a crash leaves one or the other.
    pub fn rewrite(&mut self, live: impl Iterator<Item = (CacheKey, Access)>) -> io::Result<()> {
        let fresh_path = self.dir.join(format!("{FILE_NAME}.new"));
        let fresh = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&fresh_path)?;
        let mut out = BufWriter::with_capacity(1 << 16, &fresh);
        let mut records = 0u64;
        for (key, access) in live {
            out.write_all(&Change::Put(key, access).encode())?;
            records += 1;
        }
        out.flush()?;
        drop(out);
        fresh.sync_data()?;
        std::fs::rename(&fresh_path, path(&self.dir))?;
        // From here on appends go to the new file, whether or not the rename is durable yet.
        self.file = Arc::new(fresh);
        self.records = records;
        self.unsynced = false;
        File::open(&self.dir)?.sync_all()
    }

    /// Makes everything appended durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.unsynced = false;
        Ok(())
    }

    /// Whether records were appended since the last sync.
    pub fn is_unsynced(&self) -> bool {
        self.unsynced
    }

    /// For a sync made by the caller without holding the journal: the file, if records
    /// were appended since the last sync, now counted as synced. A caller whose sync fails
    /// calls `sync_failed`.
    pub fn take_unsynced(&mut self) -> Option<Arc<File>> {
        std::mem::take(&mut self.unsynced).then(|| self.file.clone())
    }

    pub fn sync_failed(&mut self) {
        self.unsynced = true;
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Bytes the journal in `dir` takes on disk.
pub fn size_on_disk(dir: &Path) -> u64 {
    std::fs::metadata(path(dir)).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(segment: u32, offset: u32) -> Access {
        Access {
            created_ms: 5_000,
            last_ms: 9_000,
            place: Place {
                segment,
                offset,
                len: 10,
            },
        }
    }

    fn replay(dir: &Path) -> (Journal, Vec<Change>) {
        let mut seen = Vec::new();
        let journal = Journal::open(dir, |c| seen.push(c)).unwrap();
        (journal, seen)
    }

    #[test]
    fn changes_replay_in_order_and_the_file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, seen) = replay(dir.path());
        assert!(seen.is_empty());
        let (a, b) = (CacheKey([1; 32]), CacheKey([2; 32]));
        let changes = [
            Change::Put(a, access(0, 0)),
            Change::Put(b, access(0, 42)),
            Change::Remove(a),
        ];
        j.append(&changes[..2]).unwrap();
        assert!(j.is_unsynced());
        j.sync().unwrap();
        assert!(!j.is_unsynced());
        j.append(&[]).unwrap();
        assert!(!j.is_unsynced(), "nothing appended");
        j.append(&changes[2..]).unwrap();
        assert!(j.is_unsynced());
        let file = j.take_unsynced().expect("records to sync");
        assert!(!j.is_unsynced() && j.take_unsynced().is_none());
        file.sync_data().unwrap();
        j.sync_failed();
        assert!(j.is_unsynced(), "a failed sync is tried again");
        drop(j);
        assert_eq!(replay(dir.path()).1, changes);
        let mode = std::fs::metadata(path(dir.path())).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn a_damaged_record_is_skipped_and_a_part_record_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = replay(dir.path());
        let keys: Vec<CacheKey> = (1..=3u8).map(|i| CacheKey([i; 32])).collect();
        let puts: Vec<Change> = (keys.iter())
            .map(|k| Change::Put(*k, access(1, 0)))
            .collect();
        j.append(&puts).unwrap();
        drop(j);
        // Flip a byte of the second record, then leave half a record at the end.
        let p = path(dir.path());
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[RECORD_LEN + 40] ^= 0xff;
        bytes.extend_from_slice(&[7u8; RECORD_LEN / 2]);
        std::fs::write(&p, &bytes).unwrap();
        let (mut j, seen) = replay(dir.path());
        assert_eq!(seen, vec![puts[0], puts[2]]);
        assert_eq!(size_on_disk(dir.path()), 3 * RECORD_LEN as u64);
        // The next append lands on a record boundary and reads back.
        j.append(&[Change::Remove(keys[0])]).unwrap();
        drop(j);
        let (_, seen) = replay(dir.path());
        assert_eq!(seen, vec![puts[0], puts[2], Change::Remove(keys[0])]);
    }

    #[test]
    fn a_rewrite_keeps_only_what_is_live_and_is_due_at_twice_the_live() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = replay(dir.path());
        let key = CacheKey([9; 32]);
        let many = 2 * MIN_LIVE as u32;
        for i in 0..many - 1 {
            j.append(&[Change::Put(key, access(0, i))]).unwrap();
        }
        assert!(!j.is_due(1));
        j.append(&[Change::Put(key, access(0, many))]).unwrap();
        assert!(j.is_due(1));
        assert!(!j.is_due(u64::from(many)));
        j.rewrite([(key, access(0, many))].into_iter()).unwrap();
        assert!(!j.is_due(1));
        j.append(&[Change::Put(CacheKey([8; 32]), access(2, 0))])
            .unwrap();
        drop(j);
        let (_, seen) = replay(dir.path());
        assert_eq!(
            seen,
            vec![
                Change::Put(key, access(0, many)),
                Change::Put(CacheKey([8; 32]), access(2, 0)),
            ]
        );
        assert!(!dir.path().join(format!("{FILE_NAME}.new")).exists());
    }

    #[test]
    fn slots_and_records_convert_to_the_second() {
        let a = Access {
            created_ms: 12_345,
            last_ms: 67_890,
            place: Place {
                segment: 3,
                offset: 4,
                len: 5,
            },
        };
        assert_eq!(Access::decode(&a.encode()), Some(a));
        let back = Access::of(a.slot());
        assert_eq!((back.created_ms, back.last_ms), (12_000, 67_000));
        assert_eq!(back.place, a.place);
    }
}
