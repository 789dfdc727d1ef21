//! One exchange with upstream: the request as forwarded, the task that reads the answer
//! into its recording, and the bookkeeping when it ends (ledger line made durable, cache
//! entry stored, followers released) — in that order, before any client sees the end.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Method, Request, Response};
use http_body_util::Full;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::app::App;
use crate::attribution::Attribution;
use crate::body::Body;
use crate::cache::entry::{Entry, EntryMeta};
use crate::cache::flight::{End, Flight, Head, Leader};
use crate::cache::key::CacheKey;
use crate::cache::now_ms;
use crate::cost::{estimate, CostSource, Money, Prices, Usage};
use crate::error::ApiError;
use crate::proxy::headers::{copy_end_to_end, owned};
use crate::proxy::policy::{Endpoint, Policy};
use crate::request::json::JsonRequest;
use crate::spend::{LedgerLine, Outcome};
use crate::stream::tee::{tee, TeeEnd};

/// Everything about a client request that the exchange needs, owned.
pub struct Exchange {
    pub method: Method,
    /// Path and query to forward (project prefix removed).
    pub path_q: String,
    pub endpoint: Endpoint,
    /// The parsed body, for the JSON endpoints.
    pub json: Option<Arc<JsonRequest>>,
    pub key: Option<CacheKey>,
    /// The client's headers; after `for_upstream`, only those to forward.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub policy: Policy,
    pub attr: Attribution,
    pub started: Instant,
}

/// What the exchange tells the client that caused it, once it knows.
pub enum First {
    /// A 2xx answer is coming in: read it from the flight.
    Answer(Arc<Flight>, Head),
    /// Upstream answered with an error status: passed through as it is, never stored.
    Direct(Response<Body>),
    /// No answer: unreachable, timed out, refused.
    Failed(ApiError),
}

/// The cost fields of a ledger line, and where they came from.
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    pub usage: Usage,
    pub source: Option<CostSource>,
    pub saved: Option<Money>,
    pub upstream_ms: Option<u64>,
    pub ttfb_ms: Option<u64>,
    pub incomplete: bool,
}

impl Accounting {
    /// A cache hit: nothing spent, the recorded cost saved.
    pub fn saved_from_entry(meta: &EntryMeta) -> Accounting {
        let mut a = Accounting::saved(meta.cost.clone());
        a.usage.input_tokens = meta.input_tokens;
        a.usage.output_tokens = meta.output_tokens;
        a.source = Some(meta.cost_source);
        a
    }

    pub fn saved(cost: Option<Money>) -> Accounting {
        Accounting {
            usage: Usage {
                input_cost: Some(crate::cost::zero()),
                output_cost: Some(crate::cost::zero()),
                cost: Some(crate::cost::zero()),
                ..Usage::default()
            },
            source: Some(if cost.is_some() {
                CostSource::Upstream
            } else {
                CostSource::Unknown
            }),
            saved: cost,
            ..Accounting::default()
        }
    }
}

impl Exchange {
    pub fn model(&self) -> Option<&str> {
        self.json.as_ref()?.model.as_deref()
    }

    /// The last user message, when `admin.show_prompts` is on.
    pub fn prompt(&self) -> Option<&str> {
        self.json.as_ref()?.prompt.as_deref()
    }

    pub fn ledger_line(&self, outcome: Outcome, status: u16, acc: Accounting) -> LedgerLine {
        LedgerLine {
            ts: time::OffsetDateTime::now_utc(),
            id: crate::spend::new_id(),
            project: self.attr.project.clone(),
            key: self.attr.fingerprint.clone(),
            endpoint: Cow::Borrowed(self.endpoint.as_str()),
            model: self.json.as_ref().and_then(|j| j.model.clone()),
            stream: self.json.as_ref().is_some_and(|j| j.stream),
            outcome,
            status,
            input_tokens: acc.usage.input_tokens,
            output_tokens: acc.usage.output_tokens,
            input_cost: acc.usage.input_cost,
            output_cost: acc.usage.output_cost,
            cost: acc.usage.cost,
            saved: acc.saved,
            cost_source: acc.source.unwrap_or(CostSource::Unknown),
            upstream_ms: acc.upstream_ms,
            ttfb_ms: acc.ttfb_ms,
            incomplete: acc.incomplete,
        }
    }

