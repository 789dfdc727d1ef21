//! The answer cache end to end: hits, keys, partitions, single-flight, failures, offline
//! replay after a restart, damaged entries, eviction, export and import.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::daemon::*;
use support::{FakeUpstream, Fault};

#[tokio::test]
async fn miss_then_hit_with_identical_body_and_one_upstream_call() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = chat("What is the capital of France?");
    let first = post(&d.url("/chat/completions"), &body).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-chatcache"), Some("miss"));
    let second = post(&d.url("/chat/completions"), &body).await;
    assert_eq!(second.header("x-chatcache"), Some("hit"));
    assert!(second.header("age").is_some());
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("content-type"), first.header("content-type"));
    assert_eq!(fake.count("/chat/completions"), 1);

    // Key order and spacing do not matter; the ignored `user` field neither.
    let reordered = r#"{ "messages" : [ {"content":"What is the capital of France?","role":"user"} ],
        "model":"GPT-4 Turbo", "user": "someone-else" }"#;
    let third = post(&d.url("/chat/completions"), reordered).await;
    assert_eq!(third.header("x-chatcache"), Some("hit"));
    assert_eq!(fake.count("/chat/completions"), 1);
    d.stop().await;
}

#[tokio::test]
async fn every_parameter_change_misses() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let base = serde_json::json!({"model": "GPT-4 Turbo", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2});
    post(&d.url("/chat/completions"), &base.to_string()).await;
    let variants = [
        ("model", serde_json::json!("Claude 3.5 Sonnet")),
        (
            "messages",
            serde_json::json!([{"role": "user", "content": "hi!"}]),
        ),
        ("temperature", serde_json::json!(0.3)),
        ("seed", serde_json::json!(7)),
        ("n", serde_json::json!(2)),
        ("tools", serde_json::json!([])),
        ("max_tokens", serde_json::json!(10)),
    ];
    for (i, (field, value)) in variants.iter().enumerate() {
        let mut b = base.clone();
        b[*field] = value.clone();
        let r = post(&d.url("/chat/completions"), &b.to_string()).await;
        assert_eq!(
            r.header("x-chatcache"),
            Some("miss"),
            "changing {field} must miss"
        );
        assert_eq!(fake.count("/chat/completions"), i + 2);
    }
    d.stop().await;
}

#[tokio::test]
async fn credentials_do_not_share_and_no_credential_never_hits() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = chat("private question");
    let a = post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", "Bearer key-a")],
    )
    .await;
    let b = post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", "Bearer key-b")],
    )
    .await;
    assert_eq!(a.header("x-chatcache"), Some("miss"));
    assert_eq!(
        b.header("x-chatcache"),
        Some("miss"),
        "another tenant's answer was served"
    );
    assert_eq!(fake.count("/chat/completions"), 2);
    let a2 = post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", "Bearer key-a")],
    )
    .await;
    assert_eq!(a2.header("x-chatcache"), Some("hit"));

    // Without any credential: upstream decides every time.
    for _ in 0..2 {
        let r = post_with(&d.url("/tokens"), r#"{"text":"no key"}"#, &[]).await;
        assert_ne!(r.header("x-chatcache"), Some("hit"));
    }
    assert_eq!(fake.count("/tokens"), 2);
    d.stop().await;
}

#[tokio::test]
async fn fifty_identical_requests_make_one_upstream_call() {
    let fake = FakeUpstream::start().await;
    fake.set_default_fault(Some(Fault::SlowFirstByte(300)));
    let d = Arc::new(Daemon::start(&fake.url()).await);
    let body = chat("the same question, fifty times at once");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (d, body) = (d.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post(&d.url("/chat/completions"), &body).await
        }));
    }
    let mut outcomes = Vec::new();
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        outcomes.push(r.header("x-chatcache").unwrap().to_string());
        bodies.push(r.body);
    }
    assert_eq!(fake.count("/chat/completions"), 1);
    assert_eq!(outcomes.iter().filter(|o| *o == "miss").count(), 1);
    assert!(outcomes
        .iter()
        .all(|o| o == "miss" || o == "coalesced" || o == "hit"));
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every client got the same bytes"
    );
}

