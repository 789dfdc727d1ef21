//! Fuzzes the SSE parser: feeding a body in arbitrary pieces must give the same events as feeding
//! it whole, and every event must be safe to read.
#![no_main]

use chatcache::stream::frame::{api_frames, read_frame};
use chatcache::stream::sse::{Event, SseParser};
use libfuzzer_sys::fuzz_target;

fn parse_pieces<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Vec<Event> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    for piece in pieces {
        parser.push(piece, &mut events);
    }
    events.extend(parser.finish());
    events
}

/// Cuts `body` into pieces whose lengths cycle through `lengths` (a length of 0 gives an empty
/// piece), then one last piece with whatever is left.
fn pieces<'a>(body: &'a [u8], lengths: &[u8]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = body;
    if lengths.iter().any(|&l| l > 0) {
        for &len in lengths.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(usize::from(len).min(rest.len()));
            pieces.push(piece);
            rest = tail;
        }
    } else {
        pieces.extend(lengths.iter().map(|_| &rest[..0]));
    }
    pieces.push(rest);
    pieces
}

// The first byte says how many of the next bytes are piece lengths; the rest is the body.
fuzz_target!(|input: &[u8]| {
    let Some((&count, rest)) = input.split_first() else {
        return;
    };
    let (lengths, body) = rest.split_at(usize::from(count % 32).min(rest.len()));

    let whole = parse_pieces(std::iter::once(body));
    let chunked = parse_pieces(pieces(body, lengths).into_iter());
    assert_eq!(chunked, whole);

    for event in &whole {
        for data in api_frames(event) {
            let _ = read_frame(event.event.as_deref(), data);
        }
    }
});