    /// Readies the exchange to go upstream, where it lives as long as the answer takes:
    /// keeps only the headers to forward, and its own copies of them and of the body, so
    /// that a long answer does not keep the client connection's read buffer alive.
    pub fn for_upstream(mut self) -> Exchange {
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        copy_end_to_end(&self.headers, &mut headers, not_forwarded);
        self.headers = headers;
        self.body = Bytes::copy_from_slice(&self.body);
        self.attr.upstream_auth = self.attr.upstream_auth.as_ref().map(owned);
        self
    }

    /// The context of the exchange's log lines, made only when a line is written: a span
    /// held for the whole exchange costs about 7k instructions, line or no line.
    fn span(&self) -> tracing::Span {
        tracing::info_span!("exchange", method = %self.method, path = %self.path_q)
    }

    fn upstream_request(&self, app: &App) -> Result<Request<Full<Bytes>>, ApiError> {
        let uri = app.upstream.uri_for(&self.path_q)?;
        let mut headers = self.headers.clone();
        if let Some(auth) = &self.attr.upstream_auth {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

/// Request headers the proxy sets itself or keeps to itself. Accept-Encoding is dropped so
/// upstream answers in identity encoding, which the proxy must read to account for it.
fn not_forwarded(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::AUTHORIZATION
        || name == header::ACCEPT_ENCODING
        || name == header::EXPECT
        || name.as_str().starts_with("x-chatcache-")
}

fn response_headers(src: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(src.len());
    copy_end_to_end(src, &mut out, |_| false);
    out
}

/// Sends an uncached, unaccounted request (credits, unknown paths) and relays the answer.
pub async fn pass(app: &Arc<App>, ex: &Exchange) -> Result<Response<Body>, ApiError> {
    let resp = app.upstream.send(ex.upstream_request(app)?).await?;
    app.metrics.first_byte(ex.started.elapsed());
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(app.upstream.relay(body));
    *out.status_mut() = parts.status;
    *out.headers_mut() = response_headers(&parts.headers);
    out.headers_mut().insert(
        crate::proxy::OUTCOME_HEADER,
        http::HeaderValue::from_static("bypass"),
    );
    Ok(out)
}

/// Runs one exchange to its end. `first` hears how it started; the leader's flight hears
/// everything else. Dropping `leader` unfinished (any early return) releases followers.
pub async fn drive(
    app: Arc<App>,
    ex: Arc<Exchange>,
    leader: Leader,
    first: oneshot::Sender<First>,
) {
    let req = match ex.upstream_request(&app) {
        Ok(r) => r,
        Err(e) => {
            let _ = first.send(First::Failed(e));
            return;
        }
    };
    let resp = match app.upstream.send(req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(parent: &ex.span(), error = %e, "upstream request failed");
            let _ = first.send(First::Failed(e));
            return;
        }
    };
    let ttfb = ex.started.elapsed();
    app.metrics.first_byte(ttfb);
    let ttfb_ms = ttfb.as_millis() as u64;
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let headers = response_headers(&parts.headers);
    // The received head's values are views into the upstream connection's read buffer:
    // kept for the length of the answer, they would pin that buffer while hyper reads the
    // body into a new one.
    drop(parts);
    if !status.is_success() {
        if ex.endpoint.billable() {
            let acc = Accounting {
                upstream_ms: Some(ttfb_ms),
                ttfb_ms: Some(ttfb_ms),
                ..Accounting::default()
            };
            let line = ex.ledger_line(ex.policy.upstream_outcome(), status.as_u16(), acc);
            app.account(line, ex.prompt()).await;
        }
        let mut out = Response::new(app.upstream.relay(body));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        let _ = first.send(First::Direct(out));
        return;
    }
    note_accepted(&app, &ex);
    let sse = crate::stream::is_event_stream(&headers);
    let head = Head {
        status,
        headers,
        stream: sse,
    };
    leader.flight.set_head(head.clone());
    let _ = first.send(First::Answer(leader.flight.clone(), head.clone()));

    let t = tee(
        body,
        &leader.flight,
        app.upstream.idle_timeout,
        sse,
        ex.started,
    )
    .await;
    let body = leader.flight.snapshot();
    let mut end = t.end;
    // Checked without building a tree: the cost fields are read on their own, and the
    // answer's text is looked into only when the cost has to be estimated.
    let is_json = sse || serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
    if !sse
        && matches!(end, TeeEnd::Clean)
        && (ex.endpoint.cacheable() || ex.endpoint.billable())
        && !is_json
    {
        end = TeeEnd::Broken(ApiError::UpstreamBroken(
            "upstream answered with a body that is not JSON".into(),
        ));
    }
    let prices = app.prices();
    let (usage, source) = account(
        &ex,
        prices.as_deref(),
        sse,
        t.cost_frame.as_deref(),
        &body,
        t.output_chars,
    );
    let clean = matches!(end, TeeEnd::Clean);
    let upstream_time = ex.started.elapsed();
    app.metrics.upstream_done(upstream_time);
    let acc = Accounting {
        usage: usage.clone(),
        source: Some(source),
        saved: None,
        upstream_ms: Some(upstream_time.as_millis() as u64),
        ttfb_ms: Some(ttfb_ms),
        incomplete: matches!(end, TeeEnd::Broken(_)),
    };
    leader.flight.set_cost(usage.cost.clone());

    // The last byte waits for the ledger line to be durable, and for nothing else: the
    // entry is handed to the cache's writer (and served from memory until it is stored)
    // before the flight ends, so the next identical request finds one or the other.
    if ex.endpoint.billable() {
        let line = ex.ledger_line(ex.policy.upstream_outcome(), head.status.as_u16(), acc);
        if let Err(e) = app.account_durably(line, ex.prompt()).await {
            tracing::error!(parent: &ex.span(), error = %e, "could not make the ledger line durable");
        }
    }
    if let (Some(key), true) = (ex.key, clean && ex.policy.store) {
        let entry = entry_of(&ex, &head, &t.chunk_times, body.clone(), &usage, source);
        app.cache.store(key, Arc::new(entry));
    }
    if ex.endpoint == Endpoint::Models && clean {
        if let Some(p) = Prices::from_models_json(&body) {
            app.set_prices(p);
        }
    }
    match end {
        TeeEnd::Clean | TeeEnd::Unterminated => leader.finish(End::Complete),
        TeeEnd::Broken(e) => {
            tracing::warn!(parent: &ex.span(), error = %e, "upstream answer broke off; not stored");
            leader.finish(End::Failed(e));
        }
    }
}

fn note_accepted(app: &Arc<App>, ex: &Exchange) {
    if app.config.cache.scope != crate::config::Scope::Shared {
        return;
    }
    if let Some(fp) = ex.attr.fingerprint.clone() {
        let store = app.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::attribution::mark_accepted(&store, &fp) {
                tracing::warn!(error = %e, "could not record an accepted credential");
            }
        });
    }
}

