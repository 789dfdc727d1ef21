//! Budgets: per project with a budget, the money spent in the current period (UTC day,
//! UTC month, or all time), kept in memory — seeded from the rollups at open and
//! increased as lines are recorded — and the worst-case cost of requests in flight,
//! reserved at admission and replaced by the real cost when their line is recorded.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::line::day_string;
use super::rollup::{Counters, Group};
use super::LedgerLine;
use crate::config::{BudgetPeriod, ProjectConfig};

/// Whether a project may still spend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetState {
    /// No budget configured.
    Unlimited,
    /// Money left in the current period.
    Remaining(f64),
    /// Spent at least the budget in the current period.
    Exhausted { budget: f64, spent: f64 },
}

#[derive(Debug, Clone)]
struct Tracker {
    budget: f64,
    period: BudgetPeriod,
    /// The period `spent` belongs to: a day "YYYY-MM-DD", a month "YYYY-MM", or "".
    window: String,
    spent: f64,
    /// Worst-case costs of the requests admitted and not yet recorded.
    reserved: f64,
}

/// The period a UTC day ("YYYY-MM-DD") falls in; comparable as strings.
fn window_of(period: BudgetPeriod, day: &str) -> &str {
    match period {
        BudgetPeriod::Day => day,
        BudgetPeriod::Month => day.get(..7).unwrap_or(day),
        BudgetPeriod::Total => "",
    }
}

/// A project's budget and what was spent of it in the period now running.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodUse {
    pub budget: f64,
    pub spent: f64,
    /// The period: a UTC day "YYYY-MM-DD", a month "YYYY-MM", or "total".
    pub period: String,
}

/// A request whose worst case does not fit what is left of its project's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusal {
    pub budget: f64,
    pub spent: f64,
    pub reserved: f64,
    pub worst_case: f64,
}

/// In-memory spend per budgeted project.
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    projects: BTreeMap<String, Tracker>,
}

impl Budgets {
    /// Trackers for the projects that have a budget, with nothing spent in the period
    /// containing `now`.
    pub fn new(projects: &BTreeMap<String, ProjectConfig>, now: OffsetDateTime) -> Budgets {
        let today = day_string(now.to_offset(time::UtcOffset::UTC).date());
        let projects = projects
            .iter()
            .filter_map(|(name, p)| {
                let budget = p.budget?;
                let window = window_of(p.budget_period, &today).to_string();
                Some((
                    name.clone(),
                    Tracker {
                        budget,
                        period: p.budget_period,
                        window,
                        spent: 0.0,
                        reserved: 0.0,
                    },
                ))
            })
            .collect();
        Budgets { projects }
    }

    /// Where a seeding scan of the rollups must start: `None` if no project has a
    /// budget, `Some(None)` for all days, else the earliest current window (a day or a
    /// month prefix, both valid lower bounds of day keys).
    pub fn seed_since(&self) -> Option<Option<String>> {
        let mut since: Option<Option<String>> = None;
        for t in self.projects.values() {
            let w = (t.period != BudgetPeriod::Total).then(|| t.window.clone());
            since = Some(match (since, w) {
                (None, w) => w,
                (Some(None), _) | (_, None) => None,
                (Some(Some(a)), Some(b)) => Some(a.min(b)),
            });
        }
        since
    }

    /// Seeds from one rollup (call for every rollup at open).
    pub fn add_rollup(&mut self, group: &Group, counters: &Counters) {
        if let Some(t) = self.projects.get_mut(&group.project) {
            if window_of(t.period, &group.day) == t.window {
                t.spent += counters.cost;
            }
        }
    }

    /// Counts a recorded line. A line of a later period starts that period; a line of an
    /// earlier period is ignored.
    pub fn add_line(&mut self, line: &LedgerLine) {
        let Some(t) = self.projects.get_mut(&*line.project) else {
            return;
        };
        let cost = line.cost_f64();
        let day = line.day();
        let window = window_of(t.period, &day);
        if window == t.window {
            t.spent += cost;
        } else if window > t.window.as_str() {
            t.window = window.to_string();
            t.spent = cost;
        }
    }

