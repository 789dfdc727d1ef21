//! Single-flight across a team's daemons on a real Redis (`CHATCACHE_TEST_REDIS`, default
//! redis://127.0.0.1:6379, or a Redis Cluster a test starts): identical requests spread over
//! three daemons make one upstream call; a stream reaches the other daemons' clients live,
//! while upstream still sends it (also past `team.max_entry`, of which Redis keeps only the
//! tail); a leader that dies mid-stream ends its followers' streams with the SSE error
//! frame, one that dies before its first byte lets them fetch for themselves, as does a
//! lease that goes without an answer; without Redis each daemon answers on its own. Each
//! test has its own key prefix.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::daemon::*;
use support::flight_team::*;
use support::redis::{Cluster, Prefix};
use support::FakeUpstream;

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
    let answers = answered(asks).await;
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
    let (mut lead, mut followers, gate) = followed_while_held(&daemons, &fake, "live").await;
    let first = lead.got.clone();
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
    read_to_the_end(&mut lead, &mut followers).await;
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

#[tokio::test]
async fn a_stream_is_shared_live_through_a_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    let config = cluster.in_config(&team_config("CLUSTER", &prefix.name, dir.path(), "10s"));
    let daemons = team_started(3, &fake, &config).await;
    let (mut lead, mut followers, gate) = followed_while_held(&daemons, &fake, "cluster").await;
    assert_eq!(fake.count("/chat/completions"), 1, "one call, still held");
    gate.release();
    read_to_the_end(&mut lead, &mut followers).await;
    assert_eq!(fake.count("/chat/completions"), 1);
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
        ends_with_the_error_frame(f, &first);
    }
    assert_eq!(fake.count("/chat/completions"), 1);
}

#[tokio::test]
async fn followers_of_a_leader_that_dies_before_its_first_byte_fetch_for_themselves() {
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    let lease = Duration::from_secs(2);
    let mut leader = team_process(&fake, &prefix, dir.path(), "2s").await;
    let others = team_of(2, &fake, &prefix, dir.path(), "2s").await;
    let body = chat_stream("the leader dies before it answers");
    let gate = fake.hold("early");
    let url = format!("http://{}/chat/completions", leader.addr);
    // The leader's own client loses its answer with the leader.
    let lost = tokio::spawn({
        let body = body.clone();
        async move {
            let headers = [("authorization", KEY), ("x-fake-fault", "hold=early")];
            try_open(http::Method::POST, &url, &headers, body).await
        }
    });
    gate.arrived().await;
    let (_, channel) = lease_and_channel(&prefix);
    let asks = spread(&others, &body, "early", 2);
    subscribers_reach(&prefix, &channel, 2).await;
    leader.signal("KILL");
    leader.wait();
    let died = Instant::now();
    // Nothing was sent to their clients yet: they fetch for themselves.
    gate.arrived_n(3).await;
    let took = died.elapsed();
    assert!(
        took < lease + lease / 2,
        "released within the lease: {took:?}"
    );
    gate.release();
    for r in answered(asks).await {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-chatcache"), Some("miss"));
        assert!(r.text().contains("total_tokens_cost"), "{}", r.text());
    }
    assert!(
        lost.await.unwrap().is_err(),
        "the dead daemon's client got nothing"
    );
    assert_eq!(fake.count("/chat/completions"), 3);
}

#[tokio::test]
async fn a_stream_larger_than_team_max_entry_reaches_followers_whole_and_redis_keeps_its_tail() {
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    let max = 4096;
    let extra = format!("max_entry = \"{max} B\"\n");
    let daemons = team_of_with(3, &fake, &prefix, dir.path(), "10s", &extra).await;
    let body = chat_stream("a long answer shared live");
    let gate = fake.hold("long");
    let headers = [
        ("authorization", KEY),
        ("x-fake-fault", "hold=long@2"),
        ("x-fake-words", "200"),
    ];
    let open = |d: &Daemon| {
        let url = d.url("/chat/completions");
        let body = body.clone();
        async move { support::streamed::Streamed::open(&url, &body, &headers).await }
    };
    let mut lead = open(&daemons[0]).await;
    gate.arrived().await;
    lead.until("the leader's first frames", |b| events(b) >= 2)
        .await;
    let mut followers = Vec::new();
    for d in &daemons[1..] {
        let mut f = open(d).await;
        f.until("a follower's first frames", |b| events(b) >= 2)
            .await;
        followers.push(f);
    }
    gate.release();
    let within = Duration::from_secs(20);
    lead.rest(within).await.expect("the leader's stream ends");
    assert!(lead.got.len() > 4 * max, "{} bytes", lead.got.len());
    for f in &mut followers {
        f.rest(within).await.expect("a follower's stream ends");
        assert!(f.got == lead.got, "every byte, in order");
    }
    assert_eq!(fake.count("/chat/completions"), 1);
    // Redis kept only the stream's last part: its start, the head, was trimmed.
    let live: Vec<String> = prefix
        .keys()
        .into_iter()
        .filter(|k| k.contains("live:"))
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    let kept: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&live[0])
        .arg("-")
        .arg("+")
        .query(&mut prefix.conn())
        .unwrap();
    let pieces: Vec<usize> = kept
        .ids
        .iter()
        .filter_map(|e| e.get::<Vec<u8>>("data"))
        .map(|d| d.len())
        .collect();
    let held: usize = pieces.iter().sum();
    let largest = pieces.iter().copied().max().unwrap_or(0);
    assert!(held <= max.max(largest), "{held} bytes of data kept");
    assert!(!kept.ids[0].contains_key("status"), "the head was trimmed");
    assert!(kept.ids.last().unwrap().contains_key("end"));
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
    for r in answered(asks).await {
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
    let config = team_config("redis://127.0.0.1:1", &prefix.name, dir.path(), "10s");
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(Arc::new(Daemon::start_with(&fake.url(), &config).await));
    }
    let gate = fake.hold("alone");
    let asks = spread(&daemons, &chat("nobody to share with"), "alone", 3);
    // Each daemon leads its own call, none waits for another.
    gate.arrived_n(3).await;
    gate.release();
    for r in answered(asks).await {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-chatcache"), Some("miss"));
    }
    assert_eq!(fake.count("/chat/completions"), 3);
}
