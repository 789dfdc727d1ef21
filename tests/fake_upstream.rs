//! Checks that the fake upstream in `tests/support` speaks the API and misbehaves on demand.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::{expected_costs, FakeUpstream, Fault, MODELS_JSON};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

struct Got {
    status: u16,
    headers: http::HeaderMap,
    chunks: Vec<Bytes>,
    error: Option<String>,
}

impl Got {
    fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }
    fn text(&self) -> String {
        String::from_utf8(self.body()).expect("UTF-8 body")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).expect("JSON body")
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

fn request(
    method: &str,
    path: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("authorization", "Bearer test-key")
        .header("content-type", "application/json");
    for (n, v) in extra {
        b = b.header(*n, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

async fn read_response(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> Got {
    let resp = sender.send_request(req).await.expect("response head");
    let (parts, mut body) = resp.into_parts();
    let (mut chunks, mut error) = (Vec::new(), None);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    chunks.push(d);
                }
            }
            Err(e) => {
                error = Some(format!("{e:?}"));
                break;
            }
        }
    }
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        chunks,
        error,
    }
}

async fn connect<S>(io: S) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn call(fake: &FakeUpstream, req: http::Request<Full<Bytes>>) -> Got {
    let mut sender = connect(TcpStream::connect(fake.addr).await.unwrap()).await;
    read_response(&mut sender, req).await
}

/// Sends raw bytes and reads until the server closes.
async fn raw(fake: &FakeUpstream, bytes: &str) -> String {
    let mut s = TcpStream::connect(fake.addr).await.unwrap();
    s.write_all(bytes.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn chat_body(stream: bool, text: &str) -> String {
    serde_json::json!({
        "model": "GPT-4 Turbo",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text}
        ],
        "stream": stream
    })
    .to_string()
}

/// Splits an SSE body into the payloads of its `data: ` frames.
fn sse_payloads(text: &str) -> Vec<String> {
    assert!(
        text.ends_with("\n\n"),
        "stream must end with a blank line: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|f| f.strip_prefix("data: ").expect("data frame").to_string())
        .collect()
}

#[tokio::test]
async fn models_json_parses() {
    let fake = FakeUpstream::start().await;
    let got = call(&fake, request("GET", "/models", "", &[])).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(
        got.header("content-length"),
        Some(MODELS_JSON.len().to_string().as_str())
    );
    let v = got.json();
    assert_eq!(v["data"][0]["id"], "GPT-4 Turbo");
    assert_eq!(v["data"][1]["inputCost"].as_f64(), Some(0.002));
    assert_eq!(got.text(), MODELS_JSON);
}

#[tokio::test]
async fn non_stream_chat_has_cost_fields() {
    let fake = FakeUpstream::start().await;
    let body = chat_body(false, "What is the capital of France?");
    let got = call(&fake, request("POST", "/chat/completions", &body, &[])).await;
    assert_eq!(got.status, 200);
    let v = got.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "GPT-4 Turbo");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "écho: What is the capital of France?"
    );
    let costs = expected_costs(body.as_bytes());
    for field in [
        "input_tokens",
        "output_tokens",
        "input_tokens_cost",
        "output_tokens_cost",
    ] {
        assert!(v[field].is_number(), "{field} missing in {v}");
    }
    assert!(v["total_time_taken"].is_number() && v["tokens_per_second"].is_number());
    // Exact text of the numbers, trailing zeros included.
    let text = got.text();
    assert!(text.contains(&costs.fields_json()), "{text}");
    assert!(text.contains(&format!(
        "\"total_tokens_cost\": {}",
        costs.total_tokens_cost
    )));
    assert_eq!(costs.input_micros + costs.output_micros, costs.total_micros);
    assert_eq!(costs.input_tokens_cost.len(), "0.000000".len());

    let again = call(&fake, request("POST", "/chat/completions", &body, &[])).await;
    assert_eq!(
        again.body(),
        got.body(),
        "identical requests give identical answers"
    );
    let other = call(
        &fake,
        request("POST", "/chat/completions", &chat_body(false, "hi"), &[]),
    )
    .await;
    assert_ne!(other.json()["id"], v["id"]);
}

#[tokio::test]
async fn stream_has_chunks_and_cost_frame_without_done() {
    let fake = FakeUpstream::start().await;
    let body = chat_body(true, "Write a poem");
    let got = call(&fake, request("POST", "/chat/completions", &body, &[])).await;
    assert_eq!(got.status, 200);
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(got.header("content-type"), Some("text/event-stream"));
    assert_eq!(got.header("transfer-encoding"), Some("chunked"));
    assert!(got.header("content-length").is_none());
    // Some piece ends inside a multi-byte character.
    assert!(got.chunks.iter().any(|c| std::str::from_utf8(c).is_err()));

    let payloads = sse_payloads(&got.text());
    assert!(!got.text().contains("[DONE]"));
    let (cost, chunks) = payloads.split_last().unwrap();
    assert_eq!(chunks.len(), 4, "{payloads:?}");
    let mut content = String::new();
    for (i, c) in chunks.iter().enumerate() {
        assert!(c.starts_with("{\"id\": \"chatcmpl-"), "{c}");
        let v: Value = serde_json::from_str(c).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        content.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap());
        let finish = &v["choices"][0]["finish_reason"];
        if i + 1 == chunks.len() {
            assert_eq!(finish, "stop");
        } else {
            assert!(finish.is_null());
        }
    }
    assert_eq!(content, "écho: Write a poem");
    assert_eq!(cost, &expected_costs(body.as_bytes()).cost_frame_json());
    assert!(serde_json::from_str::<Value>(cost).unwrap()["time_to_first_data"].is_number());
}

