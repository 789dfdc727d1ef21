//! `spend reconcile` as a table for people and as CSV for spreadsheets (JSON is the
//! `Reconciliation` itself).

use std::fmt::Write as _;

use super::Reconciliation;

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |d| format!("{d:.2}%"))
}

/// The first characters of a fingerprint: enough to tell credentials apart in a table.
fn short(key: &str) -> &str {
    key.get(..11).unwrap_or(key)
}

pub fn render_table(r: &Reconciliation) -> String {
    let mut out = String::new();
    if r.intervals.is_empty() {
        out.push_str("no two observations of /credits for any credential yet\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<11}  {:<20}  {:<20}  {:>14}  {:>14}  {:>12}  {:>12}  {:>12}  {:>9}  {:>5}  FLAG",
        "KEY", "FROM", "TO", "BEFORE", "AFTER", "DROP", "LEDGER", "DIFF", "DRIFT", "REQS"
    );
    for i in &r.intervals {
        let flag = match (i.flagged, i.topped_up) {
            (true, _) => "DRIFT",
            (_, true) => "top-up",
            _ => "",
        };
        let in_flight = if i.in_flight_start + i.in_flight_end > 0 {
            format!(
                " ({} in flight at start, {} at end)",
                i.in_flight_start, i.in_flight_end
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:<11}  {:<20}  {:<20}  {:>14.6}  {:>14.6}  {:>12.6}  {:>12.6}  {:>12.6}  {:>9}  {:>5}  {flag}{in_flight}",
            short(&i.key),
            i.from.get(..19).unwrap_or(&i.from),
            i.to.get(..19).unwrap_or(&i.to),
            i.credits_before,
            i.credits_after,
            i.drop,
            i.ledger,
            i.difference,
            pct(i.drift_pct),
            i.requests,
        );
    }
    let _ = writeln!(
        out,
        "{} of {} intervals over the {:.2}% drift warning (spend.drift_warn)",
        r.flagged,
        r.intervals.len(),
        r.drift_warn * 100.0
    );
    out
}

pub fn render_csv(r: &Reconciliation) -> String {
    let mut out = String::from(
        "key,from,to,credits_before,credits_after,drop,ledger,requests,difference,drift_pct,flagged,topped_up,in_flight_start,in_flight_end\n",
    );
    for i in &r.intervals {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            i.key,
            i.from,
            i.to,
            i.credits_before,
            i.credits_after,
            i.drop,
            i.ledger,
            i.requests,
            i.difference,
            i.drift_pct.map(|d| d.to_string()).unwrap_or_default(),
            i.flagged,
            i.topped_up,
            i.in_flight_start,
            i.in_flight_end
        );
    }
    out
}
