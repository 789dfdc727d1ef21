//! Who may use the admin API: loopback peers only without `admin.token`, the right bearer
//! token from anyone with it (the dashboard's page and files, which hold no data, then
//! from anyone). Checked on the rule itself, and, where the machine allows it, from a
//! test host in a network namespace wired to this one by a veth pair.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use chatcache::admin::check_access;
use chatcache::app::App;
use chatcache::config::{Config, Overrides};
use chatcache::error::ApiError;
use http::{header, HeaderMap, HeaderValue, Method};
use support::daemon::*;
use support::FakeUpstream;

const ADMIN_TOKEN: &str = "admin-token-for-tests-7f3a";

fn open_app(dir: &std::path::Path, extra: &str) -> Arc<App> {
    // The upstream is never contacted here.
    App::open(test_config("http://127.0.0.1:9", dir, extra)).unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The rule for a GET of the spend report, which holds data.
fn may_read_spend(app: &App, headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiError> {
    check_access(app, &Method::GET, "/_chatcache/spend", headers, peer)
}

#[tokio::test]
async fn without_a_token_only_loopback_peers_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let app = open_app(dir.path(), "");
    let none = HeaderMap::new();
    for ok in ["127.0.0.1:40000", "127.8.9.10:1", "[::1]:40000"] {
        assert!(
            may_read_spend(&app, &none, peer(ok)).is_ok(),
            "{ok} is loopback"
        );
    }
    for refused in [
        "10.203.0.2:40000",
        "192.168.1.20:5000",
        "[fe80::1]:40000",
        "[2001:db8::1]:443",
    ] {
        assert!(
            matches!(
                may_read_spend(&app, &none, peer(refused)),
                Err(ApiError::Forbidden)
            ),
            "{refused} is not loopback"
        );
        // A bearer token means nothing when none is configured.
        assert!(matches!(
            may_read_spend(&app, &bearer("anything"), peer(refused)),
            Err(ApiError::Forbidden)
        ));
    }
    app.close().await;
}

#[tokio::test]
async fn with_a_token_everyone_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = open_app(dir.path(), &format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n"));
    for p in ["127.0.0.1:40000", "[::1]:1", "10.203.0.2:40000"] {
        let p = peer(p);
        assert!(
            may_read_spend(&app, &bearer(ADMIN_TOKEN), p).is_ok(),
            "{p} with the token"
        );
        assert!(
            matches!(
                may_read_spend(&app, &HeaderMap::new(), p),
                Err(ApiError::Unauthorized(_))
            ),
            "{p} without a token, even on loopback"
        );
        for wrong in ["admin-token-for-tests-7f3b", "", "admin-token-for-tests"] {
            assert!(
                matches!(
                    may_read_spend(&app, &bearer(wrong), p),
                    Err(ApiError::Unauthorized(_))
                ),
                "{p} with {wrong:?}"
            );
        }
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {ADMIN_TOKEN}")).unwrap(),
        );
        assert!(may_read_spend(&app, &basic, p).is_err(), "{p}: only Bearer");
    }
    app.close().await;
}

#[tokio::test]
async fn with_a_token_the_dashboard_page_is_open_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let app = open_app(dir.path(), &format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n"));
    let none = HeaderMap::new();
    let far = peer("10.203.0.2:40000");
    for page in [
        "/_chatcache",
        "/_chatcache/",
        "/_chatcache/dashboard/app.js",
        "/_chatcache/dashboard/team.js",
        "/_chatcache/dashboard/style.css",
    ] {
        assert!(
            check_access(&app, &Method::GET, page, &none, far).is_ok(),
            "GET {page} without the token"
        );
        assert!(
            check_access(&app, &Method::POST, page, &none, far).is_err(),
            "POST {page} without the token"
        );
    }
    for data in [
        "/_chatcache/spend",
        "/_chatcache/recent",
        "/_chatcache/budgets",
        "/_chatcache/cache/stats",
        "/_chatcache/health",
        "/_chatcache/dashboard/",
        "/_chatcache/dashboard/other.js",
        "/_chatcache//",
        "/_chatcache/_chatcache/",
    ] {
        assert!(
            matches!(
                check_access(&app, &Method::GET, data, &none, far),
                Err(ApiError::Unauthorized(_))
            ),
            "GET {data} without the token"
        );
    }
    app.close().await;

    // Without a token, the page is no more open than the rest: loopback only.
    let dir = tempfile::tempdir().unwrap();
    let app = open_app(dir.path(), "");
    assert!(matches!(
        check_access(&app, &Method::GET, "/_chatcache/", &none, far),
        Err(ApiError::Forbidden)
    ));
    app.close().await;
}

// ---------------------------------------------------------------- a host in a namespace

/// The /30 the test host and this host share: this end, and the test host's end.
const HOST_ADDR: &str = "10.203.0.1";
const GUEST_ADDR: &str = "10.203.0.2";
const PREFIX_LEN: u8 = 30;

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why a namespace cannot be made here, if it cannot.
fn netns_unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_string));
    if uid.as_deref() != Some("0") {
        return Some(format!("not running as root (uid {uid:?})"));
    }
    if let Err(e) = run(&["ip", "netns", "list"]) {
        return Some(format!("`ip netns` is not available: {e}"));
    }
    None
}