#[tokio::test]
async fn done_fault_and_word_count() {
    let fake = FakeUpstream::start_with_frame_delay(0).await;
    let body = chat_body(true, "x");
    let extra = [("x-fake-fault", "done"), ("x-fake-words", "40")];
    let got = call(&fake, request("POST", "/chat/completions", &body, &extra)).await;
    let payloads = sse_payloads(&got.text());
    assert_eq!(payloads.len(), 42);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    assert!(payloads[40].starts_with("{\"input_tokens\": "));

    fake.set_default_fault(Some(Fault::NoCost));
    let got = call(&fake, request("POST", "/chat/completions", &body, &[])).await;
    let payloads = sse_payloads(&got.text());
    assert_eq!(payloads.len(), 2);
    assert!(!got.text().contains("input_tokens"));
}

#[tokio::test]
async fn reset_after_two_frames_breaks_the_body() {
    let fake = FakeUpstream::start().await;
    let body = chat_body(true, "one two three four five");
    let extra = [("x-fake-fault", "reset-after=2")];
    let got = call(&fake, request("POST", "/chat/completions", &body, &extra)).await;
    assert_eq!(got.status, 200);
    assert!(got.error.is_some(), "body should fail");
    let text = got.text();
    assert_eq!(text.matches("data: ").count(), 2, "{text}");
    assert!(text.ends_with("\n\n"));
}

#[tokio::test]
async fn status_auth_and_routing_errors() {
    let fake = FakeUpstream::start().await;
    let got = call(
        &fake,
        request("GET", "/credits", "", &[("x-fake-fault", "status=429")]),
    )
    .await;
    assert_eq!(got.status, 429);
    assert_eq!(got.header("retry-after"), Some("7"));
    assert_eq!(got.json()["error"]["code"], 429);

    let got = call(&fake, request("GET", "/nope", "", &[])).await;
    assert_eq!(got.status, 404);
    let mut req = request("GET", "/credits", "", &[]);
    req.headers_mut()
        .insert("authorization", "Bearer bad-key".parse().unwrap());
    assert_eq!(call(&fake, req).await.status, 401);
    let mut req = request("GET", "/credits", "", &[]);
    req.headers_mut().remove("authorization");
    assert_eq!(call(&fake, req).await.status, 401);
    let got = call(
        &fake,
        request("GET", "/credits", "", &[("x-fake-fault", "bogus")]),
    )
    .await;
    assert_eq!(got.status, 400);
}

