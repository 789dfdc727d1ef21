//! The ledger files on disk: `<data_dir>/ledger/YYYY-MM.jsonl`, their names and modes,
//! reading them back line by line (with byte offsets), and repairing a torn tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use time::UtcOffset;

use super::LedgerLine;

/// The ledger file (name only) that holds a line: the UTC month of its `ts`.
pub fn file_name_for(line: &LedgerLine) -> String {
    file_name_at(line.ts)
}

/// The ledger file (name only) for lines stamped at `ts`.
pub fn file_name_at(ts: time::OffsetDateTime) -> String {
    let mut name = crate::spend::line::day_string(ts.to_offset(UtcOffset::UTC).date());
    name.replace_range(7.., ".jsonl");
    name
}

fn is_ledger_name(name: &str) -> bool {
    let b = name.as_bytes();
    name.len() == 13
        && name.ends_with(".jsonl")
        && b[4] == b'-'
        && b[..4].iter().chain(&b[5..7]).all(u8::is_ascii_digit)
}

/// Creates the ledger directory (mode 0700) if needed.
/// Writes, syncs and removes a small file in `dir`: succeeds only if a ledger line
/// could be made durable there now (space, permissions, a working disk).
pub fn probe_write(dir: &Path) -> io::Result<()> {
    use std::io::Write;
    let path = dir.join(".probe");
    let result = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&[b'\n'; 4096])?;
        f.sync_data()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir)
}

/// Opens a ledger file for appending, creating it with mode 0600.
pub fn open_append(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.append(true).create(true).read(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)
}

/// Makes a new directory entry durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Ledger file names in `dir`, oldest month first. A missing directory has none.
pub fn list_files(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            if is_ledger_name(name) && entry.file_type()?.is_file() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// If a file ends inside a line (a crash mid-write), terminates that line with `\n` so
/// later lines start on their own; the torn line then reads as one bad line. Returns the
/// names of the files repaired.
pub fn repair_torn_tails(dir: &Path) -> io::Result<Vec<String>> {
    let mut repaired = Vec::new();
    for name in list_files(dir)? {
        let path = dir.join(&name);
        let mut file = open_append(&path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            continue;
        }
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            tracing::warn!(file = %path.display(), "ledger file ends inside a line; terminating it");
            file.write_all(b"\n")?;
            file.sync_data()?;
            repaired.push(name);
        }
    }
    Ok(repaired)
}

/// What reading one file found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Lines parsed and visited.
    pub lines: u64,
    /// Complete lines that did not parse (skipped).
    pub skipped: u64,
    /// A final fragment without `\n` was ignored.
    pub torn_tail: bool,
    /// Offset just after the last complete line (the next line starts here).
    pub end: u64,
}

/// Visits each complete line of `path` that starts at or after `start` (a line boundary),
/// with the offset just after it. Unparseable lines are skipped and counted; a final
/// fragment without `\n` is skipped with a warning. Never fails on content, only on I/O.
pub fn read_file(
    path: &Path,
    start: u64,
    mut visit: impl FnMut(LedgerLine, u64),
) -> io::Result<ReadStats> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut stats = ReadStats {
        end: start,
        ..ReadStats::default()
    };
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            stats.torn_tail = true;
            tracing::warn!(file = %path.display(), offset = stats.end,
                "ignoring an unterminated last ledger line");
            break;
        }
        let at = stats.end;
        stats.end += n as u64;
        let body = &buf[..n - 1];
        if body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<LedgerLine>(body) {
            Ok(line) => {
                stats.lines += 1;
                visit(line, stats.end);
            }
            Err(e) => {
                stats.skipped += 1;
                tracing::warn!(file = %path.display(), offset = at, error = %e,
                    "skipping an unreadable ledger line");
            }
        }
    }
    Ok(stats)
}

/// Every line of every ledger file in `dir`, in order, with totals of what was read.
pub fn read_all(dir: &Path) -> io::Result<(Vec<LedgerLine>, ReadStats)> {
    let mut lines = Vec::new();
    let mut total = ReadStats::default();
    for name in list_files(dir)? {
        let stats = read_file(&dir.join(&name), 0, |line, _| lines.push(line))?;
        total.lines += stats.lines;
        total.skipped += stats.skipped;
        total.torn_tail |= stats.torn_tail;
        total.end = stats.end;
    }
    Ok((lines, total))
}

