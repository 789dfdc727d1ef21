//! The team tier of the answer cache, on Redis: the level behind this daemon's memory and
//! store, shared by every daemon of a team. Lookups wait at most `team.timeout`; writes go in
//! the background after the answer. While Redis cannot be reached the tier is "down" and
//! skipped without waiting (a probe once a second notices when it is back).
//!
//! Keys: `{prefix}e:{cache key hex}` → the entry's record (`entry::Entry::encode`, the
//! same checksummed form the local store keeps) followed by a 32-byte seal: keyed blake3,
//! under a key derived from the team secret, of the cache key and the record. A record
//! that fails its checksum or its seal (damaged, written under another key, or by someone
//! without the team's secret) is ignored and deleted. Other names under the prefix are
//! left free for what daemons of a team may come to share; `lease:` and `done:` names
//! serve single-flight across daemons (see `lease`), `live:` names streamed answers shared
//! while they come in (see `live`).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Semaphore};

use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::cache::now_ms;
use crate::config::{RedisServers, TeamCacheConfig};
use conn::{Client, Conn};
pub use lease::{Claim, Lease};
pub use live::{LiveFollow, LiveHead, LiveNews, LivePublisher};

mod ask;
mod conn;
mod lease;
mod live;

/// How often the tier checks that Redis answers.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe or a write may take before Redis counts as down.
const SLOW: Duration = Duration::from_secs(2);
/// Writes in flight at most; past it, answers are not shared (Redis is behind).
const WRITES_IN_FLIGHT: usize = 64;
const SEAL_LEN: usize = 32;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// What the tier's watchers see: whether Redis is reachable, how many entries this daemon
/// has written to it, left unwritten (too large, too old, too many waiting), and deleted
/// there as damaged, and how many exchanges with it failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TeamState {
    pub up: bool,
    pub written: u64,
    pub skipped: u64,
    pub deleted: u64,
    pub failures: u64,
}

/// Counts for the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct TeamStats {
    pub up: bool,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub dropped_damaged: u64,
    pub written: u64,
    pub skipped: u64,
}

#[derive(Clone)]
pub struct TeamTier {
    inner: Arc<Inner>,
}

struct Inner {
    /// The connection: made by the probe, and dropped by it when Redis stops answering
    /// on it (a reset connection is replaced without it; a silent one is not).
    conn: std::sync::RwLock<Option<Conn>>,
    client: Client,
    prefix: String,
    timeout: Duration,
    max_entry: u64,
    max_age: Duration,
    seal: [u8; 32],
    /// This daemon's name on the leases it takes (random, per start).
    id: String,
    /// Leases taken so far, which tells this daemon's leases apart.
    leases: AtomicU64,
    lease: Duration,
    /// Where it is, without any password, for logs.
    location: String,
    /// `UNKNOWN` until the first exchange with Redis, then `UP` or `DOWN`.
    reach: AtomicU8,
    state: watch::Sender<TeamState>,
    writes: Arc<Semaphore>,
    tasks: tokio_util::task::TaskTracker,
    hits: AtomicU64,
    misses: AtomicU64,
    damaged: AtomicU64,
}

impl TeamTier {
    /// Prepares the tier for `servers` without connecting (the daemon starts whether Redis
    /// is there or not), and starts its probe, which connects. Needs a Tokio runtime.
    /// `seal` keys the seals of entries; `max_age` is `cache.max_age`, the entries' time to
    /// live.
    pub fn open(
        servers: &RedisServers,
        cfg: &TeamCacheConfig,
        max_age: Duration,
        seal: [u8; 32],
    ) -> anyhow::Result<TeamTier> {
        let client = Client::new(servers, cfg, SLOW)?;
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no randomness for an id: {e}"))?;
        let inner = Arc::new(Inner {
            conn: std::sync::RwLock::new(None),
            client,
            prefix: cfg.redis_prefix.clone(),
            timeout: cfg.timeout,
            max_entry: cfg.max_entry,
            max_age,
            seal,
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            leases: AtomicU64::new(0),
            lease: cfg.lease,
            location: servers.redacted(),
            reach: AtomicU8::new(UNKNOWN),
            state: watch::Sender::new(TeamState::default()),
            writes: Arc::new(Semaphore::new(WRITES_IN_FLIGHT)),
            tasks: tokio_util::task::TaskTracker::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            damaged: AtomicU64::new(0),
        });
        tokio::spawn(probe(Arc::downgrade(&inner)));
        Ok(TeamTier { inner })
    }

