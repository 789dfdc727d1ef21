//! The daemon's own errors and the one place they become HTTP responses (OpenAI-shaped
//! JSON) or, once a stream has started, an SSE `event: error` frame.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, Body};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("project {project:?} has spent {spent} of its budget of {budget}; only cached answers are served until the period ends")]
    BudgetExceeded {
        project: String,
        budget: f64,
        spent: f64,
    },
    #[error("project {project:?} has {remaining:.6} of its budget left (with requests in flight counted at their worst case), and this request may cost up to {worst_case:.6}; set max_tokens to bound it")]
    BudgetTooSmall {
        project: String,
        remaining: f64,
        worst_case: f64,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("no such admin endpoint")]
    NotFound,
    #[error("the admin API answers loopback clients only (or set admin.token)")]
    Forbidden,
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("upstream sent a broken answer: {0}")]
    UpstreamBroken(String),
    #[error("upstream did not answer within {}", humantime::format_duration(*.0))]
    UpstreamTimeout(Duration),
    #[error(
        "not in the cache, and this request may not go upstream (replay mode or only-if-cached)"
    )]
    CacheMiss,
    #[error("the spend ledger cannot be written, so no request is sent upstream until it can")]
    LedgerUnavailable,
    #[error("the team ledger cannot be read now: {0}")]
    TeamLedgerUnavailable(String),
    #[error("project {project:?} has a team budget and the team's database cannot be reached to hold this request's cost; try again later")]
    TeamBudgetUnavailable { project: String },
    #[error("the spend ledger has no room and too many answers already wait to be recorded; cached answers are served again once space returns")]
    LedgerBacklog,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BudgetExceeded { .. } | ApiError::BudgetTooSmall { .. } => {
                StatusCode::PAYMENT_REQUIRED
            }
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::UpstreamUnreachable(_) | ApiError::UpstreamBroken(_) => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::UpstreamTimeout(_) | ApiError::CacheMiss => StatusCode::GATEWAY_TIMEOUT,
            ApiError::LedgerUnavailable
            | ApiError::LedgerBacklog
            | ApiError::TeamLedgerUnavailable(_)
            | ApiError::TeamBudgetUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "invalid_token",
            ApiError::BudgetExceeded { .. } | ApiError::BudgetTooSmall { .. } => "budget_exceeded",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::NotFound => "not_found",
            ApiError::Forbidden => "forbidden",
            ApiError::UpstreamUnreachable(_) => "upstream_unreachable",
            ApiError::UpstreamBroken(_) => "upstream_bad_response",
            ApiError::UpstreamTimeout(_) => "upstream_timeout",
            ApiError::CacheMiss => "cache_miss",
            ApiError::LedgerUnavailable | ApiError::LedgerBacklog => "ledger_unavailable",
            ApiError::TeamLedgerUnavailable(_) => "team_ledger_unavailable",
            ApiError::TeamBudgetUnavailable { .. } => "team_budget_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The JSON error object SDKs already parse.
    pub fn json(&self) -> Bytes {
        let message = match self {
            // Internal details go to the log, never to the client.
            ApiError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        let v = serde_json::json!({
            "error": {"message": message, "type": "chatcache_error", "code": self.code()}
        });
        Bytes::from(v.to_string())
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let mut resp = Response::new(full(self.json()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(self, ApiError::Unauthorized(_)) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, ApiError::BadRequest(_)) {
            // A request we refused to parse may have left the connection in an unknown state.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// The frame that ends a stream which broke after it started.
    pub fn sse_frame(&self) -> Bytes {
        let mut out = b"event: error\ndata: ".to_vec();
        out.extend_from_slice(&self.json());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_openai_like() {
        let e = ApiError::CacheMiss;
        let v: serde_json::Value = serde_json::from_slice(&e.json()).unwrap();
        assert_eq!(v["error"]["type"], "chatcache_error");
        assert_eq!(v["error"]["code"], "cache_miss");
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(v["error"]["message"].as_str().unwrap().contains("cache"));
    }

    #[test]
    fn internal_details_stay_out_of_the_body() {
        let e = ApiError::Internal("sled said /secret/path".into());
        assert!(!String::from_utf8_lossy(&e.json()).contains("secret"));
    }

    #[test]
    fn sse_error_frame_is_one_event() {
        let f = ApiError::UpstreamTimeout(Duration::from_secs(2)).sse_frame();
        let s = std::str::from_utf8(&f).unwrap();
        assert!(s.starts_with("event: error\ndata: {"));
        assert!(s.ends_with("}\n\n"));
        assert_eq!(s.matches("\n\n").count(), 1);
    }
}