    /// Reserves `amount` for a request of `project` at `now` if its spend, what is
    /// reserved and `amount` fit the budget. `Ok(false)`: the project has no budget, and
    /// nothing was reserved.
    pub fn reserve(
        &mut self,
        project: &str,
        amount: f64,
        now: OffsetDateTime,
    ) -> Result<bool, Refusal> {
        let Some(PeriodUse { spent, .. }) = self.period_use(project, now) else {
            return Ok(false);
        };
        let Some(t) = self.projects.get_mut(project) else {
            return Ok(false);
        };
        if spent + t.reserved + amount > t.budget {
            return Err(Refusal {
                budget: t.budget,
                spent,
                reserved: t.reserved,
                worst_case: amount,
            });
        }
        t.reserved += amount;
        Ok(true)
    }

    /// Gives back what `reserve` took.
    pub fn release(&mut self, project: &str, amount: f64) {
        if let Some(t) = self.projects.get_mut(project) {
            t.reserved = (t.reserved - amount).max(0.0);
        }
    }

    /// The budget of `project` and its spend in the period running at `now`; None when it
    /// has no budget.
    pub fn period_use(&self, project: &str, now: OffsetDateTime) -> Option<PeriodUse> {
        let t = self.projects.get(project)?;
        let today = day_string(now.to_offset(time::UtcOffset::UTC).date());
        let window = window_of(t.period, &today);
        let spent = if window > t.window.as_str() {
            0.0
        } else {
            t.spent
        };
        Some(PeriodUse {
            budget: t.budget,
            spent,
            period: if window.is_empty() { "total" } else { window }.to_string(),
        })
    }

