//! Tests of the SSE parser: line ends, fields, comments, split input, and this API's events.

use super::*;
use crate::stream::frame::{api_frames, read_frame, Frame, Reading};
use proptest::prelude::*;

fn parse_chunks(chunks: &[&[u8]]) -> Vec<Event> {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    for chunk in chunks {
        parser.push(chunk, &mut out);
    }
    out.extend(parser.finish());
    out
}

fn parse(body: &[u8]) -> Vec<Event> {
    parse_chunks(&[body])
}

fn data(text: &str) -> Event {
    Event {
        event: None,
        data: text.to_owned(),
        id: None,
    }
}

fn datas(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

#[test]
fn lf_crlf_and_cr_line_ends() {
    for body in [
        &b"data: a\n\ndata: b\n\n"[..],
        b"data: a\r\n\r\ndata: b\r\n\r\n",
        b"data: a\r\rdata: b\r\r",
        b"data: a\r\n\rdata: b\n\r\n",
    ] {
        assert_eq!(parse(body), vec![data("a"), data("b")], "{body:?}");
    }
}

#[test]
fn events_are_pushed_as_soon_as_complete() {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    parser.push(b"data: a\n", &mut out);
    assert!(out.is_empty());
    parser.push(b"\ndata: b", &mut out);
    assert_eq!(out, vec![data("a")]);
    parser.push(b"\n\n", &mut out);
    assert_eq!(out, vec![data("a"), data("b")]);
    assert_eq!(parser.finish(), None);
}

#[test]
fn cr_and_lf_split_across_chunks_are_one_line_end() {
    // With two line ends here, the blank line would dispatch "a" on its own.
    assert_eq!(
        parse_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]),
        vec![data("a\nb")]
    );
    // A CR at a chunk end followed by something else is still a line end.
    assert_eq!(
        parse_chunks(&[b"data: a\r", b"\r", b"data: b\r", b"", b"\r"]),
        vec![data("a"), data("b")]
    );
}

#[test]
fn comments_are_ignored() {
    assert_eq!(
        parse(b": keep-alive\n\n:\ndata: a\n: between\ndata: b\n\n"),
        vec![data("a\nb")]
    );
}

#[test]
fn multi_line_data_is_joined_with_lf() {
    assert_eq!(
        parse(b"data: one\ndata:\ndata: three\n\n"),
        vec![data("one\n\nthree")]
    );
    assert_eq!(parse(b"data\n\n"), vec![data("")]);
    assert_eq!(parse(b"data:\ndata\n\n"), vec![data("\n")]);
}

#[test]
fn only_one_leading_space_is_removed() {
    assert_eq!(
        parse(b"data:a\n\ndata: b\n\ndata:  c \n\ndata:\td\n\n"),
        vec![data("a"), data("b"), data(" c "), data("\td")]
    );
    assert_eq!(parse(b"data: x: y\n\n"), vec![data("x: y")]);
}

#[test]
fn event_and_id_fields() {
    let events = parse(b"event: error\nid: 7\ndata: x\n\ndata: y\n\nid\nevent:\ndata: z\n\n");
    assert_eq!(
        events,
        vec![
            Event {
                event: Some("error".into()),
                data: "x".into(),
                id: Some("7".into()),
            },
            // The last event ID carries over; the event type does not.
            Event {
                event: None,
                data: "y".into(),
                id: Some("7".into()),
            },
            data("z"),
        ]
    );
    // An id containing NUL is ignored.
    assert_eq!(parse(b"id: a\0b\ndata: x\n\n"), vec![data("x")]);
}

#[test]
fn retry_and_unknown_fields_are_ignored() {
    assert_eq!(
        parse(b"retry: 1000\nfoo: bar\nDATA: no\ndata : no\ndata: yes\n\n"),
        vec![data("yes")]
    );
}

#[test]
fn events_without_data_are_not_dispatched() {
    assert_eq!(parse(b"event: ping\n\nid: 1\n\n\n\n"), vec![]);
    let mut parser = SseParser::new();
    parser.push(b"event: error\n\n", &mut Vec::new());
    // The event type of the dropped event does not leak into the next one.
    let mut out = Vec::new();
    parser.push(b"data: x\n\n", &mut out);
    assert_eq!(out[0].event, None);
}

