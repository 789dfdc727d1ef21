//! Streamed answers end to end: tee, recording only clean streams, byte-exact replay,
//! live joining of identical streams, failures mid-stream, and aborted clients.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::daemon::*;
use support::FakeUpstream;

async fn stream(d: &Daemon, body: &str, fault: Option<&str>) -> Resp {
    let mut h = vec![("authorization", KEY), ("content-type", "application/json")];
    if let Some(f) = fault {
        h.push(("x-fake-fault", f));
    }
    send(
        Method::POST,
        &d.url("/chat/completions"),
        &h,
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn replay_is_byte_identical_to_the_original_and_to_upstream() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = chat_stream("Write a short poem about the sea, with é and 😀");
    let direct = send(
        Method::POST,
        &format!("{}/chat/completions", fake.url()),
        &[("authorization", KEY)],
        body.clone(),
    )
    .await;
    let miss = stream(&d, &body, None).await;
    assert_eq!(miss.header("x-chatcache"), Some("miss"));
    let hit = stream(&d, &body, None).await;
    assert_eq!(hit.header("x-chatcache"), Some("hit"));
    assert_eq!(hit.header("content-type"), Some("text/event-stream"));
    assert_eq!(miss.body, direct.body);
    assert_eq!(hit.body, miss.body);
    assert!(
        hit.text().contains("total_tokens_cost"),
        "cost frame replayed"
    );
    assert_eq!(
        fake.count("/chat/completions"),
        2,
        "one direct, one through the daemon"
    );
    d.stop().await;
}

#[tokio::test]
async fn recorded_pace_replays_the_gaps() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), "[cache]\nreplay_pace = \"recorded\"\n").await;
    let body = chat_stream("paced");
    let t0 = std::time::Instant::now();
    stream(&d, &body, Some("gap=80")).await;
    let original = t0.elapsed();
    let t1 = std::time::Instant::now();
    let hit = stream(&d, &body, None).await;
    assert_eq!(hit.header("x-chatcache"), Some("hit"));
    assert!(
        t1.elapsed() >= original.mul_f64(0.6),
        "replayed in {:?}, recorded {:?}",
        t1.elapsed(),
        original
    );
    d.stop().await;
}

#[tokio::test]
async fn broken_streams_end_with_an_error_event_and_are_not_stored() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), "[upstream]\nidle_timeout = \"300ms\"\n").await;
    for (i, fault) in ["reset-after=2", "gap=1000", "status=500"]
        .iter()
        .enumerate()
    {
        let body = chat_stream(&format!("breaks: {fault}"));
        let r = stream(&d, &body, Some(fault)).await;
        if *fault == "status=500" {
            assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        } else {
            assert_eq!(r.status, StatusCode::OK);
            let text = r.text();
            assert!(
                text.starts_with("data: "),
                "{fault}: frames before the break were delivered"
            );
            assert!(
                text.contains("event: error\ndata: {\"error\""),
                "{fault}: {text}"
            );
            assert!(!text.contains("total_tokens_cost"));
        }
        let again = stream(&d, &body, None).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(
            again.header("x-chatcache"),
            Some("miss"),
            "{fault}: the broken answer was stored"
        );
        assert!(again.text().contains("total_tokens_cost"));
        assert_eq!(fake.count("/chat/completions"), 2 * (i + 1));
    }
    d.stop().await;
}

#[tokio::test]
async fn stream_without_cost_frame_is_delivered_estimated_and_stored_only_if_clean() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    // Prices come from /models.
    assert_eq!(get(&d.url("/models")).await.status, StatusCode::OK);

    let unterminated = chat_stream("no cost, no done");
    let r = stream(&d, &unterminated, Some("no-cost")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("chat.completion.chunk") && !r.text().contains("event: error"));
    let r = stream(&d, &unterminated, Some("no-cost")).await;
    assert_eq!(
        r.header("x-chatcache"),
        Some("miss"),
        "an unterminated stream is not stored"
    );

    let done = chat_stream("no cost, but done");
    stream(&d, &done, Some("no-cost,done")).await;
    let r = stream(&d, &done, None).await;
    assert_eq!(
        r.header("x-chatcache"),
        Some("hit"),
        "ended by [DONE]: stored"
    );
    assert!(r.text().ends_with("data: [DONE]\n\n"));

    let dir = d.data_dir.clone();
    let _keep = d.stop().await;
    let lines = ledger_lines(&dir);
    let misses: Vec<_> = lines.iter().filter(|l| l["outcome"] == "miss").collect();
    assert_eq!(misses.len(), 3);
    for l in misses {
        assert_eq!(l["cost_source"], "estimated", "{l}");
        assert!(l["cost"].as_f64().unwrap() > 0.0, "{l}");
    }
}

