//! A JSON request body as the proxy uses it (canonical form for the cache key, model,
//! stream flag, prompt size and text), and the memo that remembers it by the body's bytes,
//! so that a body seen before (a repeated request: what a cache exists to serve) is not
//! parsed and canonicalised again. The same bytes always parse to the same thing, so the
//! memo can only save work, never change an answer.

// Keys are the bodies themselves, compared in full when found, so two bodies never share
// a parse, and hashed for a fraction of what a cryptographic hash would cost per hit.
use std::sync::{Arc, Mutex};

use crate::cache::key::{cache_key, canonical_json_with, CacheKey};
use crate::error::ApiError;
use crate::request::prompt::PromptReader;
use crate::sized_lru::SizedLru;

#[derive(Debug)]
pub struct JsonRequest {
    /// What the cache key hashes: the body in canonical form, ignored fields left out.
    pub canonical: Vec<u8>,
    pub model: Option<Arc<str>>,
    pub stream: bool,
    /// The request's `max_tokens`, for its worst-case cost.
    pub max_tokens: Option<u64>,
    /// Characters of prompt text, for estimates.
    pub input_chars: usize,
    /// The last user message, kept only when `admin.show_prompts` is on (dashboard).
    pub prompt: Option<String>,
    /// The last key made from this body, with what else went into it: a repeated request
    /// (a hit) usually asks for the same key again.
    last_key: Mutex<Option<KeyedAs>>,
}

#[derive(Debug)]
struct KeyedAs {
    method: String,
    path: String,
    partition: String,
    key: CacheKey,
}

impl JsonRequest {
    /// Reads `body` strictly (a JSON object, no duplicate keys at any depth) and takes what
    /// the proxy needs from it.
    pub fn parse(
        body: &[u8],
        ignore_fields: &[String],
        keep_prompt: bool,
    ) -> Result<JsonRequest, ApiError> {
        let mut reader = PromptReader::new(keep_prompt);
        let canonical = canonical_json_with(body, ignore_fields, &mut |k, v| reader.note(k, v))
            .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        // The canonical text of an object, and of nothing else, starts with its brace.
        if canonical.first() != Some(&b'{') {
            return Err(ApiError::InvalidJson(
                "the body must be a JSON object".into(),
            ));
        }
        let prompt = reader.finish();
        Ok(JsonRequest {
            canonical,
            model: prompt.model.map(Arc::from),
            stream: prompt.stream,
            max_tokens: prompt.max_tokens,
            input_chars: prompt.chars,
            prompt: prompt.last_user_text,
            last_key: Mutex::new(None),
        })
    }

    /// `cache_key` of this body with the other parts; remembers the last one made.
    pub fn key(&self, method: &str, path: &str, partition: &str) -> CacheKey {
        // A panic cannot leave the slot half-written: it is replaced whole.
        let mut last = self.last_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = last.as_ref() {
            if k.method == method && k.path == path && k.partition == partition {
                return k.key;
            }
        }
        let key = cache_key(method, path, partition, &self.canonical);
        *last = Some(KeyedAs {
            method: method.to_string(),
            path: path.to_string(),
            partition: partition.to_string(),
            key,
        });
        key
    }

    /// Roughly what keeping it costs, for the memo's budget.
    fn size(&self) -> usize {
        const OVERHEAD: usize = 160;
        // The remembered key's parts: method, path and partition, each short.
        const KEY_SLOT: usize = 160;
        OVERHEAD
            + KEY_SLOT
            + self.canonical.len()
            + self.model.as_ref().map_or(0, |m| m.len())
            + self.prompt.as_ref().map_or(0, String::len)
    }
}

/// A remembered body: its own copy (one in a connection's read buffer would pin that).
type Body = Vec<u8>;

/// Parsed bodies by their bytes, within a byte budget, least recently used dropped first.
pub struct ParseMemo {
    remembered: SizedLru<Body, Arc<JsonRequest>>,
    ignore_fields: Vec<String>,
    keep_prompt: bool,
}

impl ParseMemo {
    pub fn new(max_bytes: u64, ignore_fields: Vec<String>, keep_prompt: bool) -> ParseMemo {
        ParseMemo {
            remembered: SizedLru::new(max_bytes),
            ignore_fields,
            keep_prompt,
        }
    }

