//! A fast fake of the chat API for benchmarks: answers /models, /chat/completions (plain and
//! streamed), /tokens, /credits and /moderate in the API's shapes, and counts requests per
//! path. `GET /__count` returns the counts as JSON; `POST /__reset` zeroes them.
//!
//! Streams: `--frames N --gap-us G` set the default shape (N content frames, G microseconds
//! between them, then the cost frame). A request body may override them with top-level
//! `"x_frames"` / `"x_gap_us"`. Each content frame carries `"t"`, the CLOCK_MONOTONIC
//! nanoseconds at which it was handed to the connection, so a client on the same machine can
//! tell how long each frame took to arrive.
//!
//! Usage: fake-upstream --listen 127.0.0.1:PORT [--frames 20] [--gap-us 1000] [--content-bytes 32]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chatcache_bench_tools::{accept, mono_ns};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const PATHS: [&str; 7] = [
    "/models",
    "/chat/completions",
    "/chat/completions#stream",
    "/tokens",
    "/credits",
    "/moderate",
    "other",
];

struct State {
    counts: [AtomicU64; 7],
    frames: u64,
    gap_us: u64,
    content: String,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

fn json(status: StatusCode, s: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(s))
        .unwrap()
}

fn count(st: &State, path: &str) {
    let i = PATHS
        .iter()
        .position(|p| *p == path)
        .unwrap_or(PATHS.len() - 1);
    st.counts[i].fetch_add(1, Ordering::Relaxed);
}

fn counts_json(st: &State) -> String {
    let mut out = serde_json::Map::new();
    let mut total = 0;
    for (i, p) in PATHS.iter().enumerate() {
        let n = st.counts[i].load(Ordering::Relaxed);
        total += n;
        out.insert(p.to_string(), n.into());
    }
    out.insert("total".into(), total.into());
    serde_json::Value::Object(out).to_string()
}

const COST: &str = "\"input_tokens\":12,\"output_tokens\":8,\"input_tokens_cost\":0.000024,\"output_tokens_cost\":0.000048,\"total_tokens_cost\":0.000072,\"total_time_taken\":0.05,\"tokens_per_second\":160.0";

fn chat_plain(st: &State, model: &str) -> String {
    format!(
        "{{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{}}},\"finish_reason\":\"stop\"}}],{COST}}}",
        serde_json::Value::from(model),
        serde_json::Value::from(st.content.as_str()),
    )
}

fn chunk(model: &str, text: &str, last: bool) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":{}}}],\"t\":{}}}\n\n",
        serde_json::Value::from(model),
        serde_json::Value::from(text),
        if last { "\"stop\"" } else { "null" },
        mono_ns(),
    )
}

fn chat_stream(model: String, frames: u64, gap_us: u64) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for i in 0..frames {
            if i > 0 && gap_us > 0 {
                tokio::time::sleep(Duration::from_micros(gap_us)).await;
            }
            let f = chunk(&model, &format!(" w{i}"), i + 1 == frames);
            if tx.send(Ok(Frame::data(Bytes::from(f)))).await.is_err() {
                return;
            }
        }
        let cost = format!("data: {{{COST},\"time_to_first_data\":0.001}}\n\n");
        let _ = tx.send(Ok(Frame::data(Bytes::from(cost)))).await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(RxStream(rx).boxed())
        .unwrap()
}

/// A response body fed by a channel, one frame per message.
struct RxStream(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl hyper::body::Body for RxStream {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(json(StatusCode::BAD_REQUEST, "{\"error\":\"body\"}")),
    };
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/__count") => json(StatusCode::OK, counts_json(&st)),
        (&Method::POST, "/__reset") => {
            for c in &st.counts {
                c.store(0, Ordering::Relaxed);
            }
            json(StatusCode::OK, "{}")
        }
        (&Method::GET, "/models") => {
            count(&st, "/models");
            json(
                StatusCode::OK,
                "{\"data\":[{\"id\":\"Claude 3.5 Sonnet\",\"inputCost\":0.002,\"outputCost\":0.003},{\"id\":\"GPT-4 Turbo\",\"inputCost\":0.03,\"outputCost\":0.06},{\"id\":\"GPT-4o\",\"inputCost\":0.002,\"outputCost\":0.006}]}",
            )
        }
        (&Method::GET, "/credits") => {
            count(&st, "/credits");
            json(StatusCode::OK, "{\"credits\":1000}")
        }
        (&Method::POST, "/tokens") => {
            count(&st, "/tokens");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let n = v["text"].as_str().map(|s| s.len() / 4 + 1).unwrap_or(0);
            json(StatusCode::OK, format!("{{\"tokens\":{n}}}"))
        }
        (&Method::POST, "/moderate") => {
            count(&st, "/moderate");
            json(
                StatusCode::OK,
                "{\"results\":[{\"categories\":{\"hate\":false,\"hate/threatening\":false,\"violence\":false},\"category_scores\":{\"hate\":0.0000001,\"hate/threatening\":0.0000001,\"violence\":0.0000002},\"flagged\":false}]}",
            )
        }
        (&Method::POST, "/chat/completions") | (&Method::POST, "/v1/chat/completions") => {
            let v: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) => {
                    count(&st, "other");
                    return Ok(json(
                        StatusCode::BAD_REQUEST,
                        "{\"error\":\"malformed JSON\"}",
                    ));
                }
            };
            let model = v["model"].as_str().unwrap_or("GPT-4o").to_string();
            if v["stream"].as_bool() == Some(true) {
                count(&st, "/chat/completions#stream");
                let frames = v["x_frames"].as_u64().unwrap_or(st.frames).max(1);
                let gap = v["x_gap_us"].as_u64().unwrap_or(st.gap_us);
                chat_stream(model, frames, gap)
            } else {
                count(&st, "/chat/completions");
                json(StatusCode::OK, chat_plain(&st, &model))
            }
        }
        _ => {
            count(&st, "other");
            json(StatusCode::NOT_FOUND, "{\"error\":\"not found\"}")
        }
    };
    Ok(resp)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = arg(&args, "--listen")
        .unwrap_or_else(|| "127.0.0.1:18401".into())
        .parse()
        .expect("--listen ADDR");
    let content_bytes: usize = arg(&args, "--content-bytes").map_or(32, |s| s.parse().unwrap());
    let mut content = String::from("The capital of France is Paris.");
    while content.len() < content_bytes {
        content.push_str(" And so on.");
    }
    content.truncate(content_bytes);
    let st = Arc::new(State {
        counts: Default::default(),
        frames: arg(&args, "--frames").map_or(20, |s| s.parse().unwrap()),
        gap_us: arg(&args, "--gap-us").map_or(1000, |s| s.parse().unwrap()),
        content,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        eprintln!("fake-upstream listening on http://{listen}");
        loop {
            let sock = accept(&listener).await;
            let st = st.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(st.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
}
