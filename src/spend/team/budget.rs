//! Team budgets: a budgeted request's worst case held in the team's PostgreSQL, so that
//! a project's budget holds across every daemon of the team; the reservation is settled
//! when its line is shipped (in the shipper's transaction), released if the request dies,
//! renewed while its daemon lives, and expires if its daemon dies.

use std::collections::{HashMap, HashSet};
use std::sync::MutexGuard;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use time::OffsetDateTime;

use super::postgres::Ask;
use super::{Team, TeamError};
use crate::config::{BudgetPeriod, BudgetWhenDown, TeamConfig};
use crate::spend::line::day_string;
use crate::spend::new_id;

/// `[team] budget_*`.
pub(super) struct Settings {
    when_down: BudgetWhenDown,
    timeout: Duration,
    ttl: Duration,
}

impl Settings {
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl From<&TeamConfig> for Settings {
    fn from(c: &TeamConfig) -> Settings {
        Settings {
            when_down: c.budget_when_down,
            timeout: c.budget_timeout,
            ttl: c.budget_ttl,
        }
    }
}

/// Why the team did not hold a request's worst case.
#[derive(Debug, Clone, PartialEq)]
pub enum TeamRefusal {
    /// It does not fit what is left of the budget across the team.
    Refused {
        budget: f64,
        spent: f64,
        reserved: f64,
        worst_case: f64,
    },
    /// PostgreSQL did not answer in time: `[team] budget_when_down` says what follows.
    Down(String),
}

/// A request's worst case held in the team's database. Dropped unsettled (the request
/// died), it is released.
pub struct TeamHold {
    team: Team,
    id: String,
    settled: bool,
}

impl TeamHold {
    /// The request's line, `line_id`, is being recorded: the reservation stays counted
    /// (and renewed) until the shipper inserts that line, and deletes it in the same
    /// transaction.
    pub fn settle(mut self, line_id: &str) -> Settling {
        self.team
            .settling()
            .insert(line_id.to_string(), self.id.clone());
        self.team.live().remove(&self.id);
        self.settled = true;
        Settling {
            team: self.team.clone(),
            line_id: line_id.to_string(),
        }
    }
}

/// A reservation waiting for its line to be shipped.
pub struct Settling {
    team: Team,
    line_id: String,
}

impl Settling {
    /// The line could not be recorded: it may never ship, so the reservation is no
    /// longer renewed, and expires.
    pub fn abandon(self) {
        self.team.settling().remove(&self.line_id);
    }
}

impl Drop for TeamHold {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.team.live().remove(&self.id);
        let (team, ids) = (self.team.clone(), vec![std::mem::take(&mut self.id)]);
        // Without a runtime (shutting down) the reservation simply expires.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = team.inner.db.release(&ids).await {
                    tracing::debug!(error = %e, "a team reservation was not released; it expires");
                }
            });
        }
    }
}

/// The first UTC day of the period running at `now`; None for an all-time budget.
fn period_start(period: BudgetPeriod, now: OffsetDateTime) -> Option<String> {
    let day = day_string(now.to_offset(time::UtcOffset::UTC).date());
    match period {
        BudgetPeriod::Day => Some(day),
        BudgetPeriod::Month => Some(format!("{}-01", day.get(..7).unwrap_or(&day))),
        BudgetPeriod::Total => None,
    }
}

impl Team {
    pub fn budget_when_down(&self) -> BudgetWhenDown {
        self.inner.budgets.when_down
    }

    fn settling(&self) -> MutexGuard<'_, HashMap<String, String>> {
        // Plain collections, consistent after a panic elsewhere: poison is ignored.
        self.inner
            .settling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> MutexGuard<'_, HashSet<String>> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Until `stop`, pushes back the expiry of this daemon's reservations (requests in
    /// flight, and lines not yet shipped) every third of `budget_ttl`: only a daemon that
    /// is gone, or cut off from PostgreSQL, lets its reservations expire.
    pub(super) async fn renew_reservations(self, stop: CancellationToken) {
        let s = &self.inner.budgets;
        // Never a zero period (which `interval` refuses), whatever the configured TTL.
        let mut tick = tokio::time::interval((s.ttl / 3).max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut ids: Vec<String> = self.live().iter().cloned().collect();
            ids.extend(self.settling().values().cloned());
            if ids.is_empty() {
                continue;
            }
            let renew = tokio::time::timeout(s.ttl / 3, self.inner.db.renew(&ids, s.ttl));
            match renew.await {
                Ok(Ok(())) => self.reached(true),
                Ok(Err(e)) => {
                    self.reached(false);
                    tracing::debug!(error = %e, "team reservations not renewed this time")
                }
                Err(_) => {
                    self.reached(false);
                    tracing::debug!("team reservations not renewed in time")
                }
            }
        }
    }

    /// The reservations that the lines `ids` replace.
    pub(super) fn settled_by<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Vec<String> {
        let map = self.settling();
        ids.filter_map(|id| map.get(id).cloned()).collect()
    }

    /// The lines `ids` are in the team ledger: their reservations are gone with them.
    pub(super) fn forget_settled<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut map = self.settling();
        for id in ids {
            map.remove(id);
        }
    }

    /// Holds `worst_case` against `project`'s `budget` for the `period` across the team,
    /// waiting at most `[team] budget_timeout` for PostgreSQL.
    pub async fn reserve(
        &self,
        project: &str,
        budget: f64,
        period: BudgetPeriod,
        worst_case: f64,
    ) -> Result<TeamHold, TeamRefusal> {
        let s = &self.inner.budgets;
        let id = format!("{}/{}", self.inner.name, new_id());
        let ask = Ask {
            id: &id,
            daemon: &self.inner.name,
            project,
            amount: worst_case,
            budget,
            since: period_start(period, OffsetDateTime::now_utc()),
            ttl: s.ttl,
        };
        let attempt = async {
            self.migrated().await?;
            Ok::<_, TeamError>(self.inner.db.reserve(&ask).await?)
        };
        // Cut off after its commit, a reservation is held by nobody: it counts until it
        // expires, which errs on the side of the budget.
        let outcome = tokio::time::timeout(s.timeout, attempt).await;
        self.reached(matches!(outcome, Ok(Ok(_))));
        let held = match outcome {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => return Err(TeamRefusal::Down(e.to_string())),
            Err(_) => {
                return Err(TeamRefusal::Down(format!(
                    "PostgreSQL did not answer within {:?}",
                    s.timeout
                )))
            }
        };
        if !held.admitted {
            return Err(TeamRefusal::Refused {
                budget,
                spent: held.spent,
                reserved: held.reserved,
                worst_case,
            });
        }
        self.live().insert(id.clone());
        Ok(TeamHold {
            team: self.clone(),
            id,
            settled: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn periods_start_on_their_first_utc_day() {
        let now = datetime!(2026-11-25 23:30 -02:00);
        assert_eq!(
            period_start(BudgetPeriod::Day, now).as_deref(),
            Some("2026-11-26")
        );
        assert_eq!(
            period_start(BudgetPeriod::Month, now).as_deref(),
            Some("2026-11-01")
        );
        assert_eq!(period_start(BudgetPeriod::Total, now), None);
    }
}
