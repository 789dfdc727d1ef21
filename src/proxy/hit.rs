//! A request answered from the cache: whether its credential may be served, the lookup
//! (memory first, then the store on a blocking thread unless it certainly lacks the key,
//! then the team's cache on Redis), and the replayed answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response};

use crate::app::App;
use crate::attribution::{self, Attribution};
use crate::body::{pieces, Body};
use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::cache::{now_ms, Lookup};
use crate::error::ApiError;
use crate::proxy::exchange::{Accounting, Exchange};
use crate::proxy::respond;
use crate::spend::Outcome;
use crate::stream::replay::replay_body;

/// A plain answer larger than this is sent in pieces of this size.
const PIECE: usize = 64 * 1024;

/// Views of `body`'s pieces, none larger than `PIECE`; nothing is copied.
fn sliced(body: &[Bytes]) -> Vec<Bytes> {
    body.iter()
        .flat_map(|p| {
            (0..p.len())
                .step_by(PIECE)
                .map(|at| p.slice(at..(at + PIECE).min(p.len())))
        })
        .collect()
}

/// Names the tier a hit came from when it is not this daemon's own.
const TIER_HEADER: HeaderName = HeaderName::from_static("x-chatcache-tier");

/// Where a stored answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// This daemon's memory or store.
    Local,
    /// The team's cache on Redis.
    Team,
}

/// The fresh stored answer to `ex`, if it may be served one, and where it was found.
pub async fn lookup(
    app: &Arc<App>,
    ex: &Exchange,
    max_age: Option<Duration>,
) -> Option<(Arc<Entry>, Tier)> {
    let key = ex.key.filter(|_| ex.policy.lookup)?;
    if !may_hit(app, &ex.attr).await {
        return None;
    }
    if let Some(entry) = app.cache.get_now(key, max_age) {
        return Some((entry, Tier::Local));
    }
    if app.cache.may_be_stored(&key) {
        if let Some(entry) = stored(app, key, max_age).await {
            return Some((entry, Tier::Local));
        }
    }
    let entry = Arc::new(app.team_cache.as_ref()?.get(&key, max_age).await?);
    // Kept here too, so the next identical request is a local hit.
    if let (true, Some(parts)) = (ex.policy.store, ex.key_parts(app.config.cache.scope)) {
        app.cache.store(key, parts, entry.clone());
    }
    Some((entry, Tier::Team))
}

async fn stored(app: &Arc<App>, key: CacheKey, max_age: Option<Duration>) -> Option<Arc<Entry>> {
    let cache = app.cache.clone();
    match tokio::task::spawn_blocking(move || cache.get(key, max_age)).await {
        Ok(Ok((Lookup::Fresh, entry))) => entry,
        Ok(Ok(_)) => None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cache lookup failed; going upstream");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "cache lookup task failed");
            None
        }
    }
}

/// Under `cache.scope = "shared"`, only credentials upstream has accepted before get hits.
pub(super) async fn may_hit(app: &Arc<App>, attr: &Attribution) -> bool {
    if app.config.cache.scope != crate::config::Scope::Shared {
        return true;
    }
    let Some(fp) = attr.fingerprint.clone() else {
        return false;
    };
    let store = app.store.clone();
    matches!(
        tokio::task::spawn_blocking(move || attribution::was_accepted(&store, &fp)).await,
        Ok(Ok(true))
    )
}

/// The recorded answer, its ledger line written (cost 0, the recorded cost saved).
/// Refused when too many lines already wait for room in the ledger: an answer is never
/// served unrecorded.
pub async fn serve(
    app: &Arc<App>,
    ex: &Exchange,
    entry: Arc<Entry>,
    tier: Tier,
) -> Result<(Response<Body>, Outcome), ApiError> {
    if ex.endpoint.billable() && !app.spend.takes_hits() {
        return Err(ApiError::LedgerBacklog);
    }
    serve_as(app, ex, entry, tier, Outcome::Hit, None).await
}

/// The recorded answer as `outcome` (a hit, or the answer of an identical request that
/// another daemon of the team fetched meanwhile: coalesced), its line written in `room`.
pub(super) async fn serve_as(
    app: &Arc<App>,
    ex: &Exchange,
    entry: Arc<Entry>,
    tier: Tier,
    outcome: Outcome,
    room: Option<crate::spend::Room>,
) -> Result<(Response<Body>, Outcome), ApiError> {
    if ex.endpoint.billable() {
        let acc = Accounting::saved_from_entry(&entry.meta);
        let line = ex.ledger_line(outcome, entry.meta.status, acc);
        app.account(line, ex.prompt(), room).await;
    }
    let age = now_ms().saturating_sub(entry.meta.created_ms) / 1000;
    let body = if entry.meta.stream {
        replay_body(entry.chunks(), app.config.cache.replay_pace)
    } else {
        pieces(sliced(entry.body_pieces()))
    };
    let status = http::StatusCode::from_u16(entry.meta.status).unwrap_or(http::StatusCode::OK);
    let mut resp = respond(status, entry.replay_headers(), body);
    // One allocation where `HeaderValue::from(u64)` makes two; digits are always valid.
    if let Ok(age) = HeaderValue::from_str(itoa::Buffer::new().format(age)) {
        resp.headers_mut().insert(header::AGE, age);
    }
    if tier == Tier::Team {
        resp.headers_mut()
            .insert(TIER_HEADER, HeaderValue::from_static("team"));
    }
    Ok((resp, outcome))
}
