//! The proxy foundation over real loopback sockets: faithful forwarding of every endpoint,
//! TLS upstreams, limits, local errors, header hygiene, h2c, and the real binary's drain.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::daemon::*;
use support::FakeUpstream;

/// Sends the same request to the fake directly and through the daemon.
async fn both(
    fake: &FakeUpstream,
    d: &Daemon,
    method: Method,
    path: &str,
    body: &str,
) -> (Resp, Resp) {
    let h = [("authorization", KEY), ("content-type", "application/json")];
    let direct = send(
        method.clone(),
        &format!("{}{path}", fake.url()),
        &h,
        body.to_string(),
    )
    .await;
    let proxied = send(method, &d.url(path), &h, body.to_string()).await;
    (direct, proxied)
}

#[tokio::test]
async fn every_endpoint_is_forwarded_faithfully() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let cases = [
        (Method::GET, "/models", ""),
        (
            Method::POST,
            "/chat/completions",
            r#"{"model":"GPT-4 Turbo","messages":[{"role":"user","content":"capital of France?"}]}"#,
        ),
        (Method::POST, "/tokens", r#"{"text":"count these words"}"#),
        (Method::GET, "/credits", ""),
        (Method::POST, "/moderate", r#"{"input":"hello there"}"#),
        (Method::GET, "/no/such/endpoint?x=1", ""),
    ];
    for (method, path, body) in cases {
        let (direct, proxied) = both(&fake, &d, method.clone(), path, body).await;
        assert_eq!(proxied.status, direct.status, "{method} {path}");
        assert_eq!(proxied.body, direct.body, "{method} {path}: body differs");
        assert_eq!(
            proxied.header("content-type"),
            direct.header("content-type"),
            "{method} {path}"
        );
    }
    // The unknown path arrived upstream with its query string.
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.path == "/no/such/endpoint?x=1"));
    d.stop().await;
}

#[tokio::test]
async fn streamed_answer_is_byte_identical_and_arrives_before_upstream_finishes() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = chat_stream("tell me about the sea");
    let (direct, proxied) = both(&fake, &d, Method::POST, "/chat/completions", &body).await;
    assert_eq!(proxied.status, StatusCode::OK);
    assert_eq!(proxied.header("content-type"), Some("text/event-stream"));
    assert_eq!(proxied.body, direct.body);
    assert!(proxied.text().contains("total_tokens_cost"));

    // Upstream sends its frames and then never ends: the first frame must still arrive.
    let resp = open(
        Method::POST,
        &d.url("/chat/completions"),
        &[("authorization", KEY), ("x-fake-fault", "no-end")],
        chat_stream("a stream that never ends"),
    )
    .await;
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first frame arrived while upstream was still open")
        .unwrap()
        .unwrap();
    let data = first.into_data().unwrap();
    assert!(data.starts_with(b"data: "), "{data:?}");
    drop(body);
    fake.stop().await;
    d.stop().await;
}

/// A daemon in front of a TLS fake upstream whose private CA it is told to trust.
async fn start_trusting(fake: &FakeUpstream, ca: &support::TestCa) -> Daemon {
    let extra = format!(
        "[upstream]\nca_file = {:?}\n",
        ca.ca_path.display().to_string()
    );
    Daemon::start_with(&fake.url(), &extra).await
}

#[tokio::test]
async fn tls_upstream_with_a_private_ca() {
    let (fake, ca) = FakeUpstream::start_tls().await;
    let d = start_trusting(&fake, &ca).await;
    let r = post(&d.url("/chat/completions"), &chat("over TLS")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["choices"][0]["message"]["content"].is_string());
    d.stop().await;

    // Without the CA the certificate is refused: 502, not a silent plain-text fallback.
    let d = Daemon::start(&fake.url()).await;
    let r = post(&d.url("/chat/completions"), &chat("over TLS, untrusted")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_unreachable");
    d.stop().await;
}

#[tokio::test]
async fn an_upstream_that_speaks_h2_over_tls_serves_plain_and_streamed_answers_and_hits() {
    let (fake, ca) = FakeUpstream::start_tls_h2().await;
    let d = start_trusting(&fake, &ca).await;
    let plain = chat("over h2");
    let r = post(&d.url("/chat/completions"), &plain).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("x-chatcache"), Some("miss"));
    assert!(r.json()["choices"][0]["message"]["content"].is_string());

    let streamed = chat_stream("streamed over h2");
    let s = post(&d.url("/chat/completions"), &streamed).await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.text());
    assert!(s.text().contains("data: "), "{}", s.text());
    assert!(
        s.text().contains("total_tokens_cost"),
        "the trailing cost frame came through: {}",
        s.text()
    );

    let seen = fake.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|r| r.h2),
        "the daemon spoke HTTP/2 upstream"
    );
    assert!(
        seen.iter().all(|r| r
            .headers
            .iter()
            .all(|(n, _)| !n.eq_ignore_ascii_case("connection"))),
        "no connection-specific header sent over h2"
    );

    // Both were recorded: the same requests are hits, and upstream sees nothing new.
    for (body, original) in [(&plain, &r), (&streamed, &s)] {
        let again = post(&d.url("/chat/completions"), body).await;
        assert_eq!(again.header("x-chatcache"), Some("hit"));
        assert_eq!(again.body, original.body);
    }
    assert_eq!(fake.requests().len(), 2);
    d.stop().await;
}

