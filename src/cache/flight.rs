//! Single-flight, the cache lock: one upstream call per key at a time. An answer in flight
//! is a shared, append-only recording; every client (the one that caused it included)
//! reads it with a reader of its own, from the start and at its own pace, so followers
//! join live and hold only a position in it. The recording is bounded by
//! `cache.max_entry`: an answer that outgrows it is no longer kept whole (it will not be
//! stored), takes no new followers, and keeps only what its slowest reader still needs,
//! at most `window` bytes ahead of it, the leader waiting for readers beyond that.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use foldhash::HashMap;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

use http_body::Frame;

use crate::body::{Body, BoxError};
use crate::cache::key::CacheKey;
use crate::cost::Money;
use crate::error::ApiError;

/// The response head of an answer in flight.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub stream: bool,
}

/// How an answer in flight ended.
#[derive(Debug, Clone)]
pub enum End {
    /// Ended cleanly and is accounted for; readers may finish.
    Complete,
    /// Broke after it started: readers end with this error.
    Failed(ApiError),
    /// Gave up before anything was sent to readers (error status, no connection, …):
    /// followers should fetch for themselves.
    Released,
}

/// How large a recording may grow, and how far ahead of its slowest reader an answer
/// that outgrew it may run.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_entry: u64,
    pub window: u64,
}

#[derive(Default)]
struct State {
    head: Option<Head>,
    /// The recording from piece `base` on.
    chunks: VecDeque<Bytes>,
    base: usize,
    /// Bytes in `chunks`, and in the whole answer so far.
    held: u64,
    total: u64,
    /// Past `max_entry`: pieces go once every reader has them.
    outgrown: bool,
    end: Option<End>,
    /// What the answer cost upstream (its cost text), for followers' `saved`.
    cost: Option<Money>,
    /// Each reader's next piece.
    cursors: HashMap<u64, usize>,
    next_reader: u64,
}

impl State {
    fn len(&self) -> usize {
        self.base + self.chunks.len()
    }

    /// Drops the pieces every reader has had (only once the answer has outgrown the bound:
    /// before that, a follower may still join and read from the start).
    fn trim(&mut self) {
        if !self.outgrown {
            return;
        }
        let keep_from = self.cursors.values().copied().min().unwrap_or(self.len());
        while self.base < keep_from {
            let Some(c) = self.chunks.pop_front() else {
                break;
            };
            self.held -= c.len() as u64;
            self.base += 1;
        }
    }
}

pub struct Flight {
    state: Mutex<State>,
    version: watch::Sender<u64>,
    bounds: Bounds,
}

/// What waiting for a whole answer found.
pub enum Whole {
    /// The answer, as the pieces it arrived in.
    Complete(Vec<Bytes>),
    /// It outgrew the bound: read it piece by piece instead.
    Outgrown,
    Ended(End),
}

