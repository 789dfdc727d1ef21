//! The spend side: the durable ledger, its rollups, reports and budgets, behind the
//! `Spend` facade.
//!
//! The ledger files are the source of truth; rollups in the store are derived from them
//! and can always be rebuilt. A line is recorded by the writer thread (group commit); the
//! rollups and the in-memory budgets follow it.

mod budget;
mod ledger;
mod line;
pub mod reconcile;
mod render;
mod report;
mod reserve;
mod rollup;
mod room;
mod tail;
pub mod team;
mod writer;

#[cfg(test)]
mod room_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use thiserror::Error;
use time::OffsetDateTime;
use tokio::sync::oneshot;

pub use budget::{BudgetState, Budgets, PeriodUse, Refusal};
pub use ledger::{read_all, ReadStats};
pub use line::{new_id, LedgerLine, Outcome};
pub use reconcile::{rfc3339, Observation, Reconciliation};
pub use report::{printable, render_csv, render_json, render_table, Dim, Report, ReportQuery, Row};
pub use reserve::Reservation;
pub use rollup::Counters;
pub use room::{line_room, Room, RoomState, WAITING_CAP};

use crate::config::ProjectConfig;
use crate::store::{Store, StoreError};
use writer::{Msg, Pending, Shared, Writer};

/// Resolves once a handed-over ledger line is durable (see `durable`).
pub type Durable = oneshot::Receiver<Result<(), SpendError>>;

/// Waits for a handed-over line: Ok once it is fsync'd.
pub async fn durable(done: Durable) -> Result<(), SpendError> {
    done.await.map_err(|_| SpendError::Closed)?
}

#[derive(Debug, Error)]
pub enum SpendError {
    #[error("spend ledger I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the spend ledger line could not be made durable: {0}")]
    NotDurable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("spend rollups are corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    BadReport(String),
    #[error("the spend ledger is closed")]
    Closed,
    #[error("no room in the spend ledger on disk now (a line already handed over waits for it)")]
    NoRoom,
}

impl SpendError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> SpendError {
        SpendError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The spend ledger, rollups and budgets. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Spend {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    store: Store,
    tx: mpsc::Sender<Msg>,
    budgets: Mutex<Budgets>,
    shared: Arc<Shared>,
    /// When the ledger was last probed while unhealthy.
    last_probe: Mutex<Option<std::time::Instant>>,
}

impl Spend {
    /// Opens <data_dir>/ledger, catches rollups up from the watermark, starts the writer thread.
    ///
    /// Blocking. A file torn by a crash is first terminated with `\n`; rollups that are
    /// missing, undecodable or no longer match the ledger files are rebuilt from them.
    pub fn open(
        data_dir: &Path,
        store: Store,
        projects: BTreeMap<String, ProjectConfig>,
    ) -> Result<Spend, SpendError> {
        let dir = data_dir.join("ledger");
        ledger::create_dir(&dir).map_err(|e| SpendError::io(&dir, e))?;
        ledger::repair_torn_tails(&dir).map_err(|e| SpendError::io(&dir, e))?;
        if rollup::is_valid(&store)? {
            rollup::catch_up(&store, &dir)?;
        } else {
            let has_ledger = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
            if has_ledger {
                tracing::warn!("spend rollups missing or unreadable; rebuilding from the ledger");
            }
            rollup::rebuild(&store, &dir)?;
        }
        let mut budgets = Budgets::new(&projects, OffsetDateTime::now_utc());
        if let Some(since) = budgets.seed_since() {
            rollup::scan(&store, since.as_deref(), None, |g, c| {
                budgets.add_rollup(&g, &c)
            })?;
        }
        let shared = Arc::new(Shared::new());
        let (tx, rx) = mpsc::channel();
        Writer::new(dir.clone(), store.clone(), Arc::clone(&shared))
            .spawn(rx)
            .map_err(|e| SpendError::io(&dir, e))?;
        Ok(Spend {
            inner: Arc::new(Inner {
                dir,
                store,
                tx,
                budgets: Mutex::new(budgets),
                shared,
                last_probe: Mutex::new(None),
            }),
        })
    }

    fn budgets(&self) -> MutexGuard<'_, Budgets> {
        // The guarded data stays consistent on panic (plain adds), so poison is ignored.
        self.inner.budgets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends the line; resolves once it is fsync'd (group commit). Err if it could not be made durable.
    ///
    /// The line's cost counts toward its project's budget at once, even if the write
    /// then fails: the money was spent upstream either way.
    pub async fn record(&self, line: impl Into<Arc<LedgerLine>>) -> Result<(), SpendError> {
        let line = line.into();
        self.budgets().add_line(&line);
        durable(self.hand_over(line, 0)).await
    }

    /// Hands the line to the writer with the room claimed for it (bytes).
    fn hand_over(&self, line: Arc<LedgerLine>, room: u64) -> Durable {
        let (reply, done) = oneshot::channel();
        let msg = Msg::Line(Pending {
            line,
            reply: Some(reply),
            room,
        });
        // A writer that is gone drops the reply with the message: `done` then says Closed.
        let _ = self.inner.tx.send(msg);
        done
    }

    /// Appends the line without waiting for the fsync (for cache hits). Only when
    /// `writer::QUEUE_CAP` lines already wait is it handed over as `record` does; the
    /// returned receiver then resolves once it is durable, and the caller should wait for
    /// it (backpressure on a writer that falls behind).
    pub fn record_nowait(&self, line: impl Into<Arc<LedgerLine>>) -> Option<Durable> {
        self.record_nowait_in(line, None)
    }

