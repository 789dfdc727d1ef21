//! `/_chatcache/health`: the daemon's state in one answer: the ledger's room on disk, and
//! with a team, how shipping to the team ledger goes, whether team budgets can be checked
//! (the team's PostgreSQL answers) and whether the team cache answers. Never a server's
//! address or password: only states and counts.

use serde_json::{json, Value};

use crate::app::App;

pub(super) fn health(app: &App) -> Value {
    let room = app.spend.room();
    let writable = app.spend.healthy();
    let degraded = room.short || room.waiting_lines > 0 || !writable;
    let mut health = json!({
        "status": if degraded { "degraded" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
        "mode": app.config.mode.as_str(),
        "ledger": {"writable": writable, "room": room},
        "team_ledger": Value::Null,
    });
    // Null when no team ledger is configured; its shipping and the reachability of its
    // PostgreSQL (for team budgets) when one is.
    if let Some(team) = &app.team {
        // A struct of strings and numbers always serializes; the default is never used.
        let mut t = serde_json::to_value(team.stats()).unwrap_or_default();
        let reach = team.reachability();
        t["postgres"] = reach.postgres.into();
        t["budgets"] = reach.budgets.into();
        health["team_ledger"] = t;
    }
    // Absent when no team cache is configured; its state when one is.
    if let Some(tier) = &app.team_cache {
        health["team_cache"] = (if tier.is_up() { "up" } else { "down" }).into();
    }
    health
}
