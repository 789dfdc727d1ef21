//! A request the cache did not answer: admission (budget, ledger), then single-flight —
//! join an identical request in flight, or lead one (after the team's lease on it: see
//! `team_flight`) — and the answer read from the flight's recording.

use std::sync::Arc;

use http::Response;
use tracing::Instrument;

use crate::app::App;
use crate::body::{pieces, Body};
use crate::cache::flight::{End, Flight, Head, Leader, Reader, Role, Whole};
use crate::cache::key::CacheKey;
use crate::cache::redis_tier::{Claim, Lease};
use crate::config::BudgetWhenDown;
use crate::error::ApiError;
use crate::policy::Endpoint;
use crate::proxy::drive::{self, First};
use crate::proxy::exchange::{Accounting, Exchange};
use crate::proxy::{respond, team_flight};
use crate::spend::team::TeamRefusal;
use crate::spend::{line_room, BudgetState, Outcome, Reservation, Room};

/// Answers `ex` from upstream, or from an identical request's answer in flight.
pub async fn fetch(app: &Arc<App>, ex: Exchange) -> Result<(Response<Body>, Outcome), ApiError> {
    let room = admit(app, &ex).await?;
    let ex = Arc::new(ex.for_upstream());
    let (endpoint, policy) = (ex.endpoint, ex.policy);
    match ex.key {
        Some(key) if policy.lookup => coalesce(app, &ex, key, room).await,
        Some(_) if policy.store => lead(app, &ex, app.flights.solo(), room, None).await,
        _ if endpoint.billable() || endpoint == Endpoint::Models => {
            lead(app, &ex, app.flights.solo(), room, None).await
        }
        _ if endpoint == Endpoint::Credits => Ok((
            super::credits::pass_observed(app, &ex).await?,
            Outcome::Bypass,
        )),
        _ => Ok((drive::pass(app, &ex).await?, Outcome::Bypass)),
    }
}

/// Refuses what may not go upstream: a project over its budget, a ledger that cannot
/// record what it would cost. Claims the room of the request's ledger line, so that its
/// line is written whether it leads, follows or gets an error from upstream.
async fn admit(app: &Arc<App>, ex: &Exchange) -> Result<Option<Room>, ApiError> {
    if !ex.endpoint.billable() {
        return Ok(None);
    }
    if let BudgetState::Exhausted { budget, spent } = app.spend.budget(&ex.attr.project) {
        return Err(ApiError::BudgetExceeded {
            project: ex.attr.project.to_string(),
            budget,
            spent,
        });
    }
    if !app.spend.writable().await {
        return Err(ApiError::LedgerUnavailable);
    }
    let bytes = line_room(&ex.attr.project, ex.model());
    match app.spend.hold_room(bytes).await {
        Ok(room) => Ok(Some(room)),
        Err(_) => Err(ApiError::LedgerUnavailable),
    }
}

/// Holds the request's worst-case cost against its project's budget (only a request that
/// leads an upstream call: followers and hits cost nothing): on this daemon, and with a
/// team ledger across the team.
async fn reserve(app: &App, ex: &Exchange) -> Result<Option<Reservation>, ApiError> {
    let project = &ex.attr.project;
    if !ex.endpoint.billable() {
        return Ok(None);
    }
    let Some(settings) = app.config.projects.get(&**project) else {
        return Ok(None);
    };
    let json = ex.json.as_deref();
    let worst = crate::cost::worst_case(
        app.prices().as_deref(),
        ex.model().unwrap_or(""),
        json.map_or(0, |j| j.input_chars),
        json.and_then(|j| j.max_tokens),
    )
    .unwrap_or(settings.max_request_cost);
    let too_small = |budget: f64, spent: f64, reserved: f64| ApiError::BudgetTooSmall {
        project: project.to_string(),
        remaining: (budget - spent - reserved).max(0.0),
        worst_case: worst,
    };
    let local = app
        .spend
        .reserve(project, worst)
        .map_err(|r| too_small(r.budget, r.spent, r.reserved))?;
    let Some(local) = local else {
        return Ok(None);
    };
    let (Some(team), Some(budget)) = (&app.team, settings.budget) else {
        return Ok(Some(local));
    };
    match team
        .reserve(project, budget, settings.budget_period, worst)
        .await
    {
        Ok(hold) => Ok(Some(local.with_team(hold))),
        Err(TeamRefusal::Refused {
            budget,
            spent,
            reserved,
            ..
        }) => Err(too_small(budget, spent, reserved)),
        Err(TeamRefusal::Down(why)) => match team.budget_when_down() {
            BudgetWhenDown::Local => {
                // Per request at debug: the shipper warns once that PostgreSQL is away.
                tracing::debug!(error = %why, project = %project, "team budget unreachable; this daemon's own budget applies");
                Ok(Some(local))
            }
            BudgetWhenDown::Refuse => {
                tracing::debug!(error = %why, project = %project, "team budget unreachable; the request is refused");
                Err(ApiError::TeamBudgetUnavailable {
                    project: project.to_string(),
                })
            }
        },
    }
}

