//! The at-a-glance views of spend and cache use: the browser dashboard served under
//! `/_chatcache/` (its assets are embedded in the binary), the budget usage it and the
//! CLI show, and the terminal summary of `chatcache stats`.

pub mod budgets;
pub mod stats;

pub use budgets::{budget_rows, BudgetRow};

use http::{header, HeaderValue, Response};

use crate::body::{full, Body};

/// One embedded file of the dashboard.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Where the dashboard's scripts and styles are served, below the admin prefix.
const ASSET_DIR: &str = "/dashboard/";

/// The policy the dashboard pages are served with: the page may load and fetch only
/// from the daemon itself, and may not be framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The dashboard's page (admin paths `""` and `"/"`) or one of its scripts and styles
/// (`/dashboard/…`), by admin path; None for every other path. None of them holds data:
/// the page fetches that from the admin API.
pub fn page(path: &str) -> Option<Asset> {
    match path {
        "" | "/" => Some(index()),
        _ => asset(path),
    }
}

fn index() -> Asset {
    Asset {
        content_type: "text/html; charset=utf-8",
        body: INDEX_HTML.as_bytes(),
    }
}

/// A script or stylesheet by its admin path (e.g. `/dashboard/app.js`).
fn asset(path: &str) -> Option<Asset> {
    let (content_type, body) = match path.strip_prefix(ASSET_DIR)? {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        _ => return None,
    };
    Some(Asset {
        content_type,
        body: body.as_bytes(),
    })
}

/// The response serving `asset`, with the headers that keep the page to itself.
pub fn response(asset: Asset) -> Response<Body> {
    let mut resp = Response::new(full(asset.body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_found_by_path_only() {
        assert_eq!(page("").map(|a| a.body), Some(INDEX_HTML.as_bytes()));
        assert_eq!(page("/").map(|a| a.body), Some(INDEX_HTML.as_bytes()));
        assert_eq!(
            page("/dashboard/app.js").map(|a| a.body),
            Some(APP_JS.as_bytes())
        );
        for other in ["/spend", "/index.html", "//", "/dashboard"] {
            assert!(page(other).is_none(), "{other}");
        }
        assert!(asset("/dashboard/app.js").is_some());
        assert!(asset("/dashboard/style.css").is_some());
        assert!(asset("/dashboard/").is_none());
        assert!(asset("/dashboard/../spend").is_none());
        assert!(asset("/app.js").is_none());
    }

    #[test]
    fn the_page_loads_its_assets_from_the_admin_prefix() {
        let html = std::str::from_utf8(index().body).unwrap_or_default();
        assert!(html.contains("src=\"/_chatcache/dashboard/app.js\""));
        assert!(html.contains("href=\"/_chatcache/dashboard/style.css\""));
    }
}
