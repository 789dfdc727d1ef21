//! The ledger writer: one std thread fed by a channel. Each round it takes everything
//! queued, appends the lines to their month files, `sync_data`s once per file touched
//! (group commit), and answers every waiter. Durable lines are folded into the rollups,
//! with their watermarks, in one atomic batch at most every `ROLLUP_EVERY`.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::rollup::{self, Accum};
use super::room::{self, Space};
use super::tail::{space, OpenFile};
use super::{LedgerLine, SpendError};
use crate::store::Store;

/// Most lines taken in one round.
const MAX_BATCH: usize = 4096;
/// How long a queued line may wait for a batch to join before it is written on its own.
pub(crate) const QUEUE_FLUSH: std::time::Duration = std::time::Duration::from_millis(10);
/// Queued lines beyond this wake the writer at once.
pub(crate) const QUEUE_WAKE_AT: usize = 1024;
/// Most lines queued at once (a few MB). Past it a writer is falling behind: further lines
/// are handed over like a miss's and their request waits until they are durable, so the
/// load slows to what the writer can write instead of the queue growing without bound.
pub(crate) const QUEUE_CAP: usize = 16 * 1024;

/// How long durable lines may wait before they are folded into the rollups. A fold is one
/// atomic store batch, which the store writes out at once (two log writes and a wake-up of
/// its I/O threads): folding every commit, up to 100 a second while hits arrive, cost more
/// than writing the lines. A crash loses nothing: the rollups catch up from their
/// watermark, and reports ask for a fold first.
pub(crate) const ROLLUP_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The writer's nice value. On a busy core a batch (the lines of `QUEUE_FLUSH`, serialized,
/// written and synced) would otherwise hold up the requests that arrive meanwhile: it
/// doubled the p99 of cache hits served one at a time. At nice 5 a waking request handler
/// goes first, and the writer still gets about a quarter of a saturated core, about three
/// times what 100k hits a second ask of it. (At nice 10 it fell behind such a load and its
/// queue grew by tens of MB a second.)
const WRITER_NICE: i32 = 5;

fn yield_to_requests() {
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), WRITER_NICE) {
        tracing::debug!(error = %e, "could not lower the ledger writer's priority");
    }
}

pub(crate) type Reply = oneshot::Sender<Result<(), SpendError>>;

/// A line on its way to disk: who waits for it, and the room claimed for it (bytes).
pub(crate) struct Pending {
    pub line: Arc<LedgerLine>,
    pub reply: Option<Reply>,
    pub room: u64,
}

pub(crate) enum Msg {
    /// The queue of lines nobody waits for was empty and now is not: take it within
    /// `QUEUE_FLUSH` (so an idle writer sleeps without a timer).
    Queued,
    /// Take the queued lines now.
    Wake,
    Line(Pending),
    /// Preallocate room for at least this many more bytes than are claimed, and claim
    /// them for the asker; no answer if there is no room.
    MakeRoom(u64, oneshot::Sender<room::Grant>),
    Rebuild(std::sync::mpsc::Sender<Result<(), SpendError>>),
    /// Fold every durable line into the rollups now (before a report reads them).
    FoldRollups(std::sync::mpsc::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// State the writer shares with the `Spend` handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub healthy: AtomicBool,
    pub fsyncs: AtomicU64,
    /// Lines nobody waits for (cache hits), taken by the writer with the next batch or
    /// within `QUEUE_FLUSH`, so that a hit never has to wake the writer thread.
    pub queued: std::sync::Mutex<Vec<(Arc<LedgerLine>, u64)>>,
    /// The preallocated room and what of it is claimed (see `room`).
    pub space: std::sync::Mutex<Space>,
    /// Lines waiting for room.
    pub waiting: std::sync::atomic::AtomicUsize,
    /// Per file the writer has opened: its length up to which every line is written and
    /// synced (what a failed write is cut back to). Readers go no further (the team
    /// ledger's shipper).
    pub durable: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Test hook: the next N segment writes write half their bytes, then fail.
    #[cfg(test)]
    pub fail_writes: std::sync::atomic::AtomicU32,
    /// Test hook: while set, preallocation fails as on a full disk.
    #[cfg(test)]
    pub disk_full: AtomicBool,
    /// Test hook: while held, the writer stops before committing a batch.
    #[cfg(test)]
    pub hold: std::sync::Mutex<()>,
    /// Test hook: rollup folds written to the store.
    #[cfg(test)]
    pub folds: AtomicU64,
}

impl Shared {
    pub(super) fn set_durable(&self, name: &str, len: u64) {
        // A map of lengths: consistent after any panic, so poison is ignored.
        let mut d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        d.insert(name.to_string(), len);
    }