/// Joins an identical request in flight, or leads one.
async fn coalesce(
    app: &Arc<App>,
    ex: &Arc<Exchange>,
    key: CacheKey,
    mut room: Option<Room>,
) -> Result<(Response<Body>, Outcome), ApiError> {
    // A follower whose leader gave up before answering tries again; after a few rounds
    // it fetches on its own rather than wait behind a run of failures. An answer that has
    // outgrown the recording bound takes no followers: they fetch for themselves.
    for _ in 0..3 {
        match app.flights.join(key) {
            Role::Leader(leader) => {
                return match team_flight::claim(app, ex, key).await {
                    Claim::Found(entry) => {
                        // Kept here first: this daemon's followers, released without an
                        // answer when `leader` goes, find it in memory.
                        if let Some(parts) = ex.key_parts(app.config.cache.scope) {
                            app.cache.store(key, parts, entry.clone());
                        }
                        drop(leader);
                        team_flight::serve(app, ex, entry, room).await
                    }
                    Claim::Live(live) => team_flight::follow_live(app, ex, leader, live, room),
                    Claim::Lead(lease) => lead(app, ex, leader, room, Some(lease)).await,
                    Claim::Alone => lead(app, ex, leader, room, None).await,
                };
            }
            Role::Follower(flight) => {
                let Some(reader) = flight.reader() else {
                    break;
                };
                if let Some(resp) = follow(app, ex, reader, &mut room).await {
                    return Ok((resp, Outcome::Coalesced));
                }
                // A leader that went without an answer may have found the team's.
                if let Some(entry) = team_flight::found(app, ex).await {
                    return team_flight::serve(app, ex, entry, room).await;
                }
            }
        }
    }
    lead(app, ex, app.flights.solo(), room, None).await
}

/// Reads somebody else's answer; None if that answer was given up before it started (the
/// request's room is then still its own).
async fn follow(
    app: &Arc<App>,
    ex: &Arc<Exchange>,
    mut reader: Reader,
    room: &mut Option<Room>,
) -> Option<Response<Body>> {
    let head = reader.head().await.ok()?;
    let status = head.status.as_u16();
    let flight = reader.flight().clone();
    let body = if head.stream {
        account_when_complete(app, ex, flight, status, room.take());
        reader.into_body(true)
    } else {
        match reader.whole().await {
            Whole::Complete(whole) => {
                account_coalesced(app, ex, &flight, status, room.take()).await;
                pieces(whole)
            }
            Whole::Outgrown => {
                account_when_complete(app, ex, flight, status, room.take());
                reader.into_body(false)
            }
            Whole::Ended(_) => return None,
        }
    };
    Some(respond(head.status, &head.headers, body))
}

/// Writes a follower's ledger line once the answer it reads has ended cleanly.
pub(super) fn account_when_complete(
    app: &Arc<App>,
    ex: &Arc<Exchange>,
    flight: Arc<Flight>,
    status: u16,
    room: Option<Room>,
) {
    let (app, ex) = (app.clone(), ex.clone());
    tokio::spawn(async move {
        if matches!(flight.end().await, End::Complete) {
            account_coalesced(&app, &ex, &flight, status, room).await;
        }
    });
}

async fn account_coalesced(
    app: &App,
    ex: &Exchange,
    flight: &Flight,
    status: u16,
    room: Option<Room>,
) {
    if ex.endpoint.billable() {
        let acc = Accounting::saved(flight.cost());
        let line = ex.ledger_line(Outcome::Coalesced, status, acc);
        app.account(line, ex.prompt(), room).await;
    }
}

/// Fetches from upstream in a task of its own (which goes on if this client leaves, so the
/// answer is still recorded and accounted for), and answers from its recording.
async fn lead(
    app: &Arc<App>,
    ex: &Arc<Exchange>,
    leader: Leader,
    room: Option<Room>,
    lease: Option<Lease>,
) -> Result<(Response<Body>, Outcome), ApiError> {
    let reservation = reserve(app, ex).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    // At debug level, like the request's span: an info span would be made and entered
    // on every exchange. The exchange's own warnings make their context when they are
    // written.
    let span = tracing::debug_span!("exchange", method = %ex.method, path = %ex.path_q);
    app.exchanges.spawn(
        drive::drive(
            app.clone(),
            ex.clone(),
            leader,
            (reservation, room, lease),
            tx,
        )
        .instrument(span),
    );
    let outcome = ex.policy.upstream_outcome();
    match rx.await {
        Ok(First::Answer(reader, head)) => Ok((answer_from(reader, head).await?, outcome)),
        Ok(First::Direct(resp)) => Ok((resp, outcome)),
        Ok(First::Failed(e)) => Err(e),
        Err(_) => Err(ApiError::Internal(
            "the upstream exchange ended without answering".into(),
        )),
    }
}

/// A stream is sent as it arrives. A plain answer is sent once whole (so that one that
/// breaks gets an error status, not a short body), unless it outgrows the recording
/// bound: then it is sent as it arrives too.
async fn answer_from(mut reader: Reader, head: Head) -> Result<Response<Body>, ApiError> {
    let body = if head.stream {
        reader.into_body(true)
    } else {
        match reader.whole().await {
            Whole::Complete(whole) => pieces(whole),
            Whole::Outgrown => reader.into_body(false),
            Whole::Ended(End::Failed(e)) => return Err(e),
            Whole::Ended(_) => {
                return Err(ApiError::UpstreamBroken("the answer was abandoned".into()))
            }
        }
    };
    Ok(respond(head.status, &head.headers, body))
}
