//! Bodies: a request's read whole under its size limit, and the response body type every
//! handler returns, with constructors for it.

use std::io::{self, Write};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http_body::Body as _;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::error::ApiError;

/// Reads the whole body, refusing with 413 as soon as it is known to exceed `limit`:
/// from Content-Length before reading anything, or while reading a chunked body.
pub async fn read_body(
    body: hyper::body::Incoming,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let unreadable = |e: Box<dyn std::error::Error + Send + Sync>| {
        if e.is::<http_body_util::LengthLimitError>() {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::BadRequest("the request body could not be read".into())
        }
    };
    let mut body = Limited::new(body, limit_usize);
    // Most bodies arrive whole, in one piece: taken as they are, with nothing to collect.
    let first = match body.frame().await {
        None => return Ok(Bytes::new()),
        Some(frame) => frame.map_err(unreadable)?,
    };
    let first = first.into_data().unwrap_or_default();
    if body.is_end_stream() {
        return Ok(first);
    }
    let rest = body.collect().await.map_err(unreadable)?.to_bytes();
    let mut whole = bytes::BytesMut::with_capacity(first.len() + rest.len());
    whole.extend_from_slice(&first);
    whole.extend_from_slice(&rest);
    Ok(whole.freeze())
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: whole, or streamed frame by frame.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Bytes a `written` body sends at a time.
const CHUNK: usize = 64 * 1024;
/// Chunks of a `written` body that may wait for the client (what it holds in memory).
const CHUNKS_AHEAD: usize = 4;

/// A body that `produce` writes on a thread of its own, sent while it is written, so that
/// a large answer (a cache export) is never held whole in memory. An error from `produce`
/// breaks the body: the client sees a failed transfer, never a short answer that looks
/// whole. A client that leaves makes the next write fail, which stops `produce`.
///
/// The thread is not one of the runtime's blocking threads: it waits on its client for as
/// long as the client takes, and a few slow clients would otherwise hold every thread the
/// cache's reads and writes need.
pub fn written<F>(produce: F) -> Body
where
    F: FnOnce(&mut ChunkWriter) -> anyhow::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    let if_not_started = tx.clone();
    let started = std::thread::Builder::new()
        .name("chatcache-body".into())
        .spawn(move || {
            let mut out = ChunkWriter {
                buf: Vec::with_capacity(CHUNK),
                tx,
            };
            let result = produce(&mut out).and_then(|()| Ok(out.flush()?));
            if let Err(e) = result {
                let _ = out.tx.blocking_send(Err(e.into()));
            }
        });
    if let Err(e) = started {
        // The channel is empty and has room: the error is the body's only item.
        let _ = if_not_started.try_send(Err(e.into()));
    }
    drop(if_not_started);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let item: Result<Bytes, BoxError> = rx.recv().await?;
        Some((item.map(Frame::data), rx))
    });
    StreamBody::new(frames).boxed()
}

/// Where a `written` body's producer writes: buffers a chunk, then waits until the client
/// has room for it.
pub struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}
