//! Tests of rollups (against a rebuild from the ledger, damaged, caught up) and budgets.

use super::*;

#[tokio::test]
async fn rollups_equal_a_rebuild_from_the_ledger() {
    let env = env();
    let spend = env.open();
    record_all(&spend, mixed_lines()).await;
    // Float noise (0.1 + 0.2) must add up the same way live and in a rebuild.
    for cost in ["0.1", "0.2", "0.3", "1.10e-5"] {
        let l = line(
            datetime!(2026-11-25 12:00 UTC),
            "a",
            Some("m2"),
            Some("k2"),
            Outcome::Miss,
            Some(cost),
            None,
        );
        spend.record(l).await.unwrap();
    }
    spend.fold_rollups();
    let live = rollup::dump(&env.store);
    assert!(!live.is_empty());
    spend.rebuild().unwrap();
    assert_eq!(rollup::dump(&env.store), live);
    assert_eq!(
        std::fs::read_dir(env.ledger()).unwrap().count(),
        2,
        "one file per month"
    );
}

#[tokio::test]
async fn missing_or_corrupt_rollups_are_rebuilt_on_open() {
    let env = env();
    let spend = env.open();
    record_all(&spend, mixed_lines()).await;
    spend.close().await;
    let before = rollup::dump(&env.store);

    env.store.clear(Space::Rollups).unwrap();
    let spend = env.open();
    spend.close().await;
    assert_eq!(rollup::dump(&env.store), before);

    let (k, _) = before.iter().find(|(k, _)| k[0] == b'd').unwrap().clone();
    env.store.put(Space::Rollups, &k, b"garbage").unwrap();
    let spend = env.open();
    spend.close().await;
    assert_eq!(rollup::dump(&env.store), before);
}

#[tokio::test]
async fn lines_after_the_watermark_are_caught_up_on_open() {
    let env = env();
    let spend = env.open();
    let mut lines = mixed_lines();
    let late = lines.split_off(4);
    record_all(&spend, lines).await;
    spend.close().await;
    let before = spend.report(&ReportQuery::default()).unwrap().total;
    assert_eq!(before.requests, 4);

    // As if the process died between the fsync and the rollup update.
    let mut extra = late;
    extra.push(line(
        datetime!(2026-11-25 23:00 UTC),
        "c",
        None,
        None,
        Outcome::Miss,
        Some("2.5"),
        None,
    ));
    for l in &extra {
        let path = env.ledger().join(ledger::file_name_for(l));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        writeln!(f, "{}", serde_json::to_string(l).unwrap()).unwrap();
    }
    let spend = env.open();
    let after = spend.report(&ReportQuery::default()).unwrap().total;
    assert_eq!(after.requests, 7);
    assert_eq!(after.cost, 4.25);
    let caught_up = rollup::dump(&env.store);
    spend.rebuild().unwrap();
    assert_eq!(rollup::dump(&env.store), caught_up);
}

fn budgeted(period: BudgetPeriod, budget: f64) -> BTreeMap<String, ProjectConfig> {
    let mut p = BTreeMap::new();
    p.insert(
        "a".to_string(),
        ProjectConfig {
            budget: Some(budget),
            budget_period: period,
            max_request_cost: crate::config::DEFAULT_MAX_REQUEST_COST,
        },
    );
    p
}

#[tokio::test]
async fn budget_is_exhausted_when_spend_crosses_it_and_survives_reopen() {
    let env = env();
    let spend = env.open_with(budgeted(BudgetPeriod::Day, 0.001));
    let now = OffsetDateTime::now_utc();
    assert_eq!(spend.budget("a"), BudgetState::Remaining(0.001));
    assert_eq!(spend.budget("other"), BudgetState::Unlimited);
    spend
        .record(line(
            now,
            "a",
            None,
            None,
            Outcome::Miss,
            Some("0.0006"),
            None,
        ))
        .await
        .unwrap();
    assert!(matches!(spend.budget("a"), BudgetState::Remaining(r) if (r - 0.0004).abs() < 1e-12));
    spend.record_nowait(line(
        now,
        "a",
        None,
        None,
        Outcome::Miss,
        Some("0.0006"),
        None,
    ));
    assert!(matches!(spend.budget("a"), BudgetState::Exhausted { .. }));
    spend.close().await;

    for (period, exhausted) in [
        (BudgetPeriod::Day, true),
        (BudgetPeriod::Month, true),
        (BudgetPeriod::Total, true),
    ] {
        let spend = env.open_with(budgeted(period, 0.001));
        assert_eq!(
            matches!(spend.budget("a"), BudgetState::Exhausted { .. }),
            exhausted
        );
        spend.close().await;
    }
    // Old spend counts toward a total budget only.
    let spend = env.open_with(budgeted(BudgetPeriod::Total, 0.01));
    spend
        .record(line(
            datetime!(2020-01-01 00:00 UTC),
            "a",
            None,
            None,
            Outcome::Miss,
            Some("0.009"),
            None,
        ))
        .await
        .unwrap();
    assert!(matches!(spend.budget("a"), BudgetState::Exhausted { .. }));
    spend.close().await;
    let spend = env.open_with(budgeted(BudgetPeriod::Month, 0.01));
    assert!(matches!(spend.budget("a"), BudgetState::Remaining(_)));
    spend.close().await;
}
