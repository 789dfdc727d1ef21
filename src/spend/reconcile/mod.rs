//! Reconciliation of the ledger against the provider's credits: for each interval between
//! two observations of one credential's credits, the drop in credits beside the upstream
//! cost the ledger recorded for that credential in it.
//!
//! A line counts in the interval in which it was *written* (its `ts`: when its answer
//! ended), to the millisecond the ledger keeps; an observation is taken in a millisecond
//! of its own (see `proxy::credits`), so a line written before it never counts after it.
//! A request in flight across an observation (started before it, written after it) counts
//! in the later interval, and is named in both: `in_flight_end` of the one it started in,
//! `in_flight_start` of the one it is counted in; a drift such requests explain can so be
//! told apart from a real one.

pub mod credits;
mod render;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use credits::{parse_credits, unix_ms, Observation};
pub use render::{render_csv, render_table};

use super::ledger;
use super::SpendError;
use crate::store::Store;

/// One interval between two observations of one credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The credential's keyed fingerprint.
    pub key: String,
    /// RFC 3339 times of the two observations.
    pub from: String,
    pub to: String,
    pub credits_before: f64,
    pub credits_after: f64,
    /// `credits_before - credits_after`: what the provider charged.
    pub drop: f64,
    /// The upstream cost of the credential's ledger lines written in the interval.
    pub ledger: f64,
    pub requests: u64,
    /// `drop - ledger`.
    pub difference: f64,
    /// `difference` as a percentage of `drop`; null when nothing was charged but the
    /// ledger recorded spend, or credits rose.
    pub drift_pct: Option<f64>,
    /// The drift is over `spend.drift_warn`, or cannot be worked out though money moved.
    pub flagged: bool,
    /// Credits rose (a top-up): the interval says nothing about drift.
    pub topped_up: bool,
    /// Requests counted here that had started before the interval began.
    pub in_flight_start: u64,
    /// Requests started by the end of the interval and written after it (counted in the
    /// next one).
    pub in_flight_end: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// Observations at or after this time (RFC 3339) were used; null: all.
    pub since: Option<String>,
    /// The flagging threshold, as a fraction.
    pub drift_warn: f64,
    /// By credential, then by time.
    pub intervals: Vec<Interval>,
    pub flagged: u64,
}

/// One upstream request of a credential, from its ledger line.
#[derive(Debug, Clone, Copy)]
struct Charge {
    start_ms: i64,
    end_ms: i64,
    cost: f64,
}

/// Money is rounded to 9 decimal places to drop float noise.
fn round9(v: f64) -> f64 {
    (v * 1e9).round() / 1e9
}

/// A time in Unix milliseconds as RFC 3339 (UTC); empty if out of range.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Builds the reconciliation from the stored observations and the ledger files. Blocking.
pub fn build(
    store: &Store,
    ledger_dir: &Path,
    since_ms: Option<i64>,
    drift_warn: f64,
) -> Result<Reconciliation, SpendError> {
    let observed = credits::list(store, since_ms.unwrap_or(i64::MIN))?;
    let first = observed
        .values()
        .filter_map(|o| o.first())
        .map(|o| o.at_ms)
        .min();
    let charges = match first {
        Some(first) => read_charges(ledger_dir, first, &observed)?,
        None => BTreeMap::new(),
    };
    let none = Vec::new();
    let mut intervals = Vec::new();
    for (key, obs) in &observed {
        let charges = charges.get(key).unwrap_or(&none);
        for pair in obs.windows(2) {
            intervals.push(interval(key, pair[0], pair[1], charges, drift_warn));
        }
    }
    Ok(Reconciliation {
        since: since_ms.map(rfc3339),
        drift_warn,
        flagged: intervals.iter().filter(|i| i.flagged).count() as u64,
        intervals,
    })
}

fn interval(
    key: &str,
    a: Observation,
    b: Observation,
    charges: &[Charge],
    drift_warn: f64,
) -> Interval {
    let mut ledger = 0.0;
    let (mut requests, mut in_flight_start, mut in_flight_end) = (0, 0, 0);
    for c in charges {
        if c.end_ms > a.at_ms && c.end_ms <= b.at_ms {
            ledger += c.cost;
            requests += 1;
            if c.start_ms < a.at_ms {
                in_flight_start += 1;
            }
        } else if c.end_ms > b.at_ms && c.start_ms < b.at_ms {
            in_flight_end += 1;
        }
    }
    let drop = round9(a.credits - b.credits);
    let ledger = round9(ledger);
    let difference = round9(drop - ledger);
    let topped_up = drop < 0.0;
    let drift_pct = if topped_up {
        None
    } else if drop > 0.0 {
        Some(round9(difference / drop * 100.0))
    } else if ledger == 0.0 {
        Some(0.0)
    } else {
        None
    };
    let flagged =
        !topped_up && drift_pct.is_none_or(|d| d.abs() > round9(drift_warn * 100.0) + 1e-9);
    Interval {
        key: key.to_string(),
        from: rfc3339(a.at_ms),
        to: rfc3339(b.at_ms),
        credits_before: a.credits,
        credits_after: b.credits,
        drop,
        ledger,
        requests,
        difference,
        drift_pct,
        flagged,
        topped_up,
        in_flight_start,
        in_flight_end,
    }
}

/// The upstream requests of the observed credentials, from the ledger files of the month
/// of `first_ms` on, per fingerprint.
fn read_charges(
    dir: &Path,
    first_ms: i64,
    observed: &BTreeMap<String, Vec<Observation>>,
) -> Result<BTreeMap<String, Vec<Charge>>, SpendError> {
    let first_month = rfc3339(first_ms).get(..7).unwrap_or("").to_string();
    let mut out: BTreeMap<String, Vec<Charge>> = BTreeMap::new();
    let names = ledger::list_files(dir).map_err(|e| SpendError::io(dir, e))?;
    // Lines are filed by the month they were written in: none before the first
    // observation's month can count.
    let from = first_month;
    for name in names.into_iter().filter(|n| n.as_str() >= from.as_str()) {
        let path = dir.join(&name);
        ledger::read_file(&path, 0, |line, _| {
            let Some(key) = line.key.as_deref().filter(|k| observed.contains_key(*k)) else {
                return;
            };
            if !line.outcome.went_upstream() {
                return;
            }
            let end_ms = unix_ms(line.ts);
            let took = i64::try_from(line.upstream_ms.unwrap_or(0)).unwrap_or(0);
            out.entry(key.to_string()).or_default().push(Charge {
                start_ms: end_ms - took,
                end_ms,
                cost: line.cost_f64(),
            });
        })
        .map_err(|e| SpendError::io(&path, e))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
