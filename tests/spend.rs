//! The spend ledger end to end: costs exactly as upstream reported them, savings on hits,
//! attribution, budgets, crash durability with the real binary, and no secrets on disk.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::daemon::*;
use support::{expected_cost_fields, FakeUpstream};

fn cost_text(line: &serde_json::Value, field: &str) -> String {
    line[field].to_string()
}

#[tokio::test]
async fn ledger_costs_equal_upstreams_to_the_last_digit() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let plain = chat("How much does this cost?");
    let streamed = chat_stream("And this streamed one?");
    post(&d.url("/chat/completions"), &plain).await;
    let s = post(&d.url("/chat/completions"), &streamed).await;
    assert_eq!(s.status, StatusCode::OK);
    let dir = d.data_dir.clone();
    let _keep = d.stop().await;

    // The ledger file holds upstream's number text verbatim.
    let raw: String = std::fs::read_dir(dir.join("ledger"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let lines = ledger_lines(&dir);
    assert_eq!(lines.len(), 2);
    for (line, body) in lines.iter().zip([&plain, &streamed]) {
        let want = expected_cost_fields(body.as_bytes());
        assert_eq!(line["cost_source"], "upstream");
        assert_eq!(line["outcome"], "miss");
        assert_eq!(line["input_tokens"], want["input_tokens"]);
        assert_eq!(line["output_tokens"], want["output_tokens"]);
        for (ours, theirs) in [
            ("input_cost", "input_tokens_cost"),
            ("output_cost", "output_tokens_cost"),
            ("cost", "total_tokens_cost"),
        ] {
            let text = want[theirs].to_string();
            assert_eq!(cost_text(line, ours), text, "{ours}");
            assert!(
                raw.contains(&format!("\"{ours}\":{text}")),
                "{ours} not verbatim in the file"
            );
        }
        assert!(line["upstream_ms"].is_u64() && line["ttfb_ms"].is_u64());
    }
    assert_eq!(lines[1]["stream"], true);
}

#[tokio::test]
async fn hits_and_coalesced_requests_record_savings() {
    let fake = FakeUpstream::start().await;
    let d = std::sync::Arc::new(Daemon::start(&fake.url()).await);
    let body = chat("saved twice");
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (d, body) = (d.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post_with(
                &d.url("/chat/completions"),
                &body,
                &[
                    ("authorization", KEY),
                    ("x-fake-fault", "slow-first-byte=200"),
                ],
            )
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    post(&d.url("/chat/completions"), &body).await;
    let want = expected_cost_fields(body.as_bytes())["total_tokens_cost"].to_string();
    let dir = d.data_dir.clone();
    eventually("four ledger lines", || ledger_lines(&dir).len() == 4).await;
    let lines = ledger_lines(&dir);
    let by = |o: &str| lines.iter().filter(|l| l["outcome"] == o).count();
    assert_eq!((by("miss"), by("coalesced"), by("hit")), (1, 2, 1));
    for l in lines.iter().filter(|l| l["outcome"] != "miss") {
        assert_eq!(l["cost"].to_string(), "0");
        assert_eq!(l["saved"].to_string(), want, "{l}");
    }
    let report = get(&d.url("/_chatcache/spend?by=project")).await.json();
    assert_eq!(report["total"]["requests"], 4);
    assert_eq!(report["total"]["upstream_requests"], 1);
    assert_eq!(report["total"]["cache_hits"], 3);
}

#[tokio::test]
async fn project_from_header_path_prefix_and_token() {
    let fake = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("upstream-key");
    std::fs::write(&key_file, "sk-held-upstream-key\n").unwrap();
    let token = "cc-local-token-for-mobile";
    let extra = format!(
        "[upstream]\napi_key_file = {:?}\n[[tokens]]\nproject = \"mobile\"\nhash = \"blake3:{}\"\n",
        key_file.display().to_string(),
        blake3::hash(token.as_bytes()).to_hex()
    );
    let d = Daemon::start_in(&dir.path().join("data"), &fake.url(), &extra).await;
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    let r = post_with(
        &d.url("/chat/completions"),
        &chat("a"),
        &[auth[0], ("x-chatcache-project", "web")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = post_with(&d.url("/p/docs/chat/completions"), &chat("b"), &auth).await;
    assert_eq!(r.status, StatusCode::OK);
    // Unknown token: refused locally, upstream untouched.
    let before = fake.count("/chat/completions");
    let r = post_with(
        &d.url("/chat/completions"),
        &chat("c"),
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"]["code"], "invalid_token");
    assert_eq!(fake.count("/chat/completions"), before);
    // Upstream saw the held key, never the local token.
    for req in fake.requests() {
        assert_eq!(
            req.header_all("authorization"),
            vec!["Bearer sk-held-upstream-key".to_string()]
        );
    }
    d.stop().await;

    // Without tokens: header, then path prefix, then default.
    let d = Daemon::start(&fake.url()).await;
    post_with(
        &d.url("/chat/completions"),
        &chat("d"),
        &[("authorization", KEY), ("x-chatcache-project", "web")],
    )
    .await;
    post(&d.url("/p/docs/chat/completions"), &chat("e")).await;
    post(&d.url("/chat/completions"), &chat("f")).await;
    let data = d.data_dir.clone();
    let _keep = d.stop().await;
    let projects: Vec<String> = ledger_lines(&data)
        .iter()
        .map(|l| l["project"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(projects, vec!["web", "docs", "default"]);
    let held: Vec<String> = ledger_lines(&dir.path().join("data"))
        .iter()
        .map(|l| l["project"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        held,
        vec!["mobile", "mobile"],
        "a token's project wins over header and prefix"
    );
}

#[tokio::test]
async fn over_budget_upstream_requests_get_402_but_hits_still_pass() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(
        &fake.url(),
        // The first request's worst case (the ceiling) fits; its real cost uses it all up.
        "[projects.tight]\nbudget = 0.0001\nmax_request_cost = 0.0001\nbudget_period = \"day\"\n",
    )
    .await;
    let h = [("authorization", KEY), ("x-chatcache-project", "tight")];
    let first = post_with(
        &d.url("/chat/completions"),
        &chat("spend it all please"),
        &h,
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.header("x-chatcache-budget-remaining").is_some());
    let r = post_with(&d.url("/chat/completions"), &chat("one more?"), &h).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    assert_eq!(fake.count("/chat/completions"), 1);
    let hit = post_with(
        &d.url("/chat/completions"),
        &chat("spend it all please"),
        &h,
    )
    .await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.header("x-chatcache"), Some("hit"));
    assert_eq!(hit.header("x-chatcache-budget-remaining"), Some("0.000000"));
    // Other projects are not affected.
    let other = post(&d.url("/chat/completions"), &chat("one more?")).await;
    assert_eq!(other.status, StatusCode::OK);
    d.stop().await;
}

fn spawn(upstream: &str, dir: &std::path::Path, n: usize) -> Proc {
    spawn_binary(
        upstream,
        &dir.join("data"),
        &[],
        "trace",
        &dir.join(format!("log-{n}.txt")),
    )
}

#[tokio::test]
async fn kill_9_loses_no_line_and_rollups_agree_and_no_key_on_disk() {
    let fake = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn(&fake.url(), dir.path(), 1);
    let addr = child.addr.clone();
    for i in 0..200 {
        let body = if i % 4 == 0 {
            chat_stream(&format!("crash test {i}"))
        } else {
            chat(&format!("crash test {i}"))
        };
        let r = post(&format!("http://{addr}/chat/completions"), &body).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    child.signal("KILL");
    child.wait();
    assert_eq!(
        ledger_lines(&dir.path().join("data")).len(),
        200,
        "every answered request is in the ledger"
    );

    // A torn line at the end (a crash mid-write) is tolerated.
    let ledger_dir = dir.path().join("data/ledger");
    let file = std::fs::read_dir(&ledger_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"ts\":\"2026-").unwrap();
    drop(f);

    let mut child = spawn(&fake.url(), dir.path(), 2);
    let addr = child.addr.clone();
    let report = send(
        Method::GET,
        &format!("http://{addr}/_chatcache/spend?by=project"),
        &[],
        Bytes::new(),
    )
    .await
    .json();
    assert_eq!(report["total"]["requests"], 200, "{report}");
    assert_eq!(report["total"]["upstream_requests"], 200);
    let sum: f64 = ledger_lines(&dir.path().join("data"))
        .iter()
        .map(|l| l["cost"].as_f64().unwrap())
        .sum();
    assert!(
        (report["total"]["cost"].as_f64().unwrap() - sum).abs() < 1e-9,
        "rollups agree with the ledger"
    );
    let r = post(
        &format!("http://{addr}/chat/completions"),
        &chat("after the crash"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    child.signal("TERM");
    assert!(child.wait().success());
    assert_eq!(ledger_lines(&dir.path().join("data")).len(), 201);

    // The key never reached the disk: not whole, not in pieces, not hashed plainly.
    let needles = secret_needles(KEY.trim_start_matches("Bearer "));
    let files = assert_no_secret_in_files(dir.path(), &needles);
    assert!(files.len() > 5, "scanned the data dir and the logs");
}

#[tokio::test]
async fn an_answer_without_cost_fields_is_estimated_from_its_text() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    // Prices come from /models.
    assert_eq!(get(&d.url("/models")).await.status, StatusCode::OK);
    let r = post_with(
        &d.url("/chat/completions"),
        &chat("estimate me from what you say"),
        &[("authorization", KEY), ("x-fake-fault", "no-cost")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let answer = r.json();
    assert!(answer.get("total_tokens_cost").is_none(), "{answer}");
    let said = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .chars()
        .count();
    let dir = d.data_dir.clone();
    let _keep = d.stop().await;
    let lines = ledger_lines(&dir);
    let miss = lines.iter().find(|l| l["outcome"] == "miss").unwrap();
    assert_eq!(miss["cost_source"], "estimated", "{miss}");
    assert_eq!(miss["output_tokens"], said.div_ceil(4) as u64, "{miss}");
    assert!(miss["cost"].as_f64().unwrap() > 0.0, "{miss}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_export_neutralises_formulas_planted_in_requests() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let model = "=HYPERLINK(\"http://x.example\",\"open\")";
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let h = [("authorization", KEY), ("x-chatcache-project", "team-a")];
    let r = post_with(&d.url("/chat/completions"), &body.to_string(), &h).await;
    // Upstream refuses the model, and the refusal is in the ledger, model and all: any
    // client can put text in the report.
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let out = succeed(
        binary()
            .args([
                "spend", "--format", "csv", "--by", "project", "--by", "model",
            ])
            .arg("--data-dir")
            .arg(&d.data_dir)
            .args(["--listen", &d.addr.to_string()]),
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let row = csv.lines().nth(1).unwrap();
    assert!(
        row.starts_with("team-a,\"'=HYPERLINK(\"\"http://x.example\"\",\"\"open\"\")\",1,1,0,"),
        "{csv}"
    );
}
