//! Budget usage per configured project, as `GET /_chatcache/budgets` reports it:
//! `[{"project","budget","period","spent","remaining","alerted"}]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{BudgetPeriod, ProjectConfig};
use crate::spend::BudgetState;

/// One project's budget and what was spent of it in the current period. A project
/// configured without a budget has `budget`, `period`, `spent` and `remaining` null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetRow {
    pub project: String,
    pub budget: Option<f64>,
    pub period: Option<String>,
    pub spent: Option<f64>,
    pub remaining: Option<f64>,
    /// The highest of `alerts.thresholds` the spend has reached in this period.
    #[serde(default)]
    pub alerted: Option<f64>,
}

fn period_name(p: BudgetPeriod) -> &'static str {
    match p {
        BudgetPeriod::Day => "day",
        BudgetPeriod::Month => "month",
        BudgetPeriod::Total => "total",
    }
}

/// Money is rounded to 12 decimal places, as in spend reports, to drop float noise.
fn round12(v: f64) -> f64 {
    (v * 1e12).round() / 1e12
}

/// The rows for the configured `projects`, in name order; `state` gives a project's
/// budget state now, `reached` the highest alert threshold it has reached.
pub fn budget_rows(
    projects: &BTreeMap<String, ProjectConfig>,
    state: impl Fn(&str) -> BudgetState,
    reached: impl Fn(&str) -> Option<f64>,
) -> Vec<BudgetRow> {
    projects
        .iter()
        .map(|(name, p)| {
            let (budget, spent, remaining) = match (p.budget, state(name)) {
                (None, _) | (Some(_), BudgetState::Unlimited) => (None, None, None),
                (Some(b), BudgetState::Remaining(r)) => {
                    (Some(b), Some(round12((b - r).max(0.0))), Some(round12(r)))
                }
                (Some(_), BudgetState::Exhausted { budget, spent }) => {
                    (Some(budget), Some(round12(spent)), Some(0.0))
                }
            };
            BudgetRow {
                project: name.clone(),
                budget,
                period: budget.map(|_| period_name(p.budget_period).to_string()),
                spent,
                remaining,
                alerted: reached(name),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(budget: Option<f64>, period: BudgetPeriod) -> ProjectConfig {
        ProjectConfig {
            budget,
            budget_period: period,
            max_request_cost: crate::config::DEFAULT_MAX_REQUEST_COST,
        }
    }

    #[test]
    fn rows_follow_the_budget_state() {
        let mut p = BTreeMap::new();
        p.insert("web".to_string(), project(Some(10.0), BudgetPeriod::Month));
        p.insert("batch".to_string(), project(Some(2.0), BudgetPeriod::Day));
        p.insert("free".to_string(), project(None, BudgetPeriod::Day));
        p.insert("ci".to_string(), project(Some(1.0), BudgetPeriod::Total));
        let rows = budget_rows(
            &p,
            |name| match name {
                "web" => BudgetState::Remaining(7.5),
                "batch" => BudgetState::Exhausted {
                    budget: 2.0,
                    spent: 2.25,
                },
                "ci" => BudgetState::Remaining(0.7),
                _ => BudgetState::Unlimited,
            },
            |name| (name == "batch").then_some(1.0),
        );
        let names: Vec<&str> = rows.iter().map(|r| r.project.as_str()).collect();
        assert_eq!(names, ["batch", "ci", "free", "web"]);
        assert_eq!(
            rows[0],
            BudgetRow {
                project: "batch".into(),
                budget: Some(2.0),
                period: Some("day".into()),
                spent: Some(2.25),
                remaining: Some(0.0),
                alerted: Some(1.0),
            }
        );
        // 1.0 - 0.7 is 0.30000000000000004 in floats; the row says 0.3.
        assert_eq!(rows[1].spent, Some(0.3));
        assert_eq!(rows[1].period.as_deref(), Some("total"));
        assert_eq!(
            rows[2],
            BudgetRow {
                project: "free".into(),
                budget: None,
                period: None,
                spent: None,
                remaining: None,
                alerted: None,
            }
        );
        assert_eq!(rows[3].spent, Some(2.5));
        assert_eq!(rows[3].remaining, Some(7.5));
        assert_eq!(rows[3].period.as_deref(), Some("month"));
    }

    #[test]
    fn json_shape() {
        let mut p = BTreeMap::new();
        p.insert("web".to_string(), project(Some(4.0), BudgetPeriod::Day));
        let rows = budget_rows(&p, |_| BudgetState::Remaining(4.0), |_| None);
        let v = serde_json::to_value(&rows).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!([{"project":"web","budget":4.0,"period":"day","spent":0.0,"remaining":4.0,"alerted":null}])
        );
    }
}
