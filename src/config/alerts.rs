//! `[alerts]`: where budget alerts go (a webhook, a command, or both), at which fractions
//! of a project's budget, and how patiently a delivery is retried.

use std::time::Duration;

use serde::Deserialize;

use super::{err, ConfigError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    webhook: Option<String>,
    command: Option<String>,
    thresholds: Option<Vec<f64>>,
    retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    retry_delay: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    /// POSTed the alert's JSON.
    pub webhook: Option<http::Uri>,
    /// Run by `/bin/sh -c` with the alert's JSON on its stdin.
    pub command: Option<String>,
    /// Fractions of a project's budget, ascending, each alerted once per period.
    pub thresholds: Vec<f64>,
    /// Attempts after the first before a delivery is given up.
    pub retries: u32,
    /// The wait before the first retry; doubled for each one after.
    pub retry_delay: Duration,
}

impl AlertsConfig {
    /// Whether alerts go anywhere.
    pub fn enabled(&self) -> bool {
        self.webhook.is_some() || self.command.is_some()
    }
}

pub const DEFAULT_THRESHOLDS: [f64; 3] = [0.5, 0.8, 1.0];

pub(super) fn validate(raw: RawAlerts) -> Result<AlertsConfig, ConfigError> {
    let webhook = match raw.webhook.filter(|w| !w.is_empty()) {
        None => None,
        Some(text) => {
            let uri: http::Uri = text
                .parse()
                .map_err(|_| err(format!("alerts.webhook: {text:?} is not a URL")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                return Err(err(format!(
                    "alerts.webhook: {text:?} must be an http:// or https:// URL"
                )));
            }
            Some(uri)
        }
    };
    let mut thresholds = raw
        .thresholds
        .unwrap_or_else(|| DEFAULT_THRESHOLDS.to_vec());
    if thresholds.iter().any(|t| !(t.is_finite() && *t > 0.0)) {
        return Err(err(
            "alerts.thresholds are fractions of the budget above 0 (1.0 is all of it)",
        ));
    }
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    let retry_delay = raw.retry_delay.unwrap_or(Duration::from_secs(1));
    if retry_delay.is_zero() {
        return Err(err("alerts.retry_delay must be longer than 0s"));
    }
    Ok(AlertsConfig {
        webhook,
        command: raw.command.filter(|c| !c.trim().is_empty()),
        thresholds,
        retries: raw.retries.unwrap_or(8),
        retry_delay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AlertsConfig, ConfigError> {
        validate(toml::from_str(text).map_err(|e| err(e.to_string()))?)
    }

    #[test]
    fn defaults_send_nowhere_at_half_four_fifths_and_all() {
        let c = parse("").unwrap();
        assert!(!c.enabled());
        assert_eq!(c.thresholds, vec![0.5, 0.8, 1.0]);
        assert_eq!((c.retries, c.retry_delay), (8, Duration::from_secs(1)));
    }

    #[test]
    fn webhook_command_and_thresholds_are_read_and_sorted() {
        let c = parse(
            "webhook = \"http://127.0.0.1:9000/hook\"\ncommand = \"mail -s budget ops\"\n\
             thresholds = [1.0, 0.25, 0.25]\nretries = 2\nretry_delay = \"50ms\"",
        )
        .unwrap();
        assert!(c.enabled());
        assert_eq!(c.webhook.unwrap().to_string(), "http://127.0.0.1:9000/hook");
        assert_eq!(c.command.as_deref(), Some("mail -s budget ops"));
        assert_eq!(c.thresholds, vec![0.25, 1.0]);
        assert_eq!((c.retries, c.retry_delay), (2, Duration::from_millis(50)));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "webhook = \"ftp://x/y\"",
            "webhook = \"not a url\"",
            "thresholds = [0.0]",
            "thresholds = [-1.0]",
            "retry_delay = \"0s\"",
            "hook = \"http://x\"",
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad}");
        }
    }
}
