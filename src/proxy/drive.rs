//! One exchange with upstream: the task that reads the answer into its recording, and the
//! bookkeeping when it ends (ledger line made durable, entry handed to the cache and
//! offered to the team's, followers released) — in that order, before any client sees
//! the end.

use std::io::BufReader;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Response};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::app::App;
use crate::body::{Body, PiecesReader};
use crate::cache::entry::{Entry, EntryMeta};
use crate::cache::flight::{End, Head, Leader, Reader};
use crate::cache::now_ms;
use crate::cache::redis_tier::Lease;
use crate::cost::{estimate, CostSource, Prices, Usage};
use crate::error::ApiError;
use crate::policy::Endpoint;
use crate::proxy::exchange::{response_headers, Accounting, Exchange};
use crate::spend::{Reservation, Room};
use crate::stream::tee::{tee, Tee, TeeEnd};

/// What the exchange tells the client that caused it, once it knows.
pub enum First {
    /// A 2xx answer is coming in: read it with this reader.
    Answer(Reader, Head),
    /// Upstream answered with an error status: passed through as it is, never stored.
    Direct(Response<Body>),
    /// No answer: unreachable, timed out, refused.
    Failed(ApiError),
}

/// Sends an uncached, unaccounted request (credits, unknown paths) and relays the answer.
pub async fn pass(app: &Arc<App>, ex: &Exchange) -> Result<Response<Body>, ApiError> {
    let resp = app.upstream.send(ex.upstream_request(app)?).await?;
    app.metrics.first_byte(ex.started.elapsed());
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(app.upstream.relay(body));
    *out.status_mut() = parts.status;
    *out.headers_mut() = response_headers(&parts.headers);
    Ok(out)
}

