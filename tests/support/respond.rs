//! Turning one parsed request into an answer, and writing that answer with faults applied.
#![allow(dead_code)]

use std::io;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::sleep;

use super::api;
use super::credits::Credits;
use super::faults::{FaultSet, WORDS_HEADER};
use super::hold::GateState;
use super::http1::{head, write_chunk, Request, LAST_CHUNK};

/// Where an answer waits for its gate: before its first byte (0), or after K stream frames.
pub type HoldAt = Option<(std::sync::Arc<GateState>, usize)>;

/// Status, headers (without framing headers) and body of one answer.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

pub enum Body {
    Fixed(Vec<u8>),
    /// SSE frames, each written as its own (split) piece with delays between frames.
    Frames(Vec<Vec<u8>>),
}

/// What the connection does after the answer was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    KeepAlive,
    Close,
    Reset,
    Hang,
}

fn hdr(n: &str, v: impl Into<String>) -> (String, String) {
    (n.to_string(), v.into())
}

pub fn json(status: u16, body: String) -> Reply {
    Reply {
        status,
        headers: vec![hdr("content-type", "application/json")],
        body: Body::Fixed(body.into_bytes()),
    }
}

pub fn error(status: u16, message: &str) -> Reply {
    json(status, api::error_json(status, message))
}

fn authorized(req: &Request) -> bool {
    let Some((scheme, token)) = req.header("authorization").and_then(|v| v.split_once(' ')) else {
        return false;
    };
    let token = token.trim();
    scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token != "bad-key"
}

/// The answer to `req`; a chat answer is charged to `credits`.
pub fn route(req: &Request, f: &FaultSet, credits: &Credits) -> Reply {
    if let Some(code) = f.status {
        let mut r = error(code, &format!("fake fault: status {code}"));
        if code == 429 || code == 503 {
            r.headers.push(hdr("retry-after", "7"));
        }
        return r;
    }
    if let Some(url) = &f.redirect {
        return Reply {
            status: 302,
            headers: vec![hdr("location", url.as_str())],
            body: Body::Fixed(Vec::new()),
        };
    }
    if f.html {
        return Reply {
            status: 200,
            headers: vec![hdr("content-type", "text/html")],
            body: Body::Fixed(b"<html>oops</html>".to_vec()),
        };
    }
    if !authorized(req) {
        return error(401, "missing or invalid API key");
    }
    let done = |r: Result<String, String>| match r {
        Ok(body) => json(200, body),
        Err(msg) => error(400, &msg),
    };
    match (req.method.as_str(), req.path()) {
        ("GET", "/models") => json(200, api::MODELS_JSON.to_string()),
        ("GET", "/credits") => json(200, credits.body()),
        ("POST", "/tokens") => done(api::tokens_json(&req.body)),
        ("POST", "/moderate") => done(api::moderation_json(&req.body)),
        ("POST", "/chat/completions") => chat(req, f, credits),
        (_, "/models" | "/credits" | "/tokens" | "/moderate" | "/chat/completions") => {
            error(405, "method not allowed")
        }
        (_, path) => error(404, &format!("no such endpoint {path}")),
    }
}

fn chat(req: &Request, f: &FaultSet, credits: &Credits) -> Reply {
    let words = match req.header(WORDS_HEADER).map(str::parse::<usize>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return error(400, "bad x-fake-words"),
    };
    let stream = api::parse_chat(&req.body).is_ok_and(|c| c.stream);
    let answer = api::answer(&req.body, words);
    if let Ok(a) = &answer {
        credits.charge(&a.model, a.costs.total_micros);
    }
    match answer {
        Err((status, msg)) => error(status, &msg),
        Ok(a) if stream => Reply {
            status: 200,
            headers: vec![
                hdr("content-type", "text/event-stream"),
                hdr("cache-control", "no-cache"),
            ],
            body: Body::Frames(a.stream_frames(!f.no_cost, f.done)),
        },
        Ok(a) => json(200, a.completion_json(!f.no_cost)),
    }
}

