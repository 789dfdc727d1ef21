//! Why a request is a hit or a miss: the reason, in words a user acts on, and the nearest
//! stored entry of the same partition, endpoint and model with the JSON pointers where its
//! request differs. Reads only; never says whose another partition is.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::cache::entry::Entry;
use crate::cache::key::{CacheKey, KeyParts};
use crate::cache::storage::{Gone, Newest, StorageResult};
use crate::cache::{now_ms, Cache};
use crate::config::Scope;

/// Entries looked at for the nearest one, and of those (the most recently used first), the
/// most whose requests are read and compared.
pub const NEAREST_SCAN: usize = 10_000;
pub const NEAREST_COMPARED: usize = 50;
/// Differences listed for the nearest entry (the count says how many there are).
const DIFFERENCES_SHOWN: usize = 20;

/// The request to explain, as the proxy would key it.
pub struct Question<'a> {
    pub key: CacheKey,
    pub parts: KeyParts,
    /// Path as keyed (project prefix removed).
    pub path: &'a str,
    pub model: Option<&'a str>,
    /// The canonical body.
    pub canonical: &'a [u8],
    /// The request's own `Cache-Control: max-age`.
    pub max_age: Option<Duration>,
    pub scope: Scope,
    /// Fields of the body left out of the key (`cache.ignore_fields`).
    pub ignored: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub outcome: &'static str,
    pub key: String,
    /// A short token (also sent as `x-chatcache-reason`).
    pub reason: &'static str,
    pub detail: String,
    pub ignored_fields: Vec<String>,
    pub nearest: Option<Nearest>,
}

#[derive(Debug, Serialize)]
pub struct Nearest {
    pub key: String,
    pub age_s: u64,
    pub difference_count: usize,
    pub differences: Vec<Difference>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Difference {
    pub pointer: String,
    pub stored: Option<Value>,
    pub request: Option<Value>,
}

impl Cache {
    /// The reason alone (cheap: no scan), as the `x-chatcache-reason` header carries it.
    /// Blocking.
    pub fn reason(&self, q: &Question) -> StorageResult<(&'static str, String)> {
        let s = &self.shared;
        // Looked at without noting a use: explaining is not using.
        let found = match s.pending(&q.key).or_else(|| s.hot.get(&q.key)) {
            Some(e) => Some(Ok(age(&e))),
            None => (s.storage.lookup(&q.key)?).map(|r| Entry::decode(r).map(|e| age(&e))),
        };
        match found {
            Some(Ok(a)) if a > s.limits.max_age => {
                return Ok(("too-old", "stored, but older than cache.max_age".into()))
            }
            Some(Ok(a)) if q.max_age.is_some_and(|m| a > m) => {
                let why = "stored, but older than the request's Cache-Control max-age";
                return Ok(("too-old", why.into()));
            }
            Some(Ok(_)) => return Ok(("hit", "stored and fresh".into())),
            Some(Err(_)) => return Ok(("damaged", "stored, but damaged: it is dropped".into())),
            None => {}
        }
        if let Some((why, at)) = self.shared.storage.gone(&q.key)? {
            let ago = now_ms().saturating_sub(at) / 1000;
            return Ok(match why {
                Gone::Evicted => (
                    "evicted",
                    format!("evicted {ago}s ago to keep within cache.max_bytes"),
                ),
                Gone::Expired => (
                    "too-old",
                    format!("removed {ago}s ago, older than cache.max_age"),
                ),
                Gone::Purged => ("purged", format!("removed by a purge {ago}s ago")),
                Gone::Damaged => ("damaged", format!("dropped {ago}s ago: it was damaged")),
                Gone::NotCacheable => (
                    "not-cacheable",
                    format!(
                        "asked {ago}s ago, but the answer was an error or broke off: not stored"
                    ),
                ),
            });
        }
        let mut other = None;
        self.shared
            .storage
            .same_request(&q.parts.request, &mut |_, s| {
                if s.parts.base != q.parts.base {
                    other = Some(match q.scope {
                        Scope::Key => "another credential",
                        Scope::Project => "another project",
                        Scope::Shared => "another cache scope",
                    });
                } else if s.parts.namespace != q.parts.namespace {
                    other = other.or(Some("another namespace"));
                }
                other.is_none()
            })?;
        if let Some(which) = other {
            return Ok((
                "other-partition",
                format!("stored for {which}, not for this one"),
            ));
        }
        Ok(("never-stored", "never stored".into()))
    }

