//! The browser dashboard, loaded in a real headless Chromium against a daemon with a
//! scripted history: it shows the projects and totals the ledger holds, its filters come
//! from the page URL, and it makes no request outside the daemon.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::daemon::*;
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

#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    requests: u64,
    hits: u64,
    cost: f64,
    saved: f64,
}

/// Per project, summed from the ledger files themselves.
fn ledger_sums(data_dir: &Path) -> BTreeMap<String, Sums> {
    let mut out: BTreeMap<String, Sums> = BTreeMap::new();
    for l in ledger_lines(data_dir) {
        let s = out
            .entry(l["project"].as_str().unwrap().to_string())
            .or_default();
        s.requests += 1;
        if matches!(l["outcome"].as_str(), Some("hit" | "coalesced")) {
            s.hits += 1;
        }
        s.cost += l["cost"].as_f64().unwrap_or(0.0);
        s.saved += l["saved"].as_f64().unwrap_or(0.0);
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

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

// ---------------------------------------------------------------- a small DOM reader

#[derive(Debug, Clone)]
struct Tag {
    name: String,
    attrs: HashMap<String, String>,
    /// Byte offset just after the tag's `>`.
    end: usize,
}

impl Tag {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }
    fn num(&self, k: &str) -> f64 {
        let v = self
            .attr(k)
            .unwrap_or_else(|| panic!("<{}> has no {k}: {:?}", self.name, self.attrs));
        v.parse()
            .unwrap_or_else(|_| panic!("{k}={v:?} on <{}> is not a number", self.name))
    }
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Every start tag of the serialized DOM Chromium dumps (double-quoted attributes).
fn tags(html: &str) -> Vec<Tag> {
    let b = html.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        let start = i + off + 1;
        i = start;
        if start >= b.len() || !b[start].is_ascii_alphabetic() {
            continue;
        }
        let mut j = start;
        while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'>' && b[j] != b'/' {
            j += 1;
        }
        let name = html[start..j].to_ascii_lowercase();
        let mut attrs = HashMap::new();
        loop {
            while j < b.len() && (b[j].is_ascii_whitespace() || b[j] == b'/') {
                j += 1;
            }
            if j >= b.len() || b[j] == b'>' {
                break;
            }
            let k0 = j;
            while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'=' && b[j] != b'>' {
                j += 1;
            }
            let key = html[k0..j].to_ascii_lowercase();
            let mut value = String::new();
            if j < b.len() && b[j] == b'=' {
                j += 1;
                if j < b.len() && b[j] == b'"' {
                    let v0 = j + 1;
                    let v1 = v0 + html[v0..].find('"').expect("closed attribute");
                    value = unescape(&html[v0..v1]);
                    j = v1 + 1;
                } else {
                    let v0 = j;
                    while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'>' {
                        j += 1;
                    }
                    value = unescape(&html[v0..j]);
                }
            }
            attrs.insert(key, value);
        }
        let end = (j + 1).min(b.len());
        out.push(Tag { name, attrs, end });
        i = end;
    }
    out
}

/// The visible text from `from` up to the first `until` after it, tags removed.
fn text_until(html: &str, from: usize, until: &str) -> String {
    let rest = &html[from..];
    let chunk = &rest[..rest.find(until).unwrap_or(rest.len())];
    let mut text = String::new();
    let mut in_tag = false;
    for c in chunk.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    unescape(&text)
}

struct Page {
    html: String,
    tags: Vec<Tag>,
}

impl Page {
    fn new(html: String) -> Page {
        let tags = tags(&html);
        Page { html, tags }
    }
    fn find(&self, pred: impl Fn(&Tag) -> bool) -> Vec<&Tag> {
        self.tags.iter().filter(|t| pred(t)).collect()
    }
    fn one(&self, what: &str, pred: impl Fn(&Tag) -> bool) -> &Tag {
        let found = self.find(pred);
        assert_eq!(
            found.len(),
            1,
            "expected one {what} in the page:\n{}",
            self.html
        );
        found[0]
    }
    fn body(&self) -> &Tag {
        self.one("<body>", |t| t.name == "body")
    }
    fn card(&self, key: &str) -> &Tag {
        self.one(&format!("totals card {key}"), |t| {
            t.attr("data-total") == Some(key)
        })
    }
    fn card_text(&self, key: &str) -> String {
        text_until(&self.html, self.card(key).end, "</div>")
    }
    /// Project rows of the projects table: name → (requests, hit rate, cost, saved) tags.
    fn project_rows(&self) -> BTreeMap<String, String> {
        self.find(|t| t.name == "tr" && t.attr("data-project").is_some())
            .into_iter()
            .map(|t| {
                (
                    t.attr("data-project").unwrap().to_string(),
                    text_until(&self.html, t.end, "</tr>"),
                )
            })
            .collect()
    }
    /// The `data-field` cells of the row of `project`, in order.
    fn project_cells(&self, project: &str) -> HashMap<String, f64> {
        let row = self.one(&format!("row of {project}"), |t| {
            t.name == "tr" && t.attr("data-project") == Some(project)
        });
        let row_end = row.end + self.html[row.end..].find("</tr>").unwrap();
        self.tags
            .iter()
            .filter(|t| t.end > row.end && t.end < row_end && t.attr("data-field").is_some())
            .filter(|t| t.attr("data-value") != Some(""))
            .map(|t| {
                (
                    t.attr("data-field").unwrap().to_string(),
                    t.num("data-value"),
                )
            })
            .collect()
    }
    fn within(&self, id: &str) -> Vec<&Tag> {
        let open = self.one(&format!("#{id}"), |t| t.attr("id") == Some(id));
        // Sections here hold no nested element of the same name, so the next close ends it.
        let close = format!("</{}>", open.name);
        let end = open.end + self.html[open.end..].find(&close).unwrap();
        self.tags
            .iter()
            .filter(|t| t.end > open.end && t.end <= end)
            .collect()
    }
}

// ---------------------------------------------------------------- Chromium

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "this test needs a headless Chromium, and none was found on PATH \
         (looked for chromium, chromium-browser, google-chrome; or set CHROMIUM=/path). \
         Install the Debian package `chromium` (.ci/run does)."
    );
}

