//! Bodies of large answers, one file each beside the store: `<dir>/<key hex>.<generation>`.
//! Written once, read whole, deleted when their entry goes. Their checksum is the entry's,
//! so a file that is short or damaged makes its entry damaged, never a wrong answer.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use crate::cache::key::CacheKey;

/// Bytes read at a time, and so the size of the pieces a body is read back in.
const READ_PIECE: usize = 64 * 1024;

pub(super) struct Bodies {
    dir: PathBuf,
}

impl Bodies {
    pub(super) fn new(dir: PathBuf) -> Bodies {
        Bodies { dir }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &CacheKey, generation: u64) -> PathBuf {
        self.dir.join(format!("{}.{generation}", key.to_hex()))
    }

    /// Writes `body` to a new file. Not synced: a power loss can leave it short, which its
    /// entry's checksum then finds.
    pub(super) fn write(&self, key: &CacheKey, generation: u64, body: &[Bytes]) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let mut out =
            BufWriter::with_capacity(READ_PIECE, File::create(self.path(key, generation))?);
        for piece in body {
            out.write_all(piece)?;
        }
        out.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    }

    /// The body in pieces of `READ_PIECE` bytes, or `None` if its file is not there.
    pub(super) fn read(&self, key: &CacheKey, generation: u64) -> io::Result<Option<Vec<Bytes>>> {
        let mut file = match File::open(self.path(key, generation)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut pieces = Vec::new();
        loop {
            let mut piece = BytesMut::zeroed(READ_PIECE);
            let mut filled = 0;
            while filled < READ_PIECE {
                match file.read(&mut piece[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            piece.truncate(filled);
            if filled > 0 {
                pieces.push(piece.freeze());
            }
            if filled < READ_PIECE {
                return Ok(Some(pieces));
            }
        }
    }

    /// Deletes the body's file; one already gone is fine.
    pub(super) fn remove(&self, key: &CacheKey, generation: u64) -> io::Result<()> {
        self.remove_file(&format!("{}.{generation}", key.to_hex()))
    }

    /// Every body file: its name, and the key and generation it holds.
    pub(super) fn list(&self) -> io::Result<Vec<(String, CacheKey, u64)>> {
        let dir = match fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in dir {
            let name = e?.file_name().to_string_lossy().into_owned();
            let parsed = name.split_once('.').and_then(|(hex, generation)| {
                Some((CacheKey::from_hex(hex)?, generation.parse().ok()?))
            });
            if let Some((key, generation)) = parsed {
                out.push((name, key, generation));
            }
        }
        Ok(out)
    }

    /// Deletes the body file called `name`.
    pub(super) fn remove_file(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Bytes the files take.
    pub(super) fn size(&self) -> u64 {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return 0;
        };
        dir.filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}
