//! Streamed answers shared live across the team. The daemon holding the lease on a
//! streamed answer appends its pieces, as they come from upstream, to a Redis stream
//! (`{prefix}live:{key hex}:{lease token}`: a new name for each lease, so a later fetch of
//! the same key never mixes with an earlier one); daemons waiting on the lease read it as it
//! grows (XREAD BLOCK, each on a connection of its own) and send the same bytes on.
//!
//! Entries, each sealed like the team's cache entries (keyed blake3 of the stream's name and
//! the entry's fields, so that nobody without the team secret can plant bytes in an answer):
//! a head (`status`, `type`), then data (`at`, the offset of its first byte in the answer,
//! and `data`), then one end (`end` = `complete` or `failed`, `len` the answer's length,
//! `cost` its cost text). The stream appears with the head and the first data together.
//!
//! Bounds: every write sets the stream to expire two leases later, so nothing outlives a
//! daemon that died. The stream is for sharing, not storing: once it holds more than
//! `team.max_entry` bytes, each write trims the oldest data (and with it the head), so Redis
//! holds about that much of an answer however long it grows. A daemon that finds the head
//! gone fetches for itself (the answer will not be stored either); a follower that fell
//! behind the trimmed part ends its stream as broken rather than send it with a hole.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::streams::{
    StreamAddOptions, StreamReadOptions, StreamReadReply, StreamTrimStrategy, StreamTrimmingMode,
};
use redis::Cmd;

use super::conn::Conn;
use super::{Inner, Lease, TeamTier};
use piece::{entries, trim, Piece};

mod piece;

/// The longest a follower's read blocks: under the cluster client's response limit, and
/// short enough that a follower notices a lost lease soon after it expires.
const MAX_BLOCK: Duration = Duration::from_secs(1);
const MIN_BLOCK: Duration = Duration::from_millis(10);
/// Entries read at once.
const READ_COUNT: usize = 256;

/// The head of a streamed answer shared live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveHead {
    pub status: u16,
    pub content_type: Option<String>,
}

/// What a follower reads next from a live stream.
#[derive(Debug)]
pub enum LiveNews {
    Data(Bytes),
    /// The whole answer has been read; its cost text, if upstream gave one.
    Complete(Option<String>),
    /// The answer will not be complete here: it broke upstream, its daemon went, Redis
    /// failed, or this reader fell behind the part kept in Redis.
    Failed(String),
}

/// What a daemon waiting on a lease found of its holder's live stream.
pub(super) enum Join {
    /// Not started (or not readable now): keep waiting for the entry.
    NotYet,
    Now(Box<LiveFollow>),
    /// Its start has been trimmed away.
    TooLate,
}

/// The writing end: the lease holder's, for one streamed answer.
pub struct LivePublisher {
    inner: Arc<Inner>,
    name: String,
    /// Kept until the end is written: the lease goes only after that.
    lease: Lease,
    /// The head, until it is written with the first data.
    head: Option<LiveHead>,
    at: u64,
    /// The data entries still in Redis: id, offset of the first byte.
    kept: VecDeque<(String, u64)>,
}

/// The reading end: a waiting daemon's, for one streamed answer.
pub struct LiveFollow {
    inner: Arc<Inner>,
    conn: Conn,
    name: String,
    lease_name: String,
    token: String,
    pub head: LiveHead,
    last: String,
    at: u64,
    queue: VecDeque<Piece>,
    block: Duration,
    /// The lease went: what is in the stream now is all there will be.
    gone: bool,
}

impl TeamTier {
    /// The writer of `lease`'s live stream, unless Redis is down.
    pub fn publish_live(&self, lease: &Lease, head: LiveHead) -> Option<LivePublisher> {
        if !self.is_up() {
            return None;
        }
        let (hex, token) = lease.names();
        Some(LivePublisher {
            inner: self.inner.clone(),
            name: self.inner.live_name(hex, token),
            lease: lease.clone(),
            head: Some(head),
            at: 0,
            kept: VecDeque::new(),
        })
    }

