//! A small HTTP client for talking to the daemon under test: requests, whole or streamed
//! answers, the test key, chat bodies, and readings of its metrics.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::daemon::Daemon;

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body.into()));
    *req.method_mut() = method;
    *req.uri_mut() = url.parse().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req
}

/// Sends a request and reads the whole answer.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let resp = client()
        .request(request(method, url, headers, body))
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"));
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_else(|e| panic!("body of {url} broke: {e}"));
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends a request and returns the answer with its body unread.
pub async fn open(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> http::Response<Incoming> {
    try_open(method, url, headers, body).await.unwrap()
}

/// As `open`, for requests that may fail (a daemon being killed).
pub async fn try_open(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
    client().request(request(method, url, headers, body)).await
}

pub const KEY: &str = "Bearer sk-test-0123456789abcdef";

pub async fn post(url: &str, body: &str) -> Resp {
    send(
        Method::POST,
        url,
        &[("authorization", KEY), ("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

pub async fn post_with(url: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(Method::POST, url, &h, body.to_string()).await
}

/// A chat request to the daemon, with the test key.
pub async fn ask(d: &Daemon, body: &str) -> Resp {
    post(&d.url("/chat/completions"), body).await
}

/// A chat request to the daemon, with the test key, on behalf of `project`.
pub async fn ask_in(d: &Daemon, project: &str, body: &str) -> Resp {
    post_with(
        &d.url("/chat/completions"),
        body,
        &[("authorization", KEY), ("x-chatcache-project", project)],
    )
    .await
}

pub async fn get(url: &str) -> Resp {
    send(Method::GET, url, &[("authorization", KEY)], Bytes::new()).await
}

pub fn chat(content: &str) -> String {
    serde_json::json!({"model": "GPT-4 Turbo", "messages": [{"role": "user", "content": content}]})
        .to_string()
}

pub fn chat_stream(content: &str) -> String {
    serde_json::json!({"model": "GPT-4 Turbo", "messages": [{"role": "user", "content": content}], "stream": true}).to_string()
}

/// The daemon's metrics endpoint as it reads now.
pub async fn metrics_text(d: &Daemon) -> String {
    let r = send(
        Method::GET,
        &d.url("/_chatcache/metrics"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    r.text()
}

/// An unlabelled gauge or counter as the daemon's metrics endpoint shows it now.
pub async fn metric(d: &Daemon, name: &str) -> f64 {
    metrics_text(d)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// Waits (up to 5 s) until the daemon's metric `name` reads `want`. For states the daemon
/// reaches on its own that nothing outside it can otherwise see (a request waiting behind
/// another one in flight).
pub async fn metric_reaches(d: &Daemon, name: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = metric(d, name).await;
        if now == want {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{name} stayed at {now}, not {want}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads one HTTP/1 answer with a Content-Length body, leaving the connection open.
pub async fn read_one_answer(s: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(s, &mut buf),
        )
        .await
        .expect("an answer in time")
        .unwrap();
        assert!(n > 0, "closed before the answer was whole: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}
