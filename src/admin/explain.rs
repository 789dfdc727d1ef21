//! `POST /_chatcache/cache/explain?path=…`: why the request in the body would be a hit or
//! a miss. The credential is the client's own (`Authorization`, or `x-chatcache-credential`
//! where the admin API's token takes the Authorization header), with its
//! `x-chatcache-project`, `x-chatcache-namespace` and `Cache-Control`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, Uri};

use crate::app::App;
use crate::body::Body;
use crate::error::ApiError;
use crate::request::keyed;

pub async fn explain(
    app: Arc<App>,
    req: Request<Bytes>,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let path = query
        .get("path")
        .map_or("/chat/completions", String::as_str);
    let uri: Uri = path
        .parse()
        .ok()
        .filter(|u: &Uri| u.scheme().is_none() && path.starts_with('/'))
        .ok_or_else(|| ApiError::BadRequest(format!("path: {path:?} is not a path")))?;
    let method = if uri.path().ends_with("/models") {
        Method::GET
    } else {
        Method::POST
    };
    let (parts, body) = req.into_parts();
    let headers = client_headers(&app, &parts.headers);
    let attr = app.attribute(uri.path(), &headers)?;
    let k = keyed::read(
        &app.config,
        &app.parsed,
        &attr,
        &method,
        &uri,
        &headers,
        &body,
    )?;
    let app2 = app.clone();
    let explained = tokio::task::spawn_blocking(move || {
        let q = k.question(&app2.config, &attr, &method, &body).ok_or_else(|| {
            ApiError::BadRequest(
                "this request has no cache key: it has no credential, or its endpoint is never cached"
                    .into(),
            )
        })?;
        app2.cache
            .explain(&q)
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    super::json(&explained)
}

/// The headers the request would have had: the credential from `x-chatcache-credential`,
/// else (with no admin token in the way) from `Authorization`.
fn client_headers(app: &App, h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [
        "x-chatcache-project",
        "x-chatcache-namespace",
        "cache-control",
    ] {
        if let Some(v) = h.get(name) {
            out.insert(name, v.clone());
        }
    }
    let credential = match (h.get("x-chatcache-credential"), &app.config.admin.token) {
        (Some(v), _) => Some(v),
        (None, None) => h.get(header::AUTHORIZATION),
        (None, Some(_)) => None,
    };
    if let Some(v) = credential {
        out.insert(header::AUTHORIZATION, v.clone());
    }
    out
}
