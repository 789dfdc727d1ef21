//! Fuzzes reading the settings file: any text must give a configuration or an error, never a
//! panic, and an accepted configuration must hold the limits validation promises.
#![no_main]

use chatcache::config::{Config, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |k: &str| {
        if k == "HOME" {
            Some("/tmp".to_string())
        } else {
            None
        }
    };
    let Ok(config) = Config::from_parts(None, Some(text), Overrides::default(), env) else {
        return;
    };

    assert!(config.limits.max_body > 0);
    assert!(config.limits.max_connections > 0);
    assert!(!config.limits.header_read_timeout.is_zero());
    assert!(!config.limits.shutdown_grace.is_zero());
    let u = &config.upstream;
    assert!(!u.connect_timeout.is_zero());
    assert!(!u.first_byte_timeout.is_zero());
    assert!(!u.idle_timeout.is_zero());
    assert!(!u.pool_idle_timeout.is_zero());
    assert!(matches!(u.url.scheme_str(), Some("http") | Some("https")));
    assert!(u.url.authority().is_some());
    assert!(!(u.api_key_file.is_some() && u.api_key_env.is_some()));
    assert!(!config.cache.max_age.is_zero());
    assert!(!config.cache.models_ttl.is_zero());
    for field in &config.cache.ignore_fields {
        assert!(!matches!(field.as_str(), "model" | "messages" | "stream"));
    }
    for hash in config.tokens.keys() {
        assert_eq!(hash.len(), 64);
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
    for (name, project) in &config.projects {
        assert!(!name.is_empty() && name.len() <= 64);
        if let Some(b) = project.budget {
            assert!(b.is_finite() && b >= 0.0);
        }
    }
});
