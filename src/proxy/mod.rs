//! Handling of one API request: the request read into an `Exchange`, answered as a hit
//! (`hit`) or a miss (`miss`, which drives upstream exchanges through `drive`), and the
//! outcome written into the `x-chatcache` header and the metrics, in one place. `/credits`
//! answers are observed as they pass (`credits`).

pub mod credits;
pub mod drive;
pub mod exchange;
pub mod headers;
pub mod hit;
pub mod miss;
mod team_flight;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::app::App;
use crate::attribution;
use crate::body::Body;
use crate::error::ApiError;
use crate::policy::Endpoint;
use crate::proxy::exchange::Exchange;
use crate::request::keyed;
use crate::spend::{BudgetState, Outcome};

pub const OUTCOME_HEADER: HeaderName = HeaderName::from_static("x-chatcache");
pub const BUDGET_HEADER: HeaderName = HeaderName::from_static("x-chatcache-budget-remaining");
const EXPLAIN_HEADER: HeaderName = HeaderName::from_static("x-chatcache-explain");
const REASON_HEADER: HeaderName = HeaderName::from_static("x-chatcache-reason");

/// Answers a request for the API.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let _in_flight = app.metrics.track_request();
    let method = req.method().clone();
    // A clone shares the received bytes (nothing is copied) and lets the path be logged
    // after the request has been handed on.
    let uri = req.uri().clone();
    let path = uri.path();
    let endpoint = Endpoint::of(&method, attribution::forwarded_path(path));
    // One span per request at debug level: an info span costs a noticeable share of a
    // hit's CPU.
    let span = tracing::debug_span!(
        "request",
        %method,
        %path,
        status = tracing::field::Empty,
        cache = tracing::field::Empty
    );
    let (mut resp, outcome) = match answer(&app, req, started).instrument(span.clone()).await {
        Ok((mut resp, outcome)) => {
            resp.headers_mut()
                .insert(OUTCOME_HEADER, HeaderValue::from_static(outcome.as_str()));
            (resp, outcome.as_str())
        }
        Err(e) => {
            if let ApiError::Internal(detail) = &e {
                span.in_scope(|| tracing::error!(%method, %path, %detail, "internal error"));
            }
            (e.into_response(), "local")
        }
    };
    app.metrics
        .request(endpoint.as_str(), outcome, resp.status().as_u16());
    span.record("status", resp.status().as_u16());
    span.record("cache", outcome);
    // The per-request line is for debugging; metrics and the ledger keep the account.
    span.in_scope(|| {
        tracing::debug!(
            head_ms = started.elapsed().as_secs_f64() * 1000.0,
            "answered"
        )
    });
    if crate::stream::is_event_stream(resp.headers()) {
        let guard = app.metrics.track_stream();
        resp = resp.map(|body| {
            use http_body_util::BodyExt;
            body.map_frame(move |f| {
                let _alive = &guard;
                f
            })
            .boxed()
        });
    }
    resp
}

/// Reads the request, then answers it from the cache or upstream.
async fn answer(
    app: &Arc<App>,
    req: Request<Incoming>,
    started: Instant,
) -> Result<(Response<Body>, Outcome), ApiError> {
    let ex = read(app, req, started).await?;
    let project = ex.attr.project.clone();
    let found = hit::lookup(app, &ex, max_age(app, &ex)).await;
    let (resp, outcome) = if let Some((entry, tier)) = found {
        hit::serve(app, &ex, entry, tier).await?
    } else if ex.policy.offline {
        return Err(ApiError::CacheMiss);
    } else {
        let reason = match ex.headers.get(EXPLAIN_HEADER) {
            Some(v) if v == "1" => miss_reason(app, &ex).await,
            _ => None,
        };
        // Boxed: a hit's future stays small (it is moved several times per request) and
        // does not carry the state of the upstream path it never takes.
        let (mut resp, outcome) = Box::pin(miss::fetch(app, ex)).await?;
        if let Some(r) = reason {
            resp.headers_mut()
                .insert(REASON_HEADER, HeaderValue::from_static(r));
        }
        (resp, outcome)
    };
    Ok((with_budget(app, &project, resp), outcome))
}

/// Why the cache does not answer `ex` (`cache explain`'s reason, a short token: headers
/// never carry prompt text).
async fn miss_reason(app: &Arc<App>, ex: &Exchange) -> Option<&'static str> {
    let (app, attr, method, path_q) = (
        app.clone(),
        ex.attr.clone(),
        ex.method.clone(),
        ex.path_q.clone(),
    );
    let (json, policy, key, body) = (ex.json.clone(), ex.policy, ex.key, ex.body.clone());
    let found = tokio::task::spawn_blocking(move || {
        let q = crate::request::keyed::question(
            &app.config,
            &attr,
            &method,
            &path_q,
            json.as_deref(),
            &policy,
            key,
            &body,
        )?;
        app.cache.reason(&q).ok().map(|(token, _)| token)
    });
    found.await.ok().flatten()
}

/// The request as the proxy works with it: attributed, its body read and checked, its
/// policy and cache key settled.
async fn read(
    app: &Arc<App>,
    req: Request<Incoming>,
    started: Instant,
) -> Result<Exchange, ApiError> {
    let (parts, body) = req.into_parts();
    let attr = app.attribute(parts.uri.path(), &parts.headers)?;
    let body =
        crate::request::read::read_body(body, &parts.headers, app.config.limits.max_body).await?;
    let k = keyed::read(
        &app.config,
        &app.parsed,
        &attr,
        &parts.method,
        &parts.uri,
        &parts.headers,
        &body,
    )?;
    Ok(Exchange {
        method: parts.method,
        path_q: k.path_q,
        endpoint: k.endpoint,
        json: k.json,
        key: k.key,
        headers: parts.headers,
        body,
        policy: k.policy,
        attr,
        started,
    })
}

/// The oldest answer the request accepts (`/models` answers are kept shorter).
fn max_age(app: &App, ex: &Exchange) -> Option<Duration> {
    let requested = ex.policy.max_age;
    match ex.endpoint {
        Endpoint::Models => {
            let ttl = app.config.cache.models_ttl;
            Some(requested.map_or(ttl, |m| m.min(ttl)))
        }
        _ => requested,
    }
}

/// A response with the given head; the outcome header is added by `handle`.
pub fn respond(status: http::StatusCode, headers: &HeaderMap, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    // Room for the headers added by the callers (outcome, age, budget), so none regrows.
    let out = resp.headers_mut();
    out.reserve(headers.len() + 3);
    for (k, v) in headers {
        out.append(k, v.clone());
    }
    resp
}

fn with_budget(app: &App, project: &str, mut resp: Response<Body>) -> Response<Body> {
    let remaining = match app.spend.budget(project) {
        BudgetState::Unlimited => return resp,
        BudgetState::Remaining(r) => r,
        BudgetState::Exhausted { .. } => 0.0,
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{remaining:.6}")) {
        resp.headers_mut().insert(BUDGET_HEADER, v);
    }
    resp
}