#[tokio::test]
async fn malformed_framing_faults() {
    let fake = FakeUpstream::start().await;
    let head = "GET /credits HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n";
    let out = raw(&fake, &format!("{head}x-fake-fault: two-cl\r\n\r\n")).await;
    assert!(
        out.contains("content-length: 17\r\ncontent-length: 18\r\n"),
        "{out}"
    );
    let out = raw(&fake, &format!("{head}x-fake-fault: cl-and-te\r\n\r\n")).await;
    assert!(
        out.contains("content-length: 17\r\ntransfer-encoding: chunked\r\n"),
        "{out}"
    );
    let out = raw(&fake, &format!("{head}x-fake-fault: short-body\r\n\r\n")).await;
    assert!(
        out.contains("content-length: 33\r\n") && out.ends_with("{\"credits\": 1000}"),
        "{out}"
    );
    let out = raw(
        &fake,
        &format!("{head}x-fake-fault: redirect=http://a/b?c=d,e\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 302 ") && out.contains("location: http://a/b?c=d,e\r\n"));
    let out = raw(
        &fake,
        &format!("{head}x-fake-fault: html\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(out.contains("content-type: text/html") && out.ends_with("<html>oops</html>"));
}

#[tokio::test]
async fn records_requests_and_keeps_connections_alive() {
    let fake = FakeUpstream::start().await;
    let mut sender = connect(TcpStream::connect(fake.addr).await.unwrap()).await;
    let mut req = request("POST", "/tokens?x=1", r#"{"text": "abcdefgh"}"#, &[]);
    req.headers_mut().append("x-dup", "a".parse().unwrap());
    req.headers_mut().append("x-dup", "b".parse().unwrap());
    assert_eq!(read_response(&mut sender, req).await.json()["tokens"], 2);
    let got = read_response(
        &mut sender,
        request("POST", "/moderate", r#"{"input": "I hate it"}"#, &[]),
    )
    .await;
    assert_eq!(got.json()["results"][0]["flagged"], true);

    // A chunked request body is de-chunked before recording.
    let out = raw(
        &fake,
        "POST /tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{\"tex\r\nc\r\nt\": \"abcde\"}\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("{\"tokens\": 2}"), "{out}");

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(fake.count("/tokens"), 2);
    assert_eq!(fake.count("/tokens?x=1"), 1);
    assert_eq!(fake.count("/moderate"), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/tokens?x=1");
    assert_eq!(reqs[0].header_all("X-DUP"), vec!["a", "b"]);
    assert_eq!(reqs[0].body, br#"{"text": "abcdefgh"}"#);
    assert_eq!(reqs[2].body, br#"{"text": "abcde"}"#);
}

#[tokio::test]
async fn tls_with_generated_ca_and_stop() {
    let (fake, ca) = FakeUpstream::start_tls().await;
    assert_eq!(
        fake.url(),
        format!("https://localhost:{}", fake.addr.port())
    );
    assert_eq!(std::fs::read_to_string(&ca.ca_path).unwrap(), ca.ca_pem);

    let tcp = TcpStream::connect(fake.addr).await.unwrap();
    let tls = ca
        .connector()
        .connect(support::TestCa::server_name(), tcp)
        .await
        .expect("TLS handshake with the test CA");
    let mut sender = connect(tls).await;
    let got = read_response(&mut sender, request("GET", "/credits", "", &[])).await;
    assert_eq!(got.json()["credits"], 1000);

    // A client trusting some other CA must refuse the certificate.
    let (other, other_ca) = FakeUpstream::start_tls().await;
    other.stop().await;
    let tcp = TcpStream::connect(fake.addr).await.unwrap();
    let res = other_ca
        .connector()
        .connect(support::TestCa::server_name(), tcp)
        .await;
    assert!(res.is_err());

    let addr = fake.addr;
    fake.stop().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn slow_first_byte_and_no_end() {
    let fake = FakeUpstream::start().await;
    let started = std::time::Instant::now();
    let extra = [("x-fake-fault", "slow-first-byte=150")];
    let got = call(&fake, request("GET", "/credits", "", &extra)).await;
    assert_eq!(got.status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));

    let body = chat_body(true, "never ends");
    let extra = [("x-fake-fault", "no-end,gap=0")];
    let mut sender = connect(TcpStream::connect(fake.addr).await.unwrap()).await;
    let resp = sender
        .send_request(request("POST", "/chat/completions", &body, &extra))
        .await
        .unwrap();
    let mut body_stream = resp.into_body();
    let mut seen = Vec::new();
    let outcome = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        while let Some(frame) = body_stream.frame().await {
            seen.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
    })
    .await;
    assert!(outcome.is_err(), "body must not end");
    let text = String::from_utf8(seen).unwrap();
    assert!(text.contains("\"finish_reason\": \"stop\"") && text.contains("input_tokens"));
}

/// Everything the peer has sent so far, without waiting for more.
fn read_available(s: &TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn raw_request(path: &str, body: &str, fault: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nx-fake-fault: {fault}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn hold_keeps_an_answer_until_the_gate_opens() {
    let fake = FakeUpstream::start().await;

    // Before the first byte: nothing at all is written while held.
    let gate = fake.hold("plain");
    let mut s = TcpStream::connect(fake.addr).await.unwrap();
    let req = raw_request("/chat/completions", &chat_body(false, "held"), "hold=plain");
    s.write_all(req.as_bytes()).await.unwrap();
    gate.arrived().await;
    assert_eq!(gate.held(), 1);
    assert_eq!(read_available(&s), "", "a held answer sends nothing");
    gate.release();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // After two frames of a stream: the head and those frames, and no end.
    let gate = fake.hold("mid");
    let mut s = TcpStream::connect(fake.addr).await.unwrap();
    let req = raw_request(
        "/chat/completions",
        &chat_body(true, "held"),
        "hold=mid@2,gap=0",
    );
    s.write_all(req.as_bytes()).await.unwrap();
    gate.arrived().await;
    let so_far = read_available(&s);
    assert!(so_far.starts_with("HTTP/1.1 200"), "{so_far}");
    assert_eq!(so_far.matches("data: ").count(), 2, "{so_far}");
    assert!(
        !so_far.contains("\r\n0\r\n\r\n"),
        "held stream ended: {so_far}"
    );
    gate.release();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.ends_with("\r\n0\r\n\r\n"), "{rest}");
    assert!(rest.contains("total_tokens_cost"), "{rest}");

    // An open gate lets later requests straight through; the spec round-trips.
    let got = call(
        &fake,
        request("GET", "/credits", "", &[("x-fake-fault", "hold=plain")]),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(gate.held(), 1);
    let parsed = Fault::parse_list("hold=mid@2,hold=x").unwrap();
    assert_eq!(Fault::spec_of(&parsed), "hold=mid@2,hold=x");
    assert!(Fault::parse_list("hold=").is_err());
}
