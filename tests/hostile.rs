//! Hostile conditions over loopback: upstream faults, malformed and smuggled requests,
//! header tricks, slow clients and redirect games. Each case asserts what must happen.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use support::daemon::*;
use support::FakeUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes raw bytes to the daemon and reads what comes back until it closes or `wait`.
async fn raw(d: &Daemon, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn upstream_reset_after_k_frames_is_not_stored_and_accounted_as_incomplete() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    for k in [0usize, 1, 3] {
        let body = chat_stream(&format!("reset after {k}"));
        let fault = format!("reset-after={k}");
        let r = post_with(
            &d.url("/chat/completions"),
            &body,
            &[("authorization", KEY), ("x-fake-fault", &fault)],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let text = r.text();
        assert_eq!(
            text.matches("chat.completion.chunk").count(),
            k,
            "{k} frames delivered: {text}"
        );
        assert!(
            text.ends_with("}\n\n") && text.contains("event: error\n"),
            "{text}"
        );
        let again = post(&d.url("/chat/completions"), &body).await;
        assert_eq!(again.header("x-chatcache"), Some("miss"));
    }
    let dir = d.data_dir.clone();
    let _keep = d.stop().await;
    let incomplete = ledger_lines(&dir)
        .into_iter()
        .filter(|l| l["incomplete"] == true)
        .count();
    assert_eq!(
        incomplete, 3,
        "each broken stream has its ledger line, marked incomplete"
    );
}

#[tokio::test]
async fn broken_plain_answers_are_502_and_not_stored() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    for fault in ["short-body", "html", "cl-and-te", "two-cl"] {
        let body = chat(&format!("broken plain: {fault}"));
        let r = post_with(
            &d.url("/chat/completions"),
            &body,
            &[("authorization", KEY), ("x-fake-fault", fault)],
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{fault}: {}", r.text());
        assert_eq!(
            r.json()["error"]["code"],
            "upstream_bad_response",
            "{fault}"
        );
        let again = post(&d.url("/chat/completions"), &body).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.header("x-chatcache"), Some("miss"), "{fault}: stored");
    }
    d.stop().await;
}

#[tokio::test]
async fn bad_client_json_is_400_and_upstream_untouched() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"{\"model\": ".to_vec()),
        ("non-object", b"[\"model\"]".to_vec()),
        ("duplicate keys", br#"{"model":"GPT-4 Turbo","model":"Claude 3.5 Sonnet","messages":[]}"#.to_vec()),
        ("invalid utf-8", b"{\"model\":\"GPT-4 Turbo\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}".to_vec()),
        ("trailing garbage", b"{\"model\":\"m\"} {}".to_vec()),
    ];
    for (what, body) in cases {
        for path in ["/chat/completions", "/tokens", "/moderate"] {
            let r = send(
                Method::POST,
                &d.url(path),
                &[("authorization", KEY)],
                body.clone(),
            )
            .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what} on {path}");
            assert_eq!(r.json()["error"]["code"], "invalid_json", "{what}");
        }
    }
    assert_eq!(fake.requests().len(), 0);
    d.stop().await;
}

#[tokio::test]
async fn smuggling_attempts_are_refused_and_never_forwarded() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = r#"{"text":"hi"}"#;
    let attempts = [
        format!("POST /tokens HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /credits HTTP/1.1\r\nHost: x\r\n\r\n", body.len()),
        format!("POST /tokens HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nContent-Length: 3\r\n\r\n{body}", body.len()),
        format!("POST /tokens HTTP/1.1\r\nHost: x\r\nContent-Length: +{}\r\n\r\n{body}", body.len()),
        format!("POST /tokens HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n{body}"),
        format!("POST /tokens HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n{body}"),
        format!("POST /tokens HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n{body}"),
        format!("POST /tokens HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\nContent-Length: 3\r\n\r\n{body}"),
    ];
    for a in &attempts {
        let resp = raw(&d, a.as_bytes(), Duration::from_secs(3)).await;
        let status = status_of(&resp);
        assert!(
            (400..500).contains(&status) || status == 501,
            "accepted: {a:?} -> {resp:?}"
        );
        assert_eq!(
            resp.matches("HTTP/1.1").count(),
            1,
            "one answer, then close: {resp:?}"
        );
    }
    assert_eq!(
        fake.requests().len(),
        0,
        "nothing was forwarded: {:?}",
        fake.requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    d.stop().await;
}

