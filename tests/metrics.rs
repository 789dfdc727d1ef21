//! Prometheus metrics: the endpoint parses as exposition text and its counters move.

mod support;

use http::{Method, StatusCode};
use support::daemon::*;
use support::FakeUpstream;

async fn scrape(d: &Daemon) -> prometheus_parse::Scrape {
    let lines = metrics_text(d)
        .await
        .lines()
        .map(|l| Ok(l.to_string()))
        .collect::<Vec<_>>();
    prometheus_parse::Scrape::parse(lines.into_iter()).expect("metrics parse as Prometheus text")
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn counters_move_as_requests_are_made() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let before = scrape(&d).await;
    assert_eq!(value(&before, "chatcache_requests_total", &[]), 0.0);

    let body = chat("count me");
    post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", KEY), ("x-chatcache-project", "web")],
    )
    .await;
    post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", KEY), ("x-chatcache-project", "web")],
    )
    .await;
    post(&d.url("/chat/completions"), "{broken").await;

    // The cache's gauges count what its writer has stored, after the answer.
    d.app.cache.settle().unwrap();
    let after = scrape(&d).await;
    let chat = [("endpoint", "/chat/completions")];
    assert_eq!(
        value(
            &after,
            "chatcache_requests_total",
            &[chat[0], ("outcome", "miss"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "chatcache_requests_total",
            &[chat[0], ("outcome", "hit"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "chatcache_requests_total",
            &[chat[0], ("status", "400")]
        ),
        1.0
    );
    assert_eq!(value(&after, "chatcache_cache_entries", &[]), 1.0);
    assert!(value(&after, "chatcache_cache_bytes", &[]) > 0.0);
    assert!(value(&after, "chatcache_spend_cost_total", &[("project", "web")]) > 0.0);
    assert!(value(&after, "chatcache_spend_saved_total", &[("project", "web")]) > 0.0);
    assert_eq!(
        value(&after, "chatcache_upstream_first_byte_seconds_count", &[]),
        1.0
    );
    assert_eq!(value(&after, "chatcache_requests_in_flight", &[]), 0.0);

    // A request shows up in flight while it waits upstream, and a stream while it streams.
    let url = d.url("/chat/completions");
    let upstream = fake.hold("waiting");
    let waiting = tokio::spawn(async move {
        post_with(
            &url,
            &support::daemon::chat("waits upstream"),
            &[("authorization", KEY), ("x-fake-fault", "hold=waiting")],
        )
        .await
    });
    upstream.arrived().await;
    assert_eq!(
        value(&scrape(&d).await, "chatcache_requests_in_flight", &[]),
        1.0
    );
    upstream.release();
    assert_eq!(waiting.await.unwrap().status, StatusCode::OK);

    let upstream = fake.hold("streaming");
    let resp = open(
        Method::POST,
        &d.url("/chat/completions"),
        &[("authorization", KEY), ("x-fake-fault", "hold=streaming@1")],
        chat_stream("streams while it is watched"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        value(&scrape(&d).await, "chatcache_streams_in_flight", &[]),
        1.0
    );
    upstream.release();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("total_tokens_cost"));
    assert_eq!(
        value(&scrape(&d).await, "chatcache_streams_in_flight", &[]),
        0.0
    );
    d.stop().await;
}