    pub fn new() -> Shared {
        Shared {
            healthy: AtomicBool::new(true),
            fsyncs: AtomicU64::new(0),
            queued: std::sync::Mutex::new(Vec::new()),
            space: std::sync::Mutex::new(Space::default()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            durable: std::sync::Mutex::default(),
            #[cfg(test)]
            fail_writes: std::sync::atomic::AtomicU32::new(0),
            #[cfg(test)]
            disk_full: AtomicBool::new(false),
            #[cfg(test)]
            hold: std::sync::Mutex::new(()),
            #[cfg(test)]
            folds: AtomicU64::new(0),
        }
    }
}

pub(crate) struct Writer {
    pub(super) dir: PathBuf,
    store: Store,
    pub(super) shared: Arc<Shared>,
    pub(super) current: Option<OpenFile>,
    /// Files left with a partly written failed batch: cut back to this length first.
    pub(super) repairs: BTreeMap<String, u64>,
    /// The last rollup apply failed: catch up from the watermarks next time.
    rollups_stale: bool,
    /// Durable lines not yet folded into the stored rollups, and since when.
    unfolded: Option<(Accum, Instant)>,
    /// The file whose preallocated tail is the ledger's room (the newest month's).
    pub(super) hold: Option<String>,
    /// The file system cannot preallocate: room is taken on trust.
    pub(super) unsupported: bool,
    /// Written whatever the room (the last commit before closing).
    pub(super) force: bool,
    /// Lines that found no room, oldest first; written as soon as room returns.
    pub(super) waiting: Vec<Pending>,
    /// When preallocation was last tried.
    pub(super) last_try: Instant,
    /// This round tries again for room that was short.
    pub(super) retrying: bool,
}

/// What became of one line of a commit.
#[derive(Clone)]
enum Fate {
    Durable,
    /// No room: kept, and written when room returns.
    Waits,
    Failed(String),
}

impl Writer {
    pub(crate) fn new(dir: PathBuf, store: Store, shared: Arc<Shared>) -> Writer {
        Writer {
            dir,
            store,
            shared,
            current: None,
            repairs: BTreeMap::new(),
            rollups_stale: false,
            unfolded: None,
            hold: None,
            unsupported: false,
            force: false,
            waiting: Vec::new(),
            last_try: Instant::now(),
            retrying: false,
        }
    }

    pub(crate) fn spawn(self, rx: Receiver<Msg>) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("chatcache-ledger".into())
            .spawn(move || {
                yield_to_requests();
                self.run(rx)
            })
    }

    fn take_queued(&self, pending: &mut Vec<Pending>) {
        // Only pushes and a swap happen under this lock: a poisoned one holds a valid Vec.
        let lines =
            std::mem::take(&mut *self.shared.queued.lock().unwrap_or_else(|p| p.into_inner()));
        pending.extend(lines.into_iter().map(|(line, room)| Pending {
            line,
            reply: None,
            room,
        }));
    }

