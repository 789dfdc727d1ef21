//! Team budgets on PostgreSQL: a project's budget holds across daemons, PostgreSQL away
//! refuses or falls back to each daemon's own budget as configured, and a dead daemon's
//! reservations expire. Each test has a database of its own (see `support::pg`).

mod support;

use std::time::Duration;

use support::daemon::*;
use support::forward::Forwarder;
use support::pg::TestDb;
use support::{FakeUpstream, FAULT_HEADER};

/// Output price per 1K tokens of "GPT-4 Turbo" in the fake's `/models`.
const OUT_PRICE: f64 = 0.06;
/// Input price per 1K characters (a character counts as a token in the worst case).
const IN_PRICE: f64 = 0.03;
const MAX_TOKENS: u64 = 50;

fn chat_capped(content: &str) -> String {
    serde_json::json!({
        "model": "GPT-4 Turbo",
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": content}],
    })
    .to_string()
}

/// No request's worst case is below its output at `max_tokens`...
fn least_worst_case() -> f64 {
    MAX_TOKENS as f64 * OUT_PRICE / 1000.0
}

/// ...nor above that plus every character of its body priced as input.
fn ceiling(body: &str) -> f64 {
    (body.len() as f64 * IN_PRICE + MAX_TOKENS as f64 * OUT_PRICE) / 1000.0
}

fn config(url: &str, name: &str, budget: f64, extra: &str) -> String {
    format!(
        "[team]\npostgres = \"{url}\"\nname = \"{name}\"\n{extra}\n\
         [projects.tight]\nbudget = {budget}\nbudget_period = \"day\"\n"
    )
}

/// Sends `per_daemon` distinct requests to each daemon at once, every answer held at the
/// fake until each request is either refused or waiting upstream: so every request
/// admitted was in flight at the same moment. Returns the statuses and the largest
/// ceiling of a request sent.
async fn held_burst(
    fake: &FakeUpstream,
    daemons: &[&Daemon],
    per_daemon: usize,
) -> (Vec<u16>, f64) {
    let gate = fake.hold("team");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    let mut most = 0.0f64;
    for (n, d) in daemons.iter().enumerate() {
        for i in 0..per_daemon {
            let body = chat_capped(&format!("daemon {n} question {i}"));
            most = most.max(ceiling(&body));
            let (url, tx) = (d.url("/p/tight/chat/completions"), tx.clone());
            tasks.push(tokio::spawn(async move {
                let r = post_with(
                    &url,
                    &body,
                    &[("authorization", KEY), (FAULT_HEADER, "hold=team")],
                )
                .await;
                let status = r.status.as_u16();
                if status != 200 {
                    let _ = tx.send((status, r.text()));
                }
                status
            }));
        }
    }
    let total = daemons.len() * per_daemon;
    let mut refused = 0;
    // Every request either comes back refused or reaches the gate.
    loop {
        tokio::select! {
            Some((status, text)) = rx.recv() => {
                assert_eq!(status, 402, "{text}");
                assert!(text.contains("budget_exceeded"), "{text}");
                refused += 1;
            }
            _ = gate.arrived_n(total - refused) => break,
        }
    }
    gate.release();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    (statuses, most)
}

fn spent(d: &Daemon) -> f64 {
    ledger_lines(&d.data_dir)
        .iter()
        .filter(|l| l["project"] == "tight")
        .map(|l| l["cost"].as_f64().unwrap_or(0.0))
        .sum()
}