/// Writes the answer. `close` means the request asked for `Connection: close`.
pub async fn write_reply<S: AsyncWrite + Unpin>(
    io: &mut S,
    reply: Reply,
    f: &FaultSet,
    frame_delay: Duration,
    close: bool,
    hold: HoldAt,
) -> io::Result<After> {
    let streamed = matches!(reply.body, Body::Frames(_)) && !(f.short_body || f.two_cl);
    let hold_in_stream = match hold {
        Some((gate, after)) if after > 0 && streamed => Some((gate, after)),
        Some((gate, _)) => {
            gate.pass().await;
            None
        }
        None => None,
    };
    if let Some(ms) = f.slow_first_byte {
        sleep(Duration::from_millis(ms)).await;
    }
    let Reply {
        status,
        headers,
        body,
    } = reply;
    match body {
        Body::Frames(frames) if !(f.short_body || f.two_cl) => {
            let gap = f.gap.map(Duration::from_millis).unwrap_or(frame_delay);
            write_frames(io, status, headers, &frames, f, gap, close, hold_in_stream).await
        }
        Body::Frames(frames) => write_fixed(io, status, headers, frames.concat(), f, close).await,
        Body::Fixed(body) => write_fixed(io, status, headers, body, f, close).await,
    }
}

async fn write_fixed<S: AsyncWrite + Unpin>(
    io: &mut S,
    status: u16,
    mut headers: Vec<(String, String)>,
    body: Vec<u8>,
    f: &FaultSet,
    close: bool,
) -> io::Result<After> {
    let len = body.len();
    if f.cl_and_te {
        headers.push(hdr("content-length", len.to_string()));
        headers.push(hdr("transfer-encoding", "chunked"));
        io.write_all(&head(status, &headers)).await?;
        let (a, b) = body.split_at(len / 2);
        write_chunk(io, a).await?;
        write_chunk(io, b).await?;
        io.write_all(LAST_CHUNK).await?;
        io.flush().await?;
        return Ok(After::Close);
    }
    let (framing, sent, after) = if f.two_cl {
        let two = vec![
            hdr("content-length", len.to_string()),
            hdr("content-length", (len + 1).to_string()),
        ];
        (two, len, After::Close)
    } else if f.short_body {
        (
            vec![hdr("content-length", (len + 16).to_string())],
            len,
            After::Close,
        )
    } else {
        let mut v = vec![hdr("content-length", len.to_string())];
        if close {
            v.push(hdr("connection", "close"));
        }
        if let Some(k) = f.reset_after {
            (v, k.min(len.saturating_sub(1)), After::Reset)
        } else if f.no_end {
            (v, len.saturating_sub(1), After::Hang)
        } else {
            (
                v,
                len,
                if close {
                    After::Close
                } else {
                    After::KeepAlive
                },
            )
        }
    };
    headers.extend(framing);
    let mut out = head(status, &headers);
    out.extend_from_slice(&body[..sent]);
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(after)
}

/// Where to cut a frame in two: inside the first multi-byte character if there is one,
/// otherwise at a position that varies with the frame index.
fn split_point(i: usize, frame: &[u8]) -> usize {
    if let Some(p) = frame.iter().position(|b| *b >= 0x80) {
        return p + 1;
    }
    match i % 3 {
        0 => frame.len() / 2,
        1 => frame.len() - 1,
        _ => 3,
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_frames<S: AsyncWrite + Unpin>(
    io: &mut S,
    status: u16,
    mut headers: Vec<(String, String)>,
    frames: &[Vec<u8>],
    f: &FaultSet,
    gap: Duration,
    close: bool,
    hold: HoldAt,
) -> io::Result<After> {
    if f.cl_and_te {
        let total: usize = frames.iter().map(Vec::len).sum();
        headers.push(hdr("content-length", total.to_string()));
    } else if close {
        headers.push(hdr("connection", "close"));
    }
    headers.push(hdr("transfer-encoding", "chunked"));
    io.write_all(&head(status, &headers)).await?;
    io.flush().await?;
    let hold_before = |i: usize| hold.as_ref().filter(|(_, after)| *after == i);
    for (i, frame) in frames.iter().enumerate() {
        if let Some((gate, _)) = hold_before(i) {
            io.flush().await?;
            gate.pass().await;
        }
        if f.reset_after == Some(i) {
            return Ok(After::Reset);
        }
        if i > 0 && !gap.is_zero() {
            sleep(gap).await;
        }
        let (a, b) = frame.split_at(split_point(i, frame));
        write_chunk(io, a).await?;
        if gap.is_zero() {
            tokio::task::yield_now().await;
        } else {
            sleep(Duration::from_millis(1)).await;
        }
        write_chunk(io, b).await?;
    }
    if let Some((gate, after)) = &hold {
        if *after >= frames.len() {
            io.flush().await?;
            gate.pass().await;
        }
    }
    if f.reset_after.is_some() {
        return Ok(After::Reset);
    }
    if f.no_end {
        return Ok(After::Hang);
    }
    io.write_all(LAST_CHUNK).await?;
    io.flush().await?;
    Ok(if close || f.cl_and_te {
        After::Close
    } else {
        After::KeepAlive
    })
}