    /// Whether Redis answered lately.
    pub fn is_up(&self) -> bool {
        self.inner.reach.load(Ordering::Relaxed) == UP
    }

    /// Watches whether Redis is reachable and the entries written (for whoever waits for
    /// one: tests, a follower on another daemon).
    pub fn watch(&self) -> watch::Receiver<TeamState> {
        self.inner.state.subscribe()
    }

    /// The Redis key of `key`'s entry.
    pub fn entry_name(&self, key: &CacheKey) -> String {
        format!("{}e:{}", self.inner.prefix, key.to_hex())
    }

    /// The team's fresh entry under `key` (younger than `cache.max_age` and `max_age`),
    /// if Redis gives it within `team.timeout`. Never fails: a tier that is down or slow
    /// is a miss.
    pub async fn get(&self, key: &CacheKey, max_age: Option<Duration>) -> Option<Entry> {
        let i = &self.inner;
        if !self.is_up() {
            return None;
        }
        let name = self.entry_name(key);
        let mut conn = i.conn()?;
        let get = redis::cmd("GET").arg(&name).clone();
        let got = tokio::time::timeout(i.timeout, conn.query::<Option<Bytes>>(&get)).await;
        let Ok(got) = got else {
            i.failed("no answer within team.timeout");
            return None;
        };
        self.judge(key, name, got, max_age)
    }