#[tokio::test]
async fn host_absolute_uri_and_redirect_tricks_never_reach_another_host() {
    let fake = FakeUpstream::start().await;
    let evil = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let evil_host = evil.addr.to_string();
    let tricks = [
        format!("GET http://{evil_host}/credits HTTP/1.1\r\nHost: {evil_host}\r\nAuthorization: {KEY}\r\nConnection: close\r\n\r\n"),
        format!("GET /credits HTTP/1.1\r\nHost: {evil_host}\r\nX-Forwarded-Host: {evil_host}\r\nForwarded: host={evil_host}\r\nAuthorization: {KEY}\r\nConnection: close\r\n\r\n"),
        format!("GET //{evil_host}/credits HTTP/1.1\r\nHost: x\r\nAuthorization: {KEY}\r\nConnection: close\r\n\r\n"),
        format!("GET /p/x/..%2f..%2f{evil_host}/credits HTTP/1.1\r\nHost: x\r\nAuthorization: {KEY}\r\nConnection: close\r\n\r\n"),
    ];
    for t in &tricks {
        let resp = raw(&d, t.as_bytes(), Duration::from_secs(3)).await;
        assert!(status_of(&resp) > 0, "answered: {resp}");
    }
    let r = get(&d.url("/p/../credits")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a project named '..'");
    let api_base = format!(
        r#"{{"model":"GPT-4 Turbo","messages":[{{"role":"user","content":"hi"}}],"api_base":"http://{evil_host}","base_url":"http://{evil_host}"}}"#
    );
    let r = post(&d.url("/chat/completions"), &api_base).await;
    assert_eq!(r.status, StatusCode::OK);
    // Upstream redirects are handed back, never followed.
    let redirect = format!("redirect=http://{evil_host}/chat/completions");
    let r = post_with(
        &d.url("/chat/completions"),
        &chat("follow me"),
        &[("authorization", KEY), ("x-fake-fault", &redirect)],
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("x-chatcache"), Some("miss"));
    assert_eq!(evil.requests().len(), 0, "the evil listener was contacted");
    assert!(fake.requests().len() >= 5);
    d.stop().await;
}

#[tokio::test]
async fn slowloris_connections_do_not_stop_cached_answers_and_are_closed() {
    // A thousand connections, each two descriptors here (this end and the daemon's).
    support::raise_fd_limit(4096);
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), "[limits]\nheader_read_timeout = \"1s\"\n").await;
    let body = chat("cached before the attack");
    post(&d.url("/chat/completions"), &body).await;
    let mut slow = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        s.write_all(b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let t0 = Instant::now();
    let r = post(&d.url("/chat/completions"), &body).await;
    assert_eq!(r.header("x-chatcache"), Some("hit"));
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "hit took {:?} under attack",
        t0.elapsed()
    );
    // The header timeout (1 s) closes each one: its read ends (with an answer, an end or
    // an error) instead of waiting.
    let mut closed = 0;
    for s in &mut slow {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(
        closed, 1000,
        "slow connections are closed by the header timeout"
    );
    d.stop().await;
}

