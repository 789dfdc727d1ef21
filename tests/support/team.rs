//! What the team ledger tests share: a daemon's `[team]` settings and two daemons started
//! with them, traffic that makes ledger lines, the local ledger to compare with, and
//! bounded waits on the shipper.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use chatcache::spend::{LedgerLine, Outcome};

use super::daemon::*;
use super::pg::TestDb;
use super::FakeUpstream;

/// Long enough for a slow, shared machine; the polls return as soon as the rows are there.
pub const SHIPPED_WITHIN: Duration = Duration::from_secs(60);

pub fn team(url: &str, name: &str) -> String {
    format!("[team]\npostgres = \"{url}\"\nname = \"{name}\"\n")
}

/// Two daemons shipping to the team ledger at `url`, laptop-a and laptop-b, started at once.
pub async fn laptops(fake: &FakeUpstream, url: &str) -> (Daemon, Daemon) {
    let upstream = fake.url();
    let (team_a, team_b) = (team(url, "laptop-a"), team(url, "laptop-b"));
    tokio::join!(
        Daemon::start_with(&upstream, &team_a),
        Daemon::start_with(&upstream, &team_b),
    )
}

/// Sends `n` distinct requests and, for every third, the same request again (a hit);
/// returns when all their lines are in the local ledger.
pub async fn traffic(d: &Daemon, tag: &str, n: usize) -> usize {
    let before = ledger_lines(&d.data_dir).len();
    let mut sent = 0;
    for i in 0..n {
        let body = chat(&format!("{tag} {i}"));
        post(&d.url("/chat/completions"), &body).await;
        sent += 1;
        if i % 3 == 0 {
            post(&d.url("/chat/completions"), &body).await;
            sent += 1;
        }
    }
    let dir = d.data_dir.clone();
    eventually("every line in the local ledger", || {
        ledger_lines(&dir).len() == before + sent
    })
    .await;
    before + sent
}

/// The ids of the local ledger's lines, sorted, tagged with the daemon's name.
pub fn local_ids(data_dir: &Path, daemon: &str) -> Vec<(String, String)> {
    let mut ids: Vec<(String, String)> = ledger_lines(data_dir)
        .iter()
        .map(|l| (daemon.to_string(), l["id"].as_str().unwrap().to_string()))
        .collect();
    ids.sort();
    ids
}

pub fn local_cost(data_dir: &Path) -> f64 {
    ledger_lines(data_dir)
        .iter()
        .map(|l| l["cost"].as_f64().unwrap_or(0.0))
        .sum()
}

/// The health answer's `team_ledger` once `ready` holds of it, polled up to a deadline:
/// the shipper's progress has no event a test can wait on from outside.
pub async fn team_health(
    d: &Daemon,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    team_health_at(&d.url(""), ready).await
}

pub async fn team_health_at(
    base: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + SHIPPED_WITHIN;
    loop {
        let h = get(&format!("{base}/_chatcache/health")).await.json();
        let t = h["team_ledger"].clone();
        if ready(&t) {
            return t;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("the team ledger never got there: {t}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `n` ledger lines (costs 1..=n micro-units) as a daemon would have, for a
/// backlog the shipper needs several batches for.
pub fn backlog(data_dir: &Path, n: usize) -> f64 {
    use std::io::Write;
    let dir = data_dir.join("ledger");
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = Vec::new();
    let mut total = 0.0;
    let mut name = String::new();
    for i in 1..=n {
        let mut line = LedgerLine::new(
            &format!("p{}", i % 7),
            "/chat/completions",
            Outcome::Miss,
            200,
        );
        let cost = format!("{i}e-6");
        total += cost.parse::<f64>().unwrap();
        line.cost = Some(
            serde_json::value::RawValue::from_string(cost)
                .unwrap()
                .into(),
        );
        line.input_tokens = Some(i as u64);
        name = format!("{}.jsonl", &line.day()[..7]);
        line.write_json(&mut out);
        out.push(b'\n');
    }
    let mut f = std::fs::File::create(dir.join(name)).unwrap();
    f.write_all(&out).unwrap();
    f.sync_all().unwrap();
    total
}

/// Waits until the team ledger holds more than `last` rows; returns how many. A bounded
/// poll: the rows come from another process, and nothing announces them.
pub async fn progress(db: &TestDb, last: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + SHIPPED_WITHIN;
    loop {
        let now = db.count().await;
        if now > last {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress past {last} rows"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The server process of a shipper whose statement waits for a lock. A bounded poll of
/// pg_stat_activity: waiting is a state PostgreSQL shows, not an event it sends.
pub async fn blocked_shipper(db: &TestDb) -> i32 {
    let c = db.client().await;
    let deadline = tokio::time::Instant::now() + SHIPPED_WITHIN;
    loop {
        let rows = c
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1
                   AND application_name = 'chatcache' AND wait_event_type = 'Lock'",
                &[&db.name],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shipper never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
