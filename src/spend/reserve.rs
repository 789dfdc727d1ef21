//! Reservations: before a request of a budgeted project goes upstream, its worst-case cost
//! is held against the budget, so that requests in flight count before their cost is
//! known; the reservation gives way to the real cost when the request's line is recorded,
//! and is released if the request dies first. With a team budget, the same worst case is
//! also held in the team's database (`team::TeamHold`), settled the same way.

use std::sync::Arc;

use time::OffsetDateTime;

use super::budget::Refusal;
use super::team::TeamHold;
use super::{LedgerLine, Room, Spend, SpendError};

/// What a request holds against its project's budget. Dropped, it is released.
pub struct Reservation {
    spend: Spend,
    project: Arc<str>,
    amount: f64,
    /// The same worst case held across the team.
    team: Option<TeamHold>,
}

impl Reservation {
    /// Adds the hold of the same worst case in the team's database.
    pub fn with_team(mut self, hold: TeamHold) -> Reservation {
        self.team = Some(hold);
        self
    }
}

impl Spend {
    /// Holds `worst_case` against `project`'s budget, or refuses: `Ok(None)` when the
    /// project has no budget.
    pub fn reserve(
        &self,
        project: &Arc<str>,
        worst_case: f64,
    ) -> Result<Option<Reservation>, Refusal> {
        let held = self
            .budgets()
            .reserve(project, worst_case, OffsetDateTime::now_utc())?;
        Ok(held.then(|| Reservation {
            spend: self.clone(),
            project: project.clone(),
            amount: worst_case,
            team: None,
        }))
    }

    /// `record`, with the line's cost taking the place of `reservation` in one step, and
    /// the line written into the `room` claimed for it.
    pub async fn record_reserved(
        &self,
        line: impl Into<Arc<LedgerLine>>,
        reservation: Option<Reservation>,
        room: Option<Room>,
    ) -> Result<(), SpendError> {
        let line = line.into();
        let room = room.map_or(0, Room::take);
        let mut settling = None;
        let done = {
            let mut budgets = self.budgets();
            budgets.add_line(&line);
            if let Some(mut r) = reservation {
                budgets.release(&r.project, std::mem::take(&mut r.amount));
                if let Some(hold) = r.team.take() {
                    // Before the line is handed over, so the shipper never ships it
                    // without knowing the reservation it replaces.
                    settling = Some(hold.settle(&line.id));
                }
            }
            self.hand_over(line, room)
        };
        let recorded = super::durable(done).await;
        if let (Err(_), Some(s)) = (&recorded, settling) {
            s.abandon();
        }
        recorded
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.amount > 0.0 {
            self.spend.budgets().release(&self.project, self.amount);
        }
    }
}
