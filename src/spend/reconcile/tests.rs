//! Tests of the reconciliation arithmetic: drift, flags, top-ups, requests in flight.

use super::*;

fn obs(at_ms: i64, credits: f64) -> Observation {
    Observation { at_ms, credits }
}

fn charge(start_ms: i64, end_ms: i64, cost: f64) -> Charge {
    Charge {
        start_ms,
        end_ms,
        cost,
    }
}

#[test]
fn a_drop_the_ledger_matches_has_no_drift() {
    let charges = [charge(1_000, 1_500, 0.25), charge(2_000, 2_100, 0.5)];
    let i = interval("fp-a", obs(0, 10.0), obs(5_000, 9.25), &charges, 0.02);
    assert_eq!((i.drop, i.ledger, i.difference), (0.75, 0.75, 0.0));
    assert_eq!((i.drift_pct, i.flagged, i.requests), (Some(0.0), false, 2));
}

#[test]
fn three_times_the_ledger_is_flagged() {
    let charges = [charge(1_000, 1_500, 0.25)];
    let i = interval("fp-a", obs(0, 10.0), obs(5_000, 9.25), &charges, 0.02);
    assert_eq!(i.difference, 0.5);
    assert!((i.drift_pct.unwrap() - 66.666666667).abs() < 1e-6, "{i:?}");
    assert!(i.flagged);
    // Within the warning: 1 % off with a 2 % threshold.
    let i = interval(
        "fp-a",
        obs(0, 10.0),
        obs(1, 9.0),
        &[charge(0, 1, 0.99)],
        0.02,
    );
    assert!(!i.flagged, "{i:?}");
}

#[test]
fn lines_count_where_they_were_written_and_in_flight_ones_are_named() {
    // Started before the second observation and written after it.
    let charges = [
        charge(100, 1_000, 0.05),
        charge(500, 1_500, 0.1),
        charge(1_200, 1_300, 0.2),
    ];
    let first = interval("k", obs(0, 1.0), obs(1_000, 0.95), &charges, 0.02);
    assert_eq!(
        (first.ledger, first.requests),
        (0.05, 1),
        "written at the observation"
    );
    assert_eq!((first.in_flight_start, first.in_flight_end), (0, 1));
    let second = interval("k", obs(1_000, 0.95), obs(2_000, 0.65), &charges, 0.02);
    assert_eq!((second.ledger, second.requests), (0.3, 2));
    assert_eq!((second.in_flight_start, second.in_flight_end), (1, 0));
    assert!(!first.flagged && !second.flagged);
}

#[test]
fn top_ups_and_spend_without_a_drop_are_told_apart() {
    let up = interval("k", obs(0, 1.0), obs(10, 5.0), &[], 0.02);
    assert!(up.topped_up && !up.flagged && up.drift_pct.is_none());
    let quiet = interval("k", obs(0, 1.0), obs(10, 1.0), &[], 0.02);
    assert_eq!((quiet.drift_pct, quiet.flagged), (Some(0.0), false));
    let unseen = interval("k", obs(0, 1.0), obs(10, 1.0), &[charge(1, 2, 0.3)], 0.02);
    assert!(unseen.flagged && unseen.drift_pct.is_none());
}

#[test]
fn table_and_csv_carry_every_interval() {
    let r = Reconciliation {
        since: None,
        drift_warn: 0.02,
        intervals: vec![interval(
            "fp-0123456789abcdef",
            obs(0, 10.0),
            obs(5_000, 9.25),
            &[charge(1, 2, 0.25)],
            0.02,
        )],
        flagged: 1,
    };
    let table = render_table(&r);
    assert!(
        table.contains("fp-01234567 ") && table.contains("DRIFT"),
        "{table}"
    );
    assert!(table.contains("1 of 1 intervals over the 2.00%"), "{table}");
    let csv = render_csv(&r);
    assert_eq!(csv.lines().count(), 2);
    assert!(csv
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("fp-0123456789abcdef,1970-01-01T00:00:00Z,"));
}
