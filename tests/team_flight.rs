//! Single-flight across a team's daemons on a real Redis (`CHATCACHE_TEST_REDIS`, default
//! redis://127.0.0.1:6379): identical requests spread over three daemons make one upstream
//! call; a lease that goes without an answer lets the waiting daemons fetch for themselves;
//! without Redis each daemon answers on its own. Each test has its own key prefix.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::daemon::*;
use support::redis::Prefix;
use support::FakeUpstream;

fn team_config(redis: &str, prefix: &Prefix, dir: &Path, lease: &str) -> String {
    let secret = dir.join("team.key");
    std::fs::write(&secret, format!("{}\n", "5a".repeat(32))).unwrap();
    format!(
        "[cache]\nmax_age = \"1h\"\n[team]\nredis = \"{redis}\"\nredis_prefix = \"{}\"\nsecret_file = \"{}\"\nlease = \"{lease}\"\n",
        prefix.name,
        secret.display()
    )
}

/// Three daemons of one team, each with its tier up.
async fn team_of_three(
    fake: &FakeUpstream,
    prefix: &Prefix,
    dir: &Path,
    lease: &str,
) -> Vec<Arc<Daemon>> {
    let config = team_config(&support::redis_url(), prefix, dir, lease);
    let mut out = Vec::new();
    for _ in 0..3 {
        let d = Daemon::start_with(&fake.url(), &config).await;
        let mut rx = d.app.team_cache.as_ref().expect("team tier on").watch();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.up))
            .await
            .expect("the team tier comes up")
            .unwrap();
        out.push(Arc::new(d));
    }
    out
}

/// Sends `n` copies of `body` at once, spread over the daemons, held upstream at `gate`.
fn spread(
    daemons: &[Arc<Daemon>],
    body: &str,
    gate: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Resp>> {
    (0..n)
        .map(|k| {
            let d = daemons[k % daemons.len()].clone();
            let (body, fault) = (body.to_string(), format!("hold={gate}"));
            tokio::spawn(async move {
                post_with(
                    &d.url("/chat/completions"),
                    &body,
                    &[("authorization", KEY), ("x-fake-fault", &fault)],
                )
                .await
            })
        })
        .collect()
}

/// The one lease under the prefix, and the channel its holder announces the end on.
fn lease_and_channel(prefix: &Prefix) -> (String, String) {
    let keys = prefix.keys();
    let lease: Vec<&String> = keys.iter().filter(|k| k.contains("lease:")).collect();
    assert_eq!(
        lease.len(),
        1,
        "one lease while the answer is held: {keys:?}"
    );
    let lease = lease[0].clone();
    let channel = lease.replacen("lease:", "done:", 1);
    (lease, channel)
}

/// Waits until `n` daemons listen for the end of the lease's answer. Redis tells no one of
/// a subscription, so this polls it, with a deadline.
async fn subscribers_reach(prefix: &Prefix, channel: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query::<Vec<(String, i64)>>(&mut prefix.conn())
            .unwrap()
            .remove(0);
        if count >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} of {n} daemons wait on {channel}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn one_call_for_twelve(body: &str, gate_name: &str) {
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    let daemons = team_of_three(&fake, &prefix, dir.path(), "10s").await;
    let gate = fake.hold(gate_name);
    let asks = spread(&daemons, body, gate_name, 12);
    gate.arrived().await;
    let (_, channel) = lease_and_channel(&prefix);
    // The two daemons without the lease wait on it, and every request is in.
    subscribers_reach(&prefix, &channel, 2).await;
    for d in &daemons {
        metric_reaches(d, "chatcache_requests_in_flight", 4.0).await;
    }
    assert_eq!(fake.count("/chat/completions"), 1, "one call while held");
    gate.release();
    let mut answers = Vec::new();
    for a in asks {
        answers.push(
            tokio::time::timeout(Duration::from_secs(20), a)
                .await
                .expect("answered")
                .unwrap(),
        );
    }
    let failures: Vec<u64> = daemons
        .iter()
        .map(|d| d.app.team_cache.as_ref().unwrap().watch().borrow().failures)
        .collect();
    assert_eq!(
        fake.count("/chat/completions"),
        1,
        "one upstream call for twelve requests (failed exchanges with Redis: {failures:?})"
    );
    let outcomes: Vec<Option<&str>> = answers.iter().map(|r| r.header("x-chatcache")).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == Some("miss")).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Some("miss" | "coalesced" | "hit"))),
        "{outcomes:?}"
    );
    let from_team = answers
        .iter()
        .filter(|r| {
            r.header("x-chatcache") == Some("coalesced")
                && r.header("x-chatcache-tier") == Some("team")
        })
        .count();
    assert!(
        from_team >= 2,
        "the waiting daemons answer from the team: {outcomes:?}"
    );
    for r in &answers {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, answers[0].body, "byte-identical answers");
    }
    // One line per request: the call's cost once, the others free with that cost saved.
    let all = || -> Vec<serde_json::Value> {
        daemons
            .iter()
            .flat_map(|d| ledger_lines(&d.data_dir))
            .collect()
    };
    eventually("twelve ledger lines", || all().len() >= 12).await;
    let lines = all();
    assert_eq!(lines.len(), 12);
    let paid: Vec<f64> = lines
        .iter()
        .filter(|l| l["outcome"] == "miss")
        .map(|l| l["cost"].as_f64().unwrap())
        .collect();
    assert_eq!(paid.len(), 1);
    assert!(paid[0] > 0.0, "the fake reports a cost");
    for l in lines.iter().filter(|l| l["outcome"] != "miss") {
        assert_eq!(l["cost"].as_f64().unwrap_or(0.0), 0.0, "{l}");
        assert_eq!(l["saved"].as_f64(), Some(paid[0]), "{l}");
    }
}

