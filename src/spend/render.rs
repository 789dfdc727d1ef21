//! Report renderers: JSON (design.md's shape), CSV (RFC 4180, header then rows, no
//! total, text cells safe to open in a spreadsheet) and an aligned text table for
//! terminals.

use super::report::Report;
use super::rollup::Counters;

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;

const COUNTER_NAMES: [&str; 7] = [
    "requests",
    "upstream_requests",
    "cache_hits",
    "input_tokens",
    "output_tokens",
    "cost",
    "saved",
];

/// The report as one line of JSON.
pub fn render_json(report: &Report) -> String {
    // Every field is a string, a number, null or a sequence of them, and serde_json
    // writes non-finite floats as null: serializing cannot fail, the fallback is unused.
    serde_json::to_string(report).unwrap_or_else(|_| "{}".to_string())
}

fn counter_cells(c: &Counters, money: impl Fn(f64) -> String) -> Vec<String> {
    vec![
        c.requests.to_string(),
        c.upstream_requests.to_string(),
        c.cache_hits.to_string(),
        c.input_tokens.to_string(),
        c.output_tokens.to_string(),
        money(c.cost),
        money(c.saved),
    ]
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A text cell: dimension values come from clients (a model name is whatever a request
/// body says), so one that a spreadsheet would take for a formula gets a leading `'`, as
/// OWASP advises for CSV injection. Counter cells are numbers, negative ones included, and
/// are written as they are.
fn csv_text(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        csv_field(&format!("'{s}"))
    } else {
        csv_field(s)
    }
}

/// A header row, then one row per report row (null → empty field). No total row.
pub fn render_csv(report: &Report) -> String {
    let mut header: Vec<&str> = report.by.iter().map(|d| d.name()).collect();
    header.extend(COUNTER_NAMES);
    let mut out = header.join(",");
    out.push_str("\r\n");
    for row in &report.rows {
        let mut cells: Vec<String> = row
            .dims
            .iter()
            .map(|v| csv_text(v.as_deref().unwrap_or("")))
            .collect();
        cells.extend(counter_cells(&row.counters, |v| v.to_string()));
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

fn money(v: f64) -> String {
    format!("${v:.6}")
}

/// Dimension values come from clients (model names): no terminal control characters.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Aligned columns (text left, numbers right), money with 6 decimals, a TOTAL line, and
/// what the cache saved as money and as a share of what it would have cost without it.
pub fn render_table(report: &Report) -> String {
    let label_cols = report.by.len().max(1);
    let mut header: Vec<String> = if report.by.is_empty() {
        vec![String::new()]
    } else {
        report.by.iter().map(|d| d.name().to_string()).collect()
    };
    header.extend(
        [
            "requests",
            "upstream",
            "hits",
            "input_tokens",
            "output_tokens",
            "cost",
            "saved",
        ]
        .map(String::from),
    );
    let mut lines: Vec<Vec<String>> = vec![header];
    if !report.by.is_empty() {
        for row in &report.rows {
            let mut cells: Vec<String> = row
                .dims
                .iter()
                .map(|v| v.as_deref().map_or_else(|| "-".to_string(), printable))
                .collect();
            cells.extend(counter_cells(&row.counters, money));
            lines.push(cells);
        }
    }
    let mut total = vec![String::new(); label_cols];
    total[0] = "TOTAL".to_string();
    total.extend(counter_cells(&report.total, money));
    lines.push(total);

    let cols = lines[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i < label_cols {
                    format!("{cell:<w$}", w = widths[i])
                } else {
                    format!("{cell:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let would_have = report.total.cost + report.total.saved;
    let pct = if would_have > 0.0 {
        report.total.saved / would_have * 100.0
    } else {
        0.0
    };
    out.push_str(&format!(
        "Saved {} by the cache: {pct:.1}% of the {} it would have cost.\n",
        money(report.total.saved),
        money(would_have)
    ));
    out
}
