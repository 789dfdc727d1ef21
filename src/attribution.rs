//! Who a request is for: its project (local token, `/p/NAME` prefix, header, or
//! `default`), the credential sent upstream and its fingerprint, and the cache partition.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::cache::key::Partition;
use crate::config::{check_project_name, Scope};
use crate::error::ApiError;
use crate::secret::{token_hash, Fingerprinter};
use crate::store::{Space, Store, StoreResult};

pub const DEFAULT_PROJECT: &str = "default";

#[derive(Debug, Clone)]
pub struct Attribution {
    pub project: Arc<str>,
    /// The Authorization value to send upstream, if any.
    pub upstream_auth: Option<HeaderValue>,
    /// Keyed fingerprint of the upstream credential.
    pub fingerprint: Option<Arc<str>>,
    pub namespace: Option<String>,
}

/// Splits `/p/NAME/rest` into (`NAME`, `/rest`).
pub fn split_project_prefix(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/p/")?;
    match rest.find('/') {
        Some(i) => Some((&rest[..i], &rest[i..])),
        None => Some((rest, "/")),
    }
}

/// The path to forward and key: the request path without any `/p/NAME` prefix.
pub fn forwarded_path(path: &str) -> &str {
    split_project_prefix(path).map_or(path, |(_, rest)| rest)
}

/// What attribution needs of the daemon: its local tokens, the upstream key it may hold,
/// and the fingerprinter of credentials.
pub struct Credentials<'a> {
    pub tokens: &'a BTreeMap<String, Arc<str>>,
    pub held_key: Option<&'a HeaderValue>,
    pub fingerprints: &'a Fingerprinter,
}

pub fn resolve(
    creds: &Credentials,
    path: &str,
    headers: &HeaderMap,
) -> Result<Attribution, ApiError> {
    let prefix_project = split_project_prefix(path).map(|(name, _)| name);
    let header_project = single_header(headers, &PROJECT_HEADER)?;
    let namespace = single_header(headers, &NAMESPACE_HEADER)?;
    if let Some(ns) = &namespace {
        if ns.is_empty() || ns.len() > 128 {
            return Err(ApiError::BadRequest(
                "x-chatcache-namespace must be 1-128 characters".into(),
            ));
        }
    }
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let client_auth = auth.next().cloned();
    if auth.next().is_some() {
        return Err(ApiError::BadRequest(
            "more than one Authorization header".into(),
        ));
    }
    let token_project = client_auth
        .as_ref()
        .filter(|_| !creds.tokens.is_empty())
        .and_then(bearer)
        .and_then(|t| creds.tokens.get(&token_hash(t)).cloned());

    let upstream_auth = match (creds.held_key, &token_project) {
        (Some(held), Some(_)) => Some(held.clone()),
        (Some(_), None) if client_auth.is_none() => {
            return Err(ApiError::Unauthorized(
                "a local token is required: send Authorization: Bearer <token> made by `chatcache token new`",
            ))
        }
        (Some(_), None) => return Err(ApiError::Unauthorized("unknown local token")),
        (None, Some(_)) => {
            return Err(ApiError::Unauthorized(
                "local tokens need the daemon to hold the upstream key (upstream.api_key_file)",
            ))
        }
        (None, None) => client_auth,
    };
    let fingerprint = upstream_auth
        .as_ref()
        .map(|v| creds.fingerprints.fingerprint(v.as_bytes()));

    let project = match (token_project, prefix_project, header_project) {
        (Some(t), _, _) => t,
        (None, Some(p), _) => checked_project(p)?,
        (None, None, Some(h)) => checked_project(h)?,
        (None, None, None) => default_project(),
    };
    Ok(Attribution {
        project,
        upstream_auth,
        fingerprint,
        namespace: namespace.map(str::to_string),
    })
}

impl Attribution {
    /// The cache partition this request reads and writes, or None when it may neither
    /// (no credential: nobody to vouch that upstream would have answered it).
    pub fn partition(&self, scope: Scope) -> Option<Partition<'_>> {
        let fp = self.fingerprint.as_ref()?;
        let base = match scope {
            Scope::Key => Cow::Borrowed(&**fp),
            Scope::Project => Cow::Owned(format!("project:{}", self.project)),
            Scope::Shared => Cow::Borrowed("shared"),
        };
        Some(Partition {
            base,
            namespace: self.namespace.as_deref(),
        })
    }
}

fn bearer(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    let (scheme, token) = s.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

const PROJECT_HEADER: HeaderName = HeaderName::from_static("x-chatcache-project");
const NAMESPACE_HEADER: HeaderName = HeaderName::from_static("x-chatcache-namespace");

/// A project name from the request, once checked (names from the config were checked at load).
fn checked_project(name: &str) -> Result<Arc<str>, ApiError> {
    check_project_name(name).map_err(|e| ApiError::BadRequest(e.0))?;
    Ok(Arc::from(name))
}

fn default_project() -> Arc<str> {
    static DEFAULT: OnceLock<Arc<str>> = OnceLock::new();
    DEFAULT.get_or_init(|| Arc::from(DEFAULT_PROJECT)).clone()
}

fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h str>, ApiError> {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::BadRequest(format!("more than one {name} header")));
    }
    first
        .to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| ApiError::BadRequest(format!("{name} is not text")))
}

/// Records that upstream accepted the credential with this fingerprint (for `shared`).
/// Blocking.
pub fn mark_accepted(store: &Store, fingerprint: &str) -> StoreResult<()> {
    let key = format!("accepted:{fingerprint}");
    if store.get(Space::Meta, key.as_bytes())?.is_none() {
        store.put(Space::Meta, key.as_bytes(), b"1")?;
    }
    Ok(())
}

/// Whether upstream has accepted the credential with this fingerprint before. Blocking.
pub fn was_accepted(store: &Store, fingerprint: &str) -> StoreResult<bool> {
    let key = format!("accepted:{fingerprint}");
    Ok(store.get(Space::Meta, key.as_bytes())?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_prefix_is_split() {
        assert_eq!(
            split_project_prefix("/p/web/chat/completions"),
            Some(("web", "/chat/completions"))
        );
        assert_eq!(split_project_prefix("/p/web"), Some(("web", "/")));
        assert_eq!(split_project_prefix("/chat/completions"), None);
    }
}
