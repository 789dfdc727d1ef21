//! The one cache key function and the canonical JSON form of request bodies it hashes.

use std::fmt;

use serde_json::Value;

/// Bump when anything hashed below changes meaning, so old entries simply stop matching.
const KEY_FORMAT: &[u8] = b"chatcache-key-v1";

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn to_hex(self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn from_hex(s: &str) -> Option<CacheKey> {
        blake3::Hash::from_hex(s)
            .ok()
            .map(|h| CacheKey(*h.as_bytes()))
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The key of a request: method, path (without any `/p/NAME` prefix), partition and the
/// canonical body, each length-prefixed so no two different tuples hash alike.
pub fn cache_key(method: &str, path: &str, partition: &str, canonical_body: &[u8]) -> CacheKey {
    let parts = [
        KEY_FORMAT,
        method.as_bytes(),
        path.as_bytes(),
        partition.as_bytes(),
        canonical_body,
    ];
    // One buffer hashed at once: many small hasher updates cost more than the copy.
    let mut framed = Vec::with_capacity(parts.iter().map(|p| 8 + p.len()).sum());
    for part in parts {
        framed.extend_from_slice(&(part.len() as u64).to_le_bytes());
        framed.extend_from_slice(part);
    }
    CacheKey(*blake3::hash(&framed).as_bytes())
}

/// The canonical text of a JSON request body: object keys sorted (by their UTF-8 bytes) at
/// every depth, no insignificant whitespace, and the top-level `ignore` fields left out.
/// Written by hand rather than relying on `serde_json::Map` ordering, which a feature flag
/// elsewhere in the dependency graph could change.
pub fn canonical_json(value: &Value, ignore: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map
                .iter()
                .filter(|(k, _)| !ignore.iter().any(|i| i == *k))
                .collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            write_object(&mut out, entries);
        }
        other => write_value(&mut out, other),
    }
    out
}

fn write_object(out: &mut Vec<u8>, entries: Vec<(&String, &Value)>) {
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(out, k.as_str());
        out.push(b':');
        write_value(out, v);
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            write_object(out, entries);
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, v);
            }
            out.push(b']');
        }
        scalar => write_json(out, scalar),
    }
}

/// A string, number, bool or null in serde_json's compact form.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, scalar: &T) {
    // Serialising a string, number, bool or null into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, scalar).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn key_of(v: &Value) -> CacheKey {
        cache_key(
            "POST",
            "/chat/completions",
            "p",
            &canonical_json(v, &["user".into()]),
        )
    }

    #[test]
    fn key_order_and_spacing_do_not_matter() {
        let a: Value = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            "{ \"temperature\" : 0.5,\n \"messages\": [ {\"content\":\"hi\", \"role\":\"user\"} ], \"model\":\"m\" }",
        )
        .unwrap();
        assert_eq!(key_of(&a), key_of(&b));
        assert_eq!(
            String::from_utf8(canonical_json(&b, &[])).unwrap(),
            r#"{"messages":[{"content":"hi","role":"user"}],"model":"m","temperature":0.5}"#
        );
    }

    #[test]
    fn ignored_fields_only_at_top_level() {
        let a = json!({"model":"m","user":"alice","messages":[{"user":"x"}]});
        let b = json!({"model":"m","user":"bob","messages":[{"user":"x"}]});
        let c = json!({"model":"m","user":"bob","messages":[{"user":"y"}]});
        assert_eq!(key_of(&a), key_of(&b));
        assert_ne!(key_of(&b), key_of(&c));
    }

    #[test]
    fn every_tuple_part_changes_the_key() {
        let body = canonical_json(&json!({"model":"m"}), &[]);
        let base = cache_key("POST", "/a", "p", &body);
        assert_ne!(base, cache_key("GET", "/a", "p", &body));
        assert_ne!(base, cache_key("POST", "/b", "p", &body));
        assert_ne!(base, cache_key("POST", "/a", "q", &body));
        assert_ne!(base, cache_key("POST", "/a", "p", b"{}"));
        // Length prefixes keep shifted boundaries apart.
        assert_ne!(
            cache_key("POST", "/ab", "c", b""),
            cache_key("POST", "/a", "bc", b"")
        );
    }

    #[test]
    fn key_layout_is_stable_so_stored_entries_keep_matching() {
        // Each part length-prefixed (u64 LE) and hashed in order.
        let mut h = blake3::Hasher::new();
        for part in [
            KEY_FORMAT,
            b"POST",
            b"/chat/completions",
            b"fp",
            b"{\"a\":1}",
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        assert_eq!(
            cache_key("POST", "/chat/completions", "fp", b"{\"a\":1}").0,
            *h.finalize().as_bytes()
        );
    }

    #[test]
    fn hex_round_trips() {
        let k = key_of(&json!({"a":1}));
        assert_eq!(CacheKey::from_hex(&k.to_hex()), Some(k));
        assert_eq!(CacheKey::from_hex("zz"), None);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1.0e6f64..1.0e6).prop_map(|f| json!(f)),
            "[a-zé😀 ]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// No false hits: two bodies share a key exactly when they are the same JSON
        /// once the ignored field is removed.
        #[test]
        fn equal_key_iff_equal_body(a in arb_json(), b in arb_json(), field in "[a-z]{1,4}") {
            let mut ra = json!({"model": "m", "params": a});
            let mut rb = json!({"model": "m", "params": b});
            ra[field.as_str()] = json!(1);
            rb[field.as_str()] = json!(1);
            let same = ra == rb;
            prop_assert_eq!(key_of(&ra) == key_of(&rb), same);
        }

        /// Changing any top-level field value changes the key.
        #[test]
        fn changed_field_misses(v in arb_json(), field in "(model|messages|temperature|tools|seed|n|stream|top_p|max_tokens)") {
            let base = json!({"model": "m", "messages": [], "temperature": 1, "tools": [], "seed": 1, "n": 1, "stream": false, "top_p": 1, "max_tokens": 5});
            let mut changed = base.clone();
            changed[field.as_str()] = json!({"changed": v});
            prop_assert_ne!(key_of(&base), key_of(&changed));
        }

        /// Re-serialising with another key order gives the same canonical text.
        #[test]
        fn canonical_is_stable(v in arb_json()) {
            let text = serde_json::to_string(&v).unwrap();
            let reparsed: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(canonical_json(&v, &[]), canonical_json(&reparsed, &[]));
            let canon: Value = serde_json::from_slice(&canonical_json(&v, &[])).unwrap();
            prop_assert_eq!(canon, v);
        }
    }
}
