//! Handling of one client request: attribution, body checks, cache policy and lookup,
//! single-flight, and the answer with its `x-chatcache` outcome.

pub mod exchange;
pub mod headers;
pub mod policy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::app::App;
use crate::attribution::{self, Attribution};
use crate::body::{full, Body};
use crate::cache::entry::Entry;
use crate::cache::flight::{End, Flight, Head, Leader, Role};
use crate::cache::key::{cache_key, CacheKey};
use crate::cache::{now_ms, Lookup};
use crate::error::ApiError;
use crate::proxy::exchange::Exchange;
use crate::proxy::policy::{Endpoint, Policy};
use crate::spend::{BudgetState, Outcome};
use crate::stream::replay::replay_body;

pub const OUTCOME_HEADER: HeaderName = HeaderName::from_static("x-chatcache");
pub const BUDGET_HEADER: HeaderName = HeaderName::from_static("x-chatcache-budget-remaining");

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
    // One span per request at debug level (an info span costs a tenth of a hit's CPU);
    // upstream exchanges get an info span of their own in `lead`.
    let span = tracing::debug_span!(
        "request",
        %method,
        %path,
        status = tracing::field::Empty,
        cache = tracing::field::Empty
    );
    let mut resp = match proxy(&app, req, endpoint, started)
        .instrument(span.clone())
        .await
    {
        Ok(r) => r,
        Err(e) => {
            if let ApiError::Internal(detail) = &e {
                span.in_scope(|| tracing::error!(%method, %path, %detail, "internal error"));
            }
            e.into_response()
        }
    };
    let outcome = resp
        .headers()
        .get(OUTCOME_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("local");
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

async fn proxy(
    app: &Arc<App>,
    req: Request<Incoming>,
    endpoint: Endpoint,
    started: Instant,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let attr = attribution::resolve(app, parts.uri.path(), &parts.headers)?;
    let path = attribution::forwarded_path(parts.uri.path());
    let body = crate::body::read_body(body, &parts.headers, app.config.limits.max_body).await?;
    let json = if endpoint.takes_json() {
        Some(app.parsed.parse(&body)?)
    } else {
        None
    };
    let policy = Policy::new(app.config.mode, &parts.headers);
    let path_q = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let key = endpoint
        .cacheable()
        .then(|| attr.partition(app.config.cache.scope))
        .flatten()
        .map(|partition| match &json {
            Some(j) => j.key(parts.method.as_str(), &path_q, &partition),
            None => cache_key(parts.method.as_str(), &path_q, &partition, &[]),
        });
    let ex = Exchange {
        method: parts.method.clone(),
        path_q,
        endpoint,
        json,
        key,
        headers: parts.headers,
        body,
        policy,
        attr,
        started,
    };

    let max_age = match endpoint {
        Endpoint::Models => Some(policy.max_age.map_or(app.config.cache.models_ttl, |m| {
            m.min(app.config.cache.models_ttl)
        })),
        _ => policy.max_age,
    };
    if let (Some(key), true) = (ex.key, policy.lookup) {
        if may_hit(app, &ex.attr).await {
            if let Some(entry) = lookup(app, key, max_age).await {
                return Ok(with_budget(
                    app,
                    &ex.attr.project,
                    serve_hit(app, &ex, entry).await,
                ));
            }
        }
    }
    if policy.offline {
        return Err(ApiError::CacheMiss);
    }
    Box::pin(upstream(app, ex)).await
}

/// Answers a request the cache did not: checks budget and ledger, then fetches.
async fn upstream(app: &Arc<App>, ex: Exchange) -> Result<Response<Body>, ApiError> {
    let (endpoint, policy) = (ex.endpoint, ex.policy);
    if endpoint.billable() {
        if let BudgetState::Exhausted { budget, spent } = app.spend.budget(&ex.attr.project) {
            return Err(ApiError::BudgetExceeded {
                project: ex.attr.project.to_string(),
                budget,
                spent,
            });
        }
        if !app.spend.writable().await {
            return Err(ApiError::LedgerUnavailable);
        }
    }
    let ex = Arc::new(ex.for_upstream());
    let resp = match ex.key {
        Some(key) if policy.lookup => coalesce(app, &ex, key).await?,
        Some(_) if policy.store => lead(app, &ex, Leader::solo()).await?,
        _ if endpoint.billable() || endpoint == Endpoint::Models => {
            lead(app, &ex, Leader::solo()).await?
        }
        _ => exchange::pass(app, &ex).await?,
    };
    Ok(with_budget(app, &ex.attr.project, resp))
}

/// Under `cache.scope = "shared"`, only credentials upstream has accepted before get hits.
async fn may_hit(app: &Arc<App>, attr: &Attribution) -> bool {
    if app.config.cache.scope != crate::config::Scope::Shared {
        return true;
    }
    let Some(fp) = attr.fingerprint.clone() else {
        return false;
    };
    let store = app.store.clone();
    matches!(
        tokio::task::spawn_blocking(move || attribution::was_accepted(&store, &fp)).await,
        Ok(Ok(true))
    )
}

async fn lookup(app: &Arc<App>, key: CacheKey, max_age: Option<Duration>) -> Option<Arc<Entry>> {
    if let Some(entry) = app.cache.get_now(key, max_age) {
        return Some(entry);
    }
    let cache = app.cache.clone();
    match tokio::task::spawn_blocking(move || cache.get(key, max_age)).await {
        Ok(Ok((Lookup::Fresh, entry))) => entry,
        Ok(Ok(_)) => None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cache lookup failed; going upstream");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "cache lookup task failed");
            None
        }
    }
}

