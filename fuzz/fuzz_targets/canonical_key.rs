//! Fuzzes the canonical JSON form behind the cache key: for any JSON document, the canonical
//! text must read back as the same value (minus the ignored top-level field), canonicalising
//! it again must change nothing, and equal canonical text must give equal keys. The strict
//! body parser gets the same bytes and must never panic.
#![no_main]

use chatcache::cache::key::{cache_key, canonical_json};
use chatcache::proxy::request::parse_json_object;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let strict = parse_json_object(data);

    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        assert!(
            strict.is_err(),
            "strict parser accepted what serde_json refuses"
        );
        return;
    };
    // The strict parser only adds refusals (non-objects, duplicate keys); whatever it
    // accepts must read the same as the plain parser.
    if let Ok(strict_value) = &strict {
        assert!(strict_value.is_object());
        assert_eq!(strict_value, &value);
    }

    let ignore = ["user".to_string()];
    let canon = canonical_json(&value, &ignore);

    let reparsed: Value = match serde_json::from_slice(&canon) {
        Ok(v) => v,
        Err(e) => panic!(
            "canonical text is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&canon)
        ),
    };
    let mut expected = value.clone();
    if let Value::Object(map) = &mut expected {
        map.remove("user");
    }
    assert_eq!(
        reparsed, expected,
        "canonical text reads back as another value"
    );

    let again = canonical_json(&reparsed, &ignore);
    assert_eq!(again, canon, "canonicalising is not idempotent");

    // Serialising in serde_json's own order and canonicalising that gives the same text.
    let plain = serde_json::to_vec(&value).expect("a Value always serialises");
    let from_plain: Value =
        serde_json::from_slice(&plain).expect("serde_json reads its own output");
    assert_eq!(canonical_json(&from_plain, &ignore), canon);

    let key = cache_key("POST", "/chat/completions", "p", &canon);
    assert_eq!(key, cache_key("POST", "/chat/completions", "p", &again));
    assert_ne!(key, cache_key("POST", "/chat/completions", "q", &canon));
});