    /// The fresh entry in `got`, what Redis answered to a GET of `key`'s entry (`name`).
    /// A damaged or foreign one is deleted; a failed read counts against Redis.
    fn judge(
        &self,
        key: &CacheKey,
        name: String,
        got: redis::RedisResult<Option<Bytes>>,
        max_age: Option<Duration>,
    ) -> Option<Entry> {
        let i = &self.inner;
        let value = match got {
            Ok(v) => v,
            // Something other than a string under the name: foreign, dropped like damage.
            Err(e) if e.code() == Some("WRONGTYPE") => Some(Bytes::new()),
            Err(e) => {
                i.failed(&e.to_string());
                return None;
            }
        };
        let Some(value) = value else {
            i.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let Some(entry) = i.unseal(key, value) else {
            tracing::warn!(key = %key, "dropping a damaged or foreign entry of the team cache");
            i.damaged.fetch_add(1, Ordering::Relaxed);
            // Whatever is there now goes: at worst an entry rewritten since the read, which
            // costs one more miss, not a wrong answer.
            let i = self.inner.clone();
            i.tasks.clone().spawn(async move {
                if i.run(redis::cmd("DEL").arg(&name)).await {
                    i.state.send_modify(|s| s.deleted += 1);
                }
            });
            return None;
        };
        let age = Duration::from_millis(now_ms().saturating_sub(entry.meta.created_ms));
        if age > i.max_age || max_age.is_some_and(|m| age > m) {
            i.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        i.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry)
    }

    /// Shares `entry` with the team under `key`, in the background, unless Redis is down,
    /// the entry is larger than `team.max_entry`, or too many writes are already waiting.
    /// `lease`, the one this daemon fetched the entry under, is let go once it is written
    /// (or not).
    pub fn offer(&self, key: CacheKey, entry: Arc<Entry>, lease: Option<Lease>) {
        let i = self.inner.clone();
        if !self.is_up() {
            return;
        }
        let Ok(permit) = i.writes.clone().try_acquire_owned() else {
            i.state.send_modify(|s| s.skipped += 1);
            return;
        };
        let name = self.entry_name(&key);
        i.tasks.clone().spawn(async move {
            let _permit = permit;
            let left = i
                .max_age
                .saturating_sub(Duration::from_millis(
                    now_ms().saturating_sub(entry.meta.created_ms),
                ))
                .as_millis() as u64;
            // An answer whose body alone is over the cap is never joined into one buffer.
            let fits = |len: usize| len as u64 <= i.max_entry;
            let value = (left > 0 && fits(entry.body_len()))
                .then(|| i.seal(&key, entry.encode()))
                .filter(|v| fits(v.len()));
            let Some(value) = value else {
                i.state.send_modify(|s| s.skipped += 1);
                return;
            };
            let mut cmds = vec![redis::cmd("SET")];
            cmds[0].arg(&name).arg(value).arg("PX").arg(left);
            // The lease, if nothing else holds it now, goes in the same round trip: the
            // entry written, then the lease deleted, then the waiting daemons told.
            if let Some(release) = lease.and_then(Lease::into_release) {
                cmds.extend(release);
            }
            let Some(got) = i.ask_each(cmds, SLOW).await else {
                return;
            };
            match got.into_iter().next() {
                Some(Ok(_)) => i.state.send_modify(|s| s.written += 1),
                Some(Err(e)) => i.failed(&e.to_string()),
                None => {}
            }
        });
    }

    /// Waits (up to a few seconds) for the writes in flight to end.
    pub async fn close(&self) {
        let tasks = &self.inner.tasks;
        tasks.close();
        let _ = tokio::time::timeout(SLOW, tasks.wait()).await;
    }

    pub fn stats(&self) -> TeamStats {
        let i = &self.inner;
        TeamStats {
            up: self.is_up(),
            hits: i.hits.load(Ordering::Relaxed),
            misses: i.misses.load(Ordering::Relaxed),
            errors: i.state.borrow().failures,
            dropped_damaged: i.damaged.load(Ordering::Relaxed),
            written: i.state.borrow().written,
            skipped: i.state.borrow().skipped,
        }
    }
}

impl Inner {
    fn conn(&self) -> Option<Conn> {
        // A poisoned lock still holds a whole connection: it is only ever replaced whole.
        self.conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_conn(&self, conn: Option<Conn>) {
        *self
            .conn
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = conn;
    }

    fn seal_of(&self, key: &CacheKey, record: &[u8]) -> blake3::Hash {
        blake3::Hasher::new_keyed(&self.seal)
            .update(&key.0)
            .update(record)
            .finalize()
    }

    fn seal(&self, key: &CacheKey, mut record: Vec<u8>) -> Vec<u8> {
        let seal = self.seal_of(key, &record);
        record.extend_from_slice(seal.as_bytes());
        record
    }

    /// The entry in `value` if its seal and checksum hold.
    fn unseal(&self, key: &CacheKey, value: Bytes) -> Option<Entry> {
        let at = value.len().checked_sub(SEAL_LEN)?;
        let seal: [u8; SEAL_LEN] = value[at..].try_into().ok()?;
        // blake3's Hash compares in constant time.
        if self.seal_of(key, &value[..at]) != blake3::Hash::from_bytes(seal) {
            return None;
        }
        Entry::decode(vec![value.slice(..at)]).ok()
    }

    fn failed(&self, why: &str) {
        self.mark(false, why);
        self.state.send_modify(|s| s.failures += 1);
    }

    /// Notes whether Redis is reachable; the change (not every request) is logged.
    fn mark(&self, up: bool, why: &str) {
        let now = if up { UP } else { DOWN };
        if self.reach.swap(now, Ordering::Relaxed) == now {
            return;
        }
        self.state.send_modify(|s| s.up = up);
        if up {
            tracing::info!(redis = %self.location, "the team cache is reachable; answers are shared with the team");
        } else {
            tracing::warn!(redis = %self.location, reason = why, "the team cache cannot be reached; answers are cached on this machine only until it is back");
        }
    }
}

/// Pings Redis once a second while the tier exists, connecting first if there is no
/// connection, and marks it up or down; a connection on which Redis did not answer is
/// dropped for a new one.
async fn probe(tier: Weak<Inner>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(i) = tier.upgrade() else {
            return;
        };
        let mut conn = match i.conn() {
            Some(c) => c,
            None => match tokio::time::timeout(SLOW, i.client.connect()).await {
                Ok(Ok(c)) => {
                    i.set_conn(Some(c.clone()));
                    c
                }
                Ok(Err(e)) => {
                    i.failed(&e.to_string());
                    continue;
                }
                Err(_) => {
                    i.failed("no connection made");
                    continue;
                }
            },
        };
        match tokio::time::timeout(SLOW, conn.query::<()>(&redis::cmd("PING"))).await {
            Ok(Ok(())) => i.mark(true, ""),
            Ok(Err(e)) => {
                i.failed(&e.to_string());
                i.set_conn(None);
            }
            Err(_) => {
                i.failed("no answer to a ping");
                i.set_conn(None);
            }
        }
    }
}

#[cfg(test)]
mod tests;
