//! Whether team budgets can be checked now: the outcome of this daemon's latest exchange
//! with the team's PostgreSQL (a reservation, a renewal, or a probe made when nothing else
//! has talked to it for a while), for health, the metrics and the dashboard.
//!
//! The shipper's own state says how its last pass went, and a shipper with nothing to
//! ship does not talk to PostgreSQL at all; so without the probe a database gone away
//! would look reachable until the next request with a budget found out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Team, TeamError};
use crate::config::BudgetWhenDown;

/// How often the probe looks; it asks PostgreSQL only when nothing else did meanwhile.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A probe opens a connection a reservation would find open: it may take longer than
/// `budget_timeout` without that meaning budgets cannot be checked.
const PROBE_TIMEOUT_MIN: Duration = Duration::from_secs(2);

/// The latest exchange: whether it went through, and when.
#[derive(Default)]
pub(super) struct Reach {
    last: Mutex<Option<(bool, Instant)>>,
}

/// What health and the metrics say of the team's PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reachability {
    /// "up", "down", or "unknown" before the first exchange (and where no daemon runs).
    pub postgres: &'static str,
    /// How a request under a budget is checked now: "team" (in PostgreSQL, across the
    /// team), or, with PostgreSQL down, what `team.budget_when_down` says: "local" (this
    /// daemon's ledger only) or "refuse".
    pub budgets: &'static str,
}

impl Reach {
    pub(super) fn record(&self, up: bool) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.map(|(was, _)| was) != Some(up) {
            if up {
                tracing::info!("the team's PostgreSQL answers: team budgets are checked again");
            } else {
                tracing::warn!("the team's PostgreSQL does not answer: team budgets cannot be checked (team.budget_when_down applies)");
            }
        }
        *last = Some((up, Instant::now()));
    }

    fn last(&self) -> Option<(bool, Instant)> {
        // A plain value, consistent after a panic elsewhere: poison is ignored.
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Reachability {
    fn of(up: Option<bool>, when_down: BudgetWhenDown) -> Reachability {
        let budgets = match (up, when_down) {
            (Some(false), BudgetWhenDown::Local) => "local",
            (Some(false), BudgetWhenDown::Refuse) => "refuse",
            _ => "team",
        };
        Reachability {
            postgres: match up {
                None => "unknown",
                Some(true) => "up",
                Some(false) => "down",
            },
            budgets,
        }
    }

    pub fn is_up(&self) -> bool {
        self.postgres == "up"
    }
}

impl Team {
    /// Whether PostgreSQL answered this daemon's latest exchange with it.
    pub fn reachability(&self) -> Reachability {
        Reachability::of(
            self.inner.reach.last().map(|(up, _)| up),
            self.budget_when_down(),
        )
    }

    pub(super) fn reached(&self, up: bool) {
        self.inner.reach.record(up);
    }

    /// Until `stop`: every `PROBE_EVERY`, unless something else talked to PostgreSQL
    /// meanwhile, asks it whether the budget table can be read.
    pub(super) async fn probe(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = self.inner.budgets.timeout().max(PROBE_TIMEOUT_MIN);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let recent = self
                .inner
                .reach
                .last()
                .is_some_and(|(_, at)| at.elapsed() < PROBE_EVERY);
            if recent {
                continue;
            }
            let attempt = async {
                self.migrated().await?;
                Ok::<_, TeamError>(self.inner.db.reachable().await?)
            };
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(timeout, attempt) => r,
            };
            match outcome {
                Ok(Ok(())) => self.reached(true),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "the team's PostgreSQL did not answer a probe");
                    self.reached(false);
                }
                Err(_) => {
                    tracing::debug!(
                        ?timeout,
                        "the team's PostgreSQL did not answer a probe in time"
                    );
                    self.reached(false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_budget_when_down_only_while_postgres_is_down() {
        let r = Reachability::of(None, BudgetWhenDown::Refuse);
        assert_eq!((r.postgres, r.budgets), ("unknown", "team"));
        let r = Reachability::of(Some(true), BudgetWhenDown::Refuse);
        assert_eq!((r.postgres, r.budgets), ("up", "team"));
        assert!(r.is_up());
        let r = Reachability::of(Some(false), BudgetWhenDown::Local);
        assert_eq!((r.postgres, r.budgets), ("down", "local"));
        let r = Reachability::of(Some(false), BudgetWhenDown::Refuse);
        assert_eq!((r.postgres, r.budgets), ("down", "refuse"));
        assert!(!r.is_up());
    }

    #[test]
    fn the_latest_exchange_wins() {
        let reach = Reach::default();
        assert_eq!(reach.last(), None);
        reach.record(false);
        assert_eq!(reach.last().map(|(up, _)| up), Some(false));
        reach.record(true);
        assert_eq!(reach.last().map(|(up, _)| up), Some(true));
    }
}
