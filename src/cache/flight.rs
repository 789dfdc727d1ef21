//! Single-flight: one upstream call per key at a time. An answer in flight is a shared,
//! append-only recording; every client (the one that caused it included) reads it from
//! the start at its own pace, so followers join live and hold only an index into it.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use foldhash::HashMap;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

use crate::body::Body;
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

#[derive(Default)]
struct State {
    head: Option<Head>,
    chunks: Vec<Bytes>,
    end: Option<End>,
    /// What the answer cost upstream (its cost text), for followers' `saved`.
    cost: Option<Money>,
}

pub struct Flight {
    state: Mutex<State>,
    version: watch::Sender<u64>,
}

impl Flight {
    pub fn new() -> Arc<Flight> {
        Arc::new(Flight {
            state: Mutex::new(State::default()),
            version: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State half-written (every update is
        // a single push or assignment), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    pub fn set_head(&self, head: Head) {
        self.lock().head = Some(head);
        self.bump();
    }

    pub fn push(&self, chunk: Bytes) {
        self.lock().chunks.push(chunk);
        self.bump();
    }

    pub fn set_cost(&self, cost: Option<Money>) {
        self.lock().cost = cost;
    }

    pub fn cost(&self) -> Option<Money> {
        self.lock().cost.clone()
    }

    /// Everything received so far, as one buffer.
    pub fn snapshot(&self) -> Bytes {
        concat(&self.lock().chunks)
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

    /// Waits for the head. `Err` carries the end if the flight ended without one.
    pub async fn head(&self) -> Result<Head, End> {
        let mut rx = self.version.subscribe();
        loop {
            {
                let s = self.lock();
                if let Some(h) = &s.head {
                    return Ok(h.clone());
                }
                if let Some(e) = &s.end {
                    return Err(e.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err(End::Released);
            }
        }
    }

    /// Waits for the end and returns the whole body on a clean one.
    pub async fn whole(&self) -> Result<Bytes, End> {
        let mut rx = self.version.subscribe();
        loop {
            {
                let s = self.lock();
                match &s.end {
                    Some(End::Complete) => return Ok(concat(&s.chunks)),
                    Some(other) => return Err(other.clone()),
                    None => {}
                }
            }
            if rx.changed().await.is_err() {
                return Err(End::Released);
            }
        }
    }

    /// The chunks from index `from` on, and the end if reached; waits while there is
    /// neither.
    async fn next_from(
        &self,
        from: usize,
        rx: &mut watch::Receiver<u64>,
    ) -> (Vec<Bytes>, Option<End>) {
        loop {
            {
                let s = self.lock();
                if s.chunks.len() > from || s.end.is_some() {
                    return (s.chunks[from.min(s.chunks.len())..].to_vec(), s.end.clone());
                }
            }
            if rx.changed().await.is_err() {
                return (Vec::new(), Some(End::Released));
            }
        }
    }

    /// A body that yields every chunk from the first on as it arrives, and ends when the
    /// flight does: cleanly after `Complete`, with an SSE error frame after `Failed`.
    pub fn stream_body(self: Arc<Self>) -> Body {
        use futures_util::StreamExt;
        use http_body_util::{BodyExt, StreamBody};

        struct Reader {
            flight: Arc<Flight>,
            rx: watch::Receiver<u64>,
            at: usize,
            done: bool,
        }
        let rx = self.version.subscribe();
        let reader = Reader {
            flight: self,
            rx,
            at: 0,
            done: false,
        };
        let frames = futures_util::stream::unfold(reader, |mut r| async move {
            if r.done {
                return None;
            }
            let (chunks, end) = r.flight.next_from(r.at, &mut r.rx).await;
            r.at += chunks.len();
            let mut out = concat(&chunks);
            match end {
                Some(End::Complete) => r.done = true,
                Some(End::Failed(e)) => {
                    r.done = true;
                    let mut b = BytesMut::from(&out[..]);
                    b.extend_from_slice(&e.sse_frame());
                    out = b.freeze();
                }
                Some(End::Released) => {
                    r.done = true;
                    let e = ApiError::UpstreamBroken("the answer was abandoned".into());
                    let mut b = BytesMut::from(&out[..]);
                    b.extend_from_slice(&e.sse_frame());
                    out = b.freeze();
                }
                None => {}
            }
            Some((Ok(http_body::Frame::data(out)), r))
        })
        .filter(
            |f: &Result<http_body::Frame<Bytes>, crate::body::BoxError>| {
                let keep = match f {
                    Ok(frame) => frame.data_ref().is_none_or(|d| !d.is_empty()),
                    Err(_) => true,
                };
                std::future::ready(keep)
            },
        );
        BodyExt::boxed(StreamBody::new(frames))
    }
}

fn concat(chunks: &[Bytes]) -> Bytes {
    match chunks {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut b = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for c in many {
                b.extend_from_slice(c);
            }
            b.freeze()
        }
    }
}

/// The flights in progress, by cache key (hashed with foldhash, as the index's are).
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<CacheKey, Arc<Flight>>>,
}

pub enum Role {
    /// Nobody is fetching this key: the caller must, and report through the guard.
    Leader(Leader),
    /// Somebody is: read their answer.
    Follower(Arc<Flight>),
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<CacheKey, Arc<Flight>>> {
        // Map operations are single inserts/removes: a poisoned lock holds a valid map.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn join(self: &Arc<Self>, key: CacheKey) -> Role {
        let mut map = self.lock();
        if let Some(f) = map.get(&key) {
            return Role::Follower(f.clone());
        }
        let flight = Flight::new();
        map.insert(key, flight.clone());
        Role::Leader(Leader {
            flights: Some((self.clone(), key)),
            flight,
        })
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
    /// A flight nobody else can join (answers that are not cached).
    pub fn solo() -> Leader {
        Leader {
            flights: None,
            flight: Flight::new(),
        }
    }

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
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn key() -> CacheKey {
        CacheKey([7; 32])
    }

    fn head() -> Head {
        Head {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            stream: true,
        }
    }

    #[tokio::test]
    async fn second_join_follows_and_reads_everything_live() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join(key()) else {
            panic!("first join must lead")
        };
        leader.flight.set_head(head());
        leader.flight.push(Bytes::from_static(b"one "));
        let Role::Follower(f) = flights.join(key()) else {
            panic!("second join must follow")
        };
        let reader = tokio::spawn(f.clone().stream_body().collect());
        leader.flight.push(Bytes::from_static(b"two"));
        leader.finish(End::Complete);
        let got = reader.await.unwrap().unwrap().to_bytes();
        assert_eq!(&got[..], b"one two");
        assert_eq!(flights.in_flight(), 0);
        assert!(matches!(flights.join(key()), Role::Leader(_)));
    }

    #[tokio::test]
    async fn dropped_leader_releases_followers() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join(key()) else {
            panic!()
        };
        let Role::Follower(f) = flights.join(key()) else {
            panic!()
        };
        let waiting = tokio::spawn(async move { f.head().await });
        drop(leader);
        assert!(matches!(waiting.await.unwrap(), Err(End::Released)));
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn failure_mid_stream_ends_with_an_error_frame() {
        let flight = Flight::new();
        flight.set_head(head());
        flight.push(Bytes::from_static(b"data: a\n\n"));
        flight.finish(End::Failed(ApiError::UpstreamBroken("reset".into())));
        let got = flight.stream_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(got.to_vec()).unwrap();
        assert!(
            text.starts_with("data: a\n\nevent: error\ndata: {"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn whole_waits_for_the_end() {
        let flight = Flight::new();
        let f2 = flight.clone();
        let w = tokio::spawn(async move { f2.whole().await });
        flight.push(Bytes::from_static(b"{\"a\":"));
        flight.push(Bytes::from_static(b"1}"));
        assert!(!w.is_finished());
        flight.finish(End::Complete);
        assert_eq!(&w.await.unwrap().unwrap()[..], b"{\"a\":1}");
    }
}
