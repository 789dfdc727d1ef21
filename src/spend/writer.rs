//! The ledger writer: one std thread fed by a channel. Each round it takes everything
//! queued, appends the lines to their month files, `sync_data`s once per file touched
//! (group commit), and answers every waiter. Durable lines are folded into the rollups,
//! with their watermarks, in one atomic batch at most every `ROLLUP_EVERY`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::ledger;
use super::rollup::{self, Accum};
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

pub(crate) enum Msg {
    /// The queue of lines nobody waits for was empty and now is not: take it within
    /// `QUEUE_FLUSH` (so an idle writer sleeps without a timer).
    Queued,
    /// Take the queued lines now.
    Wake,
    Line {
        line: Arc<LedgerLine>,
        reply: Option<Reply>,
    },
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
    pub queued: std::sync::Mutex<Vec<Arc<LedgerLine>>>,
    /// Per file the writer has opened: its length up to which every line is written and
    /// synced (what a failed write is cut back to). Readers go no further (the team
    /// ledger's shipper).
    pub durable: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Test hook: the next N segment writes write half their bytes, then fail.
    #[cfg(test)]
    pub fail_writes: std::sync::atomic::AtomicU32,
    /// Test hook: while held, the writer stops before committing a batch.
    #[cfg(test)]
    pub hold: std::sync::Mutex<()>,
    /// Test hook: rollup folds written to the store.
    #[cfg(test)]
    pub folds: AtomicU64,
}

impl Shared {
    fn set_durable(&self, name: &str, len: u64) {
        // A map of lengths: consistent after any panic, so poison is ignored.
        let mut d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        d.insert(name.to_string(), len);
    }

    pub fn new() -> Shared {
        Shared {
            healthy: AtomicBool::new(true),
            fsyncs: AtomicU64::new(0),
            queued: std::sync::Mutex::new(Vec::new()),
            durable: std::sync::Mutex::default(),
            #[cfg(test)]
            fail_writes: std::sync::atomic::AtomicU32::new(0),
            #[cfg(test)]
            hold: std::sync::Mutex::new(()),
            #[cfg(test)]
            folds: AtomicU64::new(0),
        }
    }
}

struct OpenFile {
    name: String,
    file: File,
    /// Bytes known to be complete lines on disk.
    len: u64,
}

pub(crate) struct Writer {
    dir: PathBuf,
    store: Store,
    shared: Arc<Shared>,
    current: Option<OpenFile>,
    /// Files left with a partly written failed batch: cut back to this length first.
    repairs: BTreeMap<String, u64>,
    /// The last rollup apply failed: catch up from the watermarks next time.
    rollups_stale: bool,
    /// Durable lines not yet folded into the stored rollups, and since when.
    unfolded: Option<(Accum, Instant)>,
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

    fn take_queued(&self, pending: &mut Vec<(Arc<LedgerLine>, Option<Reply>)>) {
        // Only pushes and a swap happen under this lock: a poisoned one holds a valid Vec.
        let lines =
            std::mem::take(&mut *self.shared.queued.lock().unwrap_or_else(|p| p.into_inner()));
        pending.extend(lines.into_iter().map(|l| (l, None)));
    }

    fn run(mut self, rx: Receiver<Msg>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut pending = Vec::new();
        // When the queued lines must be taken; None while none are known to be queued.
        let mut due: Option<Instant> = None;
        loop {
            let wake = match (due, self.fold_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
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
                    Msg::Line { line, reply } => {
                        pending.push((line, reply));
                        take = true;
                    }
                    Msg::Wake => take = true,
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
                        self.take_queued(&mut pending);
                        self.commit(&mut pending);
                        self.fold_rollups();
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
            self.commit(&mut pending);
            if self.fold_due().is_some_and(|at| at <= Instant::now()) {
                self.fold_rollups();
            }
        }
        self.take_queued(&mut pending);
        self.commit(&mut pending);
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

    /// Makes `pending` durable, adds the durable lines to the unfolded rollups, answers the
    /// waiters.
    fn commit(&mut self, pending: &mut Vec<(Arc<LedgerLine>, Option<Reply>)>) {
        if pending.is_empty() {
            return;
        }
        #[cfg(test)]
        drop(self.shared.hold.lock());
        let batch = std::mem::take(pending);
        let mut results: Vec<Result<(), String>> = vec![Ok(()); batch.len()];
        // Consecutive lines of one month file form a segment: (file, line indexes, bytes).
        // A line's month is compared first; a file name is made once per segment.
        let mut segments: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut month = None;
        for (i, (line, _)) in batch.iter().enumerate() {
            let date = line.utc_date();
            let this_month = Some((date.year(), date.month()));
            if month != this_month {
                month = this_month;
                segments.push((
                    ledger::file_name_for(line),
                    Vec::new(),
                    Vec::with_capacity(512),
                ));
            }
            let Some((_, idx, buf)) = segments.last_mut() else {
                continue; // unreachable: a segment was just ensured
            };
            line.write_json(buf);
            buf.push(b'\n');
            idx.push(i);
        }
        segments.retain(|(_, idx, _)| !idx.is_empty());
        let mut all_ok = results.iter().all(Result::is_ok);
        let mut durable: Vec<usize> = Vec::new();
        let mut marks: Vec<(String, u64)> = Vec::new();
        for (name, idx, buf) in segments {
            match self.write_segment(&name, &buf) {
                Ok(len) => {
                    durable.extend_from_slice(&idx);
                    marks.push((name, len));
                }
                Err(e) => {
                    all_ok = false;
                    tracing::error!(file = %name, error = %e, lines = idx.len(),
                        "cannot make spend ledger lines durable");
                    for i in idx {
                        results[i] = Err(e.to_string());
                    }
                }
            }
        }
        self.shared.healthy.store(all_ok, Ordering::SeqCst);
        self.update_rollups(&batch, &durable, &marks);
        for ((_, reply), result) in batch.into_iter().zip(results) {
            match reply {
                Some(reply) => {
                    let _ = reply.send(result.map_err(SpendError::NotDurable));
                }
                None if result.is_err() => {
                    tracing::warn!("a spend ledger line recorded without waiting was lost");
                }
                None => {}
            }
        }
    }

    fn update_rollups(
        &mut self,
        batch: &[(Arc<LedgerLine>, Option<Reply>)],
        durable: &[usize],
        marks: &[(String, u64)],
    ) {
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
        let added = durable.iter().try_for_each(|&i| acc.add(&batch[i].0));
        for (name, len) in marks {
            acc.watermark(name, *len);
        }
        if let Err(e) = added {
            tracing::error!(error = %e, "cannot update spend rollups; will catch up");
            self.unfolded = None;
            self.rollups_stale = true;
        }
    }

    /// Appends `buf` to the month file `name` and syncs it; returns the new length. On
    /// failure the file is cut back to its last good length (now, or before its next use).
    fn write_segment(&mut self, name: &str, buf: &[u8]) -> io::Result<u64> {
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

    fn file_for(&mut self, name: &str) -> io::Result<&mut OpenFile> {
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

fn write_and_sync(file: &mut File, buf: &[u8], shared: &Shared) -> io::Result<()> {
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
