//! `[projects.NAME]` budgets and `[[tokens]]`, the local client tokens bound to projects.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::{err, ConfigError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    Month,
    Total,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProject {
    budget: Option<f64>,
    budget_period: Option<BudgetPeriod>,
    max_request_cost: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    project: String,
    hash: String,
}

#[derive(Debug, Clone)]
pub struct ProjectConfig {
    pub budget: Option<f64>,
    pub budget_period: BudgetPeriod,
    /// What a request of this project is taken to cost at most when its own worst case
    /// cannot be worked out (no `max_tokens`, or no price for its model).
    pub max_request_cost: f64,
}

/// `max_request_cost` unless set.
pub const DEFAULT_MAX_REQUEST_COST: f64 = 0.25;

/// Projects and tokens in one map each.
pub(super) type Projects = (BTreeMap<String, ProjectConfig>, BTreeMap<String, Arc<str>>);

/// The validated projects, and the tokens (blake3 hex of the token → project).
pub(super) fn validate(
    raw_projects: BTreeMap<String, RawProject>,
    raw_tokens: Vec<RawToken>,
) -> Result<Projects, ConfigError> {
    let mut projects = BTreeMap::new();
    for (name, p) in raw_projects {
        check_project_name(&name)?;
        for (field, v) in [
            ("budget", p.budget),
            ("max_request_cost", p.max_request_cost),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(err(format!(
                    "projects.{name}.{field} must be a number >= 0"
                )));
            }
        }
        projects.insert(
            name,
            ProjectConfig {
                budget: p.budget,
                budget_period: p.budget_period.unwrap_or(BudgetPeriod::Month),
                max_request_cost: p.max_request_cost.unwrap_or(DEFAULT_MAX_REQUEST_COST),
            },
        );
    }
    let mut tokens = BTreeMap::new();
    for t in raw_tokens {
        check_project_name(&t.project)?;
        let hash = t
            .hash
            .strip_prefix("blake3:")
            .unwrap_or(&t.hash)
            .to_string();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(format!(
                "tokens: hash for project {:?} is not a blake3 hex digest (made by `chatcache token new`)",
                t.project
            )));
        }
        tokens.insert(hash.to_ascii_lowercase(), Arc::from(t.project));
    }
    Ok((projects, tokens))
}

/// Project names appear in paths (`/p/NAME/`), headers and ledger lines.
pub fn check_project_name(name: &str) -> Result<(), ConfigError> {
    let ok = name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(err(format!(
            "project name {name:?} must be 1-64 characters of letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}
