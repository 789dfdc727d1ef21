//! Single-flight across a team's daemons on a real Redis (`CHATCACHE_TEST_REDIS`, default
//! redis://127.0.0.1:6379): identical requests spread over three daemons make one upstream
//! call; a stream reaches the other daemons' clients live, while upstream still sends it,
//! and a leader that dies mid-stream ends theirs with the SSE error frame; a lease that goes
//! without an answer lets the waiting daemons fetch for themselves; without Redis each
//! daemon answers on its own. Each test has its own key prefix.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::daemon::*;
use support::redis::Prefix;
use support::streamed::Streamed;
use support::FakeUpstream;

/// A team's settings. `timeout` is generous: on a busy test machine, making a connection
/// (a waiter's subscription, a live reader's own) can take longer than the default 50 ms,
/// and a daemon that gives up on Redis answers correctly but on its own.
fn team_config(redis: &str, prefix: &Prefix, dir: &Path, lease: &str) -> String {
    let secret = dir.join("team.key");
    std::fs::write(&secret, format!("{}\n", "5a".repeat(32))).unwrap();
    format!(
        "[cache]\nmax_age = \"1h\"\n[team]\nredis = \"{redis}\"\nredis_prefix = \"{}\"\nsecret_file = \"{}\"\nlease = \"{lease}\"\ntimeout = \"1s\"\n",
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
    team_of(3, fake, prefix, dir, lease).await
}

async fn team_of(
    n: usize,
    fake: &FakeUpstream,
    prefix: &Prefix,
    dir: &Path,
    lease: &str,
) -> Vec<Arc<Daemon>> {
    let config = team_config(&support::redis_url(), prefix, dir, lease);
    let mut out = Vec::new();
    for _ in 0..n {
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

/// Opens a stream of `body` on the daemon at `base`, held upstream as `fault` says.
async fn stream_at(base: &str, body: &str, fault: &str) -> Streamed {
    let url = format!("{base}/chat/completions");
    Streamed::open(
        &url,
        body,
        &[("authorization", KEY), ("x-fake-fault", fault)],
    )
    .await
}

/// SSE events in `b` (each of the fake's frames ends with one blank line).
fn events(b: &[u8]) -> usize {
    b.windows(2).filter(|w| w == b"\n\n").count()
}

/// Every ledger line of `dirs`, once there are `n`.
async fn ledger_of(dirs: &[&Path], n: usize) -> Vec<serde_json::Value> {
    let all = || -> Vec<serde_json::Value> { dirs.iter().flat_map(|d| ledger_lines(d)).collect() };
    eventually("the ledger lines", || all().len() >= n).await;
    let lines = all();
    assert_eq!(lines.len(), n, "{lines:?}");
    lines
}

/// One paid line among `lines`; every other is free with that cost saved.
fn one_paid_the_rest_saved(lines: &[serde_json::Value]) {
    let paid: Vec<f64> = lines
        .iter()
        .filter(|l| l["outcome"] == "miss")
        .map(|l| l["cost"].as_f64().unwrap())
        .collect();
    assert_eq!(paid.len(), 1, "{lines:?}");
    assert!(paid[0] > 0.0, "the fake reports a cost");
    for l in lines.iter().filter(|l| l["outcome"] != "miss") {
        assert_eq!(l["cost"].as_f64().unwrap_or(0.0), 0.0, "{l}");
        assert_eq!(l["saved"].as_f64(), Some(paid[0]), "{l}");
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
    let dirs: Vec<&Path> = daemons.iter().map(|d| d.data_dir.as_path()).collect();
    one_paid_the_rest_saved(&ledger_of(&dirs, 12).await);
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
async fn followers_on_other_daemons_get_a_stream_live_while_upstream_still_sends_it() {
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    let daemons = team_of_three(&fake, &prefix, dir.path(), "10s").await;
    let body = chat_stream("shared live, frame by frame");
    // The fake sends the head and two frames, then holds the rest until released.
    let gate = fake.hold("live");
    let mut lead = stream_at(&daemons[0].url(""), &body, "hold=live@2").await;
    gate.arrived().await;
    lead.until("the leader's first frames", |b| events(b) >= 2)
        .await;
    let first = lead.got.clone();
    let mut followers = Vec::new();
    for d in &daemons[1..] {
        let mut f = stream_at(&d.url(""), &body, "hold=live@2").await;
        f.until("a follower's first frames", |b| b.len() >= first.len())
            .await;
        followers.push(f);
    }
    // Upstream still holds the rest, and was called once: what the followers have came
    // from the leader's call, through Redis, as it arrived.
    assert_eq!(fake.count("/chat/completions"), 1, "one call, still held");
    for f in &followers {
        assert_eq!(f.got, first, "the bytes the leader's client has");
        assert_eq!(f.header("x-chatcache"), Some("coalesced"));
        assert_eq!(f.header("x-chatcache-tier"), Some("team"));
        assert_eq!(f.header("content-type"), lead.header("content-type"));
    }
    let live: Vec<String> = prefix
        .keys()
        .into_iter()
        .filter(|k| k.contains("live:"))
        .collect();
    assert_eq!(live.len(), 1, "one Redis stream: {:?}", prefix.keys());
    gate.release();
    let within = Duration::from_secs(20);
    lead.rest(within).await.expect("the leader's stream ends");
    let last = lead
        .text()
        .trim_end()
        .rsplit("\n\n")
        .next()
        .unwrap_or("")
        .to_string();
    assert!(
        last.contains("total_tokens_cost"),
        "it ends with the cost frame: {last}"
    );
    for f in &mut followers {
        f.rest(within).await.expect("a follower's stream ends");
        assert_eq!(f.got, lead.got, "byte for byte, cost frame included");
    }
    assert_eq!(fake.count("/chat/completions"), 1);
    let dirs: Vec<&Path> = daemons.iter().map(|d| d.data_dir.as_path()).collect();
    one_paid_the_rest_saved(&ledger_of(&dirs, 3).await);
    // Nothing is left behind: the stream expires (two leases after its last write).
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&live[0])
        .query(&mut prefix.conn())
        .unwrap();
    assert!((1..=20_000).contains(&ttl), "the stream expires: {ttl}");
}

/// A daemon of the team as a process of its own, so that it can die as a process does.
async fn team_process(fake: &FakeUpstream, prefix: &Prefix, dir: &Path, lease: &str) -> Proc {
    let config = dir.join("leader.toml");
    let text = team_config(&support::redis_url(), prefix, dir, lease);
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let data = dir.join("leader-data");
    let proc = spawn_binary(
        &fake.url(),
        &data,
        &["--config", config],
        "warn",
        &dir.join("log"),
    );
    // The tier comes up on its own; health says when. A bounded poll.
    let health = format!("http://{}/_chatcache/health", proc.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&health).await.json()["team_cache"] != "up" {
        assert!(
            Instant::now() < deadline,
            "the leader's team tier never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proc
}

#[tokio::test]
async fn followers_of_a_leader_that_dies_mid_stream_end_with_the_error_frame() {
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    let lease = Duration::from_secs(2);
    let mut leader = team_process(&fake, &prefix, dir.path(), "2s").await;
    let others = team_of(2, &fake, &prefix, dir.path(), "2s").await;
    let body = chat_stream("the leader dies mid-stream");
    let gate = fake.hold("dies");
    let base = format!("http://{}", leader.addr);
    let mut lead = stream_at(&base, &body, "hold=dies@2").await;
    gate.arrived().await;
    lead.until("the leader's first frames", |b| events(b) >= 2)
        .await;
    let first = lead.got.clone();
    let mut followers = Vec::new();
    for d in &others {
        let mut f = stream_at(&d.url(""), &body, "hold=dies@2").await;
        f.until("a follower's first frames", |b| b.len() >= first.len())
            .await;
        assert_eq!(f.got, first);
        followers.push(f);
    }
    // No goodbye to Redis: the lease is left to expire, the stream stops growing.
    leader.signal("KILL");
    leader.wait();
    let died = Instant::now();
    for f in &mut followers {
        f.rest(lease * 5)
            .await
            .expect("a follower's stream ends, with a frame that says why");
    }
    let took = died.elapsed();
    assert!(
        took < lease + lease / 2,
        "released within the lease: {took:?}"
    );
    for f in &followers {
        assert!(f.got.starts_with(&first));
        let tail = String::from_utf8_lossy(&f.got[first.len()..]).into_owned();
        assert!(tail.starts_with("event: error\ndata: {"), "{tail}");
        assert_eq!(
            events(&f.got),
            events(&first) + 1,
            "nothing after the error frame"
        );
        let text = f.text();
        assert!(
            !text.contains("total_tokens_cost") && !text.contains("[DONE]"),
            "never a short stream that looks whole: {text}"
        );
    }
    assert_eq!(fake.count("/chat/completions"), 1);
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
