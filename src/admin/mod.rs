//! The admin API under `/_chatcache/`: health, spend reports, cache operations. The CLI
//! uses the same router, over HTTP when the daemon runs, in-process when it does not.
//! Access: loopback peers only, unless `admin.token` is set, then that bearer token (the
//! dashboard's page and files, which hold no data, are then served to anyone: the page
//! sends the token with the calls it makes).

mod cache;
pub mod dashboard;
mod explain;
mod health;
mod reconcile;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use crate::app::App;
use crate::body::{full, Body};
use crate::error::ApiError;
use crate::request::read::read_body;
use crate::spend::{Dim, ReportQuery};

pub const PREFIX: &str = "/_chatcache";

pub fn is_admin_path(path: &str) -> bool {
    path == PREFIX || path.starts_with("/_chatcache/")
}

/// An admin request's path below the prefix (`/_chatcache/spend` → `/spend`).
fn admin_path(path: &str) -> &str {
    path.strip_prefix(PREFIX).unwrap_or(path)
}

/// Serves an admin request that arrived over the network.
pub async fn route(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if let Err(e) = check_access(&app, req.method(), req.uri().path(), req.headers(), peer) {
        return e.into_response();
    }
    let (parts, body) = req.into_parts();
    let limit = if parts.uri.path().ends_with("/cache/import") {
        cache::MAX_IMPORT
    } else {
        app.config.limits.max_body
    };
    match read_body(body, &parts.headers, limit).await {
        Ok(bytes) => dispatch(app, Request::from_parts(parts, bytes)).await,
        Err(e) => e.into_response(),
    }
}

/// The access rule: with a token configured, the right bearer token from anyone, but for
/// the dashboard's page and files, which anyone may load (a browser cannot send a bearer
/// token with a page load; the page sends it with its calls); without one, loopback peers
/// only, the page included.
pub fn check_access(
    app: &App,
    method: &Method,
    path: &str,
    headers: &http::HeaderMap,
    peer: SocketAddr,
) -> Result<(), ApiError> {
    match &app.config.admin.token {
        Some(_) if method == Method::GET && dashboard::page(admin_path(path)).is_some() => Ok(()),
        Some(token) => {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            // Compare digests so the time taken says nothing about the token.
            if blake3::hash(presented.as_bytes()) == blake3::hash(token.as_bytes()) {
                Ok(())
            } else {
                Err(ApiError::Unauthorized(
                    "the admin API needs Authorization: Bearer <admin.token>",
                ))
            }
        }
        None if peer.ip().to_canonical().is_loopback() && !cross_site(headers) => Ok(()),
        None => Err(ApiError::Forbidden),
    }
}

/// Without a token, being on this machine is the credential, and a web page open in the
/// user's browser is on this machine too. So refuse what a browser sends on behalf of
/// another site: an `Origin` that is not a loopback origin, `Sec-Fetch-Site: cross-site`,
/// or a `Host` that is not a loopback name (a DNS-rebinding page uses its own name).
fn cross_site(headers: &http::HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    if text(header::HOST).is_some_and(|h| !is_loopback_host(h)) {
        return true;
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if !is_loopback_host(host) {
            return true;
        }
    }
    headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
}