/// Runs one exchange to its end. `first` hears how it started; the leader's flight hears
/// everything else. Dropping `leader` unfinished (any early return) releases followers.
///
/// `held` is what the request holds of its project's budget, the room claimed for its
/// ledger line, and the team's lease on fetching its key: they give way to the real cost,
/// the line and the shared entry when recorded, and are released on any other way out.
pub async fn drive(
    app: Arc<App>,
    ex: Arc<Exchange>,
    leader: Leader,
    held: (Option<Reservation>, Option<Room>, Option<Lease>),
    first: oneshot::Sender<First>,
) {
    // The team's lease, if any, is let go with the entry's write, or when this ends.
    let (reservation, room, mut lease) = held;
    let req = match ex.upstream_request(&app) {
        Ok(r) => r,
        Err(e) => {
            let _ = first.send(First::Failed(e));
            return;
        }
    };
    let resp = match app.upstream.send(req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(parent: &ex.span(), error = %e, "upstream request failed");
            let _ = first.send(First::Failed(e));
            return;
        }
    };
    let ttfb = ex.started.elapsed();
    app.metrics.first_byte(ttfb);
    let ttfb_ms = ttfb.as_millis() as u64;
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let headers = response_headers(&parts.headers);
    // The received head's values are views into the upstream connection's read buffer:
    // kept for the length of the answer, they would pin that buffer while hyper reads the
    // body into a new one.
    drop(parts);
    if !status.is_success() {
        if let (Some(key), true) = (ex.key, ex.policy.store) {
            app.cache.not_cacheable(key);
        }
        if ex.endpoint.billable() {
            let acc = Accounting {
                upstream_ms: Some(ttfb_ms),
                ttfb_ms: Some(ttfb_ms),
                ..Accounting::default()
            };
            let line = ex.ledger_line(ex.policy.upstream_outcome(), status.as_u16(), acc);
            app.account(line, ex.prompt(), room).await;
        }
        let mut out = Response::new(app.upstream.relay(body));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        let _ = first.send(First::Direct(out));
        return;
    }
    note_accepted(&app, &ex);
    let sse = crate::stream::is_event_stream(&headers);
    let head = Head {
        status,
        headers,
        stream: sse,
    };
    leader.flight.set_head(head.clone());
    // The client's reader is made before anything is read: an answer that outgrows the
    // bound takes no reader later.
    let Some(reader) = leader.flight.reader() else {
        let _ = first.send(First::Failed(ApiError::Internal(
            "a new answer had no room for its reader".into(),
        )));
        return;
    };
    let _ = first.send(First::Answer(reader, head.clone()));
    // A stream fetched under the team's lease goes out live to the daemons waiting on it.
    if let (true, Some(lease)) = (sse, &lease) {
        if let Some(reader) = leader.flight.reader() {
            super::team_flight::publish(&app, lease, &head, reader);
        }
    }

    let max_event = usize::try_from(app.config.cache.max_entry).unwrap_or(usize::MAX);
    let t = tee(
        body,
        &leader.flight,
        app.upstream.idle_timeout,
        sse,
        ex.started,
        max_event,
    )
    .await;
    // The whole answer, unless it outgrew `cache.max_entry` (it is then not stored).
    let body: Option<Vec<Bytes>> = leader.flight.recording();
    let mut end = t.end.clone();
    // Checked without building a tree: the cost fields are read on their own, and the
    // answer's text is looked into only when the cost has to be estimated.
    let is_json = sse
        || body.as_ref().is_none_or(|b| {
            serde_json::from_reader::<_, IgnoredAny>(BufReader::new(PiecesReader::new(b))).is_ok()
        });
    if !sse
        && matches!(end, TeeEnd::Clean)
        && (ex.endpoint.cacheable() || ex.endpoint.billable())
        && !is_json
    {
        end = TeeEnd::Broken(ApiError::UpstreamBroken(
            "upstream answered with a body that is not JSON".into(),
        ));
    }
    let prices = app.prices();
    let (usage, source) = account(&ex, prices.as_deref(), &t, sse, body.as_deref());
    let clean = matches!(end, TeeEnd::Clean);
    let upstream_time = ex.started.elapsed();
    app.metrics.upstream_done(upstream_time);
    let acc = Accounting {
        usage: usage.clone(),
        source: Some(source),
        saved: None,
        upstream_ms: Some(upstream_time.as_millis() as u64),
        ttfb_ms: Some(ttfb_ms),
        incomplete: matches!(end, TeeEnd::Broken(_)),
    };
    leader.flight.set_cost(usage.cost.clone());

    // The last byte waits for the ledger line to be durable, and for nothing else: the
    // entry is handed to the cache's writer (and served from memory until it is stored)
    // before the flight ends, so the next identical request finds one or the other.
    if ex.endpoint.billable() {
        let line = ex.ledger_line(ex.policy.upstream_outcome(), head.status.as_u16(), acc);
        if let Err(e) = app
            .account_durably(line, ex.prompt(), reservation, room)
            .await
        {
            tracing::error!(parent: &ex.span(), error = %e, "could not make the ledger line durable");
        }
    }
    let parts = ex.key_parts(app.config.cache.scope);
    match (ex.key, parts, &body) {
        (Some(key), Some(parts), Some(body)) if clean && ex.policy.store => {
            let entry = Arc::new(entry_of(
                &ex,
                &head,
                &t.chunk_times,
                body.clone(),
                &usage,
                source,
            ));
            app.cache.store(key, parts, entry.clone());
            // Shared with the team in the background: nobody waits for Redis.
            if let Some(team) = &app.team_cache {
                team.offer(key, entry, lease.take());
            }
        }
        (Some(key), _, _) if !clean && ex.policy.store => app.cache.not_cacheable(key),
        _ => {}
    }
    if ex.endpoint == Endpoint::Models && clean {
        if let Some(p) = body
            .as_deref()
            .and_then(|b| Prices::from_models_json(&b.concat()))
        {
            app.set_prices(p);
        }
    }
    match end {
        TeeEnd::Clean | TeeEnd::Unterminated => leader.finish(End::Complete),
        TeeEnd::Broken(e) => {
            tracing::warn!(parent: &ex.span(), error = %e, "upstream answer broke off; not stored");
            leader.finish(End::Failed(e));
        }
    }
}

