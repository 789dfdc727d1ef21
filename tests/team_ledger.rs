//! The team ledger on PostgreSQL: daemons ship their local ledger lines to one database,
//! every line exactly once, through PostgreSQL going away, batches sent twice and kill -9.
//! Each test has a database of its own on the test server (see `support::pg`).

mod support;

use support::daemon::*;
use support::forward::Forwarder;
use support::pg::TestDb;
use support::team::*;
use support::FakeUpstream;

#[tokio::test]
async fn two_daemons_ship_to_one_database_and_team_totals_are_the_sum_of_their_ledgers() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let password = "pw-Zq8Lm3Rt7Xc1";
    let url = db.url_at(db.addr(), Some(password));
    // Both start at once: the schema is made exactly once.
    let (a, b) = laptops(&fake, &url).await;
    let (na, nb) = tokio::join!(traffic(&a, "from a", 12), traffic(&b, "from b", 7));
    db.wait_count((na + nb) as i64, SHIPPED_WITHIN).await;

    let mut want = local_ids(&a.data_dir, "laptop-a");
    want.extend(local_ids(&b.data_dir, "laptop-b"));
    want.sort();
    assert_eq!(db.ids().await, want, "every line of each daemon, once");

    let c = db.client().await;
    for (d, name) in [(&a, "laptop-a"), (&b, "laptop-b")] {
        let row = c
            .query_one(
                "SELECT count(*), coalesce(sum(cost), 0)::float8 FROM chatcache_ledger WHERE daemon = $1",
                &[&name],
            )
            .await
            .unwrap();
        let (n, cost): (i64, f64) = (row.get(0), row.get(1));
        assert_eq!(n as usize, ledger_lines(&d.data_dir).len());
        let local = local_cost(&d.data_dir);
        assert!(local > 0.0, "the traffic cost something");
        assert!(
            (cost - local).abs() < 1e-9,
            "{name}: team {cost}, local {local}"
        );
    }
    // The team report: the sum of the local reports, and by daemon each one's own.
    let team = get(&a.url("/_chatcache/spend?team=1&by=daemon,project"))
        .await
        .json();
    let locals = [
        get(&a.url("/_chatcache/spend")).await.json(),
        get(&b.url("/_chatcache/spend")).await.json(),
    ];
    for field in [
        "requests",
        "cache_hits",
        "upstream_requests",
        "input_tokens",
        "output_tokens",
    ] {
        let sum: u64 = locals
            .iter()
            .map(|l| l["total"][field].as_u64().unwrap())
            .sum();
        assert_eq!(team["total"][field].as_u64(), Some(sum), "{field}: {team}");
    }
    let cost_sum: f64 = locals
        .iter()
        .map(|l| l["total"]["cost"].as_f64().unwrap())
        .sum();
    assert!((team["total"]["cost"].as_f64().unwrap() - cost_sum).abs() < 1e-9);
    for (name, local) in [("laptop-a", &locals[0]), ("laptop-b", &locals[1])] {
        let requests: u64 = team["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["daemon"] == name)
            .map(|r| r["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(
            requests,
            local["total"]["requests"].as_u64().unwrap(),
            "{name}"
        );
    }
    let r = get(&a.url("/_chatcache/spend?by=daemon")).await;
    assert_eq!(
        r.status,
        http::StatusCode::BAD_REQUEST,
        "by daemon is for team reports"
    );
    let migrations: i64 = c
        .query_one(
            "SELECT count(*) FROM chatcache_migrations WHERE version = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(migrations, 1);

    let t = team_health(&a, |t| t["pending_lines"] == 0 && t["state"] == "up").await;
    assert_eq!(t["daemon"], "laptop-a");
    assert_eq!(t["oldest_pending_seconds"], 0.0);
    assert_eq!(metric(&a, "chatcache_team_ledger_pending_lines").await, 0.0);
    assert_eq!(metric(&a, "chatcache_team_ledger_up").await, 1.0);
    // The password is in neither health, metrics nor the config as shown.
    let needles = secret_needles(password);
    for path in ["/_chatcache/health", "/_chatcache/metrics"] {
        assert_no_secret(&get(&a.url(path)).await.body, &needles, path);
    }
    assert_no_secret(format!("{:?}", a.app.config).as_bytes(), &needles, "config");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn postgres_away_for_a_while_then_back_every_line_arrives_once() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let fwd = Forwarder::start(db.addr()).await;
    let d = Daemon::start_with(&fake.url(), &team(&db.url_at(fwd.addr, None), "flaky")).await;
    let first = traffic(&d, "before", 5).await;
    db.wait_count(first as i64, SHIPPED_WITHIN).await;

    fwd.cut();
    let all = traffic(&d, "while away", 9).await;
    let queued = (all - first) as u64;
    // The lines wait in the local ledger, and the lag says so.
    let t = team_health(&d, |t| t["state"] == "down" && t["pending_lines"] == queued).await;
    assert!(t["last_error"].is_string(), "{t}");
    assert_eq!(
        metric(&d, "chatcache_team_ledger_pending_lines").await,
        queued as f64
    );
    assert_eq!(metric(&d, "chatcache_team_ledger_up").await, 0.0);
    let age = team_health(&d, |t| t["oldest_pending_seconds"].as_f64().unwrap() > 0.0).await;
    assert!(
        age["oldest_pending_seconds"].as_f64().unwrap() < 600.0,
        "{age}"
    );
    assert_eq!(
        db.count().await,
        first as i64,
        "nothing reached the database"
    );

    fwd.restore();
    db.wait_count(all as i64, SHIPPED_WITHIN).await;
    assert_eq!(db.ids().await, local_ids(&d.data_dir, "flaky"));
    team_health(&d, |t| t["state"] == "up" && t["pending_lines"] == 0).await;
    d.stop().await;
}

#[tokio::test]
async fn a_batch_sent_again_doubles_nothing() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let extra = team(&db.url(), "again");
    let d = Daemon::start_with(&fake.url(), &extra).await;
    let n = traffic(&d, "once", 10).await;
    db.wait_count(n as i64, SHIPPED_WITHIN).await;
    team_health(&d, |t| t["pending_lines"] == 0).await;

    // The cursor is lost (as with a store moved aside): every line goes again.
    let mut cursors = Vec::new();
    d.app
        .store
        .scan_prefix(
            chatcache::store::Space::Meta,
            b"team.ledger.cursor/",
            |k, _| {
                cursors.push(k.to_vec());
                true
            },
        )
        .unwrap();
    assert_eq!(cursors.len(), 1, "one ledger file, one cursor");
    let ops = cursors
        .into_iter()
        .map(chatcache::store::Op::Remove)
        .collect();
    d.app
        .store
        .apply(chatcache::store::Space::Meta, ops)
        .unwrap();
    d.app.store.flush().unwrap();
    let data_dir = d.data_dir.clone();
    let keep = d.stop().await;

    let d = Daemon::start_in(&data_dir, &fake.url(), &extra).await;
    let t = team_health(&d, |t| t["sent_lines"] == n as u64).await;
    assert_eq!(t["inserted_lines"], 0, "{t}");
    assert_eq!(
        metric(&d, "chatcache_team_ledger_sent_lines_total").await,
        n as f64
    );
    assert_eq!(db.count().await, n as i64);
    assert_eq!(db.ids().await, local_ids(&data_dir, "again"));
    d.stop().await;
    drop(keep);
}

#[tokio::test]
async fn a_daemon_killed_mid_batch_loses_nothing_and_doubles_nothing() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let total = 40_000;
    let cost = backlog(&data, total);
    let password = "pw-Kill9-Hx4Vb7Nq";
    let config = dir.path().join("chatcache.toml");
    let url = db.url_at(db.addr(), Some(password));
    std::fs::write(&config, team(&url, "killed")).unwrap();
    let config_arg = config.to_str().unwrap();
    let log = dir.path().join("log.txt");
    let start = || spawn_binary(&fake.url(), &data, &["--config", config_arg], "debug", &log);

    // First, for certain mid-batch: killed while its INSERT waits inside PostgreSQL (the
    // test holds a lock on the table), and that transaction is then ended uncommitted.
    let mut child = start();
    let mut last = progress(&db, 0).await;
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE chatcache_ledger IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let pid = blocked_shipper(&db).await;
    child.signal("KILL");
    child.wait();
    let admin = db.client().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    locker.batch_execute("ROLLBACK").await.unwrap();
    let now = db.count().await;
    assert!(now >= last && (now as usize) < total, "{now} of {total}");
    last = now;

    // Then killed at whatever moment the next rows show up.
    for _ in 0..3 {
        let mut child = start();
        last = progress(&db, last).await;
        child.signal("KILL");
        child.wait();
        last = last.max(db.count().await);
    }
    assert!((last as usize) < total, "the kills all came after the end");
    assert_no_secret(
        &std::fs::read(&log).unwrap(),
        &secret_needles(password),
        "log",
    );
    let mut child = spawn_binary(&fake.url(), &data, &["--config", config_arg], "info", &log);
    db.wait_count(total as i64, SHIPPED_WITHIN).await;
    let base = format!("http://{}", child.addr);
    team_health_at(&base, |t| t["state"] == "up" && t["pending_lines"] == 0).await;
    // `chatcache stats` beside the running daemon shows its shipping.
    let stats = succeed(
        binary()
            .args([
                "stats",
                "--config",
                config_arg,
                "--listen",
                &child.addr,
                "--data-dir",
            ])
            .arg(&data),
    );
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.contains("team       ledger up, 0 lines to ship"),
        "{stats}"
    );
    child.signal("TERM");
    child.wait();

    // `chatcache spend --team`, with no daemon running: read from PostgreSQL in-process.
    let out = succeed(
        binary()
            .args([
                "spend", "--team", "--by", "daemon", "--format", "json", "--config", config_arg,
            ])
            .arg("--data-dir")
            .arg(&data),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"][0]["daemon"], "killed", "{report}");
    assert_eq!(report["total"]["requests"].as_u64(), Some(total as u64));

    let check = succeed(binary().args(["config", "check", "--config", config_arg]));
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        shown.contains(":***@") && shown.contains("\"killed\""),
        "{shown}"
    );
    assert_no_secret(&check.stdout, &secret_needles(password), "config check");

    let c = db.client().await;
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT id), sum(cost)::float8, sum(input_tokens)::int8 FROM chatcache_ledger",
            &[],
        )
        .await
        .unwrap();
    let (rows, distinct, sum, tokens): (i64, i64, f64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((rows, distinct), (total as i64, total as i64));
    assert!((sum - cost).abs() < 1e-9, "team {sum}, local {cost}");
    assert_eq!(tokens as usize, total * (total + 1) / 2);
    assert_eq!(db.ids().await, local_ids(&data, "killed"));
    assert_no_secret(
        &std::fs::read(&log).unwrap(),
        &secret_needles(password),
        "log",
    );
}

#[tokio::test]
async fn tls_to_postgres_is_verified() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let ssl: String = db
        .client()
        .await
        .query_one("SHOW ssl", &[])
        .await
        .unwrap()
        .get(0);
    let url = db.url().replace("sslmode=disable", "sslmode=require");
    let d = Daemon::start_with(&fake.url(), &team(&url, "tls")).await;
    let n = traffic(&d, "over tls", 2).await;
    let t = team_health(&d, |t| {
        t["state"] == "down" && t["pending_lines"] == n as u64
    })
    .await;
    let error = t["last_error"].as_str().unwrap().to_string();
    if ssl == "on" {
        // The test server's certificate is its own (Debian's snakeoil), not one the
        // system roots vouch for: refused, never trusted. (A server without TLS refuses
        // sslmode=require by itself.)
        assert!(error.contains("certificate"), "{error}");
    }
    assert_eq!(t["pending_lines"], n as u64);
    assert_eq!(
        db.count().await,
        0,
        "nothing went over an unverified connection"
    );
    d.stop().await;
}