    /// The body's parse: remembered, or made now (and remembered unless the body is large).
    /// Bad bodies are refused each time and never remembered.
    pub fn parse(&self, body: &[u8]) -> Result<Arc<JsonRequest>, ApiError> {
        if let Some(found) = self.remembered.get(body) {
            return Ok(found);
        }
        let parsed = Arc::new(JsonRequest::parse(
            body,
            &self.ignore_fields,
            self.keep_prompt,
        )?);
        let size = (body.len() + parsed.size()) as u64;
        self.remembered.insert(body, parsed.clone(), size);
        Ok(parsed)
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.remembered.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remembered_key_is_always_the_key_of_what_is_asked() {
        let j = JsonRequest::parse(br#"{"model":"m","messages":[]}"#, &[], false).unwrap();
        let asks = [
            ("POST", "/chat/completions", "fp-a"),
            ("POST", "/chat/completions", "fp-a"),
            ("POST", "/chat/completions", "fp-b"),
            ("POST", "/tokens", "fp-b"),
            ("GET", "/tokens", "fp-b"),
            ("POST", "/chat/completions", "fp-a"),
        ];
        for (method, path, partition) in asks {
            assert_eq!(
                j.key(method, path, partition),
                cache_key(method, path, partition, &j.canonical),
                "{method} {path} {partition}"
            );
        }
        assert_ne!(
            j.key("POST", "/chat/completions", "fp-a"),
            j.key("POST", "/chat/completions", "fp-b")
        );
    }

    fn memo(max_bytes: u64) -> ParseMemo {
        ParseMemo::new(max_bytes, vec!["user".into()], true)
    }

    #[test]
    fn takes_what_the_proxy_needs() {
        let r = JsonRequest::parse(
            br#"{"model":"m","stream":true,"user":"u","messages":[{"role":"system","content":"ab"},{"role":"user","content":"cde"}]}"#,
            &["user".into()],
            true,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert!(r.stream);
        assert_eq!(r.input_chars, 5);
        assert_eq!(r.prompt.as_deref(), Some("cde"));
        assert!(!String::from_utf8_lossy(&r.canonical).contains("\"u\""));
        let quiet = JsonRequest::parse(br#"{"input":"x"}"#, &[], false).unwrap();
        assert_eq!(
            (quiet.prompt, quiet.input_chars, quiet.stream),
            (None, 1, false)
        );
    }

    #[test]
    fn a_remembered_body_gives_the_same_parse_as_a_fresh_one() {
        let m = memo(1 << 20);
        let body = br#"{"b":[1,2.5e3,{"y":null,"x":"\u00e9"}],"a":true,"user":"z"}"#;
        let first = m.parse(body).unwrap();
        let again = m.parse(body).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second parse comes from the memo"
        );
        let fresh = JsonRequest::parse(body, &["user".into()], true).unwrap();
        assert_eq!(again.canonical, fresh.canonical);
        assert_eq!(m.remembered(), 1);
    }

    #[test]
    fn bodies_that_differ_anywhere_get_their_own_parse() {
        let m = memo(1 << 20);
        let a = m.parse(br#"{"model":"m","n":1}"#).unwrap();
        let b = m.parse(br#"{"model":"m","n":2}"#).unwrap();
        assert_ne!(a.canonical, b.canonical);
        let a_again = m.parse(br#"{"model":"m","n":1}"#).unwrap();
        assert!(Arc::ptr_eq(&a, &a_again));
        assert_eq!(m.remembered(), 2);
    }

    #[test]
    fn bodies_that_are_not_strict_json_objects_are_refused() {
        assert!(JsonRequest::parse(br#"{"a":1,"b":{"c":[1,2]}}"#, &[], false).is_ok());
        for bad in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"a":{"b":1,"b":1}}"#,
            br#"[1,2]"#,
            br#""str""#,
            br#"3"#,
            br#"{"a":1"#,
            b"{\"a\":\"\xff\"}",
            b"",
        ] {
            let e = JsonRequest::parse(bad, &[], false).unwrap_err();
            assert_eq!(e.code(), "invalid_json", "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bad_bodies_are_refused_every_time_and_not_remembered() {
        let m = memo(1 << 20);
        for _ in 0..2 {
            let e = m.parse(br#"{"a":1,"a":2}"#).unwrap_err();
            assert_eq!(e.code(), "invalid_json");
        }
        assert_eq!(m.remembered(), 0);
    }

    #[test]
    fn stays_within_budget_and_keeps_what_is_in_use() {
        let m = memo(8 * 1024);
        let hot = br#"{"model":"hot"}"#;
        for i in 0..500 {
            m.parse(hot).unwrap();
            m.parse(format!(r#"{{"n":{i}}}"#).as_bytes()).unwrap();
            assert!(m.remembered.bytes() <= 8 * 1024);
        }
        assert!(m.remembered() < 120, "old bodies go: {}", m.remembered());
        assert!(m.remembered.contains(&hot[..]));
    }

    #[test]
    fn large_bodies_are_parsed_but_not_kept() {
        let m = memo(8 * 1024);
        let big = format!(r#"{{"input":"{}"}}"#, "x".repeat(2000));
        assert_eq!(m.parse(big.as_bytes()).unwrap().input_chars, 2000);
        assert_eq!(m.remembered(), 0);
    }
}