#[tokio::test]
async fn identical_streams_share_one_upstream_call_and_join_live() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = chat_stream("everyone wants this stream");
    let headers = [
        ("authorization", KEY),
        ("x-fake-fault", "hold=live@3"),
        ("x-fake-words", "10"),
    ];
    let url = d.url("/chat/completions");
    let upstream = fake.hold("live");
    let first = open(Method::POST, &url, &headers, body.clone()).await;
    assert_eq!(first.headers()["x-chatcache"], "miss");
    // Upstream has sent three frames and waits: the stream is live.
    upstream.arrived().await;
    let mut later = Vec::new();
    for _ in 0..7 {
        // A head while upstream still waits: each one joined the stream in flight.
        let resp = open(Method::POST, &url, &headers, body.clone()).await;
        assert_eq!(resp.headers()["x-chatcache"], "coalesced");
        later.push(resp);
    }
    upstream.release();
    let mut bodies = Vec::new();
    for resp in std::iter::once(first).chain(later) {
        bodies.push(resp.into_body().collect().await.unwrap().to_bytes());
    }
    assert_eq!(fake.count("/chat/completions"), 1);
    for b in &bodies {
        assert_eq!(b, &bodies[0], "every client got the full stream");
    }
    assert!(String::from_utf8_lossy(&bodies[0]).contains("total_tokens_cost"));
    d.stop().await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|r| r.count())
        .unwrap_or(0)
}

/// Opens `n` streams, reads one frame of each, and walks away.
async fn abort_streams(d: &Daemon, round: usize, n: usize) {
    let mut handles = Vec::new();
    for i in 0..n {
        let url = d.url("/chat/completions");
        handles.push(tokio::spawn(async move {
            let resp = open(
                Method::POST,
                &url,
                &[("authorization", KEY), ("x-fake-words", "6")],
                chat_stream(&format!("aborted stream {round}/{i}")),
            )
            .await;
            let mut body = resp.into_body();
            let _ = body.frame().await;
            // Dropped here: the client goes away mid-stream.
        }));
        if handles.len() >= 100 {
            for h in handles.drain(..) {
                h.await.unwrap();
            }
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    // Upstream answers are drained and recorded, then everything is released.
    d.app.exchanges.close();
    tokio::time::timeout(Duration::from_secs(30), d.app.exchanges.wait())
        .await
        .expect("every upstream exchange finished");
    d.app.exchanges.reopen();
    assert_eq!(d.app.flights.in_flight(), 0);
}

/// Upstream connections the daemon keeps for reuse at most (its idle pool); each is two
/// descriptors in this process, the daemon's end and the fake upstream's.
const POOLED_FDS: usize = 2 * 32;

/// Waits (up to 10 s) until this process holds at most `bound` descriptors: connections
/// whose clients left close on their own tasks' time, and nothing tells when the kernel
/// has let go of them. Returns how many it holds then.
async fn fds_down_to(bound: usize, what: &str) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = open_fds();
        if now <= bound {
            return now;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: {now} descriptors open, more than {bound}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn aborted_streams_leak_nothing() {
    // Up to a hundred streams at once, each four descriptors here (client, daemon both
    // ways, fake upstream).
    support::raise_fd_limit(2048);
    let fake = FakeUpstream::start_with_frame_delay(1).await;
    let d = Daemon::start(&fake.url()).await;
    let before = open_fds();
    // The first round fills the upstream connection pool (bounded); later rounds must not
    // hold on to anything more.
    let bound = before + POOLED_FDS + 16;
    abort_streams(&d, 0, 500).await;
    let after_first = fds_down_to(bound, "after 500 aborted streams").await;
    for round in 1..=2 {
        abort_streams(&d, round, 500).await;
    }
    let after_more = fds_down_to(after_first + 8, "after 1,000 more aborted streams").await;
    eprintln!("descriptors: {before} at the start, then {after_first}, then {after_more}");
    assert_eq!(fake.count("/chat/completions"), 1500);
    // Drained answers were recorded: the provider bills them, so they are kept and accounted.
    // Entries are stored by the cache's writer after the answer; settle waits for it.
    d.app.cache.settle().unwrap();
    assert_eq!(d.app.cache.stats().entries, 1500);
    d.stop().await;
}

#[tokio::test]
async fn recorded_stream_replays_with_upstream_gone() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = chat_stream("offline stream");
    let original = stream(&d, &body, None).await;
    let dir = d.stop().await.unwrap();
    fake.stop().await;
    let d = Daemon::start_in(dir.path(), "http://127.0.0.1:9", "mode = \"replay\"\n").await;
    let r = stream(&d, &body, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, original.body);
    d.stop().await;
}