fn note_accepted(app: &Arc<App>, ex: &Exchange) {
    if app.config.cache.scope != crate::config::Scope::Shared {
        return;
    }
    if let Some(fp) = ex.attr.fingerprint.clone() {
        let store = app.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::attribution::mark_accepted(&store, &fp) {
                tracing::warn!(error = %e, "could not record an accepted credential");
            }
        });
    }
}

/// The cost of an upstream answer: the fields upstream reported (JSON body or the stream's
/// trailing cost frame), else an estimate from `/models` prices.
fn account(
    ex: &Exchange,
    prices: Option<&Prices>,
    t: &Tee,
    sse: bool,
    body: Option<&[Bytes]>,
) -> (Usage, CostSource) {
    let reported = if sse {
        t.cost_frame.as_deref().and_then(Usage::from_upstream_json)
    } else {
        match body {
            Some(b) => Usage::from_upstream_reader(BufReader::new(PiecesReader::new(b))),
            // Too large to have been kept: the fields read as it passed.
            None => t.plain_usage.clone(),
        }
    };
    if let Some(u) = reported.filter(|u| u.cost.is_some()) {
        return (u, CostSource::Upstream);
    }
    let output_chars = if sse {
        t.output_chars
    } else {
        let Some(body) = body else {
            // The text of an answer that was not kept cannot be counted.
            return (Usage::default(), CostSource::Unknown);
        };
        output_chars(body)
    };
    let input_chars = ex.json.as_ref().map_or(0, |j| j.input_chars);
    estimate(prices, ex.model().unwrap_or(""), input_chars, output_chars)
}

/// The characters of an answer's texts (`choices[].message.content`), read as it comes:
/// one text at a time is held, never a tree of the whole answer.
fn output_chars(body: &[Bytes]) -> usize {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        message: Option<Message>,
    }
    #[derive(Deserialize)]
    struct Message {
        // Any JSON: a content that is not a text counts 0.
        #[serde(default)]
        content: Option<Value>,
    }
    let Ok(answer) = serde_json::from_reader::<_, Answer>(BufReader::new(PiecesReader::new(body)))
    else {
        return 0;
    };
    answer
        .choices
        .iter()
        .filter_map(|c| c.message.as_ref()?.content.as_ref()?.as_str())
        .map(|s| s.chars().count())
        .sum()
}

/// Answers up to this size are stored from one buffer of their own.
const COMPACT: usize = 64 * 1024;

fn entry_of(
    ex: &Exchange,
    head: &Head,
    chunk_times: &[(u32, u32)],
    body: Vec<Bytes>,
    usage: &Usage,
    source: CostSource,
) -> Entry {
    let keep = [header::CONTENT_TYPE];
    let headers = head
        .headers
        .iter()
        .filter(|(k, _)| keep.contains(k))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let request = ex
        .json
        .as_ref()
        .and_then(|j| String::from_utf8(j.canonical.clone()).ok())
        .and_then(|s| RawValue::from_string(s).ok())
        .unwrap_or_else(|| RawValue::NULL.to_owned());
    // A short answer is kept as one buffer of its own: as the pieces it was recorded in,
    // it would hold on to the blocks they were cut from for as long as it is cached.
    let body = if body.iter().map(Bytes::len).sum::<usize>() <= COMPACT {
        vec![Bytes::from(body.concat())]
    } else {
        body
    };
    Entry::new(
        EntryMeta {
            status: head.status.as_u16(),
            headers,
            stream: head.stream,
            chunks: if head.stream {
                chunk_times.to_vec()
            } else {
                Vec::new()
            },
            created_ms: now_ms(),
            method: ex.method.to_string(),
            path: ex.path_q.clone(),
            request,
            model: ex.model().map(str::to_string),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost: usage.cost.clone(),
            cost_source: source,
        },
        body,
    )
}