#[tokio::test]
async fn local_errors_are_openai_shaped_and_never_reach_upstream() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), "[limits]\nmax_body = \"1 KiB\"\n").await;

    let r = post(&d.url("/chat/completions"), "{\"model\": \"m\", ").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["type"], "chatcache_error");
    assert_eq!(r.json()["error"]["code"], "invalid_json");

    let big = chat(&"x".repeat(4096));
    let r = post(&d.url("/chat/completions"), &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"]["code"], "body_too_large");

    // Chunked (no Content-Length): refused while reading.
    let chunks = futures_util::stream::iter((0..8).map(|_| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b' '; 512])))
    }));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(d.url("/chat/completions"))
        .header("authorization", KEY)
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(
        fake.count("/chat/completions"),
        0,
        "nothing reached upstream"
    );
    d.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_too_slow_is_504() {
    let fake = FakeUpstream::start().await;
    let url = fake.url();
    fake.stop().await;
    let d = Daemon::start(&url).await;
    let r = post(&d.url("/chat/completions"), &chat("anyone there?")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["error"]["code"], "upstream_unreachable");
    d.stop().await;

    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), "[upstream]\nfirst_byte_timeout = \"300ms\"\n").await;
    let t0 = Instant::now();
    let r = post_with(
        &d.url("/chat/completions"),
        &chat("slow"),
        &[
            ("authorization", KEY),
            ("x-fake-fault", "slow-first-byte=3000"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert!(t0.elapsed() < Duration::from_secs(3));
    d.stop().await;
}

#[tokio::test]
async fn headers_hop_by_hop_dropped_and_authorization_sent_once() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let r = send(
        Method::GET,
        &d.url("/credits"),
        &[
            ("authorization", KEY),
            ("connection", "keep-alive, x-drop-me, authorization"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("x-end-to-end", "kept"),
            ("x-chatcache-project", "web"),
            ("host", "evil.example"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-chatcache"), Some("bypass"));
    let seen = fake.requests().pop().unwrap();
    assert_eq!(seen.header_all("authorization"), vec![KEY.to_string()]);
    assert!(seen.header_all("x-drop-me").is_empty());
    assert!(seen.header_all("keep-alive").is_empty());
    assert!(seen.header_all("x-chatcache-project").is_empty());
    assert_eq!(seen.header_all("x-end-to-end"), vec!["kept".to_string()]);
    assert_eq!(seen.header_all("host"), vec![fake.addr.to_string()]);

    // Two Authorization headers are refused rather than guessed at.
    let r = send(
        Method::GET,
        &d.url("/credits"),
        &[("authorization", KEY), ("authorization", "Bearer other")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    d.stop().await;
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let req = http::Request::post(d.url("/chat/completions"))
        .header("authorization", KEY)
        .body(http_body_util::Full::new(Bytes::from(chat("over h2c"))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("chat.completion"));
    d.stop().await;
}

#[tokio::test]
async fn health_reports_version_and_mode() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), "mode = \"passthrough\"\n").await;
    let r = get(&d.url("/_chatcache/health")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["mode"], "passthrough");
    assert_eq!(r.json()["version"], env!("CARGO_PKG_VERSION"));
    d.stop().await;
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[cache]\nmax_byts = 1\n").unwrap();
    let out = binary()
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_byts") && err.contains("c.toml"), "{err}");

    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/chatcache.toml"),
        &file,
    )
    .unwrap();
    succeed(binary().args(["config", "check", "--config"]).arg(&file));
}

#[tokio::test]
async fn sigterm_lets_a_stream_in_flight_finish_then_exits_0() {
    let fake = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = spawn_binary(&fake.url(), &data, &[], "info", &dir.path().join("log"));
    let addr = child.addr.clone();
    let resp = open(
        Method::POST,
        &format!("http://{addr}/chat/completions"),
        &[
            ("authorization", KEY),
            ("x-fake-fault", "gap=150"),
            ("x-fake-words", "8"),
        ],
        chat_stream("a slow stream"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    child.signal("TERM");
    let mut all = first.to_vec();
    while let Some(f) = body.frame().await {
        all.extend_from_slice(
            &f.expect("stream completed cleanly after SIGTERM")
                .into_data()
                .unwrap(),
        );
    }
    let text = String::from_utf8(all).unwrap();
    assert!(
        text.contains("total_tokens_cost"),
        "the stream ran to its cost frame: {text}"
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // The answer was accounted for before exit.
    let lines = ledger_lines(&data);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["stream"], true);
}

#[tokio::test]
async fn tells_systemd_when_ready_and_when_stopping() {
    let fake = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = binary()
        .env("NOTIFY_SOCKET", &sock_path)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &fake.url(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a readiness message");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let n = sock.recv(&mut buf).expect("a stopping message");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
}

/// Starts `chatcache serve` on `data_dir`, and returns it once it listens.
fn serve_in(data_dir: &std::path::Path) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut cmd = binary();
    cmd.env("RUST_LOG", "info")
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream"])
        .arg("http://127.0.0.1:9")
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let listening = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("listening on http://"));
    assert!(listening, "the daemon did not start");
    child
}

#[test]
fn the_ledger_writer_runs_below_request_handling() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = serve_in(&dir.path().join("d"));
    let tasks = std::fs::read_dir(format!("/proc/{}/task", daemon.id())).unwrap();
    let mut nice_of = std::collections::HashMap::new();
    for task in tasks {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap();
        // Fields after the parenthesised name start at field 3; nice is field 19.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = after.split(' ').nth(16).unwrap().parse().unwrap();
        nice_of.insert(comm.trim().to_string(), nice);
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert_eq!(nice_of.get("chatcache-ledge"), Some(&5), "{nice_of:?}");
    assert_eq!(nice_of.get("tokio-rt-worker"), Some(&0), "{nice_of:?}");
}