/// The cost of an upstream answer: the fields upstream reported (JSON body or the stream's
/// trailing cost frame), else an estimate from `/models` prices.
fn account(
    ex: &Exchange,
    prices: Option<&Prices>,
    sse: bool,
    cost_frame: Option<&str>,
    body: &[u8],
    stream_output_chars: usize,
) -> (Usage, CostSource) {
    let reported = if sse {
        cost_frame.and_then(Usage::from_upstream_json)
    } else {
        std::str::from_utf8(body)
            .ok()
            .and_then(Usage::from_upstream_json)
    };
    if let Some(u) = reported.filter(|u| u.cost.is_some()) {
        return (u, CostSource::Upstream);
    }
    let output_chars = if sse {
        stream_output_chars
    } else {
        serde_json::from_slice::<Value>(body)
            .ok()
            .as_ref()
            .and_then(|v| v.get("choices"))
            .and_then(Value::as_array)
            .map_or(0, |cs| {
                cs.iter()
                    .filter_map(|c| c.pointer("/message/content").and_then(Value::as_str))
                    .map(|s| s.chars().count())
                    .sum()
            })
    };
    let input_chars = ex.json.as_ref().map_or(0, |j| j.input_chars);
    estimate(prices, ex.model().unwrap_or(""), input_chars, output_chars)
}

fn entry_of(
    ex: &Exchange,
    head: &Head,
    chunk_times: &[(u32, u32)],
    body: Bytes,
    usage: &Usage,
    source: CostSource,
) -> Entry {
    let keep = [header::CONTENT_TYPE];
    let headers = head
        .headers
        .iter()
        .filter(|(k, _)| keep.contains(k))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let request = ex
        .json
        .as_ref()
        .and_then(|j| String::from_utf8(j.canonical.clone()).ok())
        .and_then(|s| RawValue::from_string(s).ok())
        .unwrap_or_else(|| RawValue::NULL.to_owned());
    Entry::new(
        EntryMeta {
            status: head.status.as_u16(),
            headers,
            stream: head.stream,
            chunks: if head.stream {
                chunk_times.to_vec()
            } else {
                Vec::new()
            },
            created_ms: now_ms(),
            method: ex.method.to_string(),
            path: ex.path_q.clone(),
            request,
            model: ex.model().map(str::to_string),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost: usage.cost.clone(),
            cost_source: source,
        },
        body,
    )
}
