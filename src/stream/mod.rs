//! Streamed (SSE) answers: parsing, tee to clients while recording, and replay.

pub mod cost_scan;
pub mod frame;
pub mod replay;
pub mod sse;
pub mod tee;

const EVENT_STREAM: &str = "text/event-stream";

/// The response is a server-sent-events stream.
pub fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.trim_start().get(..EVENT_STREAM.len()))
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(EVENT_STREAM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_content_type_is_recognised_in_any_case() {
        let with = |ct: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(ct),
            );
            is_event_stream(&h)
        };
        assert!(with("text/event-stream"));
        assert!(with(" Text/Event-Stream; charset=utf-8"));
        assert!(!with("text/event"));
        assert!(!with("application/json"));
        assert!(!is_event_stream(&http::HeaderMap::new()));
    }
}