    /// The reason and the nearest entry. Blocking.
    pub fn explain(&self, q: &Question) -> StorageResult<Explanation> {
        let (reason, detail) = self.reason(q)?;
        let hit = reason == "hit";
        let nearest = if hit { None } else { self.nearest(q)? };
        Ok(Explanation {
            outcome: if hit { "hit" } else { "miss" },
            key: q.key.to_hex(),
            reason,
            detail,
            ignored_fields: q.ignored.clone(),
            nearest,
        })
    }

    fn nearest(&self, q: &Question) -> StorageResult<Option<Nearest>> {
        let storage = &self.shared.storage;
        // The most recently used of the first `NEAREST_SCAN` entries from the question's
        // key on (all of them in a cache no larger) that share its partition, path and
        // model.
        let mut candidates = Newest::new(NEAREST_COMPARED);
        let mut scanned = 0;
        storage.scan_around(&q.key, &mut |key, s| {
            scanned += 1;
            if key != q.key
                && s.parts.base == q.parts.base
                && s.parts.namespace == q.parts.namespace
                && s.path == q.path
                && s.model.as_deref() == q.model
            {
                candidates.offer(key, s);
            }
            scanned < NEAREST_SCAN
        })?;
        let Ok(request) = serde_json::from_slice::<Value>(q.canonical) else {
            return Ok(None);
        };
        let mut best: Option<(usize, Nearest)> = None;
        for key in candidates.into_keys() {
            let Some(entry) = storage.lookup(&key)?.and_then(|r| Entry::decode(r).ok()) else {
                continue;
            };
            let Ok(stored) = serde_json::from_str::<Value>(entry.meta.request.get()) else {
                continue;
            };
            let mut differences = Vec::new();
            diff(&stored, &request, &mut String::new(), &mut differences);
            let count = differences.len();
            if best.as_ref().is_none_or(|(n, _)| count < *n) {
                differences.truncate(DIFFERENCES_SHOWN);
                let near = Nearest {
                    key: key.to_hex(),
                    age_s: age(&entry).as_secs(),
                    difference_count: count,
                    differences,
                };
                best = Some((count, near));
            }
        }
        Ok(best.map(|(_, n)| n))
    }
}

fn age(e: &Entry) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(e.meta.created_ms))
}

/// The JSON pointers (RFC 6901) at which `stored` and `request` differ, deepest first
/// where both are objects or arrays, in key order.
pub fn diff(stored: &Value, request: &Value, at: &mut String, out: &mut Vec<Difference>) {
    match (stored, request) {
        (a, b) if a == b => {}
        (Value::Object(a), Value::Object(b)) => {
            let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let len = at.len();
                at.push('/');
                at.push_str(&name.replace('~', "~0").replace('/', "~1"));
                child(a.get(name), b.get(name), at, out);
                at.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let len = at.len();
                at.push('/');
                at.push_str(itoa::Buffer::new().format(i));
                child(a.get(i), b.get(i), at, out);
                at.truncate(len);
            }
        }
        (a, b) => out.push(Difference {
            pointer: at.clone(),
            stored: Some(a.clone()),
            request: Some(b.clone()),
        }),
    }
}

fn child(a: Option<&Value>, b: Option<&Value>, at: &mut String, out: &mut Vec<Difference>) {
    match (a, b) {
        (Some(a), Some(b)) => diff(a, b, at, out),
        (a, b) => out.push(Difference {
            pointer: at.clone(),
            stored: a.cloned(),
            request: b.cloned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointers(a: Value, b: Value) -> Vec<String> {
        let mut out = Vec::new();
        diff(&a, &b, &mut String::new(), &mut out);
        out.into_iter().map(|d| d.pointer).collect()
    }

    #[test]
    fn differences_are_named_by_pointer() {
        let a =
            json!({"model": "m", "temperature": 0.2, "messages": [{"content": "hi"}], "a/b": 1});
        let b = json!({"model": "m", "temperature": 0.7, "messages": [{"content": "hi"}, {"content": "more"}], "a/b": 2, "x~": 0});
        assert_eq!(
            pointers(a.clone(), b),
            ["/a~1b", "/messages/1", "/temperature", "/x~0"]
        );
        assert!(pointers(a.clone(), a).is_empty());
    }
}
