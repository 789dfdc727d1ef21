//! Fuzzes the canonical JSON form behind the cache key, read from a body's bytes in one
//! pass: it refuses exactly what serde_json refuses plus repeated keys; what it accepts reads
//! back as the same value (minus the ignored top-level field); canonicalising its own text
//! changes nothing; and equal canonical text gives equal keys.
#![no_main]

use chatcache::cache::key::{cache_key, canonical_json};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let ignore = ["user".to_string()];
    let canon = canonical_json(data, &ignore);

    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        assert!(canon.is_err(), "canonical reading accepted what serde_json refuses");
        return;
    };
    // Only repeated keys are refused beyond serde_json's own refusals; serde_json keeps the
    // last of them, so the value it read has fewer members than the text names.
    let Ok(canon) = canon else {
        return;
    };

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

    let again = canonical_json(&canon, &ignore).expect("canonical text reads again");
    assert_eq!(again, canon, "canonicalising is not idempotent");

    // serde_json's own serialisation of the value canonicalises to the same text.
    let plain = serde_json::to_vec(&value).expect("a Value always serialises");
    assert_eq!(
        canonical_json(&plain, &ignore).expect("serde_json's output reads"),
        canon
    );

    let key = cache_key("POST", "/chat/completions", "p", &canon);
    assert_eq!(key, cache_key("POST", "/chat/completions", "p", &again));
    assert_ne!(key, cache_key("POST", "/chat/completions", "q", &canon));
});
