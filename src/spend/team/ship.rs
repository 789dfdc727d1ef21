//! The shipper: the loop that copies this daemon's ledger lines to the team's PostgreSQL,
//! exactly once each, a batch at a time, and its survey of what is left to ship.
//!
//! The local ledger stays the source of truth. Per ledger file a cursor (the offset up to
//! which lines are in PostgreSQL) is kept in the store, and advanced, and flushed, only
//! after the batch before it is committed; a batch sent again is harmless, because a line
//! is one row keyed by the blake3 of its bytes (`line_id`). So a crash, a lost store or
//! PostgreSQL away for hours costs time, never a line lost or counted twice.

use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use super::{io_error, line_id, FileState, Team, TeamError};
use crate::spend::{ledger, LedgerLine};
use crate::store::Space;

/// Lines sent in one statement (one transaction).
const BATCH: usize = 1000;
/// How often the shipper looks for new lines.
const TICK: Duration = Duration::from_millis(500);
/// A batch not committed within this long counts as a failed attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Waits between failed attempts: from this...
const RETRY_MIN: Duration = Duration::from_millis(250);
/// ...doubling up to this, for as long as it takes.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Store keys (in `Space::Meta`): this prefix and a ledger file's name → its cursor.
const CURSOR_PREFIX: &[u8] = b"team.ledger.cursor/";

