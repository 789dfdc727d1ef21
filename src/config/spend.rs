//! `[spend]`: how the ledger is checked against the provider's own credits — how often
//! the daemon asks `/credits` itself, and the drift that flags an interval.

use std::time::Duration;

use serde::Deserialize;

use super::{err, ConfigError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpend {
    #[serde(default, with = "humantime_serde")]
    credits_poll: Option<Duration>,
    drift_warn: Option<Fraction>,
}

/// A fraction written as a number (`0.02`) or a percentage (`"2%"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Fraction {
    Number(f64),
    Percent(String),
}

impl Fraction {
    fn value(self) -> Result<f64, ConfigError> {
        match self {
            Fraction::Number(v) => Ok(v),
            Fraction::Percent(text) => text
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<f64>().ok())
                .map(|p| p / 100.0)
                .ok_or_else(|| {
                    err(format!(
                        "spend.drift_warn: {text:?} is not a fraction (0.02) or a percentage (\"2%\")"
                    ))
                }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpendConfig {
    /// How often the daemon asks `/credits` with the key it holds; None: never.
    pub credits_poll: Option<Duration>,
    /// The drift (a fraction of the credit drop) past which an interval is flagged.
    pub drift_warn: f64,
}

/// `credits_poll` unless set.
pub const DEFAULT_CREDITS_POLL: Duration = Duration::from_secs(15 * 60);
/// `drift_warn` unless set: 2 %.
pub const DEFAULT_DRIFT_WARN: f64 = 0.02;

pub(super) fn validate(raw: RawSpend) -> Result<SpendConfig, ConfigError> {
    let drift_warn = match raw.drift_warn {
        Some(f) => f.value()?,
        None => DEFAULT_DRIFT_WARN,
    };
    if !(drift_warn.is_finite() && drift_warn >= 0.0) {
        return Err(err(
            "spend.drift_warn must be a fraction of 0 or more (0.02 is 2 %)",
        ));
    }
    Ok(SpendConfig {
        credits_poll: match raw.credits_poll {
            None => Some(DEFAULT_CREDITS_POLL),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        },
        drift_warn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SpendConfig, ConfigError> {
        validate(toml::from_str(text).map_err(|e| err(e.to_string()))?)
    }

    #[test]
    fn defaults_poll_every_quarter_hour_and_warn_at_two_percent() {
        let c = parse("").unwrap();
        assert_eq!(c.credits_poll, Some(Duration::from_secs(900)));
        assert_eq!(c.drift_warn, 0.02);
    }

    #[test]
    fn zero_turns_polling_off_and_bad_values_are_refused() {
        let c = parse("credits_poll = \"0s\"\ndrift_warn = 0.1").unwrap();
        assert_eq!((c.credits_poll, c.drift_warn), (None, 0.1));
        assert_eq!(
            parse("credits_poll = \"5m\"").unwrap().credits_poll,
            Some(Duration::from_secs(300))
        );
        assert_eq!(parse("drift_warn = \"5%\"").unwrap().drift_warn, 0.05);
        for bad in [
            "drift_warn = -0.5",
            "drift_warn = \"5\"",
            "drift_warn = \"-1%\"",
            "credits_poll = \"soon\"",
            "drift = 1",
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad}");
        }
    }
}
