//! The writer's files and the room at their tail: a batch laid out by month file, the
//! open month file, appending and syncing a segment of lines, cutting back a failed
//! write, and keeping the ledger's next stretch preallocated (see `room`) in the newest
//! month's file.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use time::OffsetDateTime;

use super::ledger;
use super::room::{self, Prealloc, Space, TARGET};
use super::writer::{Pending, Shared, Writer};

pub(super) struct OpenFile {
    pub name: String,
    pub file: File,
    /// Bytes known to be complete lines on disk.
    pub len: u64,
}

pub(super) fn space(shared: &Shared) -> MutexGuard<'_, Space> {
    // Only plain arithmetic happens under this lock: a poisoned one is still valid.
    shared.space.lock().unwrap_or_else(|p| p.into_inner())
}

/// Consecutive lines of one month file, claimed ones first: (line indexes, their bytes,
/// where each line ends in them).
pub(super) struct Segment {
    pub name: String,
    pub idx: Vec<usize>,
    pub buf: Vec<u8>,
    pub ends: Vec<u64>,
    /// How many of the first lines have room claimed, and how much.
    pub claimed_lines: usize,
    pub room: u64,
}

impl Writer {
    /// Lays the batch (lines that waited first) out in month segments, lines with claimed
    /// room first, so that the order of the file is the order of the batch.
    pub(super) fn segments(&mut self, pending: &mut Vec<Pending>) -> (Vec<Pending>, Vec<Segment>) {
        // While room is short, the lines that wait are looked at again only when room is
        // tried for again (not with every batch of hits).
        let retry = self.force || self.retrying || !space(&self.shared).short;
        let mut batch = if retry {
            std::mem::take(&mut self.waiting)
        } else {
            Vec::new()
        };
        batch.append(pending);
        // Stable: lines that waited stay ahead of newer ones within each group.
        batch.sort_by_key(|p| p.room == 0);
        let mut segments: Vec<Segment> = Vec::new();
        // A line's month is compared first; a file name is made once per segment.
        let mut month = None;
        for (i, p) in batch.iter().enumerate() {
            let date = p.line.utc_date();
            let this_month = Some((date.year(), date.month()));
            if month != this_month || segments.is_empty() {
                month = this_month;
                segments.push(Segment {
                    name: ledger::file_name_for(&p.line),
                    idx: Vec::new(),
                    buf: Vec::with_capacity(512),
                    ends: Vec::new(),
                    claimed_lines: 0,
                    room: 0,
                });
            }
            let Some(seg) = segments.last_mut() else {
                continue; // unreachable: a segment was just ensured
            };
            p.line.write_json(&mut seg.buf);
            seg.buf.push(b'\n');
            seg.idx.push(i);
            seg.ends.push(seg.buf.len() as u64);
            if p.room > 0 {
                seg.claimed_lines += 1;
                seg.room += p.room;
            }
        }
        (batch, segments)
    }

    /// Puts the room in this month's file, creating it if need be.
    pub(super) fn start_hold(&mut self) {
        self.hold = Some(ledger::file_name_at(OffsetDateTime::now_utc()));
        self.top_up(TARGET);
    }

    /// How many of the segment's first lines may be written now: those with room claimed,
    /// and the others as far as unclaimed room goes (more is preallocated if it can be).
    pub(super) fn room_for(&mut self, seg: &Segment) -> usize {
        let n = seg.idx.len();
        if self.force || self.unsupported {
            return n;
        }
        match self.hold.as_deref() {
            Some(h) if h == seg.name => {}
            // A late line of a month gone by: written where it belongs, room or not.
            Some(h) if h > seg.name.as_str() => return n,
            _ => self.move_hold(&seg.name),
        }
        let total = seg.ends.last().copied().unwrap_or(0);
        let (held, other, short) = {
            let s = space(&self.shared);
            (s.held, s.claimed.saturating_sub(seg.room), s.short)
        };
        if held < other + total && (!short || self.retrying) {
            self.top_up(other + total + TARGET);
        }
        let budget = space(&self.shared).held.saturating_sub(other);
        let fit = seg.ends.partition_point(|&end| end <= budget);
        fit.max(seg.claimed_lines)
    }

    /// The room moves to a newer month's file: the old file's preallocation is given back.
    fn move_hold(&mut self, name: &str) {
        if let Some(old) = self.hold.take() {
            let held = std::mem::take(&mut space(&self.shared).held);
            if let Ok(f) = self.file_for(&old) {
                room::release(&f.file, f.len, held);
            }
        }
        self.hold = Some(name.to_string());
    }

    /// Preallocates until `target` bytes are held past the end of the room's file. False
    /// if that could not be done (then room is short).
    pub(super) fn top_up(&mut self, target: u64) -> bool {
        if space(&self.shared).held >= target {
            return true;
        }
        self.preallocate(target)
    }

