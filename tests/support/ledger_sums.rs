//! The figures the dashboard tests expect, tallied from ledger lines: requests, cache hits,
//! spend and savings; and how near a shown figure must be to its tally.
#![allow(dead_code)]

/// What ledger lines add up to.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sums {
    pub requests: u64,
    pub hits: u64,
    pub cost: f64,
    pub saved: f64,
}

impl Sums {
    /// Counts one ledger line in. A coalesced answer is a hit, as the dashboard counts it.
    pub fn add(&mut self, l: &serde_json::Value) {
        self.requests += 1;
        if matches!(l["outcome"].as_str(), Some("hit" | "coalesced")) {
            self.hits += 1;
        }
        self.cost += l["cost"].as_f64().unwrap_or(0.0);
        self.saved += l["saved"].as_f64().unwrap_or(0.0);
    }
}

/// Equal but for floating-point rounding (sums made in another order).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}
