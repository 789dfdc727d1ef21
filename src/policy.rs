//! What may be cached and how: the endpoints of the API, and the daemon mode combined
//! with a request's own `Cache-Control` directives (RFC 9111 request directives).

use std::time::Duration;

use http::{header, HeaderMap, Method};

use crate::config::Mode;
use crate::spend::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Tokens,
    Moderate,
    Models,
    Credits,
    Other,
}

impl Endpoint {
    pub fn of(method: &Method, path: &str) -> Endpoint {
        match (method, path) {
            (&Method::POST, "/chat/completions") => Endpoint::ChatCompletions,
            (&Method::POST, "/tokens") => Endpoint::Tokens,
            (&Method::POST, "/moderate") => Endpoint::Moderate,
            (&Method::GET, "/models") => Endpoint::Models,
            (&Method::GET, "/credits") => Endpoint::Credits,
            _ => Endpoint::Other,
        }
    }

    /// Its request body is a JSON object (checked locally before anything goes upstream).
    pub fn takes_json(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions | Endpoint::Tokens | Endpoint::Moderate
        )
    }

    /// Answers may be stored.
    pub fn cacheable(self) -> bool {
        !matches!(self, Endpoint::Credits | Endpoint::Other)
    }

    /// Answers may cost money, so each gets a ledger line and budgets apply.
    pub fn billable(self) -> bool {
        self.takes_json()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Tokens => "/tokens",
            Endpoint::Moderate => "/moderate",
            Endpoint::Models => "/models",
            Endpoint::Credits => "/credits",
            Endpoint::Other => "other",
        }
    }
}

/// What one request may do with the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Serve a stored answer if there is one.
    pub lookup: bool,
    /// Store the answer upstream gives.
    pub store: bool,
    /// Never contact upstream.
    pub offline: bool,
    /// Accept only stored answers younger than this.
    pub max_age: Option<Duration>,
}

impl Policy {
    pub fn new(mode: Mode, headers: &HeaderMap) -> Policy {
        let mut p = match mode {
            Mode::Record => Policy {
                lookup: true,
                store: true,
                offline: false,
                max_age: None,
            },
            Mode::Replay => Policy {
                lookup: true,
                store: false,
                offline: true,
                max_age: None,
            },
            Mode::Refresh => Policy {
                lookup: false,
                store: true,
                offline: false,
                max_age: None,
            },
            Mode::Passthrough => Policy {
                lookup: false,
                store: false,
                offline: false,
                max_age: None,
            },
        };
        let directives = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|d| d.trim().to_ascii_lowercase());
        for d in directives {
            match d.split_once('=') {
                None if d == "no-cache" => p.lookup = false,
                None if d == "no-store" => p.store = false,
                None if d == "only-if-cached" => {
                    p.lookup = true;
                    p.offline = true;
                }
                Some(("max-age", secs)) => {
                    if let Ok(s) = secs.trim_matches('"').parse::<u64>() {
                        p.max_age = Some(Duration::from_secs(s));
                    }
                }
                _ => {}
            }
        }
        if p.offline {
            p.store = false;
        }
        p
    }

    /// The outcome of an answer that came from upstream under this policy.
    pub fn upstream_outcome(self) -> Outcome {
        if self.lookup {
            Outcome::Miss
        } else if self.store {
            Outcome::Refresh
        } else {
            Outcome::Bypass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_cc(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn modes_follow_the_design_table() {
        let none = HeaderMap::new();
        let r = Policy::new(Mode::Record, &none);
        assert!(r.lookup && r.store && !r.offline);
        let r = Policy::new(Mode::Replay, &none);
        assert!(r.lookup && !r.store && r.offline);
        let r = Policy::new(Mode::Refresh, &none);
        assert!(!r.lookup && r.store);
        let r = Policy::new(Mode::Passthrough, &none);
        assert!(!r.lookup && !r.store);
        assert_eq!(r.upstream_outcome(), Outcome::Bypass);
    }

    #[test]
    fn request_directives_adjust_one_request() {
        let p = Policy::new(Mode::Record, &with_cc("no-cache"));
        assert_eq!(
            (p.lookup, p.store, p.upstream_outcome()),
            (false, true, Outcome::Refresh)
        );
        let p = Policy::new(Mode::Record, &with_cc("no-store"));
        assert_eq!((p.lookup, p.store), (true, false));
        let p = Policy::new(Mode::Record, &with_cc("only-if-cached"));
        assert!(p.offline && p.lookup && !p.store);
        let p = Policy::new(Mode::Record, &with_cc("max-age=60, no-store"));
        assert_eq!(p.max_age, Some(Duration::from_secs(60)));
        assert!(!p.store);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::of(&Method::POST, "/chat/completions"),
            Endpoint::ChatCompletions
        );
        assert_eq!(
            Endpoint::of(&Method::GET, "/chat/completions"),
            Endpoint::Other
        );
        assert!(!Endpoint::Credits.cacheable());
        assert!(Endpoint::Models.cacheable() && !Endpoint::Models.billable());
    }
}