    fn run(mut self, rx: Receiver<Msg>) {
        use std::sync::mpsc::RecvTimeoutError;
        self.start_hold();
        let mut pending = Vec::new();
        // When the queued lines must be taken; None while none are known to be queued.
        let mut due: Option<Instant> = None;
        loop {
            let wake = [due, self.fold_due(), self.retry_due()]
                .into_iter()
                .flatten()
                .min();
            let first = match wake {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            let mut msgs = match first {
                Ok(first) => vec![first],
                Err(RecvTimeoutError::Timeout) => Vec::new(),
                Err(RecvTimeoutError::Disconnected) => break,
            };
            while msgs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            // Queued lines join any batch that is written anyway, or go when due.
            let mut take = false;
            for msg in msgs {
                match msg {
                    Msg::Queued => {
                        due.get_or_insert_with(|| Instant::now() + QUEUE_FLUSH);
                    }
                    Msg::Line(p) => {
                        pending.push(p);
                        take = true;
                    }
                    Msg::Wake => take = true,
                    Msg::MakeRoom(bytes, reply) => {
                        let claimed = space(&self.shared).claimed;
                        self.top_up(claimed + bytes + room::TARGET);
                        if let Some(grant) = room::Grant::claim(&self.shared, bytes) {
                            // An asker gone meanwhile gives it back as the grant drops.
                            let _ = reply.send(grant);
                        }
                    }
                    Msg::Rebuild(reply) => {
                        self.commit(&mut pending);
                        // The rebuild reads every durable line from the files.
                        self.unfolded = None;
                        let result = rollup::rebuild(&self.store, &self.dir);
                        self.rollups_stale = result.is_err();
                        let _ = reply.send(result);
                    }
                    Msg::FoldRollups(reply) => {
                        self.take_queued(&mut pending);
                        self.commit(&mut pending);
                        self.fold_rollups();
                        let _ = reply.send(());
                    }
                    Msg::Close(reply) => {
                        self.finish(&mut pending);
                        // Let go of the store, its writes done, before answering: whoever
                        // closed the ledger may then reopen the data dir at once.
                        if let Err(e) = self.store.flush() {
                            tracing::error!(error = %e, "could not flush the spend rollups");
                        }
                        drop(self);
                        let _ = reply.send(());
                        return;
                    }
                }
            }
            if take || due.is_some_and(|at| at <= Instant::now()) {
                self.take_queued(&mut pending);
                due = None;
            }
            self.retrying = self.retry_due().is_some_and(|at| at <= Instant::now());
            if self.retrying {
                self.retry_room();
            }
            self.commit(&mut pending);
            if std::mem::take(&mut self.retrying) {
                self.last_try = Instant::now();
            }
            self.keep_room();
            if self.fold_due().is_some_and(|at| at <= Instant::now()) {
                self.fold_rollups();
            }
        }
        self.finish(&mut pending);
    }

    /// The last commit: everything queued or waiting is written if it can be at all.
    fn finish(&mut self, pending: &mut Vec<Pending>) {
        self.take_queued(pending);
        self.force = true;
        self.commit(pending);
        if !self.waiting.is_empty() {
            tracing::error!(
                lines = self.waiting.len(),
                "the spend ledger closes with lines that found no room on disk; they are lost"
            );
        }
        self.fold_rollups();
    }

    /// When the unfolded lines must be folded into the rollups; None if there are none.
    fn fold_due(&self) -> Option<Instant> {
        self.unfolded
            .as_ref()
            .map(|(_, since)| *since + ROLLUP_EVERY)
    }

    /// Writes the unfolded lines' counters and watermarks to the store (one atomic batch).
    fn fold_rollups(&mut self) {
        let Some((acc, _)) = self.unfolded.take() else {
            return;
        };
        #[cfg(test)]
        self.shared.folds.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = acc.commit(false) {
            tracing::error!(error = %e, "cannot update spend rollups; will catch up");
            self.rollups_stale = true;
        }
    }

    /// Makes `pending` and the lines that waited durable where there is room, adds the
    /// durable lines to the unfolded rollups, answers the waiters; lines that found no
    /// room wait for the next try.
    fn commit(&mut self, pending: &mut Vec<Pending>) {
        if pending.is_empty() && self.waiting.is_empty() {
            return;
        }
        #[cfg(test)]
        drop(self.shared.hold.lock());
        let (batch, segments) = self.segments(pending);
        if batch.is_empty() {
            return;
        }
        let mut fates = vec![Fate::Durable; batch.len()];
        let mut all_ok = true;
        let mut durable: Vec<usize> = Vec::new();
        let mut marks: Vec<(String, u64)> = Vec::new();
        for seg in segments {
            let n = self.room_for(&seg);
            for &i in &seg.idx[n..] {
                fates[i] = Fate::Waits;
            }
            if n == 0 {
                continue;
            }
            let bytes = seg.ends[n - 1];
            let room: u64 = seg.idx[..n].iter().map(|&i| batch[i].room).sum();
            match self.write_segment(&seg.name, &seg.buf[..bytes as usize]) {
                Ok(len) => {
                    durable.extend_from_slice(&seg.idx[..n]);
                    marks.push((seg.name.clone(), len));
                    self.used(&seg.name, bytes, room);
                }
                Err(e) => {
                    all_ok = false;
                    // A failed write was cut back, and its file's preallocation with it.
                    self.room_lost(&seg.name);
                    let no_space = room::is_no_space(&e);
                    tracing::error!(file = %seg.name, error = %e, lines = n, waits = no_space,
                        "cannot make spend ledger lines durable");
                    if !no_space {
                        self.used(&seg.name, 0, room);
                    }
                    for &i in &seg.idx[..n] {
                        fates[i] = if no_space {
                            Fate::Waits
                        } else {
                            Fate::Failed(e.to_string())
                        };
                    }
                }
            }
        }
        self.shared.healthy.store(all_ok, Ordering::SeqCst);
        self.update_rollups(&batch, &durable, &marks);
        for (mut p, fate) in batch.into_iter().zip(fates) {
            let result = match fate {
                Fate::Durable => Ok(()),
                Fate::Failed(e) => Err(SpendError::NotDurable(e)),
                Fate::Waits => {
                    // Whoever waits hears now; the line is kept, and written when it can be.
                    let reply = p.reply.take();
                    self.waiting.push(p);
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(SpendError::NoRoom));
                    }
                    continue;
                }
            };
            match p.reply {
                Some(reply) => {
                    let _ = reply.send(result);
                }
                None if result.is_err() => {
                    tracing::warn!("a spend ledger line recorded without waiting was lost");
                }
                None => {}
            }
        }
        self.shared
            .waiting
            .store(self.waiting.len(), Ordering::Relaxed);
    }

    fn update_rollups(&mut self, batch: &[Pending], durable: &[usize], marks: &[(String, u64)]) {
        if self.rollups_stale {
            match rollup::catch_up(&self.store, &self.dir) {
                Ok(_) => self.rollups_stale = false,
                Err(e) => tracing::error!(error = %e, "spend rollups still behind the ledger"),
            }
            return;
        }
        let (acc, _) = self
            .unfolded
            .get_or_insert_with(|| (Accum::new(&self.store, true), Instant::now()));
        let added = durable.iter().try_for_each(|&i| acc.add(&batch[i].line));
        for (name, len) in marks {
            acc.watermark(name, *len);
        }
        if let Err(e) = added {
            tracing::error!(error = %e, "cannot update spend rollups; will catch up");
            self.unfolded = None;
            self.rollups_stale = true;
        }
    }
}