/// The path of the ledger file `name` in `dir`.
pub fn path_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Up to `max` lines of one file read from `start` (a line boundary), as their bytes
/// (without the `\n`) and parsed, for a reader that must know exactly what it consumed.
#[derive(Debug, Default)]
pub struct Chunk {
    pub lines: Vec<(Vec<u8>, LedgerLine)>,
    /// Complete lines consumed, the unreadable and blank ones included.
    pub consumed: u64,
    /// Offset just after the last line consumed.
    pub end: u64,
}

/// Reads up to `max` parsed lines of `path` from `start`, none starting at or after
/// `limit`; an unterminated last fragment is left for later (it may still be being
/// written, or it is a torn tail).
pub fn read_chunk(path: &Path, start: u64, max: usize, limit: u64) -> io::Result<Chunk> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut chunk = Chunk {
        end: start,
        ..Chunk::default()
    };
    while chunk.lines.len() < max && chunk.end < limit {
        let mut buf = Vec::with_capacity(512);
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        let at = chunk.end;
        chunk.end += n as u64;
        chunk.consumed += 1;
        buf.pop();
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<LedgerLine>(&buf) {
            Ok(line) => chunk.lines.push((buf, line)),
            Err(e) => tracing::warn!(file = %path.display(), offset = at, error = %e,
                "skipping an unreadable ledger line"),
        }
    }
    Ok(chunk)
}

/// Counts the complete lines of `path` between `start` (a line boundary) and `limit`;
/// returns the count and the offset just after the last one.
pub fn count_lines(path: &Path, start: u64, limit: u64) -> io::Result<(u64, u64)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut file = file.take(limit.saturating_sub(start));
    let mut buf = vec![0u8; 1 << 16];
    let (mut lines, mut pos, mut end) = (0u64, start, start);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for i in memchr::memchr_iter(b'\n', &buf[..n]) {
            lines += 1;
            end = pos + i as u64 + 1;
        }
        pos += n as u64;
    }
    Ok((lines, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_stop_at_the_limit_skip_what_does_not_parse_and_leave_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("2026-12.jsonl");
        let mut text = Vec::new();
        for p in ["a", "b", "c"] {
            LedgerLine::new(p, "/chat/completions", crate::spend::Outcome::Miss, 200)
                .write_json(&mut text);
            text.push(b'\n');
            if p == "a" {
                text.extend_from_slice(b"{not a line\n\n");
            }
        }
        let whole = text.len() as u64;
        text.extend_from_slice(b"{\"ts\":\"2026-"); // being written, or torn
        std::fs::write(&path, &text).unwrap();

        let all = read_chunk(&path, 0, 100, u64::MAX).unwrap();
        let projects: Vec<&str> = all.lines.iter().map(|(_, l)| &*l.project).collect();
        assert_eq!(projects, ["a", "b", "c"]);
        assert_eq!((all.consumed, all.end), (5, whole));
        assert_eq!(
            count_lines(&path, 0, text.len() as u64).unwrap(),
            (5, whole)
        );

        let first = read_chunk(&path, 0, 1, u64::MAX).unwrap();
        assert_eq!((first.lines.len(), first.consumed), (1, 1));
        let (bytes, line) = &first.lines[0];
        assert_eq!(
            serde_json::from_slice::<LedgerLine>(bytes).unwrap().id,
            line.id
        );
        let rest = read_chunk(&path, first.end, 100, first.end).unwrap();
        assert_eq!(
            (rest.consumed, rest.end),
            (0, first.end),
            "nothing past the limit"
        );
        let rest = read_chunk(&path, first.end, 100, u64::MAX).unwrap();
        assert_eq!((rest.lines.len(), rest.consumed), (2, 4));
        assert_eq!(count_lines(&path, first.end, whole - 1).unwrap().0, 3);
    }
}