#[tokio::test]
async fn connection_header_tricks_keep_exactly_one_authorization() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    for conn in [
        "Authorization",
        "authorization, close",
        "keep-alive, Authorization, Host",
    ] {
        let r = send(
            Method::GET,
            &d.url("/credits"),
            &[("authorization", KEY), ("connection", conn)],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{conn}");
        let seen = fake.requests().pop().unwrap();
        assert_eq!(
            seen.header_all("authorization"),
            vec![KEY.to_string()],
            "{conn}"
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn sigterm_with_several_streams_in_flight_loses_nothing() {
    let fake = FakeUpstream::start().await;
    let mut d = Daemon::start(&fake.url()).await;
    let upstream = fake.hold("drain");
    let mut streams = Vec::new();
    for i in 0..5 {
        let url = d.url("/chat/completions");
        streams.push(tokio::spawn(async move {
            send(
                Method::POST,
                &url,
                &[
                    ("authorization", KEY),
                    ("x-fake-fault", "hold=drain@1"),
                    ("x-fake-words", "6"),
                ],
                chat_stream(&format!("drain me {i}")),
            )
            .await
        }));
    }
    // All five are streaming, each held upstream after its first frame.
    upstream.arrived_n(5).await;
    // An idle keep-alive connection, which the daemon closes once it has begun to drain.
    let mut idle = TcpStream::connect(d.addr).await.unwrap();
    let health = format!(
        "GET /_chatcache/health HTTP/1.1\r\nHost: {}\r\n\r\n",
        d.addr
    );
    idle.write_all(health.as_bytes()).await.unwrap();
    assert_eq!(status_of(&read_one_answer(&mut idle).await), 200);
    d.signal_stop();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .expect("the daemon began to drain")
        .unwrap();
    upstream.release();
    let dir = d.data_dir.clone();
    let keep = d.stop().await;
    for s in streams {
        let r = s.await.unwrap();
        assert!(
            r.text().contains("total_tokens_cost"),
            "drained to the end: {}",
            r.text()
        );
    }
    assert_eq!(ledger_lines(&dir).len(), 5);
    let d = Daemon::start_in(&dir, &fake.url(), "").await;
    for i in 0..5 {
        let r = post(
            &d.url("/chat/completions"),
            &chat_stream(&format!("drain me {i}")),
        )
        .await;
        assert_eq!(r.header("x-chatcache"), Some("hit"), "stored before exit");
    }
    d.stop().await;
    drop(keep);
}

/// Writes `pieces` on one connection, 30 ms apart (a client whose bytes come in separate
/// writes is what is tested, so the pause stays), and reads the answer to its end.
async fn send_in_pieces(addr: std::net::SocketAddr, pieces: &[&[u8]]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        s.write_all(piece).await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn first_bytes_split_across_writes_still_pick_the_right_protocol() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;

    // An HTTP/1 request whose first byte comes alone (it could still be the h2 preface).
    let body = chat("split first byte");
    let request = format!(
        "OST /chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let out = send_in_pieces(d.addr, &[b"P", request.as_bytes()]).await;
    assert_eq!(status_of(&out), 200, "{out}");
    assert!(out.contains("chat.completion"), "{out}");

    // The h2c preface in two pieces, then an empty SETTINGS frame: the server answers with
    // its own SETTINGS frame (type 4), so it speaks HTTP/2.
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2").await.unwrap();
    // Apart, as a client that writes them separately sends them (what is tested here).
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.write_all(b".0\r\n\r\nSM\r\n\r\n").await.unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut frame))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame[3], 4, "expected a SETTINGS frame, got {frame:?}");
    // This client would not answer the drain's PING, so it leaves first.
    drop(s);
    d.stop().await;
}

#[tokio::test]
async fn a_body_that_comes_in_pieces_is_read_whole() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = chat("a body in pieces");
    let whole = post(&d.url("/chat/completions"), &body).await;
    assert_eq!(whole.header("x-chatcache"), Some("miss"));

    let (a, b) = body.split_at(body.len() / 2);
    let sized = format!("Content-Length: {}\r\n\r\n", body.len());
    let chunked = "Transfer-Encoding: chunked\r\n\r\n".to_string();
    for (framing, pieces) in [
        (sized, vec![a.to_string(), b.to_string()]),
        (
            chunked,
            vec![
                format!("{:x}\r\n{a}\r\n", a.len()),
                format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len()),
            ],
        ),
    ] {
        let head = format!(
            "POST /chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {KEY}\r\nContent-Type: application/json\r\nConnection: close\r\n{framing}"
        );
        let mut all = vec![head.as_bytes()];
        all.extend(pieces.iter().map(|p| p.as_bytes()));
        let out = send_in_pieces(d.addr, &all).await;
        assert_eq!(status_of(&out), 200, "{out}");
        assert!(
            out.to_ascii_lowercase().contains("x-chatcache: hit"),
            "the whole body is the one stored: {out}"
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn connections_that_never_say_which_protocol_are_closed_by_the_header_timeout() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), "[limits]\nheader_read_timeout = \"1s\"\n").await;
    let mut idle = Vec::new();
    for opening in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n"] {
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        s.write_all(opening).await.unwrap();
        idle.push(s);
    }
    let t0 = Instant::now();
    for s in &mut idle {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "connection not closed: {read:?}"
        );
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    d.stop().await;
}

#[tokio::test]
async fn a_connection_that_has_sent_nothing_does_not_hold_up_the_drain() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), "[limits]\nheader_read_timeout = \"20s\"\n").await;
    let mut silent = TcpStream::connect(d.addr).await.unwrap();
    // The daemon has accepted it (a request on another connection is answered after it).
    let r = get(&d.url("/_chatcache/health")).await;
    assert_eq!(r.status, StatusCode::OK);
    let t0 = Instant::now();
    d.stop().await;
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the drain waited {:?} for a silent connection",
        t0.elapsed()
    );
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "not closed: {read:?}"
    );
}