    /// Preallocates `target` bytes past the end of the room's file, even if they are held
    /// already (so that room found short is known to be back).
    fn preallocate(&mut self, target: u64) -> bool {
        let Some(name) = self.hold.clone() else {
            return false;
        };
        self.last_try = Instant::now();
        let outcome = match self.file_for(&name) {
            Ok(f) => room::preallocate(&f.file, f.len, target),
            Err(e) => Prealloc::Failed(e),
        };
        #[cfg(test)]
        let outcome = if self.shared.disk_full.load(Ordering::SeqCst) {
            Prealloc::Failed(io::Error::from_raw_os_error(
                rustix::io::Errno::NOSPC.raw_os_error(),
            ))
        } else {
            outcome
        };
        let failed = match outcome {
            Prealloc::Done => None,
            Prealloc::Unsupported => {
                if !self.unsupported {
                    tracing::warn!(file = %name, "the ledger's file system cannot preallocate: a full disk is noticed only when a ledger write fails");
                }
                self.unsupported = true;
                None
            }
            Prealloc::Failed(e) => Some(e),
        };
        let mut s = space(&self.shared);
        match (s.short, failed) {
            (_, None) => {
                if s.short {
                    tracing::info!("the spend ledger has room again");
                }
                s.short = false;
                s.held = target;
                true
            }
            (was_short, Some(e)) => {
                if !was_short {
                    tracing::warn!(error = %e, "no room can be preallocated for the spend ledger: requests that would go upstream are refused once the room held is claimed, and hit lines wait");
                }
                s.short = true;
                false
            }
        }
    }

    /// Keeps at least half of `TARGET` unclaimed room (not while room is short: that is
    /// tried again every `room::RETRY`).
    pub(super) fn keep_room(&mut self) {
        if self.force {
            return;
        }
        let (free, claimed, short) = {
            let s = space(&self.shared);
            (s.held.saturating_sub(s.claimed), s.claimed, s.short)
        };
        if !short && free < TARGET / 2 {
            self.top_up(claimed + TARGET);
        }
    }

    /// When room must be tried again: while it is short or lines wait for it.
    pub(super) fn retry_due(&self) -> Option<Instant> {
        let short = space(&self.shared).short;
        (short || !self.waiting.is_empty()).then(|| self.last_try + room::RETRY)
    }

    /// Tries for room again (the commit that follows writes what waited, preallocating
    /// more for it if need be).
    pub(super) fn retry_room(&mut self) {
        let target = {
            let s = space(&self.shared);
            s.held.max(s.claimed + TARGET)
        };
        self.preallocate(target);
    }

    /// `bytes` were written to `name` by lines that had claimed `room`.
    pub(super) fn used(&mut self, name: &str, bytes: u64, room: u64) {
        let mut s = space(&self.shared);
        if self.hold.as_deref() == Some(name) {
            s.held = s.held.saturating_sub(bytes);
        }
        s.give_back(room);
    }

    /// A write to `name` failed and was cut back, freeing what was preallocated past it.
    pub(super) fn room_lost(&mut self, name: &str) {
        if self.hold.as_deref() == Some(name) {
            space(&self.shared).held = 0;
        }
    }

    /// Appends `buf` to the month file `name` and syncs it; returns the new length. On
    /// failure the file is cut back to its last good length (now, or before its next use).
    pub(super) fn write_segment(&mut self, name: &str, buf: &[u8]) -> io::Result<u64> {
        self.repair_all();
        let shared = Arc::clone(&self.shared);
        let file = self.file_for(name)?;
        let good = file.len;
        let result = write_and_sync(&mut file.file, buf, &shared);
        match result {
            Ok(()) => {
                file.len = good + buf.len() as u64;
                shared.set_durable(name, file.len);
                Ok(file.len)
            }
            Err(e) => {
                if file.file.set_len(good).is_err() {
                    self.repairs.insert(name.to_string(), good);
                    self.current = None;
                }
                Err(e)
            }
        }
    }

    fn repair_all(&mut self) {
        let names: Vec<(String, u64)> = self.repairs.iter().map(|(n, l)| (n.clone(), *l)).collect();
        for (name, len) in names {
            let path = ledger::path_of(&self.dir, &name);
            let fixed = ledger::open_append(&path)
                .and_then(|f| f.set_len(len).and_then(|()| f.sync_data()));
            if fixed.is_ok() {
                self.repairs.remove(&name);
            }
        }
    }

    pub(super) fn file_for(&mut self, name: &str) -> io::Result<&mut OpenFile> {
        let reuse = matches!(&self.current, Some(f) if f.name == name);
        if !reuse {
            self.current = None;
            if self.repairs.contains_key(name) {
                return Err(io::Error::other(
                    "ledger file awaits repair of a failed write",
                ));
            }
            ledger::create_dir(&self.dir)?;
            let path = ledger::path_of(&self.dir, name);
            let existed = path.exists();
            let file = ledger::open_append(&path)?;
            if !existed {
                ledger::sync_dir(&self.dir)?;
            }
            let len = file.metadata()?.len();
            self.shared.set_durable(name, len);
            self.current = Some(OpenFile {
                name: name.to_string(),
                file,
                len,
            });
        }
        self.current
            .as_mut()
            .ok_or_else(|| io::Error::other("no ledger file open"))
    }
}

pub(super) fn write_and_sync(file: &mut File, buf: &[u8], shared: &Shared) -> io::Result<()> {
    #[cfg(test)]
    if shared
        .fail_writes
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        file.write_all(&buf[..buf.len() / 2])?;
        return Err(io::Error::other("injected write failure"));
    }
    file.write_all(buf)?;
    shared.fsyncs.fetch_add(1, Ordering::Relaxed);
    file.sync_data()
}