    /// Joins the live stream of the lease `lease_name` held as `token`, if it has started.
    pub(super) async fn join_live(&self, hex: &str, lease_name: &str, token: &str) -> Join {
        let i = &self.inner;
        let name = i.live_name(hex, token);
        let opts = StreamReadOptions::default().count(READ_COUNT);
        let read = Cmd::xread_options(&[&name], &["0"], &opts);
        let Some(reply) = i.ask::<Option<StreamReadReply>>(&read).await else {
            return Join::NotYet;
        };
        let (ids, last) = entries(reply);
        let Some(last) = last else {
            return Join::NotYet;
        };
        let mut queue: VecDeque<Piece> =
            ids.iter().filter_map(|e| i.unseal_live(&name, e)).collect();
        let head = match queue.pop_front() {
            Some(Piece::Head(h)) => h,
            Some(_) => return Join::TooLate,
            None => return Join::NotYet,
        };
        if queue.is_empty() {
            return Join::NotYet;
        }
        let Some(conn) = i.client.connect_own(i.timeout).await else {
            return Join::NotYet;
        };
        Join::Now(Box::new(LiveFollow {
            inner: i.clone(),
            conn,
            name,
            lease_name: lease_name.to_string(),
            token: token.to_string(),
            head,
            last,
            at: 0,
            queue,
            block: (i.lease / 3).clamp(MIN_BLOCK, MAX_BLOCK),
            gone: false,
        }))
    }
}

impl LivePublisher {
    /// Appends the next piece of the answer; false once Redis failed (the stream then ends
    /// for its readers when the lease goes).
    pub async fn data(&mut self, data: Bytes) -> bool {
        let i = self.inner.clone();
        let len = data.len() as u64;
        let fields = i.seal_live(&self.name, Piece::Data { at: self.at, data });
        let mut opts = StreamAddOptions::default();
        if let Some(minid) = trim(&mut self.kept, self.at, len, i.max_entry) {
            opts = opts.trim(StreamTrimStrategy::minid(StreamTrimmingMode::Exact, minid));
        }
        let mut pipe = redis::pipe();
        // One transaction: a stream is never left in Redis without its expiry.
        pipe.atomic();
        let head = self.head.take();
        if let Some(h) = &head {
            let head_fields = i.seal_live(&self.name, Piece::Head(h.clone()));
            pipe.add_command(Cmd::xadd(&self.name, "*", &head_fields))
                .ignore();
        }
        pipe.add_command(Cmd::xadd_options(&self.name, "*", &fields, &opts));
        pipe.add_command(Cmd::pexpire(&self.name, i.live_ttl()))
            .ignore();
        if head.is_some() && i.client.subscribable() {
            // The waiting daemons look at the stream when told (or at their next check):
            // told in the same round trip, once the stream is there.
            pipe.add_command(Cmd::publish(self.lease.channel(), 1))
                .ignore();
        }
        let Some((id,)) = i.ask_pipe::<(String,)>(&pipe).await else {
            return false;
        };
        self.kept.push_back((id, self.at));
        self.at += len;
        true
    }

    /// Writes the end: complete (with the answer's cost text) or failed. Nothing if no data
    /// was ever written: the waiting daemons then wait for the entry, as for a plain answer.
    pub async fn end(self, complete: bool, cost: Option<String>) {
        if self.head.is_some() {
            return;
        }
        let i = &self.inner;
        let end = Piece::End {
            complete,
            len: self.at,
            cost,
        };
        let fields = i.seal_live(&self.name, end);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.add_command(Cmd::xadd(&self.name, "*", &fields))
            .ignore();
        pipe.add_command(Cmd::pexpire(&self.name, i.live_ttl()))
            .ignore();
        let _ = i.ask_pipe::<()>(&pipe).await;
    }
}

