//! The team tier of the cache on a real Redis (`CHATCACHE_TEST_REDIS`, default
//! redis://127.0.0.1:6379): two daemons with their own data dirs and one team secret share
//! answers, partitions hold across daemons, damaged entries are dropped, and a daemon whose
//! Redis is gone still answers. Each test writes under a key prefix of its own, deleted after.

mod support;

use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use redis::Commands;
use support::daemon::*;
use support::redis::{
    team_cache_config, team_reaches, team_secret, watch_team, Cluster, Prefix, Relay,
};
use support::FakeUpstream;

async fn health(d: &Daemon) -> serde_json::Value {
    let r = send(Method::GET, &d.url("/_chatcache/health"), &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

/// Two daemons of one team (own data dirs, one secret), both connected to Redis.
async fn team_of_two(fake: &FakeUpstream, prefix: &Prefix, dir: &Path) -> (Daemon, Daemon) {
    let secret = team_secret(dir, 7);
    let config = team_cache_config(&support::redis_url(), &prefix.name, Some(&secret));
    let a = Daemon::start_with(&fake.url(), &config).await;
    let b = Daemon::start_with(&fake.url(), &config).await;
    for d in [&a, &b] {
        team_reaches(d, "up", |s| s.up).await;
    }
    (a, b)
}

#[tokio::test]
async fn an_answer_recorded_on_one_daemon_is_a_team_hit_on_another() {
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    let (a, b) = team_of_two(&fake, &prefix, dir.path()).await;
    assert_eq!(health(&a).await["team_cache"], "up");

    let streamed = chat_stream("Write a short poem about the sea, with é and 😀");
    let plain = chat("What is the capital of France?");
    let first = ask(&a, &streamed).await;
    assert_eq!(first.header("x-chatcache"), Some("miss"));
    let first_plain = ask(&a, &plain).await;
    assert_eq!(first_plain.header("x-chatcache"), Some("miss"));
    team_reaches(&a, "both answers written", |s| s.written >= 2).await;
    assert_eq!(prefix.entries().len(), 2, "one Redis key per answer");

    let team_hit = ask(&b, &streamed).await;
    assert_eq!(team_hit.status, StatusCode::OK);
    assert_eq!(team_hit.header("x-chatcache"), Some("hit"));
    assert_eq!(team_hit.header("x-chatcache-tier"), Some("team"));
    assert_eq!(team_hit.header("content-type"), Some("text/event-stream"));
    assert_eq!(team_hit.body, first.body, "the stream, byte for byte");
    let plain_hit = ask(&b, &plain).await;
    assert_eq!(plain_hit.header("x-chatcache-tier"), Some("team"));
    assert_eq!(plain_hit.body, first_plain.body);
    assert_eq!(
        fake.count("/chat/completions"),
        2,
        "upstream once per answer"
    );

    // Copied into B's own store: next time it is B's own hit, even with Redis emptied.
    let _: () = prefix.conn().del(prefix.entries()).unwrap();
    let local = ask(&b, &streamed).await;
    assert_eq!(local.header("x-chatcache"), Some("hit"));
    assert_eq!(local.header("x-chatcache-tier"), None);
    assert_eq!(local.body, first.body);
    assert_eq!(fake.count("/chat/completions"), 2);
    assert_eq!(metric(&b, "chatcache_team_cache_hits_total").await, 2.0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn answers_over_team_max_entry_stay_local() {
    let prefix = Prefix::new();
    let fake = FakeUpstream::start().await;
    let config = format!(
        "{}max_entry = \"4 KiB\"\n",
        team_cache_config(&support::redis_url(), &prefix.name, None)
    );
    let d = Daemon::start_with(&fake.url(), &config).await;
    team_reaches(&d, "up", |s| s.up).await;
    let large = post_with(
        &d.url("/chat/completions"),
        &chat("a long answer"),
        &[("authorization", KEY), (support::WORDS_HEADER, "2000")],
    )
    .await;
    assert_eq!(large.status, StatusCode::OK);
    assert!(large.body.len() > 4096, "{} bytes", large.body.len());
    ask(&d, &chat("a short answer")).await;
    team_reaches(&d, "one answer written, one not", |s| {
        s.written == 1 && s.skipped == 1
    })
    .await;
    assert_eq!(prefix.entries().len(), 1);
    let mut conn = prefix.conn();
    let stored: Vec<u8> = conn.get(&prefix.entries()[0]).unwrap();
    assert!(stored.len() < 4096);
    // Its time to live is cache.max_age (1 h here).
    let ttl: i64 = conn.pttl(&prefix.entries()[0]).unwrap();
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "ttl {ttl} ms");
    // The large one is still this daemon's own hit.
    let again = post_with(
        &d.url("/chat/completions"),
        &chat("a long answer"),
        &[("authorization", KEY), (support::WORDS_HEADER, "2000")],
    )
    .await;
    assert_eq!(again.header("x-chatcache"), Some("hit"));
    d.stop().await;
}

#[tokio::test]
async fn a_credential_never_gets_another_credentials_answer_on_any_daemon() {
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    let (a, b) = team_of_two(&fake, &prefix, dir.path()).await;
    let body = chat("private question");
    let mine = ask(&a, &body).await;
    assert_eq!(mine.header("x-chatcache"), Some("miss"));
    team_reaches(&a, "the answer written", |s| s.written >= 1).await;

    let other = post_with(
        &b.url("/chat/completions"),
        &body,
        &[("authorization", "Bearer sk-someone-else-456")],
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.header("x-chatcache"), Some("miss"));
    assert_eq!(fake.count("/chat/completions"), 2);
    // The same credential on B is a team hit: the partitions agree across daemons.
    let same = ask(&b, &body).await;
    assert_eq!(same.header("x-chatcache-tier"), Some("team"));
    assert_eq!(fake.count("/chat/completions"), 2);

    // A daemon without the team secret keys the credential with its own: no team hit.
    let outsider_config = team_cache_config(&support::redis_url(), &prefix.name, None);
    let c = Daemon::start_with(&fake.url(), &outsider_config).await;
    team_reaches(&c, "up", |s| s.up).await;
    let outsider = ask(&c, &body).await;
    assert_eq!(outsider.header("x-chatcache"), Some("miss"));
    assert_eq!(fake.count("/chat/completions"), 3);
    for d in [a, b, c] {
        d.stop().await;
    }
}

#[tokio::test]
async fn a_damaged_entry_in_redis_is_ignored_and_deleted() {
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    let secret = team_secret(dir.path(), 9);
    let config = team_cache_config(&support::redis_url(), &prefix.name, Some(&secret));
    let a = Daemon::start_with(&fake.url(), &config).await;
    // B only replays: it never goes upstream nor writes to Redis, so what it does to the
    // damaged entry is all that happens to it.
    let b = Daemon::start_with(&fake.url(), &format!("mode = \"replay\"\n{config}")).await;
    for d in [&a, &b] {
        team_reaches(d, "up", |s| s.up).await;
    }
    let body = chat("to be damaged");
    ask(&a, &body).await;
    team_reaches(&a, "the answer written", |s| s.written >= 1).await;
    let keys = prefix.entries();
    assert_eq!(keys.len(), 1);
    let mut conn = prefix.conn();
    let mut value: Vec<u8> = conn.get(&keys[0]).unwrap();
    let middle = value.len() / 2;
    value[middle] ^= 0x20;
    let _: () = conn.set(&keys[0], value).unwrap();

    let r = ask(&b, &body).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    team_reaches(&b, "the damaged entry deleted", |s| s.deleted >= 1).await;
    assert!(prefix.entries().is_empty(), "the damaged entry is gone");
    assert_eq!(
        metric(&b, "chatcache_team_cache_dropped_damaged_total").await,
        1.0
    );
    // Something foreign under the entry's name (a list, not a string) goes the same way.
    let _: () = conn.rpush(&keys[0], "not an entry").unwrap();
    let r = ask(&b, &body).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    team_reaches(&b, "the foreign entry deleted", |s| s.deleted >= 2).await;
    assert!(prefix.entries().is_empty(), "the foreign entry is gone");
    assert!(
        watch_team(&b).borrow().up,
        "a foreign entry is not Redis being down"
    );
    // A's own copy was never touched.
    assert_eq!(ask(&a, &body).await.header("x-chatcache"), Some("hit"));
    assert_eq!(fake.count("/chat/completions"), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn with_redis_unreachable_requests_are_answered_and_health_says_down() {
    let prefix = Prefix::new();
    let closed = support::closed_port();
    let fake = FakeUpstream::start().await;
    let config = team_cache_config(&format!("redis://127.0.0.1:{closed}/0"), &prefix.name, None);
    let d = Daemon::start_with(&fake.url(), &config).await;
    team_reaches(&d, "a failed exchange with Redis", |s| s.failures >= 1).await;
    assert_eq!(health(&d).await["team_cache"], "down");
    let body = chat("while Redis is away");
    let first = ask(&d, &body).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-chatcache"), Some("miss"));
    let second = ask(&d, &body).await;
    assert_eq!(second.header("x-chatcache"), Some("hit"));
    assert_eq!(second.body, first.body);
    assert_eq!(fake.count("/chat/completions"), 1);
    assert_eq!(health(&d).await["team_cache"], "down");
    assert_eq!(metric(&d, "chatcache_team_cache_up").await, 0.0);
    assert!(!watch_team(&d).borrow().up);
    d.stop().await;

    // Without `team.redis`, health does not mention a team cache at all.
    let plain = Daemon::start(&fake.url()).await;
    assert!(health(&plain).await.get("team_cache").is_none());
    plain.stop().await;
}

#[tokio::test]
async fn a_silent_redis_costs_a_request_at_most_the_timeout_and_is_used_again_once_back() {
    let prefix = Prefix::new();
    let fake = FakeUpstream::start().await;
    let relay = Relay::start(None).await;
    let d = Daemon::start_with(
        &fake.url(),
        &team_cache_config(&relay.url, &prefix.name, None),
    )
    .await;
    team_reaches(&d, "up", |s| s.up).await;

    relay.stall.send_replace(true);
    let started = std::time::Instant::now();
    let r = ask(&d, &chat("asked while Redis is silent")).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-chatcache"), Some("miss"));
    // team.timeout is 50 ms; Redis's own response timeout is 2 s. The bound sits between
    // them with room for a slow machine.
    assert!(took < Duration::from_secs(1), "the request waited {took:?}");
    team_reaches(&d, "down", |s| !s.up && s.failures >= 1).await;
    assert_eq!(health(&d).await["team_cache"], "down");

    relay.stall.send_replace(false);
    team_reaches(&d, "up again", |s| s.up).await;
    assert_eq!(health(&d).await["team_cache"], "up");
    ask(&d, &chat("asked once Redis is back")).await;
    team_reaches(&d, "the answer written", |s| s.written >= 1).await;
    assert_eq!(prefix.entries().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn rediss_is_verified_against_the_configured_ca() {
    let prefix = Prefix::new();
    let fake = FakeUpstream::start().await;
    let (ca, server) = support::tls::make_server();
    let relay = Relay::start(Some(server)).await;
    let base = team_cache_config(&relay.url, &prefix.name, None);
    let trusting = format!("{base}redis_ca_file = \"{}\"\n", ca.ca_path.display());
    let d = Daemon::start_with(&fake.url(), &trusting).await;
    team_reaches(&d, "up over TLS", |s| s.up).await;
    ask(&d, &chat("sent over TLS")).await;
    team_reaches(&d, "the answer written", |s| s.written >= 1).await;
    assert_eq!(prefix.entries().len(), 1);
    d.stop().await;

    // The system's roots do not know the test CA: no connection, so no team cache.
    let doubting = Daemon::start_with(&fake.url(), &base).await;
    team_reaches(&doubting, "a refused handshake", |s| s.failures >= 1).await;
    assert_eq!(health(&doubting).await["team_cache"], "down");
    let r = ask(&doubting, &chat("sent over TLS")).await;
    assert_eq!(r.header("x-chatcache"), Some("miss"));
    doubting.stop().await;
}

#[tokio::test]
async fn daemons_share_answers_through_a_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    let secret = team_secret(dir.path(), 3);
    let config = cluster.in_config(&team_cache_config("CLUSTER", &prefix.name, Some(&secret)));
    let fake = FakeUpstream::start().await;
    let a = Daemon::start_with(&fake.url(), &config).await;
    let b = Daemon::start_with(&fake.url(), &config).await;
    for d in [&a, &b] {
        team_reaches(d, "up", |s| s.up).await;
    }
    // Enough answers that their keys fall in the slots of more than one node.
    let questions: Vec<String> = (0..12).map(|n| chat(&format!("question {n}"))).collect();
    let mut first = Vec::new();
    for q in &questions {
        first.push(ask(&a, q).await);
    }
    team_reaches(&a, "every answer written", |s| s.written >= 12).await;
    let spread = cluster.keys_per_node();
    assert_eq!(spread.iter().sum::<usize>(), 12);
    assert!(spread.iter().filter(|n| **n > 0).count() > 1, "{spread:?}");
    for (q, f) in questions.iter().zip(&first) {
        let r = ask(&b, q).await;
        assert_eq!(r.header("x-chatcache-tier"), Some("team"));
        assert_eq!(r.body, f.body);
    }
    assert_eq!(fake.count("/chat/completions"), 12);
    a.stop().await;
    b.stop().await;
}
