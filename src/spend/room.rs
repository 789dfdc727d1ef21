//! Room in the ledger for lines not yet written. The writer keeps a stretch past the end
//! of the current ledger file preallocated (`fallocate` with `KEEP_SIZE`: the file's
//! length, and so every reader, is untouched); a request that may go upstream claims room
//! for its line out of that stretch before anything is sent, and is refused when none can
//! be had. Lines that find no room (hits, mostly) wait in a bounded queue until it returns.

use std::fs::File;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use rustix::fs::FallocateFlags;
use serde::Serialize;
use tokio::sync::oneshot;

use super::tail::space;
use super::writer::{Msg, Shared};
use super::{Spend, SpendError};

/// How much the writer keeps preallocated past what is claimed: room for a few hundred
/// lines, so a request rarely waits for an `fallocate`, and a full disk stops misses
/// after a few hundred lines at most.
pub(crate) const TARGET: u64 = 128 << 10;
/// Most lines that may wait for room; past it, hits are refused rather than unrecorded.
pub const WAITING_CAP: usize = 4096;
/// While room is short or lines wait, how often the writer tries again on its own.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// The writer's room, shared with the request side.
#[derive(Debug, Default)]
pub(crate) struct Space {
    /// Bytes preallocated past the end of the file that holds the room.
    pub held: u64,
    /// Of `held`, bytes claimed by requests whose lines are not yet written.
    pub claimed: u64,
    /// The last try to preallocate more failed: no claim waits for another try until the
    /// writer's next one succeeds.
    pub short: bool,
}

impl Space {
    /// Claims `bytes` of what is held and not claimed, if there is that much.
    fn claim(&mut self, bytes: u64) -> bool {
        if self.held.saturating_sub(self.claimed) < bytes {
            return false;
        }
        self.claimed += bytes;
        true
    }

    pub(crate) fn give_back(&mut self, bytes: u64) {
        self.claimed = self.claimed.saturating_sub(bytes);
    }
}

/// What the ledger's room is now (health, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RoomState {
    pub held_bytes: u64,
    pub claimed_bytes: u64,
    /// Room for new lines could not be preallocated: requests that would go upstream are
    /// refused once what is held runs out.
    pub short: bool,
    pub waiting_lines: u64,
    pub waiting_limit: u64,
}

/// Room claimed for one line. Handed over with the line, it is the writer's to release;
/// dropped unused (the request died first), it is given back.
pub struct Room {
    spend: Spend,
    bytes: u64,
}

impl Room {
    /// The claimed bytes, now the writer's to release.
    pub(crate) fn take(mut self) -> u64 {
        std::mem::take(&mut self.bytes)
    }
}

/// Room the writer claimed for a request that asked it for more (`Msg::MakeRoom`): claimed
/// there, as the room is made, because whoever claimed first would otherwise take it (a
/// burst of requests took it all, and the ones that had asked were refused). Given back if
/// the request is gone before it takes it.
pub(crate) struct Grant {
    shared: Arc<Shared>,
    bytes: u64,
}

impl Grant {
    /// `bytes` of what is held and not claimed, if there is that much.
    pub(crate) fn claim(shared: &Arc<Shared>, bytes: u64) -> Option<Grant> {
        space(shared).claim(bytes).then(|| Grant {
            shared: shared.clone(),
            bytes,
        })
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        space(&self.shared).give_back(self.bytes);
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.spend.space().give_back(self.bytes);
        }
    }
}

/// The room to claim for the line of a request of `project` for `model`: the fixed fields
/// (names, time, id, fingerprint, numbers) take well under 1 KiB, and free text may take
/// six bytes for each of its own once escaped.
pub fn line_room(project: &str, model: Option<&str>) -> u64 {
    1024 + 6 * (project.len() + model.map_or(0, str::len)) as u64
}

impl Spend {
    pub(crate) fn space(&self) -> MutexGuard<'_, Space> {
        // Only plain arithmetic happens under this lock: a poisoned one is still valid.
        self.inner
            .shared
            .space
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `bytes` of preallocated room for a line, asking the writer for more when
    /// what it holds is claimed. Fails when no room can be had: the disk is full, or the
    /// ledger cannot be written.
    pub async fn hold_room(&self, bytes: u64) -> Result<Room, SpendError> {
        if let Some(room) = self.try_claim(bytes) {
            return Ok(room);
        }
        if !self.space().short {
            let (reply, granted) = oneshot::channel();
            if self.inner.tx.send(Msg::MakeRoom(bytes, reply)).is_ok() {
                if let Ok(mut grant) = granted.await {
                    return Ok(Room {
                        spend: self.clone(),
                        bytes: std::mem::take(&mut grant.bytes),
                    });
                }
            }
        }
        Err(SpendError::NoRoom)
    }

    fn try_claim(&self, bytes: u64) -> Option<Room> {
        self.space().claim(bytes).then(|| Room {
            spend: self.clone(),
            bytes,
        })
    }

    /// False once `WAITING_CAP` lines wait for room: hits are then refused.
    pub fn takes_hits(&self) -> bool {
        // An atomic, not the lock: every hit asks.
        self.inner.shared.waiting.load(Ordering::Relaxed) < WAITING_CAP
    }

    pub fn room(&self) -> RoomState {
        let s = self.space();
        RoomState {
            held_bytes: s.held,
            claimed_bytes: s.claimed,
            short: s.short,
            waiting_lines: self.inner.shared.waiting.load(Ordering::Relaxed) as u64,
            waiting_limit: WAITING_CAP as u64,
        }
    }
}

/// What a try to preallocate found.
pub(crate) enum Prealloc {
    Done,
    /// The file system cannot preallocate: room is then taken on trust, and a full disk
    /// is noticed only when a write fails.
    Unsupported,
    Failed(io::Error),
}

/// Makes sure the `len` bytes past `from` are allocated to `file`, its length unchanged.
pub(crate) fn preallocate(file: &File, from: u64, len: u64) -> Prealloc {
    if len == 0 {
        return Prealloc::Done;
    }
    match rustix::fs::fallocate(file, FallocateFlags::KEEP_SIZE, from, len) {
        Ok(()) => Prealloc::Done,
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => Prealloc::Unsupported,
        Err(e) => Prealloc::Failed(e.into()),
    }
}

/// Gives back what was preallocated past `from` (the room moves to a new month's file).
pub(crate) fn release(file: &File, from: u64, len: u64) {
    if len == 0 {
        return;
    }
    let flags = FallocateFlags::KEEP_SIZE | FallocateFlags::PUNCH_HOLE;
    if let Err(e) = rustix::fs::fallocate(file, flags, from, len) {
        tracing::debug!(error = %e, "could not give back a ledger file's preallocated room");
    }
}

/// Whether a failed write or preallocation means the disk (or quota) is full.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::NOSPC.raw_os_error())
        || code == Some(rustix::io::Errno::DQUOT.raw_os_error())
}