struct Browser {
    bin: PathBuf,
    profile: tempfile::TempDir,
    /// The daemon origin, `http://127.0.0.1:PORT`.
    origin: String,
}

struct Load {
    stdout: String,
    /// URLs the page itself requested (main frame and everything it loaded or fetched).
    page_urls: Vec<String>,
}

impl Browser {
    fn new(origin: String) -> Browser {
        Browser {
            bin: chromium(),
            profile: tempfile::tempdir().unwrap(),
            origin,
        }
    }

    /// Runs Chromium on `url` with `extra` flags; any host but 127.0.0.1 fails to
    /// resolve, and everything not loopback goes to a proxy that does not exist.
    async fn run(&self, url: &str, extra: &[String]) -> Load {
        let netlog = self.profile.path().join("netlog.json");
        let _ = std::fs::remove_file(&netlog);
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--disable-features=AutofillServerCommunication,Translate,MediaRouter",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
            "--virtual-time-budget=8000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            self.profile.path().join("profile").display()
        ))
        .arg(format!("--log-net-log={}", netlog.display()))
        .args(extra)
        .arg(url)
        .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("Chromium did not finish loading {url} within 90 s"))
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "Chromium failed on {url} ({}):\n{stderr}",
            out.status
        );
        Load {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            page_urls: page_requests(&netlog),
        }
    }

    async fn dom(&self, path: &str) -> Page {
        self.dom_in_state(path, "ready").await
    }

    /// The page at `path` once its script settled in `state` (its `data-state`).
    async fn dom_in_state(&self, path: &str, state: &str) -> Page {
        let url = format!("{}{path}", self.origin);
        let load = self.run(&url, &["--dump-dom".to_string()]).await;
        self.assert_stayed_home(&load, &url);
        let page = Page::new(load.stdout);
        assert_eq!(
            page.body().attr("data-state"),
            Some(state),
            "the dashboard at {url} did not settle as {state}:\n{}",
            page.html
        );
        page
    }

    async fn screenshot(&self, path: &str, file: &Path, size: &str) {
        let url = format!("{}{path}", self.origin);
        let load = self
            .run(
                &url,
                &[
                    format!("--screenshot={}", file.display()),
                    format!("--window-size={size}"),
                ],
            )
            .await;
        self.assert_stayed_home(&load, &url);
        let png = std::fs::read(file).expect("Chromium wrote the screenshot");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    }

    fn assert_stayed_home(&self, load: &Load, url: &str) {
        assert!(
            load.page_urls.iter().any(|u| u == url),
            "the net log shows the page load of {url}: {:?}",
            load.page_urls
        );
        assert!(
            load.page_urls
                .iter()
                .any(|u| u.contains("/_chatcache/spend?")),
            "the net log shows the page's API calls: {:?}",
            load.page_urls
        );
        let home = format!("{}/", self.origin);
        for u in &load.page_urls {
            assert!(
                u.starts_with(&home),
                "the dashboard requested {u}, outside the daemon {home}"
            );
            assert!(!u.contains("favicon"), "no favicon request: {u}");
        }
    }
}

/// The URLs a page at 127.0.0.1 requested, from Chromium's net log; the browser's own
/// background requests are not the page's (and fail anyway: see the flags).
fn page_requests(netlog: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(netlog)
        .unwrap_or_else(|e| panic!("Chromium wrote no net log at {}: {e}", netlog.display()));
    // Chromium may be stopped before it closes the JSON array; close it here.
    let v: serde_json::Value = serde_json::from_str(&text)
        .or_else(|_| serde_json::from_str(&format!("{}]}}", text.trim_end().trim_end_matches(','))))
        .expect("the net log is JSON");
    let start_job = v["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_u64()
        .expect("the net log names URL_REQUEST_START_JOB");
    v["events"]
        .as_array()
        .expect("net log events")
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start_job))
        .filter(|e| {
            // The page's own loads: its main frame, and whatever it initiated. (The
            // browser's own lookups, e.g. for autofill, are "not an origin".)
            let p = &e["params"];
            let main_frame = p["request_type"] == "main frame"
                && p["network_isolation_key"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("http://127.0.0.1"));
            main_frame
                || p["initiator"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("http://127.0.0.1"))
        })
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_string))
        .collect()
}

fn artifact_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------- the test

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
        let r = post_with(
            &d.url("/chat/completions"),
            &body,
            &[("authorization", KEY), ("x-chatcache-project", project)],
        )
        .await;
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
    for path in ["/_chatcache/", "/_chatcache/dashboard/app.js"] {
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
