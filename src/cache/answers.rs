//! The answer files: every stored entry is appended, behind its full key, to a segment
//! file and read back by position, so stored answers sit in the OS page cache and not in
//! the daemon's memory. The only code that touches these files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::cache::key::CacheKey;

/// A segment is closed for appends once it holds this much (one larger entry may pass it).
pub const SEGMENT_BYTES: u64 = 16 << 20;

const KEY_LEN: usize = 32;

/// Where one entry is: its segment, the offset of its record, and the entry's length
/// (the record is the 32-byte key followed by the entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
}

impl Place {
    pub const ENCODED_LEN: usize = 12;

    /// Bytes the record takes in its segment file.
    pub fn record_len(self) -> u64 {
        record_len(self.len)
    }

    pub fn encode(self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..4].copy_from_slice(&self.segment.to_le_bytes());
        out[4..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Option<Place> {
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
        };
        Some(Place {
            segment: word(0)?,
            offset: word(4)?,
            len: word(8)?,
        })
    }
}

/// Bytes a record for an entry of `len` bytes takes in its segment file.
pub fn record_len(len: u32) -> u64 {
    KEY_LEN as u64 + u64::from(len)
}

/// The directory of segment files, named by their number.
pub struct Answers {
    dir: PathBuf,
}

impl Answers {
    /// Opens (creating, owner-only) the directory and lists its segments with their sizes.
    pub fn open(dir: &Path) -> io::Result<(Answers, Vec<(u32, u64)>)> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut found = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(id) = id {
                found.push((id, item.metadata()?.len()));
            }
        }
        found.sort_unstable();
        let answers = Answers {
            dir: dir.to_path_buf(),
        };
        Ok((answers, found))
    }

    /// The directory the segments are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, segment: u32) -> PathBuf {
        self.dir.join(format!("{segment:08}.seg"))
    }

    /// A new, empty segment to append to.
    pub fn create(&self, segment: u32) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path(segment))?;
        Ok(read_at_random(file))
    }

    pub fn open_segment(&self, segment: u32) -> io::Result<File> {
        Ok(read_at_random(File::open(self.path(segment))?))
    }

    /// Deletes a segment; a reader holding it open can still finish its read.
    pub fn delete(&self, segment: u32) -> io::Result<()> {
        match std::fs::remove_file(self.path(segment)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Tells the kernel that records are read at random: no read-ahead around each one, which
/// would read pages nobody asked for and leave markers that make `read_now` give up. Only
/// a hint: a file system that does not take it reads the same bytes.
fn read_at_random(file: File) -> File {
    if let Err(e) = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random) {
        tracing::debug!(error = %e, "the answer files take no read-ahead hint");
    }
    file
}

/// Writes the record for `entry` under `key` at `offset` of `file`; the caller owns the
/// offset (one writer per segment).
pub fn write(file: &File, offset: u64, key: &CacheKey, entry: &[u8]) -> io::Result<()> {
    let mut record = Vec::with_capacity(KEY_LEN + entry.len());
    record.extend_from_slice(&key.0);
    record.extend_from_slice(entry);
    file.write_all_at(&record, offset)
}

/// What a record read gives: its full key and its entry bytes, or `None` for a record cut
/// short (a crash before the data reached the disk).
pub type Record = Option<(CacheKey, Vec<u8>)>;

/// The record at `place`.
pub fn read(file: &File, place: Place) -> io::Result<Record> {
    let mut record = vec![0u8; KEY_LEN + place.len as usize];
    match file.read_exact_at(&mut record, u64::from(place.offset)) {
        Ok(()) => Ok(split(record)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// As `read`, but only from the OS page cache: `WouldBlock` when any of the record would
/// have to come from the disk, so that an async worker never waits on one.
pub fn read_now(file: &File, place: Place) -> io::Result<Record> {
    let mut record = vec![0u8; KEY_LEN + place.len as usize];
    let got = rustix::io::preadv2(
        file,
        &mut [io::IoSliceMut::new(&mut record)],
        u64::from(place.offset),
        rustix::io::ReadWriteFlags::NOWAIT,
    )?;
    if got < record.len() {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(split(record))
}

fn split(mut record: Vec<u8>) -> Record {
    let entry = record.split_off(KEY_LEN);
    let key = <[u8; KEY_LEN]>::try_from(record.as_slice()).ok()?;
    Some((CacheKey(key), entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_by_place_and_short_ones_read_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let (answers, found) = Answers::open(&dir.path().join("a")).unwrap();
        assert!(found.is_empty());
        let mode = std::fs::metadata(dir.path().join("a"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        let file = answers.create(7).unwrap();
        let (k1, k2) = (CacheKey([1; 32]), CacheKey([2; 32]));
        write(&file, 0, &k1, b"first").unwrap();
        write(&file, 37, &k2, b"second!").unwrap();
        let second = Place {
            segment: 7,
            offset: 37,
            len: 7,
        };
        assert_eq!(Place::decode(&second.encode()), Some(second));
        let (key, bytes) = read(&file, second).unwrap().unwrap();
        assert_eq!((key, bytes.as_slice()), (k2, &b"second!"[..]));
        // Just written, so in the page cache: read without waiting, the same bytes.
        let (key, bytes) = read_now(&file, second).unwrap().unwrap();
        assert_eq!((key, bytes.as_slice()), (k2, &b"second!"[..]));
        let past_end = Place { len: 8, ..second };
        assert!(read(&file, past_end).unwrap().is_none());
        assert!(
            read_now(&file, past_end).is_err(),
            "short: left to the blocking read"
        );
        let (_, found) = Answers::open(&dir.path().join("a")).unwrap();
        assert_eq!(found, vec![(7, 37 + 32 + 7)]);
        answers.delete(7).unwrap();
        answers.delete(7).unwrap();
        assert!(Answers::open(&dir.path().join("a")).unwrap().1.is_empty());
    }
}