async fn reservations(db: &TestDb, daemon: Option<&str>) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM chatcache_reservations WHERE $1::text IS NULL OR daemon = $1",
            &[&daemon],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_spend_no_more_than_one_team_budget() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let budget = 0.02;
    // Refuse rather than fall back, and wait long enough for a loaded machine: a request
    // admitted here was admitted by the team's database.
    let extra = "budget_when_down = \"refuse\"\nbudget_timeout = \"10s\"";
    let (url, upstream) = (db.url(), fake.url());
    let configs = ["a", "b", "c"].map(|name| config(&url, name, budget, extra));
    let (a, b, c) = tokio::join!(
        Daemon::start_with(&upstream, &configs[0]),
        Daemon::start_with(&upstream, &configs[1]),
        Daemon::start_with(&upstream, &configs[2]),
    );
    for d in [&a, &b, &c] {
        // Prices come from a /models answer that passed through each daemon.
        assert_eq!(get(&d.url("/models")).await.status, 200);
    }
    let (statuses, ceiling) = held_burst(&fake, &[&a, &b, &c], 12).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!(admitted + refused, statuses.len(), "{statuses:?}");
    assert!(admitted >= 1 && refused >= 1, "{statuses:?}");
    assert_eq!(fake.count("/chat/completions"), admitted);
    // All admitted were in flight at once, each holding at least the least worst case:
    // together they fit one budget (each daemon alone would have let in that many).
    assert!(
        admitted as f64 * least_worst_case() <= budget + 1e-12,
        "{admitted} admitted across the team"
    );
    let total: f64 = [&a, &b, &c].iter().map(|d| spent(d)).sum();
    assert!(
        total > 0.0 && total <= budget + ceiling,
        "spent {total} of {budget}"
    );
    // Every reservation goes with the line that replaces it. A bounded poll: the lines
    // arrive from the daemons' shippers, and PostgreSQL tells nobody.
    let lines: usize = [&a, &b, &c]
        .iter()
        .map(|d| ledger_lines(&d.data_dir).len())
        .sum();
    db.wait_count(lines as i64, Duration::from_secs(60)).await;
    assert_eq!(reservations(&db, None).await, 0, "all settled");
    for d in [a, b, c] {
        d.stop().await;
    }
}

