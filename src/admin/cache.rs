//! The admin API's cache operations under `/_chatcache/cache/`: stats, listing, one
//! entry, purging, and a bundle's export and import. (`cache/explain` is in `explain`.)

use std::collections::HashMap;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};

use super::{blocking, internal, json};
use crate::app::App;
use crate::body::Body;
use crate::cache::bundle::{self, BundleCount};
use crate::cache::key::{CacheKey, Partition};
use crate::cache::Purge;
use crate::error::ApiError;

/// Import bundles may be larger than a chat request.
pub(super) const MAX_IMPORT: u64 = 4 << 30;

/// `GET /cache/stats`.
pub(super) async fn stats(app: &App) -> Result<Response<Body>, ApiError> {
    let cache = app.cache.clone();
    json(&blocking(move || cache.settle().map(|()| cache.stats()).map_err(internal)).await?)
}

/// `GET /cache/list?limit=…`.
pub(super) async fn list(
    app: &App,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let limit = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(50);
    let cache = app.cache.clone();
    let list = blocking(move || cache.list(limit).map_err(internal)).await?;
    json(&list)
}

/// `GET /cache/entries/<key>`: one entry, its body as text.
pub(super) async fn entry(app: &App, hex: &str) -> Result<Response<Body>, ApiError> {
    let key =
        CacheKey::from_hex(hex).ok_or_else(|| ApiError::BadRequest("not a cache key".into()))?;
    let cache = app.cache.clone();
    let entry = blocking(move || cache.show(key).map_err(internal)).await?;
    let Some(e) = entry else {
        return Err(ApiError::BadRequest(format!("no entry {key}")));
    };
    json(&serde_json::json!({
        "key": key.to_hex(),
        "meta": e.meta,
        "body": String::from_utf8_lossy(&e.body_bytes()),
    }))
}

/// `POST /cache/purge?older_than=…&model=…&all=true`.
pub(super) async fn purge(
    app: &App,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let purge = Purge {
        older_than: match query.get("older_than") {
            Some(d) => Some(
                humantime::parse_duration(d)
                    .map_err(|e| ApiError::BadRequest(format!("older_than: {e}")))?,
            ),
            None => None,
        },
        model: query.get("model").cloned(),
        all: query.get("all").is_some_and(|v| v == "true"),
    };
    let cache = app.cache.clone();
    let removed = blocking(move || cache.purge(&purge).map_err(internal)).await?;
    json(&serde_json::json!({"removed": removed}))
}

/// `GET /cache/export`: every entry as a bundle, written as it is read.
pub(super) fn export(app: &App) -> Result<Response<Body>, ApiError> {
    let cache = app.cache.clone();
    let body = crate::body::written(move |out| {
        bundle::export(&cache, out, |_| {})?;
        Ok(())
    });
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

/// `POST /cache/import`: a bundle's entries, into the partition of the credential sent.
pub(super) async fn import(app: &App, req: Request<Bytes>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let attr = app.attribute("/", &import_headers(&parts.headers))?;
    let partition = attr.partition(app.config.cache.scope).ok_or_else(|| {
        ApiError::BadRequest(
            "import needs the credential whose cache partition to fill (x-chatcache-credential)"
                .into(),
        )
    })?;
    let partition = Partition {
        base: partition.base.into_owned().into(),
        namespace: None,
    };
    let namespace = attr.namespace.clone();
    let cache = app.cache.clone();
    let ignore = app.config.cache.ignore_fields.clone();
    let count: BundleCount = blocking(move || {
        let partition = Partition {
            namespace: namespace.as_deref(),
            ..partition
        };
        bundle::import(&cache, &body[..], &partition, &ignore, |_| {})
            .map_err(|e| ApiError::BadRequest(format!("bundle: {e}")))
    })
    .await?;
    json(&count)
}

/// The credential of an import travels in `x-chatcache-credential` (the admin token may
/// occupy Authorization); attribution reads it as the request's Authorization.
fn import_headers(h: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for name in ["x-chatcache-project", "x-chatcache-namespace"] {
        if let Some(v) = h.get(name) {
            out.insert(name, v.clone());
        }
    }
    if let Some(v) = h.get("x-chatcache-credential") {
        out.insert(header::AUTHORIZATION, v.clone());
    }
    out
}