#[tokio::test]
async fn a_failing_leader_releases_its_followers_and_nothing_is_stored() {
    let fake = FakeUpstream::start().await;
    let d = Arc::new(Daemon::start(&fake.url()).await);
    let body = chat("leader fails");
    let upstream = fake.hold("leader");
    let leader = {
        let (d, body) = (d.clone(), body.clone());
        tokio::spawn(async move {
            post_with(
                &d.url("/chat/completions"),
                &body,
                &[
                    ("authorization", KEY),
                    ("x-fake-fault", "hold=leader,status=500"),
                ],
            )
            .await
        })
    };
    // The leader's request is upstream, so its flight is open to join.
    upstream.arrived().await;
    let mut followers = Vec::new();
    for _ in 0..5 {
        let (d, body) = (d.clone(), body.clone());
        followers.push(tokio::spawn(async move {
            post(&d.url("/chat/completions"), &body).await
        }));
    }
    // All five wait behind the leader before it fails.
    metric_reaches(&d, "chatcache_requests_in_flight", 6.0).await;
    assert_eq!(
        fake.count("/chat/completions"),
        1,
        "followers wait upstream-free"
    );
    upstream.release();
    let l = leader.await.unwrap();
    assert_eq!(
        l.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the error is passed through"
    );
    for f in followers {
        let r = tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("released promptly")
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "followers fetched for themselves");
    }
    let calls = fake.count("/chat/completions");
    assert!((2..=6).contains(&calls), "{calls} upstream calls");
}

#[tokio::test]
async fn errors_are_not_stored() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = chat("rate limited");
    let r = post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", KEY), ("x-fake-fault", "status=429")],
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), Some("7"));
    let r = post(&d.url("/chat/completions"), &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-chatcache"), Some("miss"));
    assert_eq!(fake.count("/chat/completions"), 2);
    d.stop().await;
}

#[tokio::test]
async fn offline_replay_after_restart_serves_hits_and_504s_misses() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let known = chat("remember me");
    let original = post(&d.url("/chat/completions"), &known).await;
    let dir = d.stop().await.unwrap();
    fake.stop().await;

    let watcher = FakeUpstream::start().await;
    let d = Daemon::start_in(dir.path(), &watcher.url(), "mode = \"replay\"\n").await;
    let hit = post(&d.url("/chat/completions"), &known).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.header("x-chatcache"), Some("hit"));
    assert_eq!(hit.body, original.body);
    let miss = post(&d.url("/chat/completions"), &chat("never asked")).await;
    assert_eq!(miss.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(miss.json()["error"]["code"], "cache_miss");
    assert_eq!(
        watcher.requests().len(),
        0,
        "replay mode never contacts upstream"
    );
    d.stop().await;
}

#[tokio::test]
async fn only_if_cached_and_no_cache_per_request() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = chat("per request directives");
    let r = post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", KEY), ("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    post(&d.url("/chat/completions"), &body).await;
    let r = post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", KEY), ("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(r.header("x-chatcache"), Some("refresh"));
    assert_eq!(fake.count("/chat/completions"), 2);
    let r = post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", KEY), ("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(r.header("x-chatcache"), Some("hit"));
    d.stop().await;
}

#[tokio::test]
async fn a_damaged_entry_is_dropped_and_fetched_again() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let body = chat("to be damaged");
    post(&d.url("/chat/completions"), &body).await;
    d.app.cache.flush().unwrap();
    let listed = d.app.cache.list(10).unwrap();
    assert_eq!(listed.len(), 1);
    let key = chatcache::cache::key::CacheKey::from_hex(&listed[0].key).unwrap();
    let entry = d.app.cache.show(key).unwrap().unwrap();
    let mut raw = entry.encode();
    let n = raw.len();
    raw[n - 3] ^= 0x20;
    // Damaged behind the cache's back, as a bad disk would.
    let storage = chatcache::cache::sled_store::SledStore::new(
        d.app.store.clone(),
        d.data_dir.join("bodies"),
    );
    let summary = entry.summary(raw.len(), 0, Default::default());
    chatcache::cache::storage::Storage::put(&storage, &key, &raw, &[], &summary, true).unwrap();
    let r = post(&d.url("/chat/completions"), &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("x-chatcache"),
        Some("miss"),
        "a damaged entry is never served"
    );
    assert_eq!(fake.count("/chat/completions"), 2);
    assert_eq!(d.app.cache.stats().dropped_corrupt, 1);
    d.stop().await;
}

#[tokio::test]
async fn eviction_keeps_the_store_under_its_limit() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), "[cache]\nmax_bytes = \"16 KiB\"\n").await;
    for i in 0..60 {
        let r = post(
            &d.url("/chat/completions"),
            &chat(&format!("question number {i}")),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        // Stores and evictions are the cache writer's, after the answer.
        d.app.cache.flush().unwrap();
        assert!(
            d.app.cache.stats().bytes <= 16 * 1024,
            "over the limit after {i}"
        );
    }
    let stats = d.app.cache.stats();
    assert!(stats.evictions > 0);
    assert!(stats.entries < 60);
    // The newest answer is still there; the oldest is gone.
    let r = post(&d.url("/chat/completions"), &chat("question number 59")).await;
    assert_eq!(r.header("x-chatcache"), Some("hit"));
    let r = post(&d.url("/chat/completions"), &chat("question number 0")).await;
    assert_eq!(r.header("x-chatcache"), Some("miss"));
    // The ledger is untouched by eviction: one line per answered request.
    let dir = d.data_dir.clone();
    let _keep = d.stop().await;
    assert_eq!(ledger_lines(&dir).len(), 62);
}