    /// `record_nowait` for a line with room claimed for it (see `hold_room`); a hit's line
    /// has none, and waits for room if there is none left.
    pub fn record_nowait_in(
        &self,
        line: impl Into<Arc<LedgerLine>>,
        room: Option<Room>,
    ) -> Option<Durable> {
        let line = line.into();
        let room = room.map_or(0, Room::take);
        self.budgets().add_line(&line);
        let mut q = self
            .inner
            .shared
            .queued
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if q.len() >= writer::QUEUE_CAP {
            drop(q);
            return Some(self.hand_over(line, room));
        }
        q.push((line, room));
        let queued = q.len();
        drop(q);
        // The writer takes queued lines with the next batch or within writer::QUEUE_FLUSH
        // of the first one; only a long queue makes it take them now.
        let tell = match queued {
            1 => Some(Msg::Queued),
            writer::QUEUE_WAKE_AT => Some(Msg::Wake),
            _ => None,
        };
        if tell.is_some_and(|m| self.inner.tx.send(m).is_err()) {
            tracing::warn!("spend ledger closed; queued lines may be lost");
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn queued_len(&self) -> usize {
        self.inner
            .shared
            .queued
            .lock()
            .map(|q| q.len())
            .unwrap_or(0)
    }

    #[cfg(test)]
    pub(crate) fn hold_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .shared
            .hold
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The budget state of `project` now.
    pub fn budget(&self, project: &str) -> BudgetState {
        self.budgets().state_at(project, OffsetDateTime::now_utc())
    }

    /// The budget of `project` and its spend in the current period; None without a budget.
    pub fn period_use(&self, project: &str) -> Option<PeriodUse> {
        self.budgets()
            .period_use(project, OffsetDateTime::now_utc())
    }

    /// Keeps what `/credits` answered for the credential with this fingerprint. Blocking.
    pub fn observe_credits(&self, fingerprint: &str, obs: Observation) -> Result<(), SpendError> {
        reconcile::credits::record(&self.inner.store, fingerprint, obs)?;
        Ok(())
    }

    /// The ledger against the observed credits, from `since_ms` (Unix ms) on. Blocking.
    pub fn reconcile(
        &self,
        since_ms: Option<i64>,
        drift_warn: f64,
    ) -> Result<Reconciliation, SpendError> {
        reconcile::build(&self.inner.store, &self.inner.dir, since_ms, drift_warn)
    }

    /// False after the last write or fsync failed (until one succeeds again).
    pub fn healthy(&self) -> bool {
        self.inner.shared.healthy.load(Ordering::SeqCst)
    }

    /// Whether a ledger line could be made durable now. While unhealthy, checks at most
    /// once a second by writing and syncing a small probe file beside the ledger, so the
    /// daemon notices on its own when space returns.
    pub async fn writable(&self) -> bool {
        if self.healthy() {
            return true;
        }
        {
            let mut last = self
                .inner
                .last_probe
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
                return false;
            }
            *last = Some(std::time::Instant::now());
        }
        let dir = self.inner.dir.clone();
        let ok = tokio::task::spawn_blocking(move || ledger::probe_write(&dir))
            .await
            .is_ok_and(|r| r.is_ok());
        if ok {
            tracing::info!("the spend ledger is writable again");
            self.inner.shared.healthy.store(true, Ordering::SeqCst);
        }
        ok
    }

    /// How many times the writer has synced a ledger file (one per file per batch).
    pub fn fsync_count(&self) -> u64 {
        self.inner.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// How far the file `name` is written and synced, if the writer has opened it since
    /// start; a file it has not opened is as it was at start.
    pub(crate) fn durable_len(&self, name: &str) -> Option<u64> {
        let d = self
            .inner
            .shared
            .durable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        d.get(name).copied()
    }

    /// The directory holding the ledger files.
    pub fn ledger_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Blocking (call from spawn_blocking in async code). Counts every line durable when
    /// it is called.
    pub fn report(&self, q: &ReportQuery) -> Result<Report, SpendError> {
        self.fold_rollups();
        report::build(&self.inner.store, q)
    }

    /// Has the writer fold every durable line into the stored rollups. Blocking.
    pub(crate) fn fold_rollups(&self) {
        let (reply, done) = mpsc::channel();
        if self.inner.tx.send(Msg::FoldRollups(reply)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Clears the rollups and recomputes them from the ledger files. Blocking.
    pub fn rebuild(&self) -> Result<(), SpendError> {
        let (reply, done) = mpsc::channel();
        if self.inner.tx.send(Msg::Rebuild(reply)).is_ok() {
            if let Ok(result) = done.recv() {
                return result;
            }
        }
        // The writer has stopped (the request was refused or dropped unanswered), so
        // nothing else touches the rollups any more.
        rollup::rebuild(&self.inner.store, &self.inner.dir)
    }

    /// Flushes and stops the writer (waits for queued lines to be durable).
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(reply)).is_ok() {
            let _ = done.await;
        }
    }

    #[cfg(test)]
    pub(crate) fn fail_next_writes(&self, n: u32) {
        self.inner.shared.fail_writes.store(n, Ordering::SeqCst);
    }
}
