//! Daemons of a team that share a Redis, for the single-flight tests: their settings (each
//! test its own key prefix), started in this process or as a process of their own, requests
//! spread over them, and what Redis and their ledgers show of it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::daemon::*;
use super::hold::Gate;
use super::redis::{team_cache_config, team_reaches, team_secret, Prefix};
use super::streamed::Streamed;
use super::FakeUpstream;

/// A team's settings. `timeout` is generous: on a busy test machine, making a connection
/// (a waiter's subscription, a live reader's own) can take longer than the default 50 ms,
/// and a daemon that gives up on Redis answers correctly but on its own.
pub fn team_config(redis: &str, prefix: &str, dir: &Path, lease: &str) -> String {
    team_config_with(redis, prefix, dir, lease, "")
}

/// The team's settings with `extra` lines in its `[team]` table.
pub fn team_config_with(redis: &str, prefix: &str, dir: &Path, lease: &str, extra: &str) -> String {
    let secret = team_secret(dir, 0x5a);
    format!(
        "{}lease = \"{lease}\"\ntimeout = \"1s\"\n{extra}",
        team_cache_config(redis, prefix, Some(&secret))
    )
}

/// Three daemons of one team, each with its tier up.
pub async fn team_of_three(
    fake: &FakeUpstream,
    prefix: &Prefix,
    dir: &Path,
    lease: &str,
) -> Vec<Arc<Daemon>> {
    team_of(3, fake, prefix, dir, lease).await
}

pub async fn team_of(
    n: usize,
    fake: &FakeUpstream,
    prefix: &Prefix,
    dir: &Path,
    lease: &str,
) -> Vec<Arc<Daemon>> {
    team_of_with(n, fake, prefix, dir, lease, "").await
}

/// `n` daemons of one team, with `extra` lines in their `[team]` table.
pub async fn team_of_with(
    n: usize,
    fake: &FakeUpstream,
    prefix: &Prefix,
    dir: &Path,
    lease: &str,
    extra: &str,
) -> Vec<Arc<Daemon>> {
    let config = team_config_with(&super::redis_url(), &prefix.name, dir, lease, extra);
    team_started(n, fake, &config).await
}

/// `n` daemons started with `config`, each with its tier up.
pub async fn team_started(n: usize, fake: &FakeUpstream, config: &str) -> Vec<Arc<Daemon>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = Daemon::start_with(&fake.url(), config).await;
        team_reaches(&d, "up", |s| s.up).await;
        out.push(Arc::new(d));
    }
    out
}

/// Sends `n` copies of `body` at once, spread over the daemons, held upstream at `gate`.
pub fn spread(
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

/// The answers to requests `spread` sent, each within 20 s.
pub async fn answered(asks: Vec<tokio::task::JoinHandle<Resp>>) -> Vec<Resp> {
    let mut answers = Vec::new();
    for a in asks {
        answers.push(
            tokio::time::timeout(Duration::from_secs(20), a)
                .await
                .expect("answered")
                .unwrap(),
        );
    }
    answers
}

/// The one lease under the prefix, and the channel its holder announces the end on.
pub fn lease_and_channel(prefix: &Prefix) -> (String, String) {
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
pub async fn subscribers_reach(prefix: &Prefix, channel: &str, n: i64) {
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
pub async fn stream_at(base: &str, body: &str, fault: &str) -> Streamed {
    let url = format!("{base}/chat/completions");
    Streamed::open(
        &url,
        body,
        &[("authorization", KEY), ("x-fake-fault", fault)],
    )
    .await
}

/// SSE events in `b` (each of the fake's frames ends with one blank line).
pub fn events(b: &[u8]) -> usize {
    b.windows(2).filter(|w| w == b"\n\n").count()
}

/// A follower's stream that broke after `first` (what it had from its leader): it ends with
/// the SSE error frame, never as a short stream that looks whole.
#[track_caller]
pub fn ends_with_the_error_frame(f: &Streamed, first: &[u8]) {
    assert!(f.got.starts_with(first));
    let tail = String::from_utf8_lossy(&f.got[first.len()..]).into_owned();
    assert!(tail.starts_with("event: error\ndata: {"), "{tail}");
    assert_eq!(
        events(&f.got),
        events(first) + 1,
        "nothing after the error frame"
    );
    let text = f.text();
    assert!(
        !text.contains("total_tokens_cost") && !text.contains("[DONE]"),
        "never a short stream that looks whole: {text}"
    );
}

/// Every ledger line of `dirs`, once there are `n`.
pub async fn ledger_of(dirs: &[&Path], n: usize) -> Vec<serde_json::Value> {
    let all = || -> Vec<serde_json::Value> { dirs.iter().flat_map(|d| ledger_lines(d)).collect() };
    eventually("the ledger lines", || all().len() >= n).await;
    let lines = all();
    assert_eq!(lines.len(), n, "{lines:?}");
    lines
}

/// One paid line among `lines`; every other is free with that cost saved.
pub fn one_paid_the_rest_saved(lines: &[serde_json::Value]) {
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

/// A daemon of the team as a process of its own, so that it can die as a process does.
pub async fn team_process(fake: &FakeUpstream, prefix: &Prefix, dir: &Path, lease: &str) -> Proc {
    let config = dir.join("leader.toml");
    let text = team_config(&super::redis_url(), &prefix.name, dir, lease);
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

/// A stream asked of the first daemon, then of each other one while upstream holds it after
/// its first two frames: the leader's client, the followers' (each has what the leader's
/// client has, which it can only have had live), and the gate that holds the rest.
pub async fn followed_while_held(
    daemons: &[Arc<Daemon>],
    fake: &FakeUpstream,
    gate_name: &str,
) -> (Streamed, Vec<Streamed>, Gate) {
    let body = chat_stream(&format!("shared live, frame by frame ({gate_name})"));
    let fault = format!("hold={gate_name}@2");
    let gate = fake.hold(gate_name);
    let mut lead = stream_at(&daemons[0].url(""), &body, &fault).await;
    gate.arrived().await;
    lead.until("the leader's first frames", |b| events(b) >= 2)
        .await;
    let mut followers = Vec::new();
    for d in &daemons[1..] {
        let mut f = stream_at(&d.url(""), &body, &fault).await;
        f.until("a follower's first frames", |b| b.len() >= lead.got.len())
            .await;
        assert_eq!(f.got, lead.got, "the bytes the leader's client has");
        followers.push(f);
    }
    (lead, followers, gate)
}

/// Reads every answer to its end: the followers', byte for byte the leader's, which ends
/// with the cost frame.
pub async fn read_to_the_end(lead: &mut Streamed, followers: &mut [Streamed]) {
    let within = Duration::from_secs(20);
    lead.rest(within).await.expect("the leader's stream ends");
    let text = lead.text();
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or("");
    assert!(
        last.contains("total_tokens_cost"),
        "it ends with the cost frame: {last}"
    );
    for f in followers {
        f.rest(within).await.expect("a follower's stream ends");
        assert!(f.got == lead.got, "byte for byte, cost frame included");
    }
}
