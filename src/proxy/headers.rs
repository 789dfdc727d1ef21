//! The header filtering between client and upstream (RFC 9110 7.6.1).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers meaningful only for one connection (RFC 9110 7.6.1), plus `Proxy-*`.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers a `Connection:` list may not remove: the proxy decides about these itself.
const PROTECTED: &[&str] = &["authorization", "content-type", "host"];

/// Copies end-to-end headers from `src` into `dst`: drops hop-by-hop ones, those the
/// `Connection` header names (except protected ones), Content-Length (the body is
/// re-framed), and any for which `drop` returns true. The copies own their bytes: a
/// parsed header value shares the connection's whole read buffer, which a copy kept for
/// the length of a streamed answer would otherwise keep alive.
pub fn copy_end_to_end(src: &HeaderMap, dst: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    let named: Vec<String> = src
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && !PROTECTED.contains(&t.as_str()))
        .collect();
    for (name, value) in src {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || *name == header::CONTENT_LENGTH
            || named.iter().any(|c| c == n)
            || drop(name)
        {
            continue;
        }
        dst.append(name.clone(), owned(value));
    }
}

/// A copy of `value` in its own allocation (see `copy_end_to_end`).
pub fn owned(value: &HeaderValue) -> HeaderValue {
    match HeaderValue::from_bytes(value.as_bytes()) {
        Ok(mut copy) => {
            copy.set_sensitive(value.is_sensitive());
            copy
        }
        // Bytes hyper accepted that the stricter constructor does not: share them.
        Err(_) => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn owned_copies_keep_value_and_sensitivity() {
        let mut v = HeaderValue::from_static("Bearer k");
        v.set_sensitive(true);
        let c = owned(&v);
        assert_eq!(c, v);
        assert!(c.is_sensitive());
        assert!(!owned(&HeaderValue::from_static("x")).is_sensitive());
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut src = HeaderMap::new();
        src.insert(
            "connection",
            HeaderValue::from_static("x-secret, Authorization, keep-alive"),
        );
        src.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        src.insert("x-secret", HeaderValue::from_static("1"));
        src.insert("authorization", HeaderValue::from_static("Bearer k"));
        src.insert("te", HeaderValue::from_static("trailers"));
        src.insert("content-length", HeaderValue::from_static("10"));
        src.insert("x-keep", HeaderValue::from_static("yes"));
        src.insert("x-chatcache-project", HeaderValue::from_static("p"));
        let mut dst = HeaderMap::new();
        copy_end_to_end(&src, &mut dst, |n| n.as_str().starts_with("x-chatcache-"));
        let names: Vec<_> = dst.keys().map(|k| k.as_str().to_string()).collect();
        assert_eq!(
            names,
            vec!["authorization".to_string(), "x-keep".to_string()]
        );
        assert_eq!(dst.get_all("authorization").iter().count(), 1);
    }
}