#[tokio::test]
async fn export_from_one_daemon_import_into_another_then_hits() {
    let fake_a = FakeUpstream::start().await;
    let a = Daemon::start(&fake_a.url()).await;
    let body = chat("shared with the team");
    let stream_body = chat_stream("a shared stream");
    let original = post(&a.url("/chat/completions"), &body).await;
    let original_stream = post(&a.url("/chat/completions"), &stream_body).await;
    let bundle = send(
        Method::GET,
        &a.url("/_chatcache/cache/export"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(bundle.status, StatusCode::OK);
    assert_eq!(bundle.text().lines().count(), 2);
    assert!(
        !bundle.text().contains("sk-test"),
        "no credential in the bundle"
    );

    let fake_b = FakeUpstream::start().await;
    let b = Daemon::start(&fake_b.url()).await;
    let other_key = "Bearer teammate-key";
    let r = send(
        Method::POST,
        &b.url("/_chatcache/cache/import"),
        &[("x-chatcache-credential", other_key)],
        bundle.body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["entries"], 2);
    let hit = post_with(
        &b.url("/chat/completions"),
        &body,
        &[("authorization", other_key)],
    )
    .await;
    assert_eq!(hit.header("x-chatcache"), Some("hit"));
    assert_eq!(hit.body, original.body);
    let hit = post_with(
        &b.url("/chat/completions"),
        &stream_body,
        &[("authorization", other_key)],
    )
    .await;
    assert_eq!(hit.header("x-chatcache"), Some("hit"));
    assert_eq!(hit.body, original_stream.body);
    assert_eq!(fake_b.requests().len(), 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn cli_export_streams_a_bundle_bigger_than_a_chunk_and_import_reads_it_back() {
    use std::os::unix::fs::PermissionsExt;
    let fake = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = spawn_binary(&fake.url(), &data, &[], "warn", &dir.path().join("log"));
    let n = 150;
    for i in 0..n {
        // Long prompts make each bundle line about a kilobyte: the bundle spans chunks.
        let r = post(
            &format!("http://{}/chat/completions", daemon.addr),
            &chat(&format!("{i} {}", "words to pad the prompt ".repeat(30))),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let bundle = dir.path().join("team.jsonl");
    succeed(
        binary()
            .args(["cache", "export"])
            .arg(&bundle)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &daemon.addr]),
    );
    let text = std::fs::read_to_string(&bundle).unwrap();
    assert!(text.len() > 128 * 1024, "bundle of {} bytes", text.len());
    assert_eq!(text.lines().count(), n);
    assert!(!text.contains("sk-test"), "no credential in the bundle");
    let mode = std::fs::metadata(&bundle).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the bundle holds prompts: private");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3, "no partial file left beside it: {left:?}");
    drop(daemon);

    // Imported in batches into a data dir no daemon holds.
    let other = dir.path().join("other");
    let out = succeed(
        binary()
            .args(["cache", "import"])
            .arg(&bundle)
            .arg("--data-dir")
            .arg(&other)
            .env("OPENAI_API_KEY", "sk-teammate"),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("imported {n} entries")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stalled_by_clients_that_do_not_read_hold_up_no_other_work() {
    let fake = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = spawn_binary(&fake.url(), &data, &[], "warn", &dir.path().join("log"));
    let chat_url = format!("http://{}/chat/completions", daemon.addr);
    // A bundle of about 6 MB: far more than a connection's buffers hold.
    let pad = "padding ".repeat(12 * 1024);
    for i in 0..64 {
        let r = post(&chat_url, &chat(&format!("{i} {pad}"))).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // More exports than the daemon has threads for blocking work, none of them read: each
    // one's writer waits for its client.
    let export_url = format!("http://{}/_chatcache/cache/export", daemon.addr);
    let mut stalled = Vec::new();
    for _ in 0..12 {
        let r = open(Method::GET, &export_url, &[], Bytes::new()).await;
        assert_eq!(r.status(), StatusCode::OK);
        stalled.push(r);
    }
    // Every export's writer has started (its head came) and none can finish: nobody reads.

    // A new answer is still stored (work done on a blocking thread) and then served.
    let fresh = chat("asked while the exports wait");
    let r = tokio::time::timeout(Duration::from_secs(20), post(&chat_url, &fresh))
        .await
        .expect("a miss is answered while exports wait for their clients");
    assert_eq!(r.status, StatusCode::OK);
    let r = tokio::time::timeout(Duration::from_secs(20), post(&chat_url, &fresh))
        .await
        .expect("a hit is answered while exports wait for their clients");
    assert_eq!(r.header("x-chatcache"), Some("hit"));
    drop(stalled);
    drop(daemon);
}
