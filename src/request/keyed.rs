//! A request read as the cache sees it: its endpoint, the path it is keyed and forwarded
//! under, its body's reading, its policy and its cache key. The proxy answers from this;
//! `cache explain` explains it.

use std::sync::Arc;

use http::{HeaderMap, Method, Uri};

use crate::attribution::{forwarded_path, Attribution};
use crate::cache::explain::Question;
use crate::cache::key::{cache_key, key_parts, CacheKey};
use crate::config::Config;
use crate::error::ApiError;
use crate::policy::{Endpoint, Policy};
use crate::request::json::{JsonRequest, ParseMemo};

pub struct Keyed {
    pub endpoint: Endpoint,
    /// Path and query to forward and key (project prefix removed).
    pub path_q: String,
    /// The body's reading, for the JSON endpoints.
    pub json: Option<Arc<JsonRequest>>,
    pub policy: Policy,
    /// None when the request may neither read nor fill the cache.
    pub key: Option<CacheKey>,
}

/// Reads a request for `attr` whose body is `body`.
pub fn read(
    config: &Config,
    parsed: &ParseMemo,
    attr: &Attribution,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Keyed, ApiError> {
    let path = forwarded_path(uri.path());
    let endpoint = Endpoint::of(method, path);
    let json = if endpoint.takes_json() {
        Some(parsed.parse(body)?)
    } else {
        None
    };
    let policy = Policy::new(config.mode, headers);
    let path_q = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let key = endpoint
        .cacheable()
        .then(|| attr.partition(config.cache.scope))
        .flatten()
        .map(|partition| match &json {
            Some(j) => j.key(method.as_str(), &path_q, &partition.text()),
            None => cache_key(method.as_str(), &path_q, &partition.text(), &[]),
        });
    Ok(Keyed {
        endpoint,
        path_q,
        json,
        policy,
        key,
    })
}

/// What `cache explain` asks of a request read as `read` does; None when it has no cache
/// key.
#[allow(clippy::too_many_arguments)]
pub fn question<'a>(
    config: &Config,
    attr: &Attribution,
    method: &Method,
    path_q: &'a str,
    json: Option<&'a JsonRequest>,
    policy: &Policy,
    key: Option<CacheKey>,
    body: &[u8],
) -> Option<Question<'a>> {
    let key = key?;
    let partition = attr.partition(config.cache.scope)?;
    let canonical = json.map_or(&[][..], |j| &j.canonical[..]);
    // Which of the ignored fields this body has: read again, only to name them.
    let ignored = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
        .map(|m| {
            (config.cache.ignore_fields.iter())
                .filter(|f| m.contains_key(f.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Some(Question {
        key,
        parts: key_parts(method.as_str(), path_q, &partition, canonical),
        path: path_q,
        model: json.and_then(|j| j.model.as_deref()),
        canonical,
        max_age: policy.max_age,
        scope: config.cache.scope,
        ignored,
    })
}

impl Keyed {
    /// What `cache explain` asks of this request.
    pub fn question<'a>(
        &'a self,
        config: &Config,
        attr: &Attribution,
        method: &Method,
        body: &[u8],
    ) -> Option<Question<'a>> {
        question(
            config,
            attr,
            method,
            &self.path_q,
            self.json.as_deref(),
            &self.policy,
            self.key,
            body,
        )
    }
}
