//! The team's Redis killed (SIGKILL) while a stream is shared live, then started again on
//! its port: the leader's client still gets the whole answer, the follower on the other
//! daemon ends with the SSE error frame (never a short stream that looks whole), health
//! says the tier is down, then up again, answers are shared once more, and every ledger
//! line of both daemons reaches PostgreSQL exactly once. The test runs a `redis-server` of
//! its own (it kills it) and a database of its own on the test PostgreSQL server.

mod support;

use std::path::Path;
use std::time::Duration;

use support::daemon::*;
use support::flight_team::{
    ends_with_the_error_frame, events, ledger_of, stream_at, team_config_with,
};
use support::pg::TestDb;
use support::redis::{team_reaches, Server};
use support::team::{local_ids, SHIPPED_WITHIN};
use support::FakeUpstream;

/// How long a stream may take to end once it can.
const ENDS_WITHIN: Duration = Duration::from_secs(20);

/// One daemon's settings: the team's Redis and PostgreSQL, a team secret, and a name of its
/// own in the team ledger.
fn config(redis: &str, db: &TestDb, dir: &Path, name: &str) -> String {
    let ledger = format!("postgres = \"{}\"\nname = \"{name}\"\n", db.url());
    team_config_with(redis, "restart:", dir, "2s", &ledger)
}

async fn team_cache_health(d: &Daemon) -> serde_json::Value {
    get(&d.url("/_chatcache/health")).await.json()["team_cache"].clone()
}

/// An answer asked of `a`, then of `b` once `a` has written it to Redis: a team hit there.
async fn shared(a: &Daemon, b: &Daemon, body: &str) {
    let written = a.app.team_cache.as_ref().unwrap().watch().borrow().written;
    let first = ask(a, body).await;
    assert_eq!(first.header("x-chatcache"), Some("miss"));
    team_reaches(a, "the answer written", |s| s.written > written).await;
    let hit = ask(b, body).await;
    assert_eq!(hit.header("x-chatcache"), Some("hit"));
    assert_eq!(hit.header("x-chatcache-tier"), Some("team"));
    assert_eq!(hit.body, first.body);
}

#[tokio::test]
async fn redis_killed_mid_stream_and_restarted_loses_no_answer_and_no_ledger_line() {
    let mut redis = Server::start();
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start_with(&fake.url(), &config(&redis.url, &db, dir.path(), "team-a")).await;
    let b = Daemon::start_with(&fake.url(), &config(&redis.url, &db, dir.path(), "team-b")).await;
    for d in [&a, &b] {
        team_reaches(d, "up", |s| s.up).await;
    }
    shared(&a, &b, &chat("before Redis goes")).await;

    // A stream led on A, held upstream after two frames, followed live on B.
    let body = chat_stream("Redis is killed while this is shared");
    let gate = fake.hold("killed");
    let mut lead = stream_at(&a.url(""), &body, "hold=killed@2").await;
    gate.arrived().await;
    lead.until("the leader's first frames", |g| events(g) >= 2)
        .await;
    let first = lead.got.clone();
    let mut follower = stream_at(&b.url(""), &body, "hold=killed@2").await;
    assert_eq!(
        follower.header("x-chatcache-tier"),
        Some("team"),
        "followed live"
    );
    follower
        .until("the follower's first frames", |g| g.len() >= first.len())
        .await;
    assert_eq!(follower.got, first);

    redis.kill();
    gate.release();
    lead.rest(ENDS_WITHIN)
        .await
        .expect("the leader's stream ends");
    let whole = post_with(
        &format!("{}/chat/completions", fake.url()),
        &body,
        &[("authorization", KEY)],
    )
    .await;
    assert!(
        lead.got == whole.body,
        "the leader's client: the whole answer, byte for byte"
    );
    follower
        .rest(ENDS_WITHIN)
        .await
        .expect("the follower's stream ends, with a frame that says why");
    ends_with_the_error_frame(&follower, &first);

    // Down on both; each answers on its own meanwhile.
    for d in [&a, &b] {
        team_reaches(d, "down", |s| !s.up).await;
        assert_eq!(team_cache_health(d).await, "down");
    }
    let alone = ask(&b, &chat("while Redis is gone")).await;
    assert_eq!(alone.status, http::StatusCode::OK);
    assert_eq!(alone.header("x-chatcache"), Some("miss"));

    // Back on its port, empty: the tier comes back by itself and is shared again.
    redis.restart();
    for d in [&a, &b] {
        team_reaches(d, "up again", |s| s.up).await;
        assert_eq!(team_cache_health(d).await, "up");
    }
    shared(&a, &b, &chat("after Redis is back")).await;

    // A: the first answer, the stream, the answer after; B: two team hits and its own
    // miss; the follower's broken stream is not accounted for.
    let on_a = ledger_of(&[a.data_dir.as_path()], 3).await;
    let on_b = ledger_of(&[b.data_dir.as_path()], 3).await;
    let outcomes = |lines: &[serde_json::Value]| -> Vec<String> {
        let mut o: Vec<String> = lines.iter().map(|l| l["outcome"].to_string()).collect();
        o.sort();
        o
    };
    assert_eq!(outcomes(&on_a), ["\"miss\"", "\"miss\"", "\"miss\""]);
    assert_eq!(outcomes(&on_b), ["\"hit\"", "\"hit\"", "\"miss\""]);
    db.wait_count(6, SHIPPED_WITHIN).await;
    let mut want = local_ids(&a.data_dir, "team-a");
    want.extend(local_ids(&b.data_dir, "team-b"));
    want.sort();
    assert_eq!(db.ids().await, want, "every line of each daemon, once");
    assert_eq!(
        fake.count("/chat/completions"),
        5,
        "upstream once per answer (and once for the test's own copy of the stream)"
    );
    a.stop().await;
    b.stop().await;
}
