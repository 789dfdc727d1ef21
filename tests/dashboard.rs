//! The browser dashboard, loaded in a real headless Chromium against a daemon with a
//! scripted history: it shows the projects and totals the ledger holds, its filters come
//! from the page URL, and it makes no request outside the daemon.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::browser::*;
use support::daemon::*;
use support::ledger_sums::{close, Sums};
use support::FakeUpstream;

const CONFIG: &str =
    "[projects.web]\nbudget = 5.0\nbudget_period = \"month\"\n\n[projects.batch]\n\n\
     [alerts]\nthresholds = [0.0001, 0.5]\n";

/// The projects, the prompts sent in each (repeats are cache hits) and the model used.
const SCRIPT: &[(&str, &str, &str, bool)] = &[
    ("web", "GPT-4 Turbo", "web question one", false),
    ("web", "GPT-4 Turbo", "web question two", false),
    ("web", "GPT-4 Turbo", "web streamed question", true),
    ("web", "GPT-4 Turbo", "web question one", false),
    ("batch", "Claude 3.5 Sonnet", "batch job alpha", false),
    ("batch", "Claude 3.5 Sonnet", "batch job beta", false),
    ("batch", "Claude 3.5 Sonnet", "batch job alpha", false),
    ("batch", "Claude 3.5 Sonnet", "batch job alpha", false),
    ("batch", "Claude 3.5 Sonnet", "batch job beta", false),
    ("ops", "GPT-4 Turbo", "ops check", false),
];

// ---------------------------------------------------------------- expected numbers

/// Per project, summed from the ledger files themselves.
fn ledger_sums(data_dir: &Path) -> BTreeMap<String, Sums> {
    let mut out: BTreeMap<String, Sums> = BTreeMap::new();
    for l in ledger_lines(data_dir) {
        let project = l["project"].as_str().unwrap().to_string();
        out.entry(project).or_default().add(&l);
    }
    out
}

fn total(sums: &BTreeMap<String, Sums>) -> Sums {
    sums.values().fold(Sums::default(), |a, s| Sums {
        requests: a.requests + s.requests,
        hits: a.hits + s.hits,
        cost: a.cost + s.cost,
        saved: a.saved + s.saved,
    })
}

async fn make_requests(d: &Daemon) {
    make_requests_of(d, SCRIPT).await;
}

async fn make_requests_of(d: &Daemon, script: &[(&str, &str, &str, bool)]) {
    for (project, model, prompt, stream) in script {
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": stream,
        })
        .to_string();
        let r = ask_in(d, project, &body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
}

/// Waits until the rollups the reports read hold every scripted request.
async fn settled_report(d: &Daemon) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&d.url("/_chatcache/spend?by=project")).await;
        assert_eq!(r.status, StatusCode::OK);
        let v = r.json();
        if v["total"]["requests"].as_u64() == Some(SCRIPT.len() as u64) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spend report never reached {} requests: {v}",
            SCRIPT.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_totals(page: &Page, want: Sums, what: &str) {
    let card = |k: &str| page.card(k).num("data-value");
    assert_eq!(card("requests") as u64, want.requests, "{what}: requests");
    assert!(
        close(card("cost"), want.cost),
        "{what}: spent {} vs {}",
        card("cost"),
        want.cost
    );
    assert!(
        close(card("saved"), want.saved),
        "{what}: saved {} vs {}",
        card("saved"),
        want.saved
    );
    let rate = want.hits as f64 / want.requests as f64;
    assert!(close(card("hit_rate"), rate), "{what}: hit rate");
    let shown = page.card_text("requests");
    assert!(
        shown.contains(&want.requests.to_string()),
        "{what}: the requests card reads {shown:?}"
    );
    let shown = page.card_text("hit_rate");
    assert!(
        shown.contains(&format!("{:.1}%", rate * 100.0)),
        "{what}: the hit rate card reads {shown:?}"
    );
}

