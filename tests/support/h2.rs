//! The fake upstream's HTTP/2 side (over TLS, when the client offers `h2` in ALPN): the
//! same routes as the hand-written HTTP/1 server, answered through hyper. No faults.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::credits::Credits;
use super::faults::FaultSet;
use super::http1::Request;
use super::respond::{self, Body, Reply};

/// Serves HTTP/2 on `stream` until the client goes; `seen` records each request.
pub async fn serve<S>(
    stream: S,
    frame_delay: Duration,
    seen: Arc<dyn Fn(&Request) + Send + Sync>,
    credits: Arc<Credits>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let (seen, credits) = (seen.clone(), credits.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let req = Request {
                method: parts.method.to_string(),
                target: parts
                    .uri
                    .path_and_query()
                    .map_or("/".to_string(), |pq| pq.to_string()),
                http10: false,
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect(),
                body: body.to_vec(),
            };
            seen(&req);
            Ok::<_, Infallible>(response(
                respond::route(&req, &FaultSet::default(), &credits),
                frame_delay,
            ))
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn response(reply: Reply, frame_delay: Duration) -> http::Response<BoxBody<Bytes, Infallible>> {
    let body = match reply.body {
        Body::Fixed(bytes) => Full::new(Bytes::from(bytes)).boxed(),
        Body::Frames(frames) => {
            let frames = futures_util::stream::unfold(
                (frames.into_iter(), true),
                move |(mut rest, first)| async move {
                    let frame = rest.next()?;
                    if !first {
                        tokio::time::sleep(frame_delay).await;
                    }
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(frame))),
                        (rest, false),
                    ))
                },
            );
            StreamBody::new(frames).boxed()
        }
    };
    let mut resp = http::Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(reply.status).unwrap();
    for (name, value) in reply.headers {
        // Connection-specific fields do not exist in HTTP/2.
        if matches!(
            name.to_ascii_lowercase().as_str(),
            "connection" | "transfer-encoding" | "keep-alive" | "content-length"
        ) {
            continue;
        }
        resp.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(&value).unwrap(),
        );
    }
    resp
}