impl Team {
    /// Starts the shipper: every tick it ships what is pending; a failed pass is tried
    /// again after a growing wait (backon), for as long as it takes. Stops on `stop`; a
    /// batch cut off then is simply sent again next time. Beside it, the renewal of this
    /// daemon's team budget reservations and the probe of whether team budgets can be
    /// checked, which stop on `stop` too.
    pub fn spawn_shipper(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.clone().renew_reservations(stop.clone()));
        tokio::spawn(self.clone().probe(stop.clone()));
        let team = self.clone();
        self.inner.running.store(true, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let backoff = ExponentialBuilder::default()
                .with_min_delay(RETRY_MIN)
                .with_max_delay(RETRY_MAX)
                .with_jitter()
                .without_max_times();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let pass = (|| team.pass())
                    .retry(backoff)
                    .notify(|e: &TeamError, wait| team.failed(e, wait));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    done = pass => if done.is_ok() { team.succeeded() },
                }
            }
        })
    }

    fn failed(&self, e: &TeamError, wait: Duration) {
        let mut st = self.state();
        if st.up != Some(false) {
            tracing::warn!(error = %e, "cannot ship ledger lines to the team ledger; they wait in the local ledger");
        } else {
            tracing::debug!(error = %e, retry_in = ?wait, "team ledger still unreachable");
        }
        st.up = Some(false);
        st.last_error = Some(e.to_string());
    }

    fn succeeded(&self) {
        let mut st = self.state();
        if st.up == Some(false) {
            tracing::info!("the team ledger is reachable again");
        }
        st.up = Some(true);
        st.last_error = None;
    }

    /// One pass: counts what is new, then ships every pending line in batches.
    async fn pass(&self) -> Result<(), TeamError> {
        let files = self.blocking(move |t| t.survey()).await?;
        self.migrated().await?;
        for name in files {
            self.ship_file(&name).await?;
        }
        Ok(())
    }

    /// Ships `name` up to what was counted, a batch at a time.
    async fn ship_file(&self, name: &str) -> Result<(), TeamError> {
        loop {
            let Some(file) = self.state().files.get(name).cloned() else {
                return Ok(());
            };
            if file.shipped >= file.counted_to {
                return Ok(());
            }
            let path = ledger::path_of(&self.inner.dir, name);
            let chunk = {
                let path = path.clone();
                self.blocking(move |_| {
                    ledger::read_chunk(&path, file.shipped, BATCH, file.counted_to)
                        .map_err(|e| io_error(&path, e))
                })
                .await?
            };
            if chunk.consumed == 0 {
                return Ok(());
            }
            if let Some((_, first)) = chunk.lines.first() {
                self.update(name, |f| f.first_ts = Some(first.ts));
            }
            let lines: Vec<([u8; 32], &LedgerLine)> = chunk
                .lines
                .iter()
                .map(|(bytes, line)| (line_id(bytes), line))
                .collect();
            let settled = self.settled_by(lines.iter().map(|(_, l)| l.id.as_str()));
            let inserted = if lines.is_empty() {
                0
            } else {
                tokio::time::timeout(
                    ATTEMPT_TIMEOUT,
                    self.inner.db.insert(&self.inner.name, &lines, &settled),
                )
                .await
                .map_err(|_| TeamError("PostgreSQL did not commit a batch in time".into()))??
            };
            // Committed: only now may the cursor pass these lines.
            let key = [CURSOR_PREFIX, name.as_bytes()].concat();
            let end = chunk.end;
            self.blocking(move |t| {
                t.inner.store.put(Space::Meta, &key, &end.to_be_bytes())?;
                t.inner.store.flush()?;
                Ok(())
            })
            .await?;
            self.forget_settled(lines.iter().map(|(_, l)| l.id.as_str()));
            let sent = lines.len() as u64;
            self.update(name, |f| {
                f.shipped = end;
                f.pending = f.pending.saturating_sub(chunk.consumed);
                if f.pending == 0 {
                    f.first_ts = None;
                }
            });
            let mut st = self.state();
            st.sent += sent;
            st.inserted += inserted;
        }
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut FileState)) {
        if let Some(f) = self.state().files.get_mut(name) {
            change(f);
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Team) -> Result<T, TeamError> + Send + 'static,
    ) -> Result<T, TeamError> {
        let team = self.clone();
        tokio::task::spawn_blocking(move || f(&team))
            .await
            .map_err(|e| TeamError(format!("a ledger task failed: {e}")))?
    }

    /// Blocking. Loads the cursors (once), then counts the lines each ledger file gained
    /// since the last look; returns the files with lines pending. Only lines already
    /// durable are counted: the file is synced first and read no further than its length
    /// before the sync, so no line goes to the team that a crash could take from the
    /// local ledger.
    pub(super) fn survey(&self) -> Result<Vec<String>, TeamError> {
        let mut files = {
            let mut st = self.state();
            if !st.cursors_loaded {
                self.inner
                    .store
                    .scan_prefix(Space::Meta, CURSOR_PREFIX, |k, v| {
                        let name = String::from_utf8_lossy(&k[CURSOR_PREFIX.len()..]);
                        let at = v.try_into().map(u64::from_be_bytes).unwrap_or(0);
                        st.files.insert(
                            name.into_owned(),
                            FileState {
                                shipped: at,
                                counted_to: at,
                                ..FileState::default()
                            },
                        );
                        true
                    })?;
                st.cursors_loaded = true;
            }
            st.files.clone()
        };
        let dir = &self.inner.dir;
        let names = ledger::list_files(dir).map_err(|e| io_error(dir, e))?;
        // A file removed by hand (an old month pruned) has nothing left to ship.
        files.retain(|name, _| names.contains(name));
        for name in names {
            let path = ledger::path_of(dir, &name);
            let f = files.entry(name.clone()).or_default();
            let file = std::fs::File::open(&path).map_err(|e| io_error(&path, e))?;
            let len = file.metadata().map_err(|e| io_error(&path, e))?.len();
            // Read after the length: a file the writer had not opened by now had no write
            // in progress when its length was taken.
            let len = match self.inner.spend.durable_len(&name) {
                Some(durable) => len.min(durable),
                None => len,
            };
            if len < f.shipped {
                tracing::warn!(file = %path.display(), "a ledger file is shorter than what was shipped of it; shipping it again from its start (nothing is counted twice)");
                *f = FileState::default();
            }
            if len > f.counted_to {
                file.sync_data().map_err(|e| io_error(&path, e))?;
                let (n, end) = ledger::count_lines(&path, f.counted_to, len)
                    .map_err(|e| io_error(&path, e))?;
                f.pending += n;
                f.counted_to = end;
            }
            if f.pending > 0 && f.first_ts.is_none() {
                let first = ledger::read_chunk(&path, f.shipped, 1, f.counted_to)
                    .map_err(|e| io_error(&path, e))?;
                f.first_ts = first.lines.first().map(|(_, l)| l.ts);
            }
        }
        let pending = files
            .iter()
            .filter(|(_, f)| f.shipped < f.counted_to)
            .map(|(n, _)| n.clone())
            .collect();
        self.state().files = files;
        Ok(pending)
    }
}
