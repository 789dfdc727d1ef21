//! Test support for the dashboard: a small reader of the DOM that headless Chromium dumps,
//! and the browser itself, started per test with its own profile and network log.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Tag {
    pub name: String,
    pub attrs: HashMap<String, String>,
    /// Byte offset just after the tag's `>`.
    pub end: usize,
}

impl Tag {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }
    pub fn num(&self, k: &str) -> f64 {
        let v = self
            .attr(k)
            .unwrap_or_else(|| panic!("<{}> has no {k}: {:?}", self.name, self.attrs));
        v.parse()
            .unwrap_or_else(|_| panic!("{k}={v:?} on <{}> is not a number", self.name))
    }
}

pub fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Every start tag of the serialized DOM Chromium dumps (double-quoted attributes).
pub fn tags(html: &str) -> Vec<Tag> {
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
pub fn text_until(html: &str, from: usize, until: &str) -> String {
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

pub struct Page {
    pub html: String,
    pub tags: Vec<Tag>,
}

impl Page {
    pub fn new(html: String) -> Page {
        let tags = tags(&html);
        Page { html, tags }
    }
    pub fn find(&self, pred: impl Fn(&Tag) -> bool) -> Vec<&Tag> {
        self.tags.iter().filter(|t| pred(t)).collect()
    }
    pub fn one(&self, what: &str, pred: impl Fn(&Tag) -> bool) -> &Tag {
        let found = self.find(pred);
        assert_eq!(
            found.len(),
            1,
            "expected one {what} in the page:\n{}",
            self.html
        );
        found[0]
    }
    pub fn body(&self) -> &Tag {
        self.one("<body>", |t| t.name == "body")
    }
    pub fn card(&self, key: &str) -> &Tag {
        self.one(&format!("totals card {key}"), |t| {
            t.attr("data-total") == Some(key)
        })
    }
    pub fn card_text(&self, key: &str) -> String {
        text_until(&self.html, self.card(key).end, "</div>")
    }
    /// Project rows of the projects table: name → (requests, hit rate, cost, saved) tags.
    pub fn project_rows(&self) -> BTreeMap<String, String> {
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
    /// The `data-field` cells of the row of `project`.
    pub fn project_cells(&self, project: &str) -> HashMap<String, f64> {
        self.row_cells("data-project", project)
    }
    /// The `data-field` cells of the one row whose `attr` is `name`.
    pub fn row_cells(&self, attr: &str, name: &str) -> HashMap<String, f64> {
        let row = self.one(&format!("row {attr}={name}"), |t| {
            t.name == "tr" && t.attr(attr) == Some(name)
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
    pub fn within(&self, id: &str) -> Vec<&Tag> {
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

pub fn chromium() -> PathBuf {
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

pub struct Browser {
    pub bin: PathBuf,
    pub profile: tempfile::TempDir,
    /// The daemon origin, `http://127.0.0.1:PORT`.
    pub origin: String,
}

pub struct Load {
    pub stdout: String,
    /// URLs the page itself requested (main frame and everything it loaded or fetched).
    pub page_urls: Vec<String>,
}

impl Browser {
    pub fn new(origin: String) -> Browser {
        Browser {
            bin: chromium(),
            profile: tempfile::tempdir().unwrap(),
            origin,
        }
    }

    /// Runs Chromium on `url` with `extra` flags; any host but 127.0.0.1 fails to
    /// resolve, and everything not loopback goes to a proxy that does not exist.
    pub async fn run(&self, url: &str, extra: &[String]) -> Load {
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

    pub async fn dom(&self, path: &str) -> Page {
        self.dom_in_state(path, "ready").await
    }

    /// The page at `path` once its script settled in `state` (its `data-state`).
    pub async fn dom_in_state(&self, path: &str, state: &str) -> Page {
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

    pub async fn screenshot(&self, path: &str, file: &Path, size: &str) {
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

    pub fn assert_stayed_home(&self, load: &Load, url: &str) {
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
pub fn page_requests(netlog: &Path) -> Vec<String> {
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

pub fn artifact_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------- the test