#[test]
fn bom_is_stripped_only_at_stream_start() {
    assert_eq!(parse(b"\xEF\xBB\xBFdata: a\n\n"), vec![data("a")]);
    assert_eq!(
        parse_chunks(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"]),
        vec![data("a")]
    );
    // A second BOM, or one later in the stream, is part of the line (and so no field).
    assert_eq!(parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n"), vec![]);
    assert_eq!(parse(b"data: a\n\xEF\xBB\xBFdata: b\n\n"), vec![data("a")]);
}

#[test]
fn finish_returns_an_event_without_final_blank_line() {
    assert_eq!(
        parse(b"data: a\n\ndata: [DONE]\n"),
        vec![data("a"), data("[DONE]")]
    );
    assert_eq!(
        parse(b"data: a\r\n\r\ndata: [DONE]"),
        vec![data("a"), data("[DONE]")]
    );
    assert_eq!(parse(b"data: a\r"), vec![data("a")]);
    assert_eq!(parse(b"data: a\n\nevent: x\n"), vec![data("a")]);
    assert_eq!(parse(b": only a comment"), vec![]);
    assert_eq!(parse(b""), vec![]);
}

#[test]
fn finish_resets_the_parser() {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    parser.push(b"id: 1\ndata: a\r", &mut out);
    assert_eq!(
        parser.finish(),
        Some(Event {
            event: None,
            data: "a".into(),
            id: Some("1".into())
        })
    );
    // The next stream starts afresh: its BOM is stripped and the old event ID is gone.
    parser.push(b"\xEF\xBB\xBFdata: b\n\n", &mut out);
    assert_eq!(out, vec![data("b")]);
}

#[test]
fn utf8_split_across_chunks() {
    let body = "data: é👋\n\n".as_bytes();
    let expected = vec![data("é👋")];
    for cut in 0..=body.len() {
        let (a, b) = body.split_at(cut);
        assert_eq!(parse_chunks(&[a, b]), expected, "cut at {cut}");
    }
}

#[test]
fn invalid_utf8_is_replaced() {
    assert_eq!(
        parse(b"data: a\xFFb\xF0\x9F\n\n"),
        vec![data("a\u{FFFD}b\u{FFFD}")]
    );
    assert_eq!(
        parse(b"event: \xC3\nid: \xE2\x82\ndata: x\n\n"),
        vec![Event {
            event: Some("\u{FFFD}".into()),
            data: "x".into(),
            id: Some("\u{FFFD}".into())
        }]
    );
}

#[test]
fn long_line_across_many_chunks() {
    let payload = "x".repeat(10_000);
    let body = format!("data: {payload}\n\n");
    let pieces: Vec<&[u8]> = body.as_bytes().chunks(7).collect();
    assert_eq!(parse_chunks(&pieces), vec![data(&payload)]);
}

const COST: &str = r#"{"input_tokens": 12, "output_tokens": 30, "input_tokens_cost": 0.000024, "output_tokens_cost": 0.00009, "total_tokens_cost": 0.000114, "total_time_taken": 1.2, "tokens_per_second": 25.0, "time_to_first_data": 0.3}"#;

/// Contents of the recorded chunk frames: ASCII, accented letters and emoji.
const CONTENTS: [&str; 5] = [
    "The",
    " capital of Fr",
    "ance is Par",
    "is 🇫🇷 — café",
    " ✓😀.",
];

fn chunk_frame(content: &str, last: bool) -> String {
    let content = serde_json::to_string(content).expect("a string serializes");
    let finish = if last { r#""stop""# } else { "null" };
    format!(
        r#"{{"id": "chatcmpl-9x", "object": "chat.completion.chunk", "created": 1677652288, "model": "MODEL_NAME", "choices": [{{"index": 0, "delta": {{"content": {content}}}, "finish_reason": {finish}}}]}}"#
    )
}

/// The data of each event of a recorded stream.
fn recorded_events(with_done: bool) -> Vec<String> {
    let mut events: Vec<String> = CONTENTS
        .iter()
        .enumerate()
        .map(|(i, c)| chunk_frame(c, i + 1 == CONTENTS.len()))
        .collect();
    // Spread over two `data:` lines, so a line end counted twice would split the event.
    events.push(COST.replacen(", \"total_time_taken\"", ",\n\"total_time_taken\"", 1));
    if with_done {
        events.push("[DONE]".to_owned());
    }
    events
}

/// Lays out the events as an SSE body: a keep-alive comment first, each event as `data:` lines
/// and a blank line, all with the given line ends (the final blank line optional).
fn render(events: &[String], ends: &[&str], final_blank: bool) -> Vec<u8> {
    let mut lines = vec![": keep-alive".to_owned(), String::new()];
    for event in events {
        lines.extend(event.split('\n').map(|l| format!("data: {l}")));
        lines.push(String::new());
    }
    if !final_blank {
        lines.pop();
    }
    let mut body = String::new();
    let mut prev_end = "";
    for (i, line) in lines.iter().enumerate() {
        let mut end = ends[i % ends.len()];
        // CR then LF is one line end: a blank line after a lone CR must not start with LF.
        if prev_end == "\r" && line.is_empty() && end == "\n" {
            end = "\r\n";
        }
        body.push_str(line);
        body.push_str(end);
        prev_end = end;
    }
    body.into_bytes()
}

fn line_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
}

fn split_at_points<'a>(body: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for &point in points {
        pieces.push(&body[start..point]);
        start = point;
    }
    pieces.push(&body[start..]);
    pieces
}

