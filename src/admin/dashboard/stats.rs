//! The one-screen terminal summary of `chatcache stats`: hit rate, spend and savings
//! today and this month, the top projects, budgets and cache size. Pure text rendering
//! of admin API answers; fetching them is the command's job.

use std::fmt::Write as _;

use time::OffsetDateTime;

use super::BudgetRow;
use crate::spend::{Counters, Dim, Report};

/// How many projects the summary lists by name.
pub const TOP_PROJECTS: usize = 5;

/// Entry count and sizes from `/cache/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheLine {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

/// The team ledger's shipping, from `/health` (`team_ledger`).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct TeamLine {
    pub state: String,
    pub pending_lines: u64,
    pub oldest_pending_seconds: f64,
    /// The team's PostgreSQL: "up", "down" or "unknown" (absent from older daemons).
    #[serde(default)]
    pub postgres: String,
    /// How budgets are checked now: "team", "local" or "refuse".
    #[serde(default)]
    pub budgets: String,
}

/// Everything one screen shows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub now: OffsetDateTime,
    /// Where the numbers came from (the daemon's address, or the data dir).
    pub source: String,
    /// Spend by project, today (UTC).
    pub today: Report,
    /// Spend by project, this month (UTC).
    pub month: Report,
    pub budgets: Vec<BudgetRow>,
    pub cache: Option<CacheLine>,
    /// With a team ledger: how its shipping is going.
    pub team: Option<TeamLine>,
}

/// `$` and four decimals: small per-request costs stay visible, columns stay aligned.
pub fn money(v: f64) -> String {
    format!("${v:.4}")
}

/// Hits as a share of requests; `-` when there were none.
pub fn hit_rate(c: &Counters) -> String {
    if c.requests == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", c.cache_hits as f64 * 100.0 / c.requests as f64)
    }
}

fn project_of(report: &Report, dims: &[Option<String>]) -> String {
    report
        .by
        .iter()
        .position(|d| *d == Dim::Project)
        .and_then(|i| dims.get(i).cloned().flatten())
        .unwrap_or_else(|| "-".to_string())
}

fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// The screen, as lines of at most about 80 columns.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let stamp = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        s.now.year(),
        u8::from(s.now.month()),
        s.now.day(),
        s.now.hour(),
        s.now.minute(),
        s.now.second()
    );
    let month_name = format!("{:04}-{:02}", s.now.year(), u8::from(s.now.month()));
    // Writing to a String cannot fail, so the results of writeln! are ignored.
    let _ = writeln!(out, "chatcache stats  {stamp}  ({})", s.source);
    let _ = writeln!(out);
    let (t, m) = (&s.today.total, &s.month.total);
    let _ = writeln!(out, "{:<10} {:>14} {:>14}", "", "today", month_name);
    let _ = writeln!(
        out,
        "{:<10} {:>14} {:>14}",
        "requests", t.requests, m.requests
    );
    let _ = writeln!(
        out,
        "{:<10} {:>14} {:>14}",
        "hit rate",
        hit_rate(t),
        hit_rate(m)
    );
    let _ = writeln!(
        out,
        "{:<10} {:>14} {:>14}",
        "spent",
        money(t.cost),
        money(m.cost)
    );
    let _ = writeln!(
        out,
        "{:<10} {:>14} {:>14}",
        "saved",
        money(t.saved),
        money(m.saved)
    );
    if let Some(c) = &s.cache {
        let _ = writeln!(
            out,
            "\ncache      {} entries, {} of {}",
            c.entries,
            bytesize::ByteSize(c.bytes),
            bytesize::ByteSize(c.max_bytes)
        );
    }
    if let Some(t) = s.team.as_ref().filter(|t| t.state == "not running") {
        let _ = writeln!(
            out,
            "team       ledger {}: lines ship while the daemon runs",
            t.state
        );
    } else if let Some(t) = &s.team {
        let _ = write!(
            out,
            "team       ledger {}, {} lines to ship",
            t.state, t.pending_lines
        );
        if t.pending_lines > 0 {
            let _ = write!(out, ", oldest {:.0}s ago", t.oldest_pending_seconds);
        }
        let _ = writeln!(out);
        if t.postgres == "down" {
            let then = match t.budgets.as_str() {
                "refuse" => "budgeted requests are refused",
                _ => "budgets are checked against this daemon's ledger only",
            };
            let _ = writeln!(
                out,
                "           PostgreSQL unreachable: team budgets not checked, {then}"
            );
        }
    }

    let _ = writeln!(out, "\ntop projects, {month_name}");
    if s.month.rows.is_empty() {
        let _ = writeln!(out, "  (no requests this month)");
    } else {
        let _ = writeln!(
            out,
            "  {:<24} {:>9} {:>9} {:>12} {:>12}",
            "project", "requests", "hit rate", "spent", "saved"
        );
        for row in s.month.rows.iter().take(TOP_PROJECTS) {
            let c = &row.counters;
            let _ = writeln!(
                out,
                "  {:<24} {:>9} {:>9} {:>12} {:>12}",
                project_of(&s.month, &row.dims),
                c.requests,
                hit_rate(c),
                money(c.cost),
                money(c.saved)
            );
        }
        let more = s.month.rows.len().saturating_sub(TOP_PROJECTS);
        if more > 0 {
            let _ = writeln!(out, "  … and {more} more");
        }
    }

    let budgeted: Vec<&BudgetRow> = s.budgets.iter().filter(|b| b.budget.is_some()).collect();
    if !budgeted.is_empty() {
        let _ = writeln!(out, "\nbudgets");
        for b in budgeted {
            let budget = b.budget.unwrap_or(0.0);
            let spent = b.spent.unwrap_or(0.0);
            let fraction = if budget > 0.0 { spent / budget } else { 1.0 };
            let _ = writeln!(
                out,
                "  {:<24} {:<6} {:>24} {} {:>3.0}%",
                b.project,
                b.period.as_deref().unwrap_or(""),
                format!("{} of {}", money(spent), money(budget)),
                bar(fraction, 10),
                fraction * 100.0
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::Row;
    use time::macros::datetime;

    fn counters(requests: u64, hits: u64, cost: f64, saved: f64) -> Counters {
        Counters {
            requests,
            upstream_requests: requests - hits,
            cache_hits: hits,
            cost,
            saved,
            ..Counters::default()
        }
    }

    fn report(rows: &[(&str, Counters)]) -> Report {
        let mut total = Counters::default();
        for (_, c) in rows {
            total.requests += c.requests;
            total.upstream_requests += c.upstream_requests;
            total.cache_hits += c.cache_hits;
            total.cost += c.cost;
            total.saved += c.saved;
        }
        Report {
            by: vec![Dim::Project],
            since: None,
            until: None,
            rows: rows
                .iter()
                .map(|(p, c)| Row {
                    dims: vec![Some(p.to_string())],
                    counters: *c,
                })
                .collect(),
            total,
        }
    }

    #[test]
    fn summary_shows_rates_money_projects_and_budgets() {
        let month_rows: Vec<(String, Counters)> = (0..7)
            .map(|i| (format!("p{i}"), counters(10, 5, 1.0 - i as f64 * 0.1, 0.5)))
            .collect();
        let month_refs: Vec<(&str, Counters)> =
            month_rows.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        let s = Snapshot {
            now: datetime!(2026-11-25 09:05:03 UTC),
            source: "daemon at http://127.0.0.1:8484".into(),
            today: report(&[("web", counters(4, 1, 0.0123, 0.004))]),
            month: report(&month_refs),
            budgets: vec![
                BudgetRow {
                    project: "web".into(),
                    budget: Some(10.0),
                    period: Some("month".into()),
                    spent: Some(2.5),
                    remaining: Some(7.5),
                    alerted: None,
                },
                BudgetRow {
                    project: "free".into(),
                    budget: None,
                    period: None,
                    spent: None,
                    remaining: None,
                    alerted: None,
                },
            ],
            cache: Some(CacheLine {
                entries: 3,
                bytes: 2048,
                max_bytes: 1 << 30,
            }),
            team: Some(TeamLine {
                state: "down".into(),
                pending_lines: 42,
                oldest_pending_seconds: 75.4,
                postgres: "down".into(),
                budgets: "local".into(),
            }),
        };
        let text = render(&s);
        assert!(text.contains("2026-11-25 09:05:03 UTC"), "{text}");
        assert!(text.contains("25.0%"), "today's hit rate: {text}");
        assert!(text.contains("50.0%"), "the month's hit rate: {text}");
        assert!(text.contains("$0.0123"), "{text}");
        assert!(text.contains("$0.0040"), "{text}");
        assert!(text.contains("cache      3 entries"), "{text}");
        assert!(
            text.contains("team       ledger down, 42 lines to ship, oldest 75s ago"),
            "{text}"
        );
        assert!(
            text.contains("PostgreSQL unreachable: team budgets not checked, budgets are checked against this daemon's ledger only"),
            "{text}"
        );
        for shown in ["p0", "p1", "p4"] {
            assert!(text.contains(shown), "{shown} is a top project: {text}");
        }
        assert!(!text.contains("p5"), "only the top five: {text}");
        assert!(text.contains("and 2 more"), "{text}");
        assert!(text.contains("[###-------]  25%"), "{text}");
        assert!(
            !text.contains("free"),
            "unbudgeted projects are not listed: {text}"
        );
        assert!(text.lines().count() < 25, "fits one screen: {text}");
    }

    #[test]
    fn empty_data_renders_dashes() {
        let s = Snapshot {
            now: datetime!(2026-01-01 00:00 UTC),
            source: "data dir /tmp/x".into(),
            today: report(&[]),
            month: report(&[]),
            budgets: vec![],
            cache: None,
            team: None,
        };
        let text = render(&s);
        assert!(text.contains("no requests this month"), "{text}");
        assert!(text.contains(" -"), "{text}");
        assert!(!text.contains("budgets"), "{text}");
        assert!(!text.contains("team"), "{text}");
    }
}
