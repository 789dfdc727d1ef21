//! Streamed (SSE) answers: parsing, tee to clients while recording, and replay.

pub mod replay;
pub mod sse;
pub mod tee;

/// The response is a server-sent-events stream.
pub fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}
