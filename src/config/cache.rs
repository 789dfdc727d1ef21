//! `[cache]`: who shares answers, what is keyed, how much is kept and for how long.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{err, positive, ConfigError};

/// `cache.max_entry` unless set: far above any chat answer, small beside the machine.
pub const DEFAULT_MAX_ENTRY: u64 = 4 << 20;
/// Bytes of answers that may wait in memory for the cache's writer, and so the largest
/// `cache.max_entry`: an answer larger than what may wait could never be stored.
pub const PENDING_LIMIT: u64 = 32 << 20;

/// Who shares cache entries (`cache.scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Key,
    Project,
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayPace {
    Instant,
    Recorded,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    scope: Option<Scope>,
    ignore_fields: Option<Vec<String>>,
    max_bytes: Option<ByteSize>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    models_ttl: Option<Duration>,
    replay_pace: Option<ReplayPace>,
    memory: Option<ByteSize>,
    max_entry: Option<ByteSize>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub scope: Scope,
    pub ignore_fields: Vec<String>,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub models_ttl: Duration,
    pub replay_pace: ReplayPace,
    pub memory: u64,
    /// The largest answer recorded (and so stored); larger ones pass through unrecorded.
    pub max_entry: u64,
}

pub(super) fn validate(c: RawCache) -> Result<CacheConfig, ConfigError> {
    let cache = CacheConfig {
        scope: c.scope.unwrap_or(Scope::Key),
        ignore_fields: c.ignore_fields.unwrap_or_else(|| vec!["user".to_string()]),
        max_bytes: c.max_bytes.map(|b| b.as_u64()).unwrap_or(1 << 30),
        max_age: positive("cache.max_age", c.max_age, 30 * 24 * 3600)?,
        models_ttl: positive("cache.models_ttl", c.models_ttl, 300)?,
        replay_pace: c.replay_pace.unwrap_or(ReplayPace::Instant),
        memory: c.memory.map(|b| b.as_u64()).unwrap_or(8 << 20),
        max_entry: c.max_entry.map(|b| b.as_u64()).unwrap_or(DEFAULT_MAX_ENTRY),
    };
    for field in &cache.ignore_fields {
        if matches!(field.as_str(), "model" | "messages" | "stream") {
            return Err(err(format!(
                "cache.ignore_fields: {field:?} decides the answer and cannot be ignored"
            )));
        }
    }
    if cache.max_entry == 0 {
        return Err(err("cache.max_entry must be more than 0"));
    }
    if cache.max_entry > PENDING_LIMIT {
        return Err(err(format!(
            "cache.max_entry must be at most {} (larger answers pass through unstored)",
            ByteSize::b(PENDING_LIMIT).display().iec()
        )));
    }
    Ok(cache)
}
