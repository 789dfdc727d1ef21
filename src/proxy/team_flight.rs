//! Single-flight across the team's daemons, for a request about to lead an upstream call:
//! when its answer may be shared, the team's lease on its key decides whether this daemon
//! fetches it or waits for the daemon that does; an answer waited for is served as a
//! coalesced one from the team's cache, or — a stream — live, as the fetching daemon
//! shares it through Redis (`publish` on that side, `follow_live` on this one).

use std::sync::Arc;

use bytes::Bytes;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::app::App;
use crate::body::Body;
use crate::cache::entry::Entry;
use crate::cache::flight::{End, Head, Leader, Reader};
use crate::cache::key::CacheKey;
use crate::cache::redis_tier::{Claim, Lease, LiveFollow, LiveHead, LiveNews, LivePublisher};
use crate::cost::Money;
use crate::error::ApiError;
use crate::proxy::exchange::Exchange;
use crate::proxy::hit::{self, Tier};
use crate::proxy::{miss, respond};
use crate::spend::{Outcome, Room};

/// Names the tier an answer came from when it is not this daemon's own.
const TIER_HEADER: HeaderName = HeaderName::from_static("x-chatcache-tier");

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
    let stream = ex.json.as_ref().is_some_and(|j| j.stream);
    team.claim(&key, super::max_age(app, ex), bound, stream)
        .await
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

/// Shares a streamed answer this daemon fetches under the team's lease with the daemons
/// waiting on it, piece by piece as `reader` (its own reader of the answer) gets them.
pub(super) fn publish(app: &Arc<App>, lease: &Lease, head: &Head, reader: Reader) {
    let Some(team) = &app.team_cache else {
        return;
    };
    let content_type = head
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let live = LiveHead {
        status: head.status.as_u16(),
        content_type,
    };
    if let Some(publisher) = team.publish_live(lease, live) {
        app.exchanges.spawn(share(publisher, reader));
    }
}

async fn share(mut publisher: LivePublisher, mut reader: Reader) {
    loop {
        let (pieces, end) = reader.next().await;
        // What arrived since the last read goes to Redis as one stream entry.
        let data: Bytes = match pieces.as_slice() {
            [one] => one.clone(),
            many => many.concat().into(),
        };
        // Redis failed: nothing more goes there, and this reader no longer holds the
        // answer back; the followers end their streams when the lease goes.
        if !data.is_empty() && !publisher.data(data).await {
            return;
        }
        match end {
            None => {}
            Some(End::Complete) => {
                let cost = reader.flight().cost().map(|c| c.get().to_string());
                publisher.end(true, cost).await;
                return;
            }
            Some(_) => {
                publisher.end(false, None).await;
                return;
            }
        }
    }
}

/// Serves a stream another daemon of the team is fetching, as it arrives through Redis.
/// This daemon's flight for the key (`leader`) is fed from it, so identical requests here
/// join it like any answer in flight; all are coalesced (cost 0, the answer's cost saved).
pub(super) fn follow_live(
    app: &Arc<App>,
    ex: &Arc<Exchange>,
    leader: Leader,
    live: Box<LiveFollow>,
    room: Option<Room>,
) -> Result<(Response<Body>, Outcome), ApiError> {
    let status = StatusCode::from_u16(live.head.status)
        .map_err(|_| ApiError::UpstreamBroken("a shared stream had no valid status".into()))?;
    let mut headers = HeaderMap::new();
    let content_type = live.head.content_type.as_deref();
    if let Some(v) = content_type.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(CONTENT_TYPE, v);
    }
    headers.insert(TIER_HEADER, HeaderValue::from_static("team"));
    let head = Head {
        status,
        headers,
        stream: true,
    };
    leader.flight.set_head(head.clone());
    let Some(reader) = leader.flight.reader() else {
        return Err(ApiError::Internal(
            "a shared stream had no room for its reader".into(),
        ));
    };
    miss::account_when_complete(app, ex, reader.flight().clone(), status.as_u16(), room);
    app.exchanges.spawn(feed(leader, live));
    Ok((
        respond(head.status, &head.headers, reader.into_body(true)),
        Outcome::Coalesced,
    ))
}

/// Copies the live stream into this daemon's flight until it ends; an end that is not
/// complete ends every reader's stream with the SSE error frame.
async fn feed(leader: Leader, mut live: Box<LiveFollow>) {
    loop {
        match live.next().await {
            LiveNews::Data(data) => leader.flight.push(data).await,
            LiveNews::Complete(cost) => {
                let cost = cost.and_then(|c| serde_json::value::RawValue::from_string(c).ok());
                leader.flight.set_cost(cost.map(Money::from));
                leader.finish(End::Complete);
                return;
            }
            LiveNews::Failed(why) => {
                tracing::warn!(reason = %why, "a stream shared by another daemon of the team broke off");
                leader.finish(End::Failed(ApiError::UpstreamBroken(why)));
                return;
            }
        }
    }
}
