//! The tee: reads an upstream answer piece by piece into the shared recording that every
//! client reads from (so each piece goes out the moment it arrives), noting when each
//! piece came and watching for the cost: for SSE the cost frame (with `[DONE]` and the
//! text produced), for a plain answer its cost fields, read as they pass.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::cache::flight::Flight;
use crate::cost::Usage;
use crate::error::ApiError;
use crate::stream::cost_scan::CostScan;
use crate::stream::frame::{api_frames, read_frame, Frame};
use crate::stream::sse::{Event, SseParser};

/// How the upstream body ended.
#[derive(Debug, Clone)]
pub enum TeeEnd {
    /// Whole: a plain body read to its end, or a stream whose cost frame or `[DONE]` was
    /// seen before its end.
    Clean,
    /// A stream that ended without a cost frame or `[DONE]`: delivered, never stored.
    Unterminated,
    /// Reset, truncated, stalled or an in-band error: never stored.
    Broken(ApiError),
}

#[derive(Debug)]
pub struct Tee {
    pub end: TeeEnd,
    /// (length, milliseconds since `started`) of each piece.
    pub chunk_times: Vec<(u32, u32)>,
    /// The data of the stream's trailing cost frame.
    pub cost_frame: Option<String>,
    /// The cost fields of a plain answer, read as it passed.
    pub plain_usage: Option<Usage>,
    /// Characters of assistant text seen in stream chunks (for estimates).
    pub output_chars: usize,
}

/// Reads `body` into `flight`. An SSE event larger than `max_event` is stepped over (cost
/// frames are small), so reading a stream holds no more than that of it.
pub async fn tee(
    mut body: Incoming,
    flight: &Flight,
    idle: Duration,
    sse: bool,
    started: Instant,
    max_event: usize,
) -> Tee {
    let mut t = Tee {
        end: TeeEnd::Clean,
        chunk_times: Vec::new(),
        cost_frame: None,
        plain_usage: None,
        output_chars: 0,
    };
    let mut blocks = Blocks::default();
    let mut parser = SseParser::with_limit(max_event);
    let mut costs = CostScan::default();
    let mut events: Vec<Event> = Vec::new();
    let mut saw_end_marker = false;
    let mut in_band_error = false;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                t.end = TeeEnd::Broken(ApiError::UpstreamTimeout(idle));
                return t;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                t.end = TeeEnd::Broken(ApiError::UpstreamBroken(format!(
                    "the answer broke off: {e}"
                )));
                return t;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing we keep
        };
        if data.is_empty() {
            continue;
        }
        let ms = started.elapsed().as_millis() as u64;
        // Timings matter only for an answer that will be stored: one within the bound.
        if !flight.outgrown() {
            t.chunk_times
                .push((data.len() as u32, ms.min(u64::from(u32::MAX)) as u32));
        }
        flight.push(blocks.copy(&data)).await;
        if !sse {
            costs.push(&data);
        } else {
            // The readers send the piece on first; what it means is looked into after.
            tokio::task::yield_now().await;
            parser.push(&data, &mut events);
            for ev in events.drain(..) {
                note_event(&ev, &mut t, &mut saw_end_marker, &mut in_band_error);
            }
        }
    }
    t.plain_usage = costs.usage();
    if sse {
        if let Some(ev) = parser.finish() {
            note_event(&ev, &mut t, &mut saw_end_marker, &mut in_band_error);
        }
        t.end = if in_band_error {
            TeeEnd::Broken(ApiError::UpstreamBroken(
                "upstream sent an error inside the stream".into(),
            ))
        } else if saw_end_marker {
            TeeEnd::Clean
        } else {
            TeeEnd::Unterminated
        };
    }
    t
}

fn note_event(ev: &Event, t: &mut Tee, saw_end: &mut bool, error: &mut bool) {
    for data in api_frames(ev) {
        let reading = read_frame(ev.event.as_deref(), data);
        match reading.frame {
            Frame::Chunk => t.output_chars += reading.text_chars,
            Frame::Cost => {
                t.cost_frame = Some(data.to_owned());
                *saw_end = true;
            }
            Frame::Done => *saw_end = true,
            Frame::Error => *error = true,
        }
    }
}

/// Where recorded pieces are copied to. A piece handed over by hyper is a view into its
/// whole read buffer; kept as it is, every recorded piece would pin one such buffer. Small
/// pieces (a stream's frames) are cut from shared blocks, so that a recording of many
/// frames costs one allocation per block, not one per frame. Blocks start small and
/// double, so that a short answer holds little more than itself.
#[derive(Default)]
struct Blocks {
    current: bytes::BytesMut,
    next_size: usize,
}

impl Blocks {
    const FIRST: usize = 4 * 1024;
    const BLOCK: usize = 64 * 1024;
    /// Larger pieces get an allocation of their own: a block's unused end stays small.
    const SMALL: usize = Self::BLOCK / 16;

    fn copy(&mut self, data: &[u8]) -> bytes::Bytes {
        if data.len() > Self::SMALL {
            return bytes::Bytes::copy_from_slice(data);
        }
        if self.current.capacity() - self.current.len() < data.len() {
            let size = self.next_size.clamp(Self::FIRST, Self::BLOCK);
            self.next_size = size * 2;
            self.current = bytes::BytesMut::with_capacity(size);
        }
        self.current.extend_from_slice(data);
        self.current.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::Blocks;

    #[test]
    fn small_pieces_are_cut_from_one_block_and_keep_their_bytes() {
        let mut blocks = Blocks::default();
        let a = blocks.copy(b"data: one\n\n");
        let b = blocks.copy(b"data: two\n\n");
        assert_eq!(&a[..], b"data: one\n\n");
        assert_eq!(&b[..], b"data: two\n\n");
        assert_eq!(
            a.as_ptr() as usize + a.len(),
            b.as_ptr() as usize,
            "one block"
        );
        let big = vec![7u8; Blocks::SMALL + 1];
        let c = blocks.copy(&big);
        assert_eq!(&c[..], &big[..]);
        let d = blocks.copy(b"x");
        assert_eq!(
            b.as_ptr() as usize + b.len(),
            d.as_ptr() as usize,
            "large ones aside"
        );
        // A block that cannot hold the next piece is left to the pieces cut from it; the
        // next is twice as large, up to `BLOCK`.
        let first = blocks.current.capacity() + d.len() + b.len() + a.len();
        assert_eq!(first, Blocks::FIRST);
        let mut last = d;
        for _ in 0..64 {
            last = blocks.copy(&[1u8; Blocks::SMALL]);
        }
        assert_eq!(&last[..], &[1u8; Blocks::SMALL][..]);
        assert_eq!(blocks.next_size, 2 * Blocks::BLOCK);
    }
}