impl Flight {
    pub fn new(bounds: Bounds) -> Arc<Flight> {
        Arc::new(Flight {
            state: Mutex::new(State::default()),
            version: watch::Sender::new(0),
            bounds,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State half-written (every update
        // completes before anything that can panic), so a poisoned lock is still safe.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn set_head(&self, head: Head) {
        self.lock().head = Some(head);
        self.bump();
    }

    /// Appends a piece. Once the answer has outgrown the bound, waits while more than
    /// `window` bytes are held for readers that have not had them.
    pub async fn push(&self, chunk: Bytes) {
        let mut rx = self.version.subscribe();
        {
            let mut s = self.lock();
            s.total += chunk.len() as u64;
            s.held += chunk.len() as u64;
            s.chunks.push_back(chunk);
            if !s.outgrown && s.total > self.bounds.max_entry {
                s.outgrown = true;
            }
            s.trim();
        }
        self.bump();
        loop {
            {
                let s = self.lock();
                if !s.outgrown || s.held <= self.bounds.window {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn set_cost(&self, cost: Option<Money>) {
        self.lock().cost = cost;
    }

    pub fn cost(&self) -> Option<Money> {
        self.lock().cost.clone()
    }

    /// The whole answer as the pieces it arrived in, unless it outgrew the bound.
    pub fn recording(&self) -> Option<Vec<Bytes>> {
        let s = self.lock();
        (!s.outgrown).then(|| s.chunks.iter().cloned().collect())
    }

    /// Whether the answer outgrew the bound (it is then not stored).
    pub fn outgrown(&self) -> bool {
        self.lock().outgrown
    }

    /// Sets the end once; later calls are ignored.
    pub fn finish(&self, end: End) {
        {
            let mut s = self.lock();
            if s.end.is_some() {
                return;
            }
            s.end = Some(end);
        }
        self.bump();
    }

    pub fn is_finished(&self) -> bool {
        self.lock().end.is_some()
    }

    /// Waits for the end, holding no piece back.
    pub async fn end(&self) -> End {
        let mut rx = self.version.subscribe();
        loop {
            if let Some(e) = &self.lock().end {
                return e.clone();
            }
            if rx.changed().await.is_err() {
                return End::Released;
            }
        }
    }

    /// A reader from the first piece on; `None` once the answer has outgrown the bound
    /// (its first pieces are gone: a newcomer must fetch for itself).
    pub fn reader(self: &Arc<Self>) -> Option<Reader> {
        let mut s = self.lock();
        if s.outgrown {
            return None;
        }
        let id = s.next_reader;
        s.next_reader += 1;
        s.cursors.insert(id, 0);
        drop(s);
        Some(Reader {
            flight: self.clone(),
            rx: self.version.subscribe(),
            id,
        })
    }
}

/// One client's position in an answer in flight. Dropped, it stops holding pieces back.
pub struct Reader {
    flight: Arc<Flight>,
    rx: watch::Receiver<u64>,
    id: u64,
}

impl Reader {
    /// Waits for the head. `Err` carries the end if the flight ended without one.
    pub async fn head(&mut self) -> Result<Head, End> {
        loop {
            {
                let s = self.flight.lock();
                if let Some(h) = &s.head {
                    return Ok(h.clone());
                }
                if let Some(e) = &s.end {
                    return Err(e.clone());
                }
            }
            if self.rx.changed().await.is_err() {
                return Err(End::Released);
            }
        }
    }

    /// Waits for the end (or for the answer to outgrow the bound).
    pub async fn whole(&mut self) -> Whole {
        loop {
            {
                let s = self.flight.lock();
                if s.outgrown {
                    return Whole::Outgrown;
                }
                match &s.end {
                    Some(End::Complete) => {
                        return Whole::Complete(s.chunks.iter().cloned().collect())
                    }
                    Some(other) => return Whole::Ended(other.clone()),
                    None => {}
                }
            }
            if self.rx.changed().await.is_err() {
                return Whole::Ended(End::Released);
            }
        }
    }

    /// The pieces this reader has not had yet, and the end once reached; waits while
    /// there is neither.
    pub async fn next(&mut self) -> (Vec<Bytes>, Option<End>) {
        loop {
            {
                let mut s = self.flight.lock();
                let at = s.cursors.get(&self.id).copied().unwrap_or(s.len());
                if at < s.len() || s.end.is_some() {
                    let from = at.saturating_sub(s.base);
                    let out = s.chunks.iter().skip(from).cloned().collect();
                    let len = s.len();
                    s.cursors.insert(self.id, len);
                    s.trim();
                    let end = s.end.clone();
                    drop(s);
                    // The leader may be waiting for room.
                    self.flight.bump();
                    return (out, end);
                }
            }
            if self.rx.changed().await.is_err() {
                return (Vec::new(), Some(End::Released));
            }
        }
    }

    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// A body that yields every piece from this reader's position on as it arrives, and
    /// ends when the flight does: cleanly after `Complete`; after a failure, with an SSE
    /// error frame for a stream, or as a broken body (the client sees a failed transfer,
    /// never a short answer that looks whole).
    pub fn into_body(self, sse: bool) -> Body {
        use http_body_util::{BodyExt, StreamBody};
        // The reader, the pieces it has been given and not yet sent, and the end once known.
        type State = (Reader, VecDeque<Bytes>, Option<End>);
        let start: State = (self, VecDeque::new(), None);
        let frames = futures_util::stream::unfold(Some(start), move |state| async move {
            let (mut r, mut queue, mut end) = state?;
            loop {
                if let Some(piece) = queue.pop_front() {
                    return Some((Ok(Frame::data(piece)), Some((r, queue, end))));
                }
                let failure = match end.take() {
                    None => {
                        let (pieces, e) = r.next().await;
                        queue.extend(pieces);
                        end = e;
                        continue;
                    }
                    Some(End::Complete) => return None,
                    Some(End::Failed(e)) => e,
                    Some(End::Released) => {
                        ApiError::UpstreamBroken("the answer was abandoned".into())
                    }
                };
                // What arrived has gone out; the body ends with the failure.
                let item: Result<Frame<Bytes>, BoxError> = if sse {
                    Ok(Frame::data(failure.sse_frame()))
                } else {
                    Err(failure.to_string().into())
                };
                return Some((item, None));
            }
        });
        BodyExt::boxed(StreamBody::new(frames))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        {
            let mut s = self.flight.lock();
            s.cursors.remove(&self.id);
            s.trim();
        }
        self.flight.bump();
    }
}

/// The flights in progress, by cache key (hashed with foldhash, as a HashMap of blake3
/// keys can be cheaply).
pub struct Flights {
    map: Mutex<HashMap<CacheKey, Arc<Flight>>>,
    bounds: Bounds,
}

pub enum Role {
    /// Nobody is fetching this key: the caller must, and report through the guard.
    Leader(Leader),
    /// Somebody is: read their answer.
    Follower(Arc<Flight>),
}

impl Flights {
    pub fn new(bounds: Bounds) -> Flights {
        Flights {
            map: Mutex::default(),
            bounds,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CacheKey, Arc<Flight>>> {
        // Map operations are single inserts/removes: a poisoned lock holds a valid map.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn join(self: &Arc<Self>, key: CacheKey) -> Role {
        let mut map = self.lock();
        if let Some(f) = map.get(&key) {
            return Role::Follower(f.clone());
        }
        let flight = Flight::new(self.bounds);
        map.insert(key, flight.clone());
        Role::Leader(Leader {
            flights: Some((self.clone(), key)),
            flight,
        })
    }

    /// A flight nobody else can join (answers that are not cached).
    pub fn solo(&self) -> Leader {
        Leader {
            flights: None,
            flight: Flight::new(self.bounds),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }
}

/// The duty to produce an answer. Dropped without `finish` (an error path, a panic, a
/// cancelled task), it releases the followers so they fetch for themselves.
pub struct Leader {
    flights: Option<(Arc<Flights>, CacheKey)>,
    pub flight: Arc<Flight>,
}

impl Leader {
    /// Stops new requests from joining; those already reading go on.
    pub fn unregister(&mut self) {
        if let Some((flights, key)) = self.flights.take() {
            let mut map = flights.lock();
            if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                map.remove(&key);
            }
        }
    }

    pub fn finish(mut self, end: End) {
        self.unregister();
        self.flight.finish(end);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.unregister();
        self.flight.finish(End::Released);
    }
}

#[cfg(test)]
mod tests;
