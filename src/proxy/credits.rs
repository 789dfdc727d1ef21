//! `/credits`: answers seen as they pass (never cached) are kept as observations of the
//! credential's credits for `spend reconcile`, and, when the daemon holds the upstream
//! key, it asks `/credits` itself every `spend.credits_poll`.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Full};

use crate::app::App;
use crate::body::{full, Body};
use crate::error::ApiError;
use crate::proxy::exchange::{response_headers, Exchange};
use crate::spend::reconcile::{parse_credits, unix_ms};
use crate::spend::Observation;

/// A `/credits` answer is a few bytes; one larger than this is relayed unread.
const MAX_CREDITS_BODY: usize = 64 << 10;

/// Sends the client's `/credits` request, relays the answer, and keeps what it said.
pub async fn pass_observed(app: &Arc<App>, ex: &Exchange) -> Result<Response<Body>, ApiError> {
    let resp = app.upstream.send(ex.upstream_request(app)?).await?;
    app.metrics.first_byte(ex.started.elapsed());
    let (parts, body) = resp.into_parts();
    let headers = response_headers(&parts.headers);
    let mut out = if parts.status.is_success() {
        let bytes = read_small(app.upstream.relay(body)).await?;
        if let Some(fp) = ex.attr.fingerprint.clone() {
            observe(app, &fp, &bytes).await;
        }
        Response::new(full(bytes))
    } else {
        Response::new(app.upstream.relay(body))
    };
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    Ok(out)
}

async fn read_small(mut body: Body) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::UpstreamBroken(format!("the /credits answer: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_CREDITS_BODY {
                return Err(ApiError::UpstreamBroken(
                    "the /credits answer is too large".into(),
                ));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.into())
}

/// Keeps the credits number of a `/credits` answer, if it has one.
async fn observe(app: &Arc<App>, fingerprint: &Arc<str>, body: &[u8]) {
    let Some(credits) = parse_credits(body) else {
        tracing::warn!("a /credits answer without a credits number; not kept");
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    let obs = Observation {
        at_ms: unix_ms(now),
        credits,
    };
    // Ledger lines carry milliseconds: the observation is kept only once its millisecond
    // is over, so every line stamped later was written after it, by anyone.
    let into_ms = u64::try_from(now.unix_timestamp_nanos().rem_euclid(1_000_000)).unwrap_or(0);
    let next_ms = std::time::Duration::from_nanos(1_000_000 - into_ms);
    tokio::time::sleep(next_ms).await;
    let (spend, fp) = (app.spend.clone(), fingerprint.clone());
    let kept = tokio::task::spawn_blocking(move || {
        spend.observe_credits(&fp, obs).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    if let Err(e) = kept {
        tracing::warn!(error = %e, "could not keep a /credits observation");
    }
}

/// Asks `/credits` with the held key every `spend.credits_poll` (the first time at once),
/// for as long as the daemon runs. None when it holds no key, polling is off, or the
/// daemon is in replay mode (which never contacts upstream).
pub fn spawn_poller(app: &Arc<App>) -> Option<tokio::task::JoinHandle<()>> {
    if app.config.mode == crate::config::Mode::Replay {
        return None;
    }
    let every = app.config.spend.credits_poll?;
    let key = app.held_key.clone()?;
    let app = app.clone();
    Some(tokio::spawn(async move {
        let fp = app.fingerprints.fingerprint(key.as_bytes());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = poll_once(&app, &key, &fp).await {
                tracing::warn!(error = %e, "could not ask upstream for its credits");
            }
        }
    }))
}

async fn poll_once(app: &Arc<App>, key: &http::HeaderValue, fp: &Arc<str>) -> Result<(), ApiError> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = app.upstream.uri_for("/credits")?;
    req.headers_mut().insert(header::AUTHORIZATION, key.clone());
    let resp = app.upstream.send(req).await?;
    let (parts, body) = resp.into_parts();
    if !parts.status.is_success() {
        return Err(ApiError::UpstreamBroken(format!(
            "/credits answered {}",
            parts.status
        )));
    }
    let bytes = read_small(app.upstream.relay(body)).await?;
    observe(app, fp, &bytes).await;
    Ok(())
}
