//! The team ledger: this daemon's handle on the team's PostgreSQL, where every daemon's
//! ledger lines meet. Here: the handle, its shared state and the shipping lag it reports;
//! the shipper itself is in `ship`, team budgets in `budget`, reachability in `reach`.

mod budget;
mod postgres;
mod reach;
mod ship;
#[cfg(test)]
mod tests;

pub use budget::{Settling, TeamHold, TeamRefusal};
pub use reach::Reachability;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::TeamConfig;
use crate::store::{Store, StoreError};
use postgres::{Db, DbError};

/// A line's id in the team ledger: the blake3 of its bytes in the local ledger file. The
/// bytes hold the line's own id (random per daemon run, then counted) and its timestamp,
/// so two lines never share them; and they never change, so the id survives anything
/// that makes a line be sent again, a lost cursor included.
pub fn line_id(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TeamError(String);

impl From<DbError> for TeamError {
    fn from(e: DbError) -> TeamError {
        TeamError(e.to_string())
    }
}

impl From<StoreError> for TeamError {
    fn from(e: StoreError) -> TeamError {
        TeamError(e.to_string())
    }
}

fn io_error(path: &Path, e: std::io::Error) -> TeamError {
    TeamError(format!("ledger {}: {e}", path.display()))
}

/// What the shipper has done and has left, for health, `stats` and the metrics.
#[derive(Debug, Clone, Serialize)]
pub struct ShipStats {
    /// This daemon's name in the team ledger.
    pub daemon: String,
    /// "starting" until the first attempt, then "up" or "down" (PostgreSQL reachable?);
    /// "not running" where no shipper runs (a command run without the daemon).
    pub state: &'static str,
    /// Complete local ledger lines not yet in PostgreSQL.
    pub pending_lines: u64,
    /// Age of the oldest of them (0 when none).
    pub oldest_pending_seconds: f64,
    /// Lines sent and committed since start (a line sent again counts again).
    pub sent_lines: u64,
    /// Of those, the lines PostgreSQL did not have yet.
    pub inserted_lines: u64,
    pub last_error: Option<String>,
}

/// The team ledger of this daemon. Cheap to clone.
#[derive(Clone)]
pub struct Team {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    name: String,
    dir: PathBuf,
    /// The ledger's writer says how far each file it writes is durable.
    spend: super::Spend,
    store: Store,
    migrated: AtomicBool,
    /// A shipper has been started.
    running: AtomicBool,
    state: Mutex<State>,
    /// `[team] budget_*`.
    budgets: budget::Settings,
    /// Local line id → the team reservation its line replaces, until the line is shipped.
    settling: Mutex<HashMap<String, String>>,
    /// Team reservations of requests in flight.
    live: Mutex<HashSet<String>>,
    /// Whether PostgreSQL answered the latest exchange (for team budgets).
    reach: reach::Reach,
}

#[derive(Default)]
struct State {
    files: BTreeMap<String, FileState>,
    cursors_loaded: bool,
    up: Option<bool>,
    sent: u64,
    inserted: u64,
    last_error: Option<String>,
}

/// One ledger file: shipped up to `shipped`; `pending` complete, durable lines counted
/// between it and `counted_to`; the timestamp of the first of them once read.
#[derive(Debug, Clone, Default)]
struct FileState {
    shipped: u64,
    counted_to: u64,
    pending: u64,
    first_ts: Option<OffsetDateTime>,
}

impl Team {
    /// The team ledger `config` names, if any, for the ledger in `ledger_dir`. Connects
    /// lazily: opening never waits for PostgreSQL.
    pub fn open(
        config: &TeamConfig,
        store: Store,
        spend: &super::Spend,
    ) -> Result<Option<Team>, TeamError> {
        let Some(url) = &config.postgres else {
            return Ok(None);
        };
        Ok(Some(Team {
            inner: Arc::new(Inner {
                db: Db::new(url)?,
                name: config.name.clone(),
                dir: spend.ledger_dir().to_path_buf(),
                spend: spend.clone(),
                store,
                migrated: AtomicBool::new(false),
                running: AtomicBool::new(false),
                state: Mutex::new(State::default()),
                budgets: budget::Settings::from(config),
                settling: Mutex::new(HashMap::new()),
                live: Mutex::new(HashSet::new()),
                reach: reach::Reach::default(),
            }),
        }))
    }

    /// The team report from PostgreSQL (every daemon's lines shipped so far).
    pub async fn report(&self, q: &super::ReportQuery) -> Result<super::Report, TeamError> {
        Ok(self.inner.db.report(q).await?)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Plain counters: consistent even after a panic elsewhere, so poison is ignored.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> ShipStats {
        let st = self.state();
        let now = OffsetDateTime::now_utc();
        let oldest = st.files.values().filter_map(|f| f.first_ts).min();
        ShipStats {
            daemon: self.inner.name.clone(),
            state: match st.up {
                _ if !self.inner.running.load(Ordering::SeqCst) => "not running",
                None => "starting",
                Some(true) => "up",
                Some(false) => "down",
            },
            pending_lines: st.files.values().map(|f| f.pending).sum(),
            oldest_pending_seconds: oldest
                .map(|t| (now - t).as_seconds_f64().max(0.0))
                .unwrap_or(0.0),
            sent_lines: st.sent,
            inserted_lines: st.inserted,
            last_error: st.last_error.clone(),
        }
    }

    /// Applies the migrations once per run, before the first use of the tables.
    async fn migrated(&self) -> Result<(), TeamError> {
        let inner = &self.inner;
        if !inner.migrated.load(Ordering::SeqCst) {
            inner.db.migrate().await?;
            inner.migrated.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}