/// A network namespace with one end of a veth pair, the other end here; removed on drop,
/// also when the test fails.
struct TestHost {
    ns: String,
    veth: String,
}

impl TestHost {
    fn create() -> TestHost {
        let id = std::process::id();
        let host = TestHost {
            ns: format!("ccadm{id}"),
            veth: format!("ccadm{id}h"),
        };
        let peer = format!("ccadm{id}g");
        run(&["ip", "netns", "add", &host.ns]).unwrap();
        let guest = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", host.ns.as_str()];
            full.extend_from_slice(args);
            run(&full).unwrap();
        };
        run(&[
            "ip", "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
        ])
        .unwrap();
        run(&["ip", "link", "set", &peer, "netns", &host.ns]).unwrap();
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_ADDR}/{PREFIX_LEN}"),
            "dev",
            &host.veth,
        ])
        .unwrap();
        run(&["ip", "link", "set", &host.veth, "up"]).unwrap();
        guest(&[
            "ip",
            "addr",
            "add",
            &format!("{GUEST_ADDR}/{PREFIX_LEN}"),
            "dev",
            &peer,
        ]);
        guest(&["ip", "link", "set", &peer, "up"]);
        guest(&["ip", "link", "set", "lo", "up"]);
        host
    }

    /// Runs curl in the namespace against `url` (only ever this test's daemon on
    /// HOST_ADDR); returns the status and the body.
    async fn curl(&self, url: &str, extra: &[&str]) -> (u16, String) {
        assert!(url.starts_with(&format!("http://{HOST_ADDR}:")), "{url}");
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sS", "--noproxy", "*"])
            .args(["--max-time", "20", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(url)
            .output()
            .await
            .expect("run curl in the namespace");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {url} from the test host failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        let _ = run(&["ip", "link", "del", &self.veth]);
        let _ = run(&["ip", "netns", "del", &self.ns]);
    }
}

async fn daemon_on_host_addr(upstream: &str, extra: &str) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ov = Overrides {
        listen: Some(format!("{HOST_ADDR}:0")),
        upstream: Some(upstream.to_string()),
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let config = Config::from_parts(None, Some(extra), ov, |_| None).unwrap();
    (Daemon::start_config(config).await, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_another_host_admin_needs_the_token_and_the_proxy_still_works() {
    if let Some(why) = netns_unavailable() {
        support::skip::cannot_run(
            "from_another_host_admin_needs_the_token_and_the_proxy_still_works",
            &why,
        );
        return;
    }
    let guest = TestHost::create();
    let fake = FakeUpstream::start().await;
    let chat_body = chat("asked from another host");
    let chat_args = [
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "authorization: Bearer sk-from-the-test-host",
        "-H",
        "x-chatcache-project: remote",
        "--data-binary",
        chat_body.as_str(),
    ];

    // No admin.token: the admin API refuses the other host; the proxy serves it.
    let (d, _dir) = daemon_on_host_addr(&fake.url(), "").await;
    assert_eq!(d.addr.ip().to_string(), HOST_ADDR);
    for path in [
        "/_chatcache/health",
        "/_chatcache/spend",
        "/_chatcache/",
        "/_chatcache/budgets",
        "/_chatcache/metrics",
    ] {
        let (status, body) = guest.curl(&d.url(path), &[]).await;
        assert_eq!(status, 403, "{path} from {GUEST_ADDR}: {body}");
        let (status, _) = guest
            .curl(&d.url(path), &["-H", "authorization: Bearer guess"])
            .await;
        assert_eq!(status, 403, "{path} with some bearer");
    }
    let (status, body) = guest
        .curl(&d.url("/_chatcache/cache/purge?all=true"), &["-X", "POST"])
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = guest.curl(&d.url("/chat/completions"), &chat_args).await;
    assert_eq!(status, 200, "a proxied request from the test host: {body}");
    assert_eq!(fake.count("/chat/completions"), 1);
    d.stop().await;

    // With admin.token: the right bearer gets in from the other host, nothing else does.
    let extra = format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n");
    let (d, _dir2) = daemon_on_host_addr(&fake.url(), &extra).await;
    let auth = format!("authorization: Bearer {ADMIN_TOKEN}");
    let (status, body) = guest
        .curl(&d.url("/_chatcache/health"), &["-H", &auth])
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (status, body) = guest.curl(&d.url("/_chatcache/"), &["-H", &auth]).await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>chatcache dashboard</title>"));
    let (status, body) = guest
        .curl(&d.url("/_chatcache/budgets"), &["-H", &auth])
        .await;
    assert_eq!((status, body.as_str()), (200, "[]"));
    let (status, _) = guest.curl(&d.url("/_chatcache/health"), &[]).await;
    assert_eq!(status, 401, "no token");
    let (status, _) = guest
        .curl(
            &d.url("/_chatcache/health"),
            &["-H", "authorization: Bearer admin-token-for-tests-7f3b"],
        )
        .await;
    assert_eq!(status, 401, "the wrong token");
    let (status, body) = guest.curl(&d.url("/chat/completions"), &chat_args).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fake.count("/chat/completions"), 2, "a new data dir: a miss");
    // The admin token is not an API credential: it is never sent upstream.
    assert!(fake
        .requests()
        .iter()
        .all(|r| !format!("{r:?}").contains(ADMIN_TOKEN)));
    d.stop().await;
}
