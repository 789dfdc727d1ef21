//! Single-flight across the team: before a daemon fetches an answer the team does not have,
//! it takes a lease on the key in Redis (`{prefix}lease:{key hex}`, a token naming this
//! daemon and this lease as value, expiring unless renewed). A daemon that finds the lease
//! taken waits for the holder's entry — woken by a message on `{prefix}done:{key hex}`
//! (sent when the entry is written, and when a streamed answer starts going out live),
//! checking the lease each third of its length — and fetches for itself if the lease goes
//! without an entry or the wait is too long. A streamed request instead follows the
//! holder's live stream (see `live`) once it has started. Every exchange with Redis is
//! bounded by `team.timeout`; one that fails leaves the daemon to fetch alone.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::live::{Join, LiveFollow};
use super::{Inner, TeamTier};
use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;

/// Extends the lease if it is still this daemon's.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Deletes the lease if it is still this daemon's (an expired one may be another's now).
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// What a daemon about to fetch `key` from upstream should do.
pub enum Claim {
    /// It holds the lease: fetch, and hand the lease to `offer` with the entry.
    Lead(Lease),
    /// Another daemon fetched it meanwhile.
    Found(Arc<Entry>),
    /// Another daemon is fetching this stream and sends it live: follow it.
    Live(Box<LiveFollow>),
    /// Fetch without the team: Redis is away, or the holder went without an entry.
    Alone,
}

/// This daemon's lease on fetching a key for the team: renewed while it lives; when its
/// last clone is dropped, it is deleted and the waiting daemons told (so the entry's write
/// and the live stream's end marker each hold a clone until they are done).
#[derive(Clone)]
pub struct Lease(Arc<Held>);

struct Held {
    inner: Arc<Inner>,
    name: String,
    done: String,
    /// This lease's value in Redis: this daemon's id and a count, so that a later lease on
    /// the same key (and its live stream) is told apart from this one.
    token: String,
    hex: String,
    renew: tokio::task::JoinHandle<()>,
}

impl TeamTier {
    /// Takes the lease on `key`, or waits (at most `bound`) for the daemon holding it to
    /// share its answer: whole, or for a streamed request (`live`) as it comes in.
    pub async fn claim(
        &self,
        key: &CacheKey,
        max_age: Option<Duration>,
        bound: Duration,
        live: bool,
    ) -> Claim {
        let i = &self.inner;
        if !self.is_up() {
            return Claim::Alone;
        }
        let hex = key.to_hex();
        let name = format!("{}lease:{hex}", i.prefix);
        let done = format!("{}done:{hex}", i.prefix);
        let token = format!(
            "{}.{}",
            i.id,
            i.leases.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut set = redis::cmd("SET");
        set.arg(&name)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(i.lease.as_millis() as u64);
        let Some(taken) = i.ask::<Option<String>>(&set).await else {
            return Claim::Alone;
        };
        if taken.is_some() {
            let lease = Lease::start(i.clone(), name, done, token, hex);
            // The holder before may have finished between this daemon's lookup and now.
            return match self.get(key, max_age).await {
                Some(entry) => Claim::Found(Arc::new(entry)),
                None => Claim::Lead(lease),
            };
        }
        // Subscribed before looking again: a message sent after the look is not missed.
        let mut sub = i.client.subscribe(&done, i.timeout).await;
        let deadline = Instant::now() + bound;
        loop {
            if let Some(entry) = self.get(key, max_age).await {
                return Claim::Found(Arc::new(entry));
            }
            let holder = i.ask::<Option<String>>(redis::cmd("GET").arg(&name)).await;
            let Some(holder) = holder.flatten() else {
                // Gone: the entry may have been written just before.
                return self
                    .get(key, max_age)
                    .await
                    .map_or(Claim::Alone, |e| Claim::Found(Arc::new(e)));
            };
            if live {
                match self.join_live(&hex, &name, &holder).await {
                    Join::Now(follow) => return Claim::Live(follow),
                    // Its start is gone from Redis (a stream past `team.max_entry`): it
                    // will not be stored either.
                    Join::TooLate => return Claim::Alone,
                    Join::NotYet => {}
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Claim::Alone;
            }
            let tick = (i.lease / 3).min(deadline - now);
            match &mut sub {
                Some(s) => {
                    let _ = tokio::time::timeout(tick, s.next()).await;
                }
                // No subscription (a cluster, or it failed): the lease is checked each tick.
                None => tokio::time::sleep(tick).await,
            }
        }
    }
}

impl Inner {
    /// One command within `team.timeout`; None (and counted) if it failed.
    pub(super) async fn ask<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let mut conn = self.conn()?;
        match tokio::time::timeout(self.timeout, conn.query::<T>(cmd)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("no answer within team.timeout");
                None
            }
        }
    }
}

impl Lease {
    fn start(inner: Arc<Inner>, name: String, done: String, token: String, hex: String) -> Lease {
        let i = inner.clone();
        let (key, value) = (name.clone(), token.clone());
        let renew = tokio::spawn(async move {
            let mut tick = tokio::time::interval(i.lease / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(RENEW)
                    .arg(1)
                    .arg(&key)
                    .arg(&value)
                    .arg(i.lease.as_millis() as u64);
                // Lost (expired, deleted) or Redis away: the waiting daemons fetch alone.
                if i.ask::<i64>(&cmd).await != Some(1) {
                    return;
                }
            }
        });
        Lease(Arc::new(Held {
            inner,
            name,
            done,
            token,
            hex,
            renew,
        }))
    }

    /// The key's hex and this lease's token, which name its live stream.
    pub(super) fn names(&self) -> (&str, &str) {
        (&self.0.hex, &self.0.token)
    }

    /// Where daemons waiting on this lease hear news of it.
    pub(super) fn channel(&self) -> &str {
        &self.0.done
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renew.abort();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let i = self.inner.clone();
        let (name, done, token) = (
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.done),
            std::mem::take(&mut self.token),
        );
        rt.spawn(i.tasks.clone().track_future(async move {
            let mut release = redis::cmd("EVAL");
            release.arg(RELEASE).arg(1).arg(&name).arg(&token);
            // Deleted before the message: a woken daemon then finds no lease to wait on.
            let _ = i.ask::<i64>(&release).await;
            let _ = i.ask::<i64>(redis::cmd("PUBLISH").arg(&done).arg(1)).await;
        }));
    }
}
