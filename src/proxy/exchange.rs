//! A request as the proxy holds it on its way upstream (what was asked, by whom, under
//! which policy and key), the request it becomes upstream, and the ledger line it earns.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Method, Request};
use http_body_util::Full;

use crate::app::App;
use crate::attribution::Attribution;
use crate::cache::entry::EntryMeta;
use crate::cache::key::{key_parts, CacheKey, KeyParts};
use crate::cost::{CostSource, Money, Usage};
use crate::error::ApiError;
use crate::policy::{Endpoint, Policy};
use crate::proxy::headers::{copy_end_to_end, owned};
use crate::request::json::JsonRequest;
use crate::spend::{LedgerLine, Outcome};

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

    /// What the request's cache key was made of (see `cache::key::KeyParts`).
    pub fn key_parts(&self, scope: crate::config::Scope) -> Option<KeyParts> {
        let partition = self.attr.partition(scope)?;
        let canonical = self.json.as_ref().map_or(&[][..], |j| &j.canonical[..]);
        Some(key_parts(
            self.method.as_str(),
            &self.path_q,
            &partition,
            canonical,
        ))
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
    /// held for the whole exchange would cost on every poll, line or no line.
    pub(super) fn span(&self) -> tracing::Span {
        tracing::info_span!("exchange", method = %self.method, path = %self.path_q)
    }

    pub(super) fn upstream_request(&self, app: &App) -> Result<Request<Full<Bytes>>, ApiError> {
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

pub(super) fn response_headers(src: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(src.len());
    copy_end_to_end(src, &mut out, |_| false);
    out
}
