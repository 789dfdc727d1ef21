//! Single-flight across the team's daemons, for a request about to lead an upstream call:
//! when its answer may be shared, the team's lease on its key decides whether this daemon
//! fetches it or waits for the daemon that does; an answer waited for is served as a
//! coalesced one from the team's cache.

use std::sync::Arc;

use http::Response;

use crate::app::App;
use crate::body::Body;
use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::cache::redis_tier::Claim;
use crate::error::ApiError;
use crate::proxy::exchange::Exchange;
use crate::proxy::hit::{self, Tier};
use crate::spend::{Outcome, Room};

/// Whether to lead `key`'s upstream call, and under the team's lease, or to serve the
/// answer another daemon fetched meanwhile. Only answers the team may share take part: a
/// stored one, partitioned, whose credential may be served hits.
pub(super) async fn claim(app: &Arc<App>, ex: &Exchange, key: CacheKey) -> Claim {
    let Some(team) = &app.team_cache else {
        return Claim::Alone;
    };
    if !team.is_up()
        || !ex.policy.store
        || ex.key_parts(app.config.cache.scope).is_none()
        || !hit::may_hit(app, &ex.attr).await
    {
        return Claim::Alone;
    }
    // Waited for no longer than the leader's own call may take to start, plus a lease.
    let bound = app.config.upstream.first_byte_timeout + app.config.team_cache.lease;
    team.claim(&key, super::max_age(app, ex), bound).await
}

/// The answer a local leader released its followers with, having found it in the team's
/// cache (and kept it here: memory, or the store once written). Nothing without a team.
pub(super) async fn found(app: &Arc<App>, ex: &Exchange) -> Option<Arc<Entry>> {
    app.team_cache.as_ref()?;
    hit::lookup(app, ex, super::max_age(app, ex))
        .await
        .map(|(entry, _)| entry)
}

/// Serves the answer of an identical request another daemon fetched (cost 0, its cost
/// saved), in the ledger line's `room`.
pub(super) async fn serve(
    app: &Arc<App>,
    ex: &Exchange,
    entry: Arc<Entry>,
    room: Option<Room>,
) -> Result<(Response<Body>, Outcome), ApiError> {
    hit::serve_as(app, ex, entry, Tier::Team, Outcome::Coalesced, room).await
}
