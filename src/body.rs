//! Response bodies: the body type every handler returns, with constructors for it.

use std::io::{self, Write};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

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

/// A body sent as the pieces it is held in, none of them copied.
pub fn pieces(pieces: Vec<Bytes>) -> Body {
    if pieces.len() <= 1 {
        return full(pieces.into_iter().next().unwrap_or_default());
    }
    let frames = futures_util::stream::iter(
        pieces
            .into_iter()
            .map(|p| Ok::<_, BoxError>(Frame::data(p))),
    );
    StreamBody::new(frames).boxed()
}

/// Bytes held as pieces, read in order as one stream (for parsers that take a reader),
/// so that nothing is joined into one buffer to be read.
pub struct PiecesReader<'a> {
    pieces: &'a [Bytes],
    at: usize,
}

impl<'a> PiecesReader<'a> {
    pub fn new(pieces: &'a [Bytes]) -> PiecesReader<'a> {
        PiecesReader { pieces, at: 0 }
    }
}

impl io::Read for PiecesReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while let Some((first, rest)) = self.pieces.split_first() {
            let left = &first[self.at.min(first.len())..];
            if left.is_empty() {
                (self.pieces, self.at) = (rest, 0);
                continue;
            }
            let n = left.len().min(out.len());
            out[..n].copy_from_slice(&left[..n]);
            self.at += n;
            return Ok(n);
        }
        Ok(0)
    }
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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn pieces_read_as_one_stream_across_their_seams() {
        let pieces = [
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
            Bytes::from_static(b"f"),
        ];
        let mut out = Vec::new();
        let mut buf = [0u8; 2];
        let mut r = PiecesReader::new(&pieces);
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, b"abcdef");
        let v: serde_json::Value = serde_json::from_reader(PiecesReader::new(&[
            Bytes::from_static(b"{\"a\""),
            Bytes::from_static(b":[1,"),
            Bytes::from_static(b"2]}"),
        ]))
        .unwrap();
        assert_eq!(v["a"][1], 2);
    }
}
