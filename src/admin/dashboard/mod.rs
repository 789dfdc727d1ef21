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

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The page's scripts and styles by file name: content type, body. The scripts are ES
/// modules; app.js imports the others.
const FILES: &[(&str, &str, &str)] = &[
    ("app.js", JS, include_str!("assets/app.js")),
    ("helpers.js", JS, include_str!("assets/helpers.js")),
    ("api.js", JS, include_str!("assets/api.js")),
    ("charts.js", JS, include_str!("assets/charts.js")),
    ("spend.js", JS, include_str!("assets/spend.js")),
    ("budgets.js", JS, include_str!("assets/budgets.js")),
    ("team.js", JS, include_str!("assets/team.js")),
    ("style.css", CSS, include_str!("assets/style.css")),
];

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
    let name = path.strip_prefix(ASSET_DIR)?;
    let (_, content_type, body) = FILES.iter().find(|(file, _, _)| *file == name)?;
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
        for (name, content_type, body) in FILES {
            let found = page(&format!("/dashboard/{name}"));
            assert_eq!(found.map(|a| a.body), Some(body.as_bytes()), "{name}");
            assert_eq!(found.map(|a| a.content_type), Some(*content_type), "{name}");
        }
        assert_eq!(
            asset("/dashboard/team.js").map(|a| a.content_type),
            Some(JS)
        );
        assert_eq!(
            asset("/dashboard/style.css").map(|a| a.content_type),
            Some(CSS)
        );
        for other in ["/spend", "/index.html", "//", "/dashboard"] {
            assert!(page(other).is_none(), "{other}");
        }
        assert!(asset("/dashboard/").is_none());
        assert!(asset("/dashboard/../spend").is_none());
        assert!(asset("/dashboard/nope.js").is_none());
        assert!(asset("/app.js").is_none());
    }

    #[test]
    fn the_page_loads_its_assets_from_the_admin_prefix() {
        let html = std::str::from_utf8(index().body).unwrap_or_default();
        assert!(html.contains("<script type=\"module\" src=\"/_chatcache/dashboard/app.js\">"));
        assert!(html.contains("href=\"/_chatcache/dashboard/style.css\""));
        for (name, _, _) in FILES.iter().filter(|(n, _, _)| *n != "app.js") {
            let link = format!("href=\"/_chatcache/dashboard/{name}\"");
            assert!(html.contains(&link), "the page names {name}");
        }
    }

    /// A module a script imports but the daemon does not serve would stop the page.
    #[test]
    fn every_module_a_script_imports_is_served() {
        let mut imported = 0;
        for (name, _, body) in FILES.iter().filter(|(n, _, _)| n.ends_with(".js")) {
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let module = line
                    .split("from './")
                    .nth(1)
                    .and_then(|rest| rest.split('\'').next())
                    .unwrap_or_else(|| panic!("{name}: an import not from ./: {line}"));
                assert!(
                    asset(&format!("/dashboard/{module}")).is_some(),
                    "{name} imports {module}, which is not served"
                );
                imported += 1;
            }
        }
        assert!(imported >= 6, "app.js alone imports six modules");
    }
}
