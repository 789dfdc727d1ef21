//! `cache explain` and `x-chatcache-explain`: why a request is a hit or a miss, and the
//! nearest stored request with the pointers where it differs.

mod support;

use serde_json::{json, Value};
use support::daemon::*;
use support::{FakeUpstream, FAULT_HEADER};

const OTHER_KEY: &str = "Bearer sk-other-credential-9876543210";

async fn explain(d: &Daemon, body: &str, headers: &[(&str, &str)]) -> Value {
    let r = post_with(
        &d.url("/_chatcache/cache/explain?path=/chat/completions"),
        body,
        headers,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn asked(temperature: f64, user: Option<&str>) -> String {
    let mut v = json!({
        "model": "GPT-4 Turbo",
        "temperature": temperature,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    });
    if let Some(u) = user {
        v["user"] = json!(u);
    }
    v.to_string()
}

#[tokio::test]
async fn key_order_and_spacing_are_no_reason_and_a_changed_field_is_named() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    assert_eq!(
        post(&d.url("/chat/completions"), &asked(0.2, None))
            .await
            .status,
        200
    );
    // The nearest entry is looked for in the store: once the writer has stored it.
    d.app.cache.settle().unwrap();
    let reordered = r#"{ "messages" : [ {"content":"What is the capital of France?", "role":"user"} ],
        "temperature": 0.2,   "model":"GPT-4 Turbo", "user": "someone" }"#;
    let e = explain(&d, reordered, &[("authorization", KEY)]).await;
    assert_eq!(e["outcome"], "hit", "{e}");
    assert_eq!(e["ignored_fields"], json!(["user"]));
    assert!(e["nearest"].is_null());

    let e = explain(&d, &asked(0.7, None), &[("authorization", KEY)]).await;
    assert_eq!(
        (e["outcome"].as_str(), e["reason"].as_str()),
        (Some("miss"), Some("never-stored"))
    );
    let diffs = &e["nearest"]["differences"];
    assert_eq!(diffs.as_array().unwrap().len(), 1, "{e}");
    assert_eq!(
        diffs[0],
        json!({"pointer": "/temperature", "stored": 0.2, "request": 0.7})
    );
    d.stop().await;
}

#[tokio::test]
async fn another_credentials_entry_is_named_as_such_and_shown_nothing_of() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = asked(0.2, None);
    let stored = post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", OTHER_KEY)],
    )
    .await;
    assert_eq!(stored.status, 200);
    d.app.cache.settle().unwrap();
    let theirs = d.app.cache.list(1).unwrap().remove(0).key;
    let e = explain(&d, &body, &[("authorization", KEY)]).await;
    assert_eq!(e["reason"], "other-partition", "{e}");
    assert!(e["detail"].as_str().unwrap().contains("another credential"));
    assert!(
        e["nearest"].is_null(),
        "nothing of another partition is shown"
    );
    let text = e.to_string();
    assert!(
        !text.contains(&theirs) && !text.contains("sk-other"),
        "{text}"
    );
    d.stop().await;
}

#[tokio::test]
async fn too_old_evicted_and_not_cacheable_are_told_apart() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), "[cache]\nmax_bytes = \"3 KiB\"\n").await;
    let first = asked(0.1, None);
    assert_eq!(post(&d.url("/chat/completions"), &first).await.status, 200);
    let old = [("authorization", KEY), ("cache-control", "max-age=0")];
    // An age is what is asked about: the entry must be older than the request's max-age of
    // 0 s, and ages are counted in whole milliseconds.
    age_by_a_few_milliseconds().await;
    let e = explain(&d, &first, &old).await;
    assert_eq!(e["reason"], "too-old", "{e}");
    assert!(e["detail"].as_str().unwrap().contains("max-age"), "{e}");
    for i in 2..8 {
        post(
            &d.url("/chat/completions"),
            &asked(f64::from(i) / 10.0, None),
        )
        .await;
    }
    d.app.cache.settle().unwrap();
    let e = explain(&d, &first, &[("authorization", KEY)]).await;
    assert_eq!(e["reason"], "evicted", "{e}");
    let broken = asked(0.9, None);
    let r = post_with(
        &d.url("/chat/completions"),
        &broken,
        &[("authorization", KEY), (FAULT_HEADER, "status=500")],
    )
    .await;
    assert_eq!(r.status, 500);
    d.app.cache.settle().unwrap();
    let e = explain(&d, &broken, &[("authorization", KEY)]).await;
    assert_eq!(e["reason"], "not-cacheable", "{e}");
    d.stop().await;
}

#[tokio::test]
async fn a_miss_can_carry_its_reason_as_a_short_header() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), "[cache]\nmax_age = \"1ms\"\n").await;
    let body = asked(0.3, None);
    let explained = [("authorization", KEY), ("x-chatcache-explain", "1")];
    let r = post_with(&d.url("/chat/completions"), &body, &explained).await;
    assert_eq!(r.header("x-chatcache"), Some("miss"));
    assert_eq!(r.header("x-chatcache-reason"), Some("never-stored"));
    d.app.cache.settle().unwrap();
    // Stored, but past cache.max_age (1 ms) by the time it is asked again.
    age_by_a_few_milliseconds().await;
    let r = post_with(&d.url("/chat/completions"), &body, &explained).await;
    assert_eq!(r.header("x-chatcache"), Some("miss"));
    assert_eq!(r.header("x-chatcache-reason"), Some("too-old"));
    let r = post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", KEY)],
    )
    .await;
    assert_eq!(r.header("x-chatcache-reason"), None, "only when asked");
    d.stop().await;
}

/// Lets entries stored so far grow older than a millisecond-scale age limit: here the
/// passing of wall-clock time is the condition under test, not a stand-in for an event.
async fn age_by_a_few_milliseconds() {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
}
