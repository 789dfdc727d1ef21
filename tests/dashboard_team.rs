//! The dashboard with a team ledger, in a real headless Chromium: two daemons shipping to
//! one PostgreSQL database, and the team panel of one shows both daemons' spend; without a
//! team ledger there is no team panel; with PostgreSQL unreachable the panel, health and
//! the metrics say so. Each test has a database of its own (see `support::pg`).

mod support;

use std::collections::BTreeMap;

use http::StatusCode;
use support::browser::*;
use support::daemon::*;
use support::ledger_sums::{close, Sums};
use support::pg::TestDb;
use support::team::*;
use support::FakeUpstream;

/// (project, prompt): a prompt sent again in the same project is a cache hit.
const SCRIPT_A: &[(&str, &str)] = &[
    ("web", "a web one"),
    ("web", "a web two"),
    ("web", "a web one"),
    ("batch", "a batch one"),
    ("batch", "a batch two"),
];
const SCRIPT_B: &[(&str, &str)] = &[
    ("web", "b web one"),
    ("ops", "b ops one"),
    ("ops", "b ops one"),
    ("ops", "b ops two"),
];

async fn send_script(d: &Daemon, script: &[(&str, &str)]) {
    for (project, prompt) in script {
        let r = ask_in(d, project, &chat(prompt)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let dir = d.data_dir.clone();
    eventually("the script's lines in the local ledger", || {
        ledger_lines(&dir).len() == script.len()
    })
    .await;
}

fn assert_row(page: &Page, attr: &str, name: &str, want: Sums) {
    let cells = page.row_cells(attr, name);
    assert_eq!(cells["requests"] as u64, want.requests, "{name}: requests");
    assert!(
        close(cells["cost"], want.cost),
        "{name}: cost {cells:?} vs {want:?}"
    );
    assert!(
        close(cells["saved"], want.saved),
        "{name}: saved {cells:?} vs {want:?}"
    );
    let rate = want.hits as f64 / want.requests as f64;
    assert!(close(cells["hit_rate"], rate), "{name}: hit rate {cells:?}");
}

fn names(page: &Page, attr: &str) -> Vec<String> {
    page.find(|t| t.name == "tr" && t.attr(attr).is_some())
        .iter()
        .map(|t| t.attr(attr).unwrap().to_string())
        .collect()
}

fn team_total(page: &Page, key: &str) -> f64 {
    page.one(&format!("team total {key}"), |t| {
        t.attr("data-team-total") == Some(key)
    })
    .num("data-value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_team_panel_shows_every_daemons_spend_by_project_and_by_daemon() {
    let _ = chromium(); // fails now, clearly, if there is no Chromium
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let (a, b) = laptops(&fake, &db.url()).await;
    tokio::join!(send_script(&a, SCRIPT_A), send_script(&b, SCRIPT_B));
    db.wait_count((SCRIPT_A.len() + SCRIPT_B.len()) as i64, SHIPPED_WITHIN)
        .await;
    team_health(&a, |t| t["pending_lines"] == 0 && t["postgres"] == "up").await;

    // Expected numbers come from the two local ledgers.
    let mut by_project: BTreeMap<String, Sums> = BTreeMap::new();
    let mut by_daemon: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut all = Sums::default();
    for (d, name) in [(&a, "laptop-a"), (&b, "laptop-b")] {
        for l in ledger_lines(&d.data_dir) {
            let project = l["project"].as_str().unwrap().to_string();
            by_project.entry(project).or_default().add(&l);
            by_daemon.entry(name).or_default().add(&l);
            all.add(&l);
        }
    }
    assert_eq!(all.requests, 9);
    assert_eq!(all.hits, 2);
    assert!(all.cost > 0.0 && all.saved > 0.0);

    let browser = Browser::new(format!("http://{}", a.addr));
    let page = browser.dom("/_chatcache/").await;
    assert_eq!(
        page.body().attr("data-team"),
        Some("ready"),
        "{}",
        page.html
    );

    // The team's totals and rows: both daemons, from PostgreSQL.
    assert_eq!(team_total(&page, "requests") as u64, all.requests);
    assert!(close(team_total(&page, "cost"), all.cost), "team spent");
    assert!(close(team_total(&page, "saved"), all.saved), "team saved");
    assert_eq!(team_total(&page, "daemons"), 2.0);
    assert_eq!(
        names(&page, "data-team-project"),
        order_by_cost(&by_project),
        "every project of either daemon, as the report orders them"
    );
    for (project, want) in &by_project {
        assert_row(&page, "data-team-project", project, *want);
    }
    let mut daemons = names(&page, "data-daemon");
    daemons.sort();
    assert_eq!(daemons, ["laptop-a", "laptop-b"]);
    for (name, want) in &by_daemon {
        assert_row(&page, "data-daemon", name, *want);
    }
    let mine = page.one("this daemon's row", |t| {
        t.attr("data-daemon") == Some("laptop-a")
    });
    assert!(
        text_until(&page.html, mine.end, "</th>").contains("this daemon"),
        "this daemon's row is marked"
    );

    // This daemon's shipping, and its own figures beside the team's.
    let ship = page.one("shipping line", |t| t.attr("id") == Some("team-shipping"));
    assert_eq!(ship.attr("data-pending"), Some("0"));
    assert_eq!(ship.attr("data-postgres"), Some("up"));
    let text = text_until(&page.html, ship.end, "</p>");
    assert!(
        text.contains("laptop-a") && text.contains("PostgreSQL reachable"),
        "{text:?}"
    );
    let local = by_daemon["laptop-a"];
    assert_eq!(
        page.card("requests").num("data-value") as u64,
        local.requests
    );
    assert!(close(page.card("cost").num("data-value"), local.cost));
    let mut local_projects: Vec<String> = page.project_rows().into_keys().collect();
    local_projects.sort();
    assert_eq!(
        local_projects,
        ["batch", "web"],
        "this daemon's own projects"
    );

    // For a look by eye (target/test-artifacts).
    browser
        .screenshot(
            "/_chatcache/",
            &artifact_dir().join("dashboard-team.png"),
            "1280,1800",
        )
        .await;

    // The project filter applies to the team's figures too.
    let page = browser.dom("/_chatcache/?project=web").await;
    assert_eq!(names(&page, "data-team-project"), ["web"]);
    assert_row(&page, "data-team-project", "web", by_project["web"]);
    assert_eq!(
        team_total(&page, "requests") as u64,
        by_project["web"].requests
    );
    a.stop().await;
    b.stop().await;
}

/// Project names as the team report lists them (by cost, most first).
fn order_by_cost(sums: &BTreeMap<String, Sums>) -> Vec<String> {
    let mut v: Vec<(&String, &Sums)> = sums.iter().collect();
    v.sort_by(|x, y| y.1.cost.total_cmp(&x.1.cost).then(x.0.cmp(y.0)));
    v.into_iter().map(|(p, _)| p.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_team_ledger_there_is_no_team_panel() {
    let _ = chromium();
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake.url()).await;
    send_script(&d, SCRIPT_A).await;
    let health = get(&d.url("/_chatcache/health")).await.json();
    assert!(health["team_ledger"].is_null(), "{health}");
    let metrics = get(&d.url("/_chatcache/metrics")).await.text();
    assert!(!metrics.contains("chatcache_team_"), "{metrics}");

    let page = Browser::new(format!("http://{}", d.addr))
        .dom("/_chatcache/")
        .await;
    assert_eq!(page.body().attr("data-team"), Some("none"));
    assert!(page.find(|t| t.attr("id") == Some("team")).is_empty());
    assert!(page
        .find(|t| t.attr("data-team-total").is_some()
            || t.attr("data-team-project").is_some()
            || t.attr("data-daemon").is_some()
            || t.attr("id") == Some("team-shipping"))
        .is_empty());
    assert!(!page.html.contains("Team"), "no team wording at all");
    assert_eq!(page.card("requests").num("data-value") as u64, 5);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_said_by_health_the_metrics_and_the_team_panel() {
    let _ = chromium();
    let fake = FakeUpstream::start().await;
    let password = "pw-Kd82hQm4Vx";
    let url = format!(
        "postgres://chatcache:{password}@127.0.0.1:{}/team?sslmode=disable",
        support::closed_port()
    );
    let extra = format!("{}budget_when_down = \"refuse\"\n", team(&url, "offline"));
    let d = Daemon::start_with(&fake.url(), &extra).await;
    send_script(&d, SCRIPT_B).await;

    let t = team_health(&d, |t| {
        t["postgres"] == "down" && t["pending_lines"] == SCRIPT_B.len()
    })
    .await;
    assert_eq!(t["budgets"], "refuse", "{t}");
    assert_eq!(metric(&d, "chatcache_team_postgres_up").await, 0.0);
    assert_eq!(metric(&d, "chatcache_team_ledger_pending_lines").await, 4.0);
    let needles = secret_needles(password);
    for path in ["/_chatcache/health", "/_chatcache/metrics"] {
        assert_no_secret(&get(&d.url(path)).await.body, &needles, path);
    }

    let browser = Browser::new(format!("http://{}", d.addr));
    let page = browser.dom("/_chatcache/").await;
    assert_eq!(
        page.body().attr("data-team"),
        Some("unreachable"),
        "{}",
        page.html
    );
    browser
        .screenshot(
            "/_chatcache/",
            &artifact_dir().join("dashboard-team-down.png"),
            "1280,900",
        )
        .await;
    let team = page.within("team");
    let text = text_until(
        &page.html,
        page.one("#team", |t| t.attr("id") == Some("team")).end,
        "</section>",
    );
    assert!(text.contains("PostgreSQL is unreachable"), "{text:?}");
    assert!(text.contains("budgeted requests are refused"), "{text:?}");
    assert!(
        !team.iter().any(|t| t.attr("data-team-total").is_some()
            || t.attr("data-team-project").is_some()
            || t.attr("data-daemon").is_some()),
        "no team figures while PostgreSQL cannot be read: {text:?}"
    );
    let ship = page.one("shipping line", |t| t.attr("id") == Some("team-shipping"));
    assert_eq!(ship.attr("data-postgres"), Some("down"));
    assert_eq!(ship.attr("data-pending"), Some("4"));
    assert_no_secret(page.html.as_bytes(), &needles, "the dashboard");
    // This daemon's own figures are there, as without a team.
    assert_eq!(page.card("requests").num("data-value") as u64, 4);
    d.stop().await;
}

#[tokio::test]
async fn a_database_gone_with_nothing_to_ship_is_noticed() {
    let db = TestDb::create().await;
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), &team(&db.url(), "idle")).await;
    send_script(&d, SCRIPT_A).await;
    let t = team_health(&d, |t| t["pending_lines"] == 0 && t["postgres"] == "up").await;
    assert_eq!(t["budgets"], "team", "{t}");
    assert_eq!(metric(&d, "chatcache_team_postgres_up").await, 1.0);

    // Nothing is left to ship, so only the probe talks to PostgreSQL now.
    db.drop_now().await;
    let t = team_health(&d, |t| t["postgres"] == "down").await;
    assert_eq!(t["budgets"], "local", "{t}");
    assert_eq!(metric(&d, "chatcache_team_postgres_up").await, 0.0);
    let r = get(&d.url("/_chatcache/spend?team=1&by=daemon")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    d.stop().await;
}
