//! Observations of the provider's credits: what `/credits` said, when, for which
//! credential (by its keyed fingerprint), kept in the store's daemon facts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::{Space, Store, StoreResult};

const PREFIX: &str = "credits:";

/// One answer of `/credits`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    pub credits: f64,
}

/// The `credits` number of a `/credits` answer body, if it has one.
pub fn parse_credits(body: &[u8]) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("credits")?.as_f64().filter(|c| c.is_finite())
}

pub fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The key of an observation: fingerprint, then the time in fixed-width hex, so that one
/// credential's observations sort by time.
fn key(fingerprint: &str, at_ms: i64) -> String {
    format!("{PREFIX}{fingerprint}:{:016x}", at_ms.max(0))
}

/// Keeps an observation. Blocking.
pub fn record(store: &Store, fingerprint: &str, obs: Observation) -> StoreResult<()> {
    // An Observation always serializes (two numbers); a failure would only drop it.
    let value = serde_json::to_vec(&obs).unwrap_or_default();
    store.put(Space::Meta, key(fingerprint, obs.at_ms).as_bytes(), &value)
}

/// Every observation at or after `since_ms`, per fingerprint, oldest first. Blocking.
pub fn list(store: &Store, since_ms: i64) -> StoreResult<BTreeMap<String, Vec<Observation>>> {
    let mut out: BTreeMap<String, Vec<Observation>> = BTreeMap::new();
    store.scan_prefix(Space::Meta, PREFIX.as_bytes(), |k, v| {
        let fingerprint = std::str::from_utf8(&k[PREFIX.len()..])
            .ok()
            .and_then(|rest| rest.rsplit_once(':'))
            .map(|(fp, _)| fp);
        match (fingerprint, serde_json::from_slice::<Observation>(v)) {
            (Some(fp), Ok(obs)) if obs.at_ms >= since_ms => {
                out.entry(fp.to_string()).or_default().push(obs)
            }
            _ => {}
        }
        true
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_come_back_per_credential_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let obs = |at_ms, credits| Observation { at_ms, credits };
        record(&store, "fp-b", obs(300, 7.0)).unwrap();
        record(&store, "fp-a", obs(0x1_0000, 9.0)).unwrap();
        record(&store, "fp-a", obs(20, 10.0)).unwrap();
        let all = list(&store, 0).unwrap();
        assert_eq!(all["fp-a"], vec![obs(20, 10.0), obs(0x1_0000, 9.0)]);
        assert_eq!(all["fp-b"], vec![obs(300, 7.0)]);
        let later = list(&store, 100).unwrap();
        assert_eq!(later["fp-a"], vec![obs(0x1_0000, 9.0)]);
    }

    #[test]
    fn the_credits_number_is_read_from_the_body() {
        assert_eq!(parse_credits(br#"{"credits": 1000}"#), Some(1000.0));
        assert_eq!(parse_credits(br#"{"credits": 12.5, "x": 1}"#), Some(12.5));
        assert_eq!(parse_credits(br#"{"credits": "lots"}"#), None);
        assert_eq!(parse_credits(b"<html>"), None);
    }
}