impl LiveFollow {
    /// The next news of the answer: waits while there is none, noticing a lease that went.
    pub async fn next(&mut self) -> LiveNews {
        let i = self.inner.clone();
        loop {
            if let Some(piece) = self.queue.pop_front() {
                match piece {
                    Piece::Data { at, data } if at == self.at => {
                        self.at += data.len() as u64;
                        return LiveNews::Data(data);
                    }
                    Piece::Data { .. } => {
                        return LiveNews::Failed(
                            "this daemon fell behind the part of the answer kept in Redis".into(),
                        )
                    }
                    Piece::End {
                        complete: true,
                        len,
                        cost,
                    } if len == self.at => return LiveNews::Complete(cost),
                    Piece::End { complete: true, .. } => {
                        return LiveNews::Failed("part of the answer never arrived".into())
                    }
                    Piece::End { .. } => {
                        return LiveNews::Failed(
                            "the answer broke off on the daemon fetching it".into(),
                        )
                    }
                    Piece::Head(_) => continue,
                }
            }
            if self.gone {
                return LiveNews::Failed(
                    "the daemon fetching the answer went before it ended".into(),
                );
            }
            let ms = self.block.as_millis() as usize;
            let opts = StreamReadOptions::default().block(ms).count(READ_COUNT);
            let read = Cmd::xread_options(&[&self.name], &[&self.last], &opts);
            let got = tokio::time::timeout(
                self.block + i.timeout,
                self.conn.query::<Option<StreamReadReply>>(&read),
            )
            .await;
            match got {
                Ok(Ok(Some(reply))) => {
                    self.take(Some(reply));
                    continue;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    i.failed(&e.to_string());
                    return LiveNews::Failed("the team's Redis failed".into());
                }
                Err(_) => {
                    i.failed("no answer to a live read");
                    return LiveNews::Failed("the team's Redis did not answer".into());
                }
            }
            // Nothing new for a while: is the lease still its holder's? Its time left sets
            // the next wait, so a lease that expires is noticed right after.
            let mut check = redis::pipe();
            check.add_command(Cmd::get(&self.lease_name));
            check.add_command(Cmd::pttl(&self.lease_name));
            match i.ask_pipe::<(Option<String>, i64)>(&check).await {
                Some((Some(holder), left)) if holder == self.token => {
                    // A lease without a time to live (not one a daemon sets) waits as usual.
                    let left = u64::try_from(left).map_or(i.lease / 3, |ms| {
                        Duration::from_millis(ms.saturating_add(1))
                    });
                    self.block = left.min(i.lease / 3).clamp(MIN_BLOCK, MAX_BLOCK);
                }
                Some(_) => {
                    // The end is written before the lease goes: one last look finds it.
                    self.gone = true;
                    let opts = StreamReadOptions::default().count(READ_COUNT);
                    let read = Cmd::xread_options(&[&self.name], &[&self.last], &opts);
                    if let Some(reply) = i.ask::<Option<StreamReadReply>>(&read).await {
                        self.take(reply);
                    }
                }
                None => return LiveNews::Failed("the team's Redis did not answer".into()),
            }
        }
    }

    fn take(&mut self, reply: Option<StreamReadReply>) {
        let (ids, last) = entries(reply);
        for e in &ids {
            match self.inner.unseal_live(&self.name, e) {
                Some(piece) => self.queue.push_back(piece),
                None => {
                    tracing::warn!(stream = %self.name, "skipping a damaged or foreign entry of a live stream");
                }
            }
        }
        if let Some(last) = last {
            self.last = last;
        }
    }
}

impl Inner {
    fn live_name(&self, hex: &str, token: &str) -> String {
        format!("{}live:{hex}:{token}", self.prefix)
    }

    fn live_ttl(&self) -> i64 {
        i64::try_from((self.lease * 2).as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests;