#[tokio::test]
async fn twelve_identical_plain_requests_over_three_daemons_make_one_upstream_call() {
    one_call_for_twelve(&chat("team flight, plain"), "plain").await;
}

#[tokio::test]
async fn twelve_identical_streams_over_three_daemons_make_one_upstream_call() {
    one_call_for_twelve(&chat_stream("team flight, streamed"), "stream").await;
}

#[tokio::test]
async fn waiting_daemons_fetch_for_themselves_when_the_lease_goes_without_an_answer() {
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    let lease = Duration::from_millis(1500);
    let daemons = team_of_three(&fake, &prefix, dir.path(), "1500ms").await;
    let gate = fake.hold("gone");
    let asks = spread(&daemons, &chat("the leader vanishes"), "gone", 3);
    gate.arrived().await;
    let (name, channel) = lease_and_channel(&prefix);
    subscribers_reach(&prefix, &channel, 2).await;
    // The leader's claim disappears as if its daemon had died.
    let gone = Instant::now();
    let _: i64 = redis::cmd("DEL")
        .arg(&name)
        .query(&mut prefix.conn())
        .unwrap();
    gate.arrived_n(3).await;
    assert!(
        gone.elapsed() < lease,
        "the others fetched within the lease time: {:?}",
        gone.elapsed()
    );
    gate.release();
    for a in asks {
        let r = tokio::time::timeout(Duration::from_secs(20), a)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(fake.count("/chat/completions"), 3);
}

#[tokio::test]
async fn without_redis_each_daemon_answers_on_its_own() {
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    // Nothing listens there: the tier stays down.
    let config = team_config("redis://127.0.0.1:1", &prefix, dir.path(), "10s");
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(Arc::new(Daemon::start_with(&fake.url(), &config).await));
    }
    let gate = fake.hold("alone");
    let asks = spread(&daemons, &chat("nobody to share with"), "alone", 3);
    // Each daemon leads its own call, none waits for another.
    gate.arrived_n(3).await;
    gate.release();
    for a in asks {
        let r = tokio::time::timeout(Duration::from_secs(20), a)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-chatcache"), Some("miss"));
    }
    assert_eq!(fake.count("/chat/completions"), 3);
}
