//! `GET /_chatcache/spend/reconcile?since=…`: the ledger against the provider's credits
//! (see `spend::reconcile`), from a UTC day or an RFC 3339 time on.

use std::collections::HashMap;
use std::sync::Arc;

use http::Response;

use super::{blocking, internal, json};
use crate::app::App;
use crate::body::Body;
use crate::error::ApiError;

pub async fn reconcile(
    app: &Arc<App>,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let since = since_ms(query)?;
    let (spend, warn) = (app.spend.clone(), app.config.spend.drift_warn);
    json(&blocking(move || spend.reconcile(since, warn).map_err(internal)).await?)
}

/// `since` as Unix ms: a UTC day (its start) or an RFC 3339 time.
fn since_ms(q: &HashMap<String, String>) -> Result<Option<i64>, ApiError> {
    let Some(s) = q.get("since") else {
        return Ok(None);
    };
    let day = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map(|d| d.midnight().assume_utc());
    let at = day
        .or_else(|_| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "since: {s:?} is not a date like 2026-11-25 or a time like 2026-11-25T10:00:00Z"
            ))
        })?;
    Ok(Some(crate::spend::reconcile::unix_ms(at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_day_or_a_time() {
        let q = |v: &str| HashMap::from([("since".to_string(), v.to_string())]);
        assert_eq!(since_ms(&HashMap::new()).unwrap(), None);
        assert_eq!(since_ms(&q("1970-01-02")).unwrap(), Some(86_400_000));
        assert_eq!(since_ms(&q("1970-01-01T00:00:01.5Z")).unwrap(), Some(1_500));
        assert!(since_ms(&q("yesterday")).is_err());
    }
}