fn assert_project_row(page: &Page, project: &str, want: Sums) {
    let cells = page.project_cells(project);
    assert_eq!(
        cells["requests"] as u64, want.requests,
        "{project}: requests"
    );
    assert!(close(cells["cost"], want.cost), "{project}: cost");
    assert!(close(cells["saved"], want.saved), "{project}: saved");
    assert!(
        close(cells["hit_rate"], want.hits as f64 / want.requests as f64),
        "{project}: hit rate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium_shows_the_ledger() {
    let browser_bin = chromium(); // fails now, clearly, if there is no Chromium
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), CONFIG).await;
    // Readings of /credits around the script's two halves, the second charged three times
    // over for Claude: two intervals in the reconciliation chart, the second flagged.
    assert_eq!(get(&d.url("/credits")).await.status, StatusCode::OK);
    make_requests_of(&d, &SCRIPT[..4]).await;
    assert_eq!(get(&d.url("/credits")).await.status, StatusCode::OK);
    fake.credits().overcharge("Claude 3.5 Sonnet", 3);
    make_requests_of(&d, &SCRIPT[4..]).await;
    assert_eq!(get(&d.url("/credits")).await.status, StatusCode::OK);
    let report = settled_report(&d).await;

    // Expected numbers come from the ledger files, and the report agrees with them.
    let sums = ledger_sums(&d.data_dir);
    assert_eq!(
        sums.keys().map(String::as_str).collect::<Vec<_>>(),
        ["batch", "ops", "web"]
    );
    let all = total(&sums);
    assert_eq!(all.requests, SCRIPT.len() as u64);
    assert_eq!(all.hits, 4);
    assert!(all.cost > 0.0 && all.saved > 0.0);
    assert!(close(report["total"]["cost"].as_f64().unwrap(), all.cost));
    assert!(close(report["total"]["saved"].as_f64().unwrap(), all.saved));

    // The page and its assets name nothing outside the daemon and forbid loading it.
    let index = get(&d.url("/_chatcache/")).await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(index
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = index.header("content-security-policy").unwrap().to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert_eq!(get(&d.url("/_chatcache")).await.body, index.body);
    for path in [
        "/_chatcache/",
        "/_chatcache/dashboard/app.js",
        "/_chatcache/dashboard/helpers.js",
        "/_chatcache/dashboard/api.js",
        "/_chatcache/dashboard/charts.js",
        "/_chatcache/dashboard/spend.js",
        "/_chatcache/dashboard/budgets.js",
        "/_chatcache/dashboard/team.js",
        "/_chatcache/dashboard/style.css",
    ] {
        let r = get(&d.url(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let text = r.text();
        for scheme in ["http://", "https://"] {
            for (at, _) in text.match_indices(scheme) {
                assert!(
                    text[at..].starts_with("http://www.w3.org/2000/svg"),
                    "{path} names an outside URL: {}",
                    &text[at..(at + 60).min(text.len())]
                );
            }
        }
        assert!(!text.contains("//cdn"), "{path}");
    }
    for t in tags(&index.text()) {
        for k in ["src", "href", "action"] {
            if let Some(v) = t.attr(k) {
                assert!(
                    v.starts_with("/_chatcache/") || v.starts_with("data:"),
                    "<{} {k}={v:?}> leaves the daemon",
                    t.name
                );
            }
        }
    }
    assert_eq!(
        get(&d.url("/_chatcache/dashboard/nope.js")).await.status,
        StatusCode::NOT_FOUND
    );

    let upstream_before = fake.requests().len();
    let browser = Browser::new(format!("http://{}", d.addr));
    assert_eq!(browser.bin, browser_bin);

    // ---- all projects
    let page = browser.dom("/_chatcache/").await;
    assert_eq!(page.body().attr("data-project"), Some(""));
    let rows = page.project_rows();
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        ["batch", "ops", "web"],
        "the projects table lists every project"
    );
    for (name, text) in &rows {
        assert!(
            text.contains(name.as_str()),
            "the row of {name} shows its name: {text:?}"
        );
    }
    assert_totals(&page, all, "all projects");
    for (name, s) in &sums {
        assert_project_row(&page, name, *s);
    }
    let spend_bars = page
        .within("chart-spend")
        .into_iter()
        .filter(|t| t.name == "rect")
        .count();
    assert!(
        spend_bars >= 3,
        "one spend bar per project today, got {spend_bars}"
    );
    assert!(page.within("chart-saved").iter().any(|t| t.name == "rect"));
    assert!(page.within("chart-hits").iter().any(|t| t.name == "circle"));
    let models: Vec<&str> = page
        .find(|t| t.attr("data-model").is_some())
        .iter()
        .map(|t| t.attr("data-model").unwrap())
        .collect();
    assert_eq!(
        models,
        ["GPT-4 Turbo", "Claude 3.5 Sonnet"],
        "top models, by cost"
    );
    let budgets: Vec<&str> = page
        .find(|t| t.attr("data-budget-project").is_some())
        .iter()
        .map(|t| t.attr("data-budget-project").unwrap())
        .collect();
    assert_eq!(budgets, ["batch", "web"], "configured projects");
    let web_budget = page.one("web budget", |t| {
        t.attr("data-budget-project") == Some("web")
    });
    let text = text_until(&page.html, web_budget.end, "</div></div>");
    assert!(text.contains("of $5.00"), "the web budget reads {text:?}");
    assert_eq!(
        web_budget.attr("data-alerted"),
        Some("0.0001"),
        "web is past its lowest alert threshold"
    );
    assert!(
        text.contains("alert 0.01%"),
        "the web budget reads {text:?}"
    );
    let intervals = page.find(|t| t.attr("data-interval").is_some());
    assert_eq!(intervals.len(), 2, "two intervals between three readings");
    assert_eq!(intervals[0].attr("data-flagged"), Some("false"));
    assert!(close(
        intervals[0].num("data-ledger"),
        intervals[0].num("data-drop")
    ));
    assert!(intervals[0].num("data-ledger") > 0.0);
    assert_eq!(intervals[1].attr("data-flagged"), Some("true"));
    assert!(intervals[1].num("data-drop") > intervals[1].num("data-ledger"));
    let bands = page
        .within("chart-reconcile")
        .into_iter()
        .filter(|t| t.attr("class") == Some("flag-band"))
        .count();
    assert_eq!(bands, 1, "the flagged interval is marked");
    let recent = page.find(|t| t.attr("data-recent-project").is_some());
    assert_eq!(
        recent.len(),
        SCRIPT.len(),
        "every request is in the recent list"
    );
    // Prompts stay out of the page unless admin.show_prompts is on.
    for (_, _, prompt, _) in SCRIPT {
        assert!(
            !page.html.contains(prompt),
            "the page shows the prompt {prompt:?}"
        );
    }
    assert!(!page.html.contains(">Prompt<"));

    // ---- one project, from the URL
    let page = browser.dom("/_chatcache/?project=web").await;
    assert_eq!(page.body().attr("data-project"), Some("web"));
    assert_eq!(
        page.project_rows()
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["web"]
    );
    assert_totals(&page, sums["web"], "project web");
    assert_project_row(&page, "web", sums["web"]);
    let selected = page.one("selected project", |t| {
        t.name == "option" && t.attrs.contains_key("selected")
    });
    assert_eq!(selected.attr("value"), Some("web"));
    // The filter lists every project to switch to.
    let options: Vec<&str> = page
        .find(|t| t.name == "option")
        .iter()
        .map(|t| t.attr("value").unwrap_or(""))
        .collect();
    assert_eq!(options, ["", "batch", "ops", "web"]);
    let models: Vec<&str> = page
        .find(|t| t.attr("data-model").is_some())
        .iter()
        .map(|t| t.attr("data-model").unwrap())
        .collect();
    assert_eq!(models, ["GPT-4 Turbo"]);
    let recent = page.find(|t| t.attr("data-recent-project").is_some());
    assert_eq!(recent.len(), 4);
    assert!(recent
        .iter()
        .all(|t| t.attr("data-recent-project") == Some("web")));
    assert_eq!(
        page.find(|t| t.attr("data-budget-project").is_some()).len(),
        1
    );

    // ---- a date range with nothing in it, from the URL
    let page = browser
        .dom("/_chatcache/?since=2001-01-01&until=2001-01-31&project=batch")
        .await;
    assert_eq!(page.card("requests").num("data-value"), 0.0);
    assert_eq!(page.card("cost").num("data-value"), 0.0);
    assert!(page.project_rows().is_empty());
    let since = page.one("since input", |t| t.attr("id") == Some("f-since"));
    assert_eq!(since.attr("value"), Some("2001-01-01"));
    assert!(page.html.contains("No requests in this range."));

    // ---- how it looks, wide and narrow
    let dir = artifact_dir();
    browser
        .screenshot("/_chatcache/", &dir.join("dashboard.png"), "1280,1600")
        .await;
    browser
        .screenshot(
            "/_chatcache/",
            &dir.join("dashboard-narrow.png"),
            "420,2400",
        )
        .await;

    assert_eq!(
        fake.requests().len(),
        upstream_before,
        "loading the dashboard sent nothing upstream"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_page_takes_it_from_its_address_fragment() {
    const TOKEN: &str = "dash-admin-token";
    let bearer = [("authorization", "Bearer dash-admin-token")];
    let fake = FakeUpstream::start().await;
    let config = format!("{CONFIG}\n[admin]\ntoken = \"{TOKEN}\"\n");
    let d = Daemon::start_with(&fake.url(), &config).await;

    // The page and its files hold no data, so anyone may load them; the data needs the token.
    for path in [
        "/_chatcache/",
        "/_chatcache/dashboard/app.js",
        "/_chatcache/dashboard/api.js",
    ] {
        let r = send(Method::GET, &d.url(path), &[], Bytes::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{path} without the token");
    }
    for path in ["/_chatcache/budgets", "/_chatcache/spend?by=project"] {
        let r = send(Method::GET, &d.url(path), &[], Bytes::new()).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{path} without the token"
        );
        let r = send(Method::GET, &d.url(path), &bearer, Bytes::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{path} with the token");
    }

    make_requests(&d).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let url = d.url("/_chatcache/spend?by=project");
        let v = send(Method::GET, &url, &bearer, Bytes::new()).await.json();
        if v["total"]["requests"].as_u64() == Some(SCRIPT.len() as u64) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "report: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = total(&ledger_sums(&d.data_dir));
    let origin = format!("http://{}", d.addr);

    // Opened with the token in its fragment, the page shows the ledger.
    let page = Browser::new(origin.clone())
        .dom_in_state(&format!("/_chatcache/#token={TOKEN}"), "ready")
        .await;
    assert_totals(&page, all, "opened with the admin token");

    // Opened without it, or with a wrong one, the page shows no data and says how to open it.
    for (path, refused) in [
        ("/_chatcache/", false),
        ("/_chatcache/#token=not-the-token", true),
    ] {
        let page = Browser::new(origin.clone())
            .dom_in_state(path, "locked")
            .await;
        let status = page.one("status", |t| t.attr("id") == Some("status"));
        let text = text_until(&page.html, status.end, "</p>");
        assert!(
            text.contains("/_chatcache/#token=<admin.token>"),
            "{path}: {text:?}"
        );
        assert_eq!(text.contains("refused"), refused, "{path}: {text:?}");
        assert!(
            page.find(|t| t.attr("data-total").is_some()).is_empty(),
            "{path}: no totals shown"
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn budgets_route_reports_spend_against_budgets() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), CONFIG).await;
    let r = get(&d.url("/_chatcache/budgets")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        serde_json::json!([
            {"project": "batch", "budget": null, "period": null, "spent": null, "remaining": null, "alerted": null},
            {"project": "web", "budget": 5.0, "period": "month", "spent": 0.0, "remaining": 5.0, "alerted": null},
        ])
    );
    make_requests(&d).await;
    let web = ledger_sums(&d.data_dir)["web"];
    let v = get(&d.url("/_chatcache/budgets")).await.json();
    assert!(close(v[1]["spent"].as_f64().unwrap(), web.cost), "{v}");
    assert!(
        close(v[1]["remaining"].as_f64().unwrap(), 5.0 - web.cost),
        "{v}"
    );
    d.stop().await;
}
