//! Single-flight across the team: before a daemon fetches an answer the team does not have,
//! it takes a lease on the key in Redis (`{prefix}lease:{key hex}`, a token naming this
//! daemon and this lease as value, expiring unless renewed). A daemon that finds the lease
//! taken waits for the holder's entry — woken by a message on `{prefix}done:{key hex}`
//! (sent when the entry is written, and when a streamed answer starts going out live),
//! checking the lease each third of its length — and fetches for itself if the lease goes
//! without an entry or the wait is too long. A streamed request instead follows the
//! holder's live stream (see `live`) once it has started. Looks that belong together go in
//! one round trip (the lease asked for and the entry looked at; the lease and the entry
//! checked), as does the lease's release with the holder's last write. Every exchange with
//! Redis is bounded by `team.timeout`; one that fails leaves the daemon to fetch alone.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use redis::{Cmd, RedisResult, Value};

use super::ask::parse;
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
        let entry_name = self.entry_name(key);
        let mut set = redis::cmd("SET");
        set.arg(&name)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(i.lease.as_millis() as u64);
        // The lease asked for, and the entry looked at again right after (the holder
        // before may have finished between this daemon's lookup and now): one round trip.
        let Some([taken, entry]) = i.ask_two([set, Cmd::get(&entry_name)]).await else {
            return Claim::Alone;
        };
        let taken = match parse::<Option<String>>(taken) {
            Ok(taken) => taken,
            Err(e) => {
                i.failed(&e.to_string());
                return Claim::Alone;
            }
        };
        let entry = self.judge(key, entry_name.clone(), parse(entry), max_age);
        if taken.is_some() {
            let lease = Lease::start(i.clone(), name, done, token, hex);
            return match entry {
                Some(entry) => Claim::Found(Arc::new(entry)),
                None => Claim::Lead(lease),
            };
        }
        if let Some(entry) = entry {
            return Claim::Found(Arc::new(entry));
        }
        // Subscribed before looking again: a message sent after the look is not missed.
        let mut sub = i.client.subscribe(&done, i.timeout).await;
        let deadline = Instant::now() + bound;
        loop {
            // The lease before the entry, in one round trip: a holder writes its entry
            // before it lets the lease go, so with the lease gone the entry (if any) is in.
            let look = [Cmd::get(&name), Cmd::get(&entry_name)];
            let Some([holder, entry]) = i.ask_two(look).await else {
                return Claim::Alone;
            };
            if let Some(entry) = self.judge(key, entry_name.clone(), parse(entry), max_age) {
                return Claim::Found(Arc::new(entry));
            }
            let Ok(Some(holder)) = parse::<Option<String>>(holder) else {
                return Claim::Alone;
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
    /// Two commands in one round trip within `team.timeout`; None (and counted) if the
    /// exchange failed.
    async fn ask_two(&self, cmds: [Cmd; 2]) -> Option<[RedisResult<Value>; 2]> {
        let got = self.ask_each(cmds.into(), self.timeout).await?;
        got.try_into().ok()
    }

    /// What lets `name` go if it is still `token`'s, then tells the daemons waiting on it
    /// (on `done`); in this order, so that a woken daemon finds no lease to wait on.
    fn release(&self, name: &str, done: &str, token: &str) -> Vec<Cmd> {
        let mut release = redis::cmd("EVAL");
        release.arg(RELEASE).arg(1).arg(name).arg(token);
        let mut cmds = vec![release];
        if self.client.subscribable() {
            cmds.push(redis::cmd("PUBLISH").arg(done).arg(1).clone());
        }
        cmds
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

impl Lease {
    /// The commands that let this lease go, if nothing else holds it now, for the caller to
    /// send after its own (its last write under the lease); otherwise this clone is simply
    /// dropped, and the lease goes with its last holder.
    pub(super) fn into_release(self) -> Option<Vec<Cmd>> {
        let mut held = Arc::try_unwrap(self.0).ok()?;
        held.renew.abort();
        let name = std::mem::take(&mut held.name);
        Some(held.inner.release(&name, &held.done, &held.token))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renew.abort();
        let name = std::mem::take(&mut self.name);
        // Empty: let go already, by `into_release`.
        if name.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let i = self.inner.clone();
        let cmds = i.release(&name, &self.done, &self.token);
        rt.spawn(i.tasks.clone().track_future(async move {
            let _ = i.ask_each(cmds, i.timeout).await;
        }));
    }
}