async fn serve_hit(app: &Arc<App>, ex: &Exchange, entry: Arc<Entry>) -> Response<Body> {
    if ex.endpoint.billable() {
        let acc = exchange::Accounting::saved_from_entry(&entry.meta);
        app.account(
            ex.ledger_line(Outcome::Hit, entry.meta.status, acc),
            ex.prompt(),
        )
        .await;
    }
    let age = now_ms().saturating_sub(entry.meta.created_ms) / 1000;
    let body = if entry.meta.stream {
        replay_body(entry.chunks(), app.config.cache.replay_pace)
    } else {
        full(entry.body.clone())
    };
    let status = http::StatusCode::from_u16(entry.meta.status).unwrap_or(http::StatusCode::OK);
    let mut resp = respond(status, entry.replay_headers(), body, "hit");
    // One allocation where `HeaderValue::from(u64)` makes two; digits are always valid.
    if let Ok(age) = HeaderValue::from_str(itoa::Buffer::new().format(age)) {
        resp.headers_mut().insert(header::AGE, age);
    }
    resp
}

/// Joins an identical request in flight, or leads one.
async fn coalesce(
    app: &Arc<App>,
    ex: &Arc<Exchange>,
    key: CacheKey,
) -> Result<Response<Body>, ApiError> {
    // A follower whose leader gave up before answering tries again; after a few rounds
    // it fetches on its own rather than wait behind a run of failures.
    for _ in 0..3 {
        match app.flights.join(key) {
            Role::Leader(leader) => return lead(app, ex, leader).await,
            Role::Follower(flight) => {
                if let Some(resp) = follow(app, ex, flight).await {
                    return Ok(resp);
                }
            }
        }
    }
    lead(app, ex, Leader::solo()).await
}

/// Reads somebody else's answer; None if that answer was given up before it started.
async fn follow(app: &Arc<App>, ex: &Arc<Exchange>, flight: Arc<Flight>) -> Option<Response<Body>> {
    let head = flight.head().await.ok()?;
    let body = if head.stream {
        let (app, ex, f) = (app.clone(), ex.clone(), flight.clone());
        tokio::spawn(async move {
            if f.whole().await.is_ok() {
                record_coalesced(&app, &ex, &f, head_status(&f).await).await;
            }
        });
        flight.stream_body()
    } else {
        let bytes = flight.whole().await.ok()?;
        record_coalesced(app, ex, &flight, head.status.as_u16()).await;
        full(bytes)
    };
    Some(respond(head.status, &head.headers, body, "coalesced"))
}

async fn head_status(f: &Flight) -> u16 {
    f.head().await.map(|h| h.status.as_u16()).unwrap_or(200)
}

async fn record_coalesced(app: &App, ex: &Exchange, flight: &Flight, status: u16) {
    if ex.endpoint.billable() {
        let acc = exchange::Accounting::saved(flight.cost());
        app.account(ex.ledger_line(Outcome::Coalesced, status, acc), ex.prompt())
            .await;
    }
}

/// Fetches from upstream in a task of its own (which goes on if this client leaves, so the
/// answer is still recorded and accounted for), and answers from its recording.
async fn lead(
    app: &Arc<App>,
    ex: &Arc<Exchange>,
    leader: Leader,
) -> Result<Response<Body>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // At debug level, like the request's span: an info span costs about 7k instructions
    // an exchange (creating it, formatting its fields, entering it on every poll). The
    // exchange's own warnings make their context when they are written.
    let span = tracing::debug_span!("exchange", method = %ex.method, path = %ex.path_q);
    app.exchanges
        .spawn(exchange::drive(app.clone(), ex.clone(), leader, tx).instrument(span));
    let outcome = ex.policy.upstream_outcome().as_str();
    match rx.await {
        Ok(exchange::First::Answer(flight, head)) => answer_from(flight, head, outcome).await,
        Ok(exchange::First::Direct(mut resp)) => {
            resp.headers_mut()
                .insert(OUTCOME_HEADER, HeaderValue::from_static(outcome));
            Ok(resp)
        }
        Ok(exchange::First::Failed(e)) => Err(e),
        Err(_) => Err(ApiError::Internal(
            "the upstream exchange ended without answering".into(),
        )),
    }
}

async fn answer_from(
    flight: Arc<Flight>,
    head: Head,
    outcome: &'static str,
) -> Result<Response<Body>, ApiError> {
    if head.stream {
        return Ok(respond(
            head.status,
            &head.headers,
            flight.stream_body(),
            outcome,
        ));
    }
    match flight.whole().await {
        Ok(bytes) => Ok(respond(head.status, &head.headers, full(bytes), outcome)),
        Err(End::Failed(e)) => Err(e),
        Err(_) => Err(ApiError::UpstreamBroken("the answer was abandoned".into())),
    }
}

pub fn respond(
    status: http::StatusCode,
    headers: &HeaderMap,
    body: Body,
    outcome: &'static str,
) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    // Room for the headers added here and by the callers (age, budget), so none regrows.
    let out = resp.headers_mut();
    out.reserve(headers.len() + 3);
    for (k, v) in headers {
        out.append(k, v.clone());
    }
    out.insert(OUTCOME_HEADER, HeaderValue::from_static(outcome));
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