/// `localhost`, `127.0.0.1`, `[::1]` and the like, with or without a port.
fn is_loopback_host(host_port: &str) -> bool {
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Serves an admin request whose body is already read (also the CLI's in-process path).
pub async fn dispatch(app: Arc<App>, req: Request<Bytes>) -> Response<Body> {
    match dispatch_inner(app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch_inner(app: Arc<App>, req: Request<Bytes>) -> Result<Response<Body>, ApiError> {
    let path = admin_path(req.uri().path()).to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    if req.method() == Method::GET {
        if let Some(page) = dashboard::page(&path) {
            return Ok(dashboard::response(page));
        }
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => json(&health::health(&app)),
        (&Method::GET, "/budgets") => json(&dashboard::budget_rows(
            &app.config.projects,
            |p| app.spend.budget(p),
            |p| app.spend.period_use(p).and_then(|u| app.alerts.reached(&u)),
        )),
        (&Method::GET, "/spend/reconcile") => reconcile::reconcile(&app, &query).await,
        (&Method::GET, "/spend") if query.get("team").is_some_and(|t| t == "1") => {
            let Some(team) = &app.team else {
                return Err(ApiError::BadRequest(
                    "no team ledger: set [team] postgres (or CHATCACHE_POSTGRES_URL)".into(),
                ));
            };
            let q = report_query(&query, true)?;
            let report = team
                .report(&q)
                .await
                .map_err(|e| ApiError::TeamLedgerUnavailable(e.to_string()))?;
            json(&report)
        }
        (&Method::GET, "/spend") => {
            let q = report_query(&query, false)?;
            let spend = app.spend.clone();
            let report = blocking(move || {
                spend
                    .report(&q)
                    .map_err(|e| ApiError::Internal(e.to_string()))
            })
            .await?;
            json(&report)
        }
        (&Method::POST, "/spend/rebuild") => {
            let spend = app.spend.clone();
            blocking(move || {
                spend
                    .rebuild()
                    .map_err(|e| ApiError::Internal(e.to_string()))
            })
            .await?;
            json(&serde_json::json!({"rebuilt": true}))
        }
        (&Method::GET, "/cache/stats") => cache::stats(&app).await,
        (&Method::GET, "/metrics") => {
            // Rendering reads the store's size on disk: keep it off the async workers.
            let a = app.clone();
            let text = blocking(move || Ok(a.metrics.render())).await?;
            let mut resp = Response::new(full(text));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(resp)
        }
        (&Method::GET, "/recent") => {
            let limit = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(50);
            json(
                &app.recent
                    .list(limit, query.get("project").map(String::as_str)),
            )
        }
        (&Method::GET, "/cache/list") => cache::list(&app, &query).await,
        (&Method::GET, p) if p.starts_with("/cache/entries/") => {
            cache::entry(&app, &p["/cache/entries/".len()..]).await
        }
        (&Method::POST, "/cache/purge") => cache::purge(&app, &query).await,
        (&Method::GET, "/cache/export") => cache::export(&app),
        (&Method::POST, "/cache/explain") => explain::explain(app, req, &query).await,
        (&Method::POST, "/cache/import") => cache::import(&app, req).await,
        _ => Err(ApiError::NotFound),
    }
}

/// A spend report's query; `daemon` is a dimension of the team report only.
fn report_query(q: &HashMap<String, String>, team: bool) -> Result<ReportQuery, ApiError> {
    let mut by = Vec::new();
    if let Some(list) = q.get("by") {
        for d in list.split(',').filter(|d| !d.is_empty()) {
            by.push(match d {
                "project" => Dim::Project,
                "model" => Dim::Model,
                "day" => Dim::Day,
                "key" => Dim::Key,
                "daemon" if team => Dim::Daemon,
                "daemon" => {
                    return Err(ApiError::BadRequest(
                        "by: daemon is for the team report (team=1)".into(),
                    ))
                }
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "by: unknown dimension {other:?}"
                    )))
                }
            });
        }
    }
    let date = |name: &str| -> Result<Option<time::Date>, ApiError> {
        match q.get(name) {
            None => Ok(None),
            Some(s) => {
                time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
                    .map(Some)
                    .map_err(|_| {
                        ApiError::BadRequest(format!("{name}: {s:?} is not a date like 2026-11-25"))
                    })
            }
        }
    };
    Ok(ReportQuery {
        by,
        since: date("since")?,
        until: date("until")?,
        project: q.get("project").cloned(),
    })
}

fn parse_query(q: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        out.entry(k.into_owned())
            .and_modify(|old| {
                old.push(',');
                old.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    out
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

fn json(v: &impl Serialize) -> Result<Response<Body>, ApiError> {
    let bytes = serde_json::to_vec(v).map_err(internal)?;
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_site_browser_requests_are_told_apart() {
        fn h(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
            let mut m = http::HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, http::HeaderValue::from_static(v));
            }
            m
        }
        assert!(!cross_site(&h(&[])), "a CLI or curl");
        assert!(!cross_site(&h(&[("host", "127.0.0.1:8484")])));
        assert!(!cross_site(&h(&[
            ("host", "localhost:8484"),
            ("origin", "http://localhost:8484")
        ])));
        assert!(!cross_site(&h(&[
            ("host", "[::1]:8484"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(
            cross_site(&h(&[("host", "evil.example:8484")])),
            "DNS rebinding"
        );
        assert!(cross_site(&h(&[
            ("host", "127.0.0.1:8484"),
            ("origin", "https://evil.example")
        ])));
        assert!(cross_site(&h(&[
            ("host", "127.0.0.1:8484"),
            ("origin", "null")
        ])));
        assert!(cross_site(&h(&[
            ("host", "127.0.0.1:8484"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(is_loopback_host("127.9.9.9"));
        assert!(is_loopback_host("[::ffff:127.0.0.1]:1"));
        assert!(!is_loopback_host("10.0.0.1:80"));
    }

    #[test]
    fn query_parsing_repeats_and_decodes() {
        let q = parse_query("by=project&by=model&since=2026-11-01&model=GPT-4%20Turbo&x");
        assert_eq!(q["by"], "project,model");
        assert_eq!(q["model"], "GPT-4 Turbo");
        assert_eq!(q["x"], "");
    }
}
