//! `[upstream]`: where the API is, how it is trusted and timed, and the key the daemon may
//! hold for it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{err, positive, ConfigError, DEFAULT_UPSTREAM};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    url: Option<String>,
    ca_file: Option<PathBuf>,
    api_key_file: Option<PathBuf>,
    api_key_env: Option<String>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    first_byte_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pool_idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: http::Uri,
    pub ca_file: Option<PathBuf>,
    pub api_key_file: Option<PathBuf>,
    pub api_key_env: Option<String>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
}

/// Validates `[upstream]`; `url` is the flag or env value, which wins over the file's.
pub(super) fn validate(u: RawUpstream, url: Option<String>) -> Result<UpstreamConfig, ConfigError> {
    let url_text = url
        .or(u.url)
        .unwrap_or_else(|| DEFAULT_UPSTREAM.to_string());
    let url = parse_upstream_url(&url_text)?;
    if u.api_key_file.is_some() && u.api_key_env.is_some() {
        return Err(err("upstream: set api_key_file or api_key_env, not both"));
    }
    let upstream = UpstreamConfig {
        url,
        ca_file: u.ca_file,
        api_key_file: u.api_key_file,
        api_key_env: u.api_key_env,
        connect_timeout: positive("upstream.connect_timeout", u.connect_timeout, 10)?,
        first_byte_timeout: positive("upstream.first_byte_timeout", u.first_byte_timeout, 300)?,
        idle_timeout: positive("upstream.idle_timeout", u.idle_timeout, 120)?,
        pool_idle_timeout: positive("upstream.pool_idle_timeout", u.pool_idle_timeout, 90)?,
    };
    Ok(upstream)
}

fn parse_upstream_url(text: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| err(format!("upstream: {text:?} is not a URL")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(err(format!(
                "upstream: {text:?} must start with http:// or https://"
            )))
        }
    }
    if uri.authority().is_none() {
        return Err(err(format!("upstream: {text:?} has no host")));
    }
    if uri.query().is_some() {
        return Err(err(format!("upstream: {text:?} must not have a query")));
    }
    Ok(uri)
}