    /// The state of `project` at `now` (UTC).
    pub fn state_at(&self, project: &str, now: OffsetDateTime) -> BudgetState {
        let Some(PeriodUse { budget, spent, .. }) = self.period_use(project, now) else {
            return BudgetState::Unlimited;
        };
        if spent >= budget {
            BudgetState::Exhausted { budget, spent }
        } else {
            BudgetState::Remaining(budget - spent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::raw_number;
    use crate::spend::Outcome;
    use time::macros::datetime;

    fn budgets(period: BudgetPeriod, budget: f64, now: OffsetDateTime) -> Budgets {
        let mut p = BTreeMap::new();
        p.insert(
            "a".to_string(),
            ProjectConfig {
                budget: Some(budget),
                budget_period: period,
                max_request_cost: crate::config::DEFAULT_MAX_REQUEST_COST,
            },
        );
        p.insert(
            "free".to_string(),
            ProjectConfig {
                budget: None,
                budget_period: BudgetPeriod::Day,
                max_request_cost: crate::config::DEFAULT_MAX_REQUEST_COST,
            },
        );
        Budgets::new(&p, now)
    }

    fn spend(project: &str, ts: OffsetDateTime, cost: &str) -> LedgerLine {
        let mut l = LedgerLine::new(project, "/chat/completions", Outcome::Miss, 200);
        l.ts = ts;
        l.cost = raw_number(cost);
        l
    }

    #[test]
    fn crossing_the_budget_exhausts_it() {
        let now = datetime!(2026-11-25 10:00 UTC);
        let mut b = budgets(BudgetPeriod::Month, 1.0, now);
        assert_eq!(b.state_at("a", now), BudgetState::Remaining(1.0));
        assert_eq!(b.state_at("free", now), BudgetState::Unlimited);
        assert_eq!(b.state_at("unknown", now), BudgetState::Unlimited);
        b.add_line(&spend("a", now, "0.75"));
        assert_eq!(b.state_at("a", now), BudgetState::Remaining(0.25));
        b.add_line(&spend("a", now, "0.25"));
        assert_eq!(
            b.state_at("a", now),
            BudgetState::Exhausted {
                budget: 1.0,
                spent: 1.0
            }
        );
        b.add_line(&spend("free", now, "100"));
        assert_eq!(b.state_at("free", now), BudgetState::Unlimited);
        let used = b.period_use("a", now).unwrap();
        assert_eq!((used.budget, used.spent), (1.0, 1.0));
        assert_eq!(used.period, "2026-11");
        assert!(b.period_use("free", now).is_none());
    }

    #[test]
    fn day_budget_resets_next_day() {
        let now = datetime!(2026-11-25 23:59 UTC);
        let mut b = budgets(BudgetPeriod::Day, 1.0, now);
        b.add_line(&spend("a", now, "2"));
        assert!(matches!(
            b.state_at("a", now),
            BudgetState::Exhausted { .. }
        ));
        let tomorrow = datetime!(2026-11-26 00:01 UTC);
        assert_eq!(b.state_at("a", tomorrow), BudgetState::Remaining(1.0));
        // A late line of yesterday does not count against today.
        b.add_line(&spend("a", tomorrow, "0.5"));
        b.add_line(&spend("a", now, "9"));
        assert_eq!(b.state_at("a", tomorrow), BudgetState::Remaining(0.5));
    }

    #[test]
    fn month_budget_spans_days_and_resets_next_month() {
        let now = datetime!(2026-11-01 00:00 UTC);
        let mut b = budgets(BudgetPeriod::Month, 1.0, now);
        b.add_line(&spend("a", now, "0.6"));
        b.add_line(&spend("a", datetime!(2026-11-30 12:00 UTC), "0.6"));
        assert!(matches!(
            b.state_at("a", datetime!(2026-11-30 13:00 UTC)),
            BudgetState::Exhausted { .. }
        ));
        assert_eq!(
            b.state_at("a", datetime!(2026-12-01 00:00 UTC)),
            BudgetState::Remaining(1.0)
        );
    }

    #[test]
    fn total_budget_never_resets() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let mut b = budgets(BudgetPeriod::Total, 1.0, now);
        b.add_line(&spend("a", now, "0.5"));
        b.add_line(&spend("a", datetime!(2027-06-01 00:00 UTC), "0.5"));
        assert!(matches!(
            b.state_at("a", datetime!(2030-01-01 00:00 UTC)),
            BudgetState::Exhausted { .. }
        ));
    }

    #[test]
    fn seeding_from_rollups_counts_only_the_current_period() {
        let now = datetime!(2026-11-25 10:00 UTC);
        let mut b = budgets(BudgetPeriod::Day, 1.0, now);
        let group = |day: &str| Group {
            day: day.into(),
            project: "a".into(),
            model: None,
            key: None,
        };
        let c = Counters {
            cost: 0.4,
            ..Counters::default()
        };
        b.add_rollup(&group("2026-11-24"), &c);
        b.add_rollup(&group("2026-11-25"), &c);
        assert_eq!(b.state_at("a", now), BudgetState::Remaining(0.6));
    }

    #[test]
    fn reservations_hold_the_budget_for_requests_in_flight() {
        let now = datetime!(2026-11-25 10:00 UTC);
        let mut b = budgets(BudgetPeriod::Month, 1.0, now);
        assert_eq!(b.reserve("a", 0.4, now), Ok(true));
        assert_eq!(b.reserve("a", 0.4, now), Ok(true));
        let refused = b.reserve("a", 0.4, now).unwrap_err();
        assert_eq!((refused.spent, refused.reserved), (0.0, 0.8));
        assert_eq!(
            b.reserve("free", 100.0, now),
            Ok(false),
            "no budget, no reservation"
        );
        // The first answer cost less than its worst case: its line replaces its reservation.
        b.add_line(&spend("a", now, "0.1"));
        b.release("a", 0.4);
        assert_eq!(
            b.reserve("a", 0.5, now),
            Ok(true),
            "0.1 spent + 0.4 + 0.5 fit"
        );
        assert!(b.reserve("a", 0.01, now).is_err());
    }
}