proptest! {
    #[test]
    fn split_anywhere(
        with_done in any::<bool>(),
        final_blank in any::<bool>(),
        ends in prop::collection::vec(line_end(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let expected_data = recorded_events(with_done);
        let body = render(&expected_data, &ends, final_blank);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
        points.sort_unstable();

        let whole = parse(&body);
        let pieces = parse_chunks(&split_at_points(&body, &points));
        prop_assert_eq!(&pieces, &whole);
        let expected: Vec<Event> = expected_data.iter().map(|d| data(d)).collect();
        prop_assert_eq!(&whole, &expected);

        let readings: Vec<Reading> = whole.iter().map(|e| read_frame(None, &e.data)).collect();
        let frames: Vec<Frame> = readings.iter().map(|r| r.frame).collect();
        let mut expected_frames = vec![Frame::Chunk; CONTENTS.len()];
        expected_frames.push(Frame::Cost);
        if with_done {
            expected_frames.push(Frame::Done);
        }
        prop_assert_eq!(frames, expected_frames);
        let text_chars: usize = readings.iter().map(|r| r.text_chars).sum();
        prop_assert_eq!(text_chars, CONTENTS.concat().chars().count());
    }
}

#[test]
fn one_byte_at_a_time() {
    for ends in [["\n"], ["\r\n"], ["\r"]] {
        for with_done in [false, true] {
            let expected_data = recorded_events(with_done);
            let body = render(&expected_data, &ends, true);
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            let events = parse_chunks(&bytes);
            assert_eq!(datas(&events), expected_data, "{ends:?}");
            assert_eq!(events, parse(&body));
        }
    }
}

#[test]
fn frames_without_blank_lines_between_them_are_still_told_apart() {
    let body = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\ndata: {\"input_tokens\":1,\"total_tokens_cost\":0.5}\ndata: [DONE]\n";
    let mut p = SseParser::new();
    let mut out = Vec::new();
    p.push(body.as_bytes(), &mut out);
    out.extend(p.finish());
    assert_eq!(out.len(), 1, "SSE joins them into one event");
    let frames: Vec<Frame> = api_frames(&out[0])
        .into_iter()
        .map(|d| read_frame(None, d).frame)
        .collect();
    assert_eq!(frames, vec![Frame::Chunk, Frame::Cost, Frame::Done]);
}

#[test]
fn events_over_the_limit_are_stepped_over_and_the_next_one_is_read() {
    let big = format!("data: {}\n\n", "x".repeat(500));
    let many_lines = format!("{}\n", "data: yyyyyyyyyy\n".repeat(20));
    let text = format!("{big}{many_lines}data: {{\"total_tokens_cost\":1}}\n\n");
    for piece in [1, 7, 64, text.len()] {
        let mut p = SseParser::with_limit(100);
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(piece) {
            p.push(chunk, &mut out);
        }
        assert!(p.finish().is_none());
        let data: Vec<&str> = out.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["{\"total_tokens_cost\":1}"], "pieces of {piece}");
        assert!(p.line.capacity() <= 200, "held {} bytes", p.line.capacity());
    }
    let mut p = SseParser::with_limit(100);
    let mut out = Vec::new();
    p.push(format!("data: {}", "z".repeat(300)).as_bytes(), &mut out);
    assert!(
        p.finish().is_none(),
        "a last event over the limit is stepped over too"
    );
}