#[tokio::test]
async fn what_one_daemon_spent_counts_on_another() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    // Requests without max_tokens reserve the ceiling: a few answers' cost plus one
    // ceiling make more than the budget.
    let extra = "budget_when_down = \"refuse\"\nbudget_timeout = \"10s\"";
    let ceiling = "max_request_cost = 0.009\n";
    let config = |name: &str| config(&db.url(), name, 0.01, extra) + ceiling;
    let a = Daemon::start_with(&fake.url(), &config("spends")).await;
    let b = Daemon::start_with(&fake.url(), &config("late")).await;
    let url = a.url("/p/tight/chat/completions");
    let mut admitted = 0;
    for i in 0..10 {
        let r = post_with(&url, &chat(&format!("on a {i}")), &[("authorization", KEY)]).await;
        if r.status == 402 {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        admitted += 1;
        // Until its line is shipped a request's reservation stays counted: wait for it.
        let lines = ledger_lines(&a.data_dir).len();
        db.wait_count(lines as i64, Duration::from_secs(60)).await;
        assert_eq!(reservations(&db, None).await, 0, "settled with its line");
    }
    assert!((1..10).contains(&admitted), "{admitted}");
    let r = post_with(
        &b.url("/p/tight/chat/completions"),
        &chat("on b"),
        &[("authorization", KEY)],
    )
    .await;
    assert_eq!(r.status, 402, "a's spend counts on b: {}", r.text());
    assert_eq!(spent(&b), 0.0, "b alone would have let it in");
    assert!(spent(&a) <= 0.01);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn postgres_away_refuses_budgeted_requests_when_so_configured() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let fwd = Forwarder::start(db.addr()).await;
    let extra = "budget_when_down = \"refuse\"\nbudget_timeout = \"300ms\"";
    let d = Daemon::start_with(
        &fake.url(),
        &config(&db.url_at(fwd.addr, None), "away", 1.0, extra),
    )
    .await;
    fwd.cut();
    let r = post_with(
        &d.url("/p/tight/chat/completions"),
        &chat_capped("while away"),
        &[("authorization", KEY)],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "team_budget_unavailable");
    assert_eq!(fake.count("/chat/completions"), 0, "nothing went upstream");
    // A project without a budget does not need the team's database.
    let r = post(&d.url("/chat/completions"), &chat("no budget here")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    fwd.restore();
    let r = post_with(
        &d.url("/p/tight/chat/completions"),
        &chat_capped("back again"),
        &[("authorization", KEY)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_away_falls_back_to_the_daemons_own_budget_by_default() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let fwd = Forwarder::start(db.addr()).await;
    let budget = 0.02;
    let d = Daemon::start_with(
        &fake.url(),
        &config(
            &db.url_at(fwd.addr, None),
            "alone",
            budget,
            "budget_timeout = \"300ms\"",
        ),
    )
    .await;
    assert_eq!(get(&d.url("/models")).await.status, 200);
    fwd.cut();
    let (statuses, ceiling) = held_burst(&fake, &[&d], 12).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        admitted >= 1 && admitted < statuses.len(),
        "the local budget admits some, not all: {statuses:?}"
    );
    assert!(admitted as f64 * least_worst_case() <= budget + ceiling);
    let total = spent(&d);
    assert!(total > 0.0 && total <= budget + ceiling, "spent {total}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reservation_of_a_dead_daemon_expires() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    // One worst case fits the budget, two do not.
    let budget = least_worst_case() * 1.5;
    let fwd = Forwarder::start(db.addr()).await;
    let ttl = "budget_ttl = \"3s\"\nbudget_timeout = \"10s\"\nbudget_when_down = \"refuse\"";
    let a = Daemon::start_with(
        &fake.url(),
        &config(&db.url_at(fwd.addr, None), "dies", budget, ttl),
    )
    .await;
    let b = Daemon::start_with(&fake.url(), &config(&db.url(), "lives", budget, ttl)).await;
    for d in [&a, &b] {
        assert_eq!(get(&d.url("/models")).await.status, 200);
    }
    let gate = fake.hold("dying");
    let held = {
        let url = a.url("/p/tight/chat/completions");
        tokio::spawn(async move {
            post_with(
                &url,
                &chat_capped("held on a"),
                &[("authorization", KEY), (FAULT_HEADER, "hold=dying")],
            )
            .await
        })
    };
    gate.arrived().await;
    let ask_b = |i: usize| {
        let url = b.url("/p/tight/chat/completions");
        async move {
            post_with(
                &url,
                &chat_capped(&format!("on b {i}")),
                &[("authorization", KEY)],
            )
            .await
        }
    };
    let r = ask_b(0).await;
    assert_eq!(
        r.status,
        402,
        "a's request in flight holds the budget: {}",
        r.text()
    );
    // A loses PostgreSQL and stops: its reservation is never settled nor released.
    fwd.cut();
    gate.release();
    assert_eq!(held.await.unwrap().status, 200);
    a.stop().await;
    assert_eq!(reservations(&db, Some("dies")).await, 1);
    // A bounded poll: the reservation expires by PostgreSQL's clock, and nothing tells.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut i = 1;
    loop {
        let r = ask_b(i).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 402, "{}", r.text());
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
        i += 1;
    }
    assert_eq!(reservations(&db, Some("dies")).await, 0, "expired rows go");
    b.stop().await;
}

#[tokio::test]
async fn a_live_daemon_renews_its_reservations() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let extra = "budget_ttl = \"1s\"\nbudget_timeout = \"10s\"\nbudget_when_down = \"refuse\"";
    let d = Daemon::start_with(&fake.url(), &config(&db.url(), "lives", 1.0, extra)).await;
    let gate = fake.hold("long");
    let held = {
        let url = d.url("/p/tight/chat/completions");
        tokio::spawn(async move {
            post_with(
                &url,
                &chat_capped("a long answer"),
                &[("authorization", KEY), (FAULT_HEADER, "hold=long")],
            )
            .await
        })
    };
    gate.arrived().await;
    let c = db.client().await;
    let expiry = || async {
        let row = c
            .query_one(
                "SELECT extract(epoch FROM expires_at)::float8 FROM chatcache_reservations",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, f64>(0)
    };
    let first = expiry().await;
    // A bounded poll: the renewal runs on the daemon's own clock, and PostgreSQL tells
    // nobody when a row changes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while expiry().await <= first {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a request in flight keeps its reservation alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gate.release();
    assert_eq!(held.await.unwrap().status, 200);
    let lines = ledger_lines(&d.data_dir).len();
    db.wait_count(lines as i64, Duration::from_secs(60)).await;
    assert_eq!(reservations(&db, None).await, 0, "settled with its line");
    d.stop().await;
}
