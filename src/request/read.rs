//! A request's body read whole, refused with 413 as soon as it is known to exceed its limit.

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};

use crate::error::ApiError;

/// Reads the whole body, refusing with 413 as soon as it is known to exceed `limit`:
/// from Content-Length before reading anything, or while reading a chunked body.
pub async fn read_body(
    body: hyper::body::Incoming,
    headers: &HeaderMap,
    limit: u64,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let unreadable = |e: Box<dyn std::error::Error + Send + Sync>| {
        if e.is::<http_body_util::LengthLimitError>() {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::BadRequest("the request body could not be read".into())
        }
    };
    let mut body = Limited::new(body, limit_usize);
    // Most bodies arrive whole, in one piece: taken as they are, with nothing to collect.
    let first = match body.frame().await {
        None => return Ok(Bytes::new()),
        Some(frame) => frame.map_err(unreadable)?,
    };
    let first = first.into_data().unwrap_or_default();
    if body.is_end_stream() {
        return Ok(first);
    }
    let rest = body.collect().await.map_err(unreadable)?.to_bytes();
    let mut whole = bytes::BytesMut::with_capacity(first.len() + rest.len());
    whole.extend_from_slice(&first);
    whole.extend_from_slice(&rest);
    Ok(whole.freeze())
}
