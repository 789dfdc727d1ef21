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
        // A piece handed over by hyper is a view into its whole read buffer; kept as it is,
        // every recorded piece would pin one such buffer until the answer is dropped.
        flight.push(bytes::Bytes::copy_from_slice(&data)).await;
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
