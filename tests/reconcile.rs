//! `spend reconcile`: the ledger against the provider's credits. The fake upstream lowers
//! its `/credits` by exactly what each answer reports costing — or by three times that for
//! a model set to overcharge — and the daemon observes `/credits` as clients ask for it, or
//! asks itself with the key it holds.

mod support;

use serde_json::Value;
use support::daemon::*;
use support::FakeUpstream;

fn claude(content: &str) -> String {
    serde_json::json!({"model": "Claude 3.5 Sonnet", "messages": [{"role": "user", "content": content}]})
        .to_string()
}

/// Sends a chat body and returns what the fake charged for it (in dollars).
async fn charged(d: &Daemon, fake: &FakeUpstream, body: &str) -> f64 {
    let before = fake.credits().micros();
    let r = post(&d.url("/chat/completions"), body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    (before - fake.credits().micros()) as f64 / 1e6
}

async fn observe_credits(d: &Daemon, fake: &FakeUpstream) -> f64 {
    let r = get(&d.url("/credits")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-chatcache"), Some("bypass"), "never cached");
    let credits = r.json()["credits"].as_f64().unwrap();
    assert_eq!(credits, fake.credits().micros() as f64 / 1e6);
    credits
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn credits_that_match_the_ledger_have_no_drift_and_an_overcharge_is_flagged() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    let c0 = observe_credits(&d, &fake).await;
    assert_eq!(c0, 1000.0);

    // Interval 1: what the fake reports is what it takes.
    let mut reported = 0.0;
    for body in [
        chat("one"),
        chat("two"),
        chat_stream("three"),
        claude("four"),
    ] {
        reported += charged(&d, &fake, &body).await;
    }
    let hit = post(&d.url("/chat/completions"), &chat("one")).await;
    assert_eq!(
        hit.header("x-chatcache"),
        Some("hit"),
        "a hit costs nothing"
    );
    let c1 = observe_credits(&d, &fake).await;

    // Interval 2: Claude now takes three times what it reports.
    fake.credits().overcharge("Claude 3.5 Sonnet", 3);
    let taken =
        charged(&d, &fake, &claude("five")).await + charged(&d, &fake, &claude("six")).await;
    let c2 = observe_credits(&d, &fake).await;

    let r = get(&d.url("/_chatcache/spend/reconcile")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let intervals = v["intervals"].as_array().unwrap();
    assert_eq!(intervals.len(), 2, "{v}");
    let (first, second) = (&intervals[0], &intervals[1]);
    assert!(first["key"].as_str().unwrap().starts_with("fp-"));
    assert!(!v.to_string().contains("sk-test"), "no credential in it");

    assert_eq!(first["credits_before"], c0);
    assert_eq!(first["credits_after"], c1);
    assert!(close(first["drop"].as_f64().unwrap(), reported), "{first}");
    assert!(
        close(first["ledger"].as_f64().unwrap(), reported),
        "{first}"
    );
    assert_eq!(first["difference"], 0.0, "{first}");
    assert_eq!(first["drift_pct"], 0.0, "{first}");
    assert_eq!(first["requests"], 4, "the hit went nowhere: {first}");
    assert_eq!(first["flagged"], false);

    assert!(close(second["drop"].as_f64().unwrap(), c1 - c2), "{second}");
    assert!(close(second["drop"].as_f64().unwrap(), taken), "{second}");
    let ledger = second["ledger"].as_f64().unwrap();
    assert!(
        close(ledger * 3.0, taken),
        "the ledger has what was reported: {second}"
    );
    assert!(
        (second["drift_pct"].as_f64().unwrap() - 200.0 / 3.0).abs() < 1e-6,
        "two thirds of the drop are not in the ledger: {second}"
    );
    assert_eq!(second["flagged"], true);
    assert_eq!(v["flagged"], 1);

    // The command line shows the same, through the running daemon.
    let (addr, data) = (d.addr.to_string(), d.data_dir.clone());
    let out = tokio::task::spawn_blocking(move || {
        let run = |format: &str| {
            let out = succeed(
                binary()
                    .args(["spend", "reconcile", "--format", format, "--listen", &addr])
                    .arg("--data-dir")
                    .arg(&data),
            );
            String::from_utf8(out.stdout).unwrap()
        };
        (run("json"), run("table"), run("csv"))
    })
    .await
    .unwrap();
    let json: Value = serde_json::from_str(&out.0).unwrap();
    assert_eq!(json, v);
    let table_rows: Vec<&str> = out.1.lines().filter(|l| l.starts_with("fp-")).collect();
    assert_eq!(table_rows.len(), 2, "{}", out.1);
    assert!(
        !table_rows[0].contains("DRIFT") && table_rows[1].contains("DRIFT"),
        "{}",
        out.1
    );
    assert!(
        out.1
            .contains("1 of 2 intervals over the 2.00% drift warning"),
        "{}",
        out.1
    );
    assert_eq!(out.2.lines().count(), 3, "{}", out.2);
    assert!(
        out.2.lines().nth(2).unwrap().contains(",true,false,"),
        "{}",
        out.2
    );

    // From a later time on there is only the second interval.
    let since = second["from"].as_str().unwrap().to_string();
    let later = get(&d.url(&format!("/_chatcache/spend/reconcile?since={since}"))).await;
    assert_eq!(later.json()["intervals"].as_array().unwrap().len(), 1);
    let bad = get(&d.url("/_chatcache/spend/reconcile?since=yesterday")).await;
    assert_eq!(bad.status, 400);
    d.stop().await;
}

#[tokio::test]
async fn the_daemon_asks_for_the_credits_of_the_key_it_holds() {
    let fake = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("upstream.key");
    std::fs::write(&key_file, "sk-held-credential-0123456789\n").unwrap();
    let token = "cc-reconcile-test-token";
    let extra = format!(
        "[upstream]\napi_key_file = {key_file:?}\n[spend]\ncredits_poll = \"1h\"\n\n\
         [[tokens]]\nproject = \"web\"\nhash = \"blake3:{}\"\n",
        blake3::hash(token.as_bytes()).to_hex()
    );
    let d = Daemon::start_with(&fake.url(), &extra).await;
    // The first poll is made at start, and kept with nothing to tell of it: read the
    // store until it is there. The next is an hour away; the test adds its own
    // observation through the daemon, as a client asking /credits would.
    let store = d.app.store.clone();
    eventually("the first poll of /credits kept", || {
        chatcache::spend::reconcile::credits::list(&store, 0).is_ok_and(|o| o.len() == 1)
    })
    .await;
    let auth = format!("Bearer {token}");
    let body = chat("held");
    let r = post_with(
        &d.url("/chat/completions"),
        &body,
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(
        http::Method::GET,
        &d.url("/credits"),
        &[("authorization", &auth)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    let polled = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/credits")
        .unwrap();
    assert_eq!(
        polled.header("authorization").as_deref(),
        Some("Bearer sk-held-credential-0123456789")
    );
    let v = get(&d.url("/_chatcache/spend/reconcile")).await.json();
    let intervals = v["intervals"].as_array().unwrap();
    assert_eq!(intervals.len(), 1, "{v}");
    let expected = support::expected_costs(body.as_bytes()).total_micros as f64 / 1e6;
    assert!(
        close(intervals[0]["drop"].as_f64().unwrap(), expected),
        "{v}"
    );
    assert!(
        close(intervals[0]["ledger"].as_f64().unwrap(), expected),
        "{v}"
    );
    assert_eq!(intervals[0]["flagged"], false);
    d.stop().await;
}

#[tokio::test]
async fn the_fakes_credits_fall_by_what_it_reports_or_a_multiple_when_it_overcharges() {
    let fake = FakeUpstream::start().await;
    let at_fake = |path: &str| format!("{}{path}", fake.url());
    let read = || async {
        let r = get(&at_fake("/credits")).await;
        (r.text(), r.json()["credits"].as_f64().unwrap())
    };
    assert_eq!(read().await.0, r#"{"credits": 1000}"#);
    let gpt = chat("how much");
    assert_eq!(post(&at_fake("/chat/completions"), &gpt).await.status, 200);
    let after_gpt = read().await.1;
    let gpt_cost = support::expected_costs(gpt.as_bytes()).total_micros as f64 / 1e6;
    assert!(close(1000.0 - after_gpt, gpt_cost), "{after_gpt}");
    fake.credits().overcharge("Claude 3.5 Sonnet", 3);
    let sonnet = claude("how much");
    assert_eq!(
        post(&at_fake("/chat/completions"), &sonnet).await.status,
        200
    );
    let after_claude = read().await.1;
    let claude_cost = support::expected_costs(sonnet.as_bytes()).total_micros as f64 / 1e6;
    assert!(
        close(after_gpt - after_claude, 3.0 * claude_cost),
        "{after_claude}"
    );
    // A request the fake rejects costs nothing.
    let unknown = r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#;
    assert_eq!(
        post(&at_fake("/chat/completions"), unknown).await.status,
        400
    );
    assert_eq!(read().await.1, after_claude);
}
