//! `[team]`: what a daemon shares with its team. Here the team ledger on PostgreSQL
//! (`postgres`), the team budgets kept there (`budget_*`) and the name this daemon goes
//! by in team reports (`name`); the shared answer cache's keys are read by `team_cache`.

use std::time::Duration;

use serde::Deserialize;

use super::{err, ConfigError};

/// The environment variable that names the PostgreSQL server, over the file's `team.postgres`.
pub const POSTGRES_ENV: &str = "CHATCACHE_POSTGRES_URL";

/// The longest `team.name` accepted: it is a label in reports, not a document.
const MAX_NAME: usize = 64;

/// How long a request waits for PostgreSQL to hold its worst case before
/// `budget_when_down` applies.
pub const DEFAULT_BUDGET_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a team reservation counts when its daemon never settles it (a daemon that
/// died): longer than a request normally runs, plus the shipping of its line.
pub const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(15 * 60);

/// What a budgeted request does when the team's PostgreSQL cannot hold its reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetWhenDown {
    /// Only this daemon's own budget applies (its spend and its requests in flight).
    #[default]
    Local,
    /// The request is refused with 503.
    Refuse,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTeam {
    postgres: Option<String>,
    name: Option<String>,
    budget_when_down: Option<BudgetWhenDown>,
    #[serde(default, with = "humantime_serde")]
    budget_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    budget_ttl: Option<Duration>,
}

/// Splits the `[team]` table between the ledger's keys (here) and the shared cache's
/// (`team_cache`); a key neither knows is refused here, by name.
pub(super) fn split(
    table: toml::Table,
) -> Result<(RawTeam, super::team_cache::RawTeamCache), ConfigError> {
    let (cache, ledger): (toml::Table, toml::Table) = table
        .into_iter()
        .partition(|(k, _)| super::team_cache::KEYS.contains(&k.as_str()));
    let read = |t: toml::Table| toml::Value::Table(t);
    let ledger = read(ledger)
        .try_into()
        .map_err(|e| err(format!("[team]: {e}")))?;
    let cache = read(cache)
        .try_into()
        .map_err(|e| err(format!("[team]: {e}")))?;
    Ok((ledger, cache))
}

#[derive(Debug, Clone)]
pub struct TeamConfig {
    /// Where the team ledger is kept; none: this daemon keeps its ledger to itself.
    pub postgres: Option<DatabaseUrl>,
    /// This daemon's name in team reports (default: the host's name).
    pub name: String,
    pub budget_when_down: BudgetWhenDown,
    pub budget_timeout: Duration,
    pub budget_ttl: Duration,
}

/// The team ledger's database URL (its password masked wherever it is shown).
pub type DatabaseUrl = super::SecretUrl;

/// Validates `[team]`; `get_env` gives `CHATCACHE_POSTGRES_URL`, which wins over the file,
/// and `hostname` the default name.
pub(super) fn validate(
    t: RawTeam,
    get_env: &impl Fn(&str) -> Option<String>,
    hostname: impl FnOnce() -> String,
) -> Result<TeamConfig, ConfigError> {
    let postgres = match get_env(POSTGRES_ENV)
        .filter(|v| !v.is_empty())
        .or(t.postgres)
    {
        None => None,
        Some(url) => Some(check_postgres_url(url)?),
    };
    let name = match t.name {
        Some(n) => n,
        None => hostname(),
    };
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(err(format!(
            "team.name: {name:?} must be 1 to {MAX_NAME} characters, none of them control characters"
        )));
    }
    let positive = |key: &str, v: Option<Duration>, default: Duration| match v {
        Some(d) if d.is_zero() => Err(err(format!("team.{key} must be more than 0"))),
        Some(d) => Ok(d),
        None => Ok(default),
    };
    Ok(TeamConfig {
        postgres,
        name,
        budget_when_down: t.budget_when_down.unwrap_or_default(),
        budget_timeout: positive("budget_timeout", t.budget_timeout, DEFAULT_BUDGET_TIMEOUT)?,
        budget_ttl: positive("budget_ttl", t.budget_ttl, DEFAULT_BUDGET_TTL)?,
    })
}

fn check_postgres_url(url: String) -> Result<DatabaseUrl, ConfigError> {
    let url = DatabaseUrl::new(url);
    let text = url.expose();
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        // The redacted form: a URL in an error message may end up in a log.
        return Err(err(format!(
            "team.postgres: {:?} must start with postgres:// or postgresql://",
            url.redacted()
        )));
    }
    Ok(url)
}

/// The host's name, for `team.name` unless set; `chatcache` if it has none.
pub(super) fn hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "chatcache".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<TeamConfig, ConfigError> {
        super::super::parse_for_test(text, env).map(|c| c.team)
    }

    #[test]
    fn no_team_section_means_no_team_ledger_and_the_host_name() {
        let t = parse("", &[]).unwrap();
        assert!(t.postgres.is_none());
        assert_eq!(t.name, hostname());
        assert_eq!(t.budget_when_down, BudgetWhenDown::Local);
        assert_eq!(t.budget_timeout, DEFAULT_BUDGET_TIMEOUT);
        assert_eq!(t.budget_ttl, DEFAULT_BUDGET_TTL);
        assert!(!hostname().is_empty());
    }

    #[test]
    fn the_file_names_the_server_and_the_daemon() {
        let t = parse(
            "[team]\npostgres = \"postgres://chatcache@db/chatcache\"\nname = \"laptop-7\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            t.postgres.unwrap().expose(),
            "postgres://chatcache@db/chatcache"
        );
        assert_eq!(t.name, "laptop-7");
    }

    #[test]
    fn team_budget_settings_are_read_and_checked() {
        let t = parse(
            "[team]\nbudget_when_down = \"refuse\"\nbudget_timeout = \"200ms\"\nbudget_ttl = \"2m\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(t.budget_when_down, BudgetWhenDown::Refuse);
        assert_eq!(t.budget_timeout, Duration::from_millis(200));
        assert_eq!(t.budget_ttl, Duration::from_secs(120));
        let e = parse("[team]\nbudget_when_down = \"maybe\"\n", &[]).unwrap_err();
        assert!(e.0.contains("maybe"), "{e}");
        let e = parse("[team]\nbudget_timeout = \"0s\"\n", &[]).unwrap_err();
        assert!(e.0.contains("team.budget_timeout"), "{e}");
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let t = parse(
            "[team]\npostgres = \"postgres://file@db/x\"\n",
            &[(POSTGRES_ENV, "postgresql://env@db/y")],
        )
        .unwrap();
        assert_eq!(t.postgres.unwrap().expose(), "postgresql://env@db/y");
        let t = parse("", &[(POSTGRES_ENV, "postgres://env@db/y")]).unwrap();
        assert!(t.postgres.is_some());
    }

    #[test]
    fn bad_values_are_refused_without_showing_the_password() {
        let e = parse("[team]\npostgres = \"mysql://u:hunter2@db/x\"\n", &[]).unwrap_err();
        assert!(e.0.contains("postgres://"), "{e}");
        assert!(!e.0.contains("hunter2"), "{e}");
        for name in ["\"\"", "\"a\\nb\"", &format!("\"{}\"", "n".repeat(65))] {
            let e = parse(&format!("[team]\nname = {name}\n"), &[]).unwrap_err();
            assert!(e.0.contains("team.name"), "{e}");
        }
        let e = parse("[team]\nredis_typo = \"x\"\n", &[]).unwrap_err();
        assert!(e.0.contains("redis_typo"), "{e}");
    }

    #[test]
    fn the_password_never_shows() {
        for (url, shown) in [
            (
                "postgres://u:hunter2@db:5432/x?sslmode=require",
                "postgres://u:***@db:5432/x?sslmode=require",
            ),
            (
                "postgres://u@db/x?password=hunter2&sslmode=disable",
                "postgres://u@db/x?password=***&sslmode=disable",
            ),
            ("postgres://db/x", "postgres://db/x"),
            (
                "postgresql://u:p%40ss:hunter2@db/x",
                "postgresql://u:***@db/x",
            ),
        ] {
            let u = DatabaseUrl::new(url.to_string());
            assert_eq!(u.to_string(), shown);
            assert!(!format!("{u:?}").contains("hunter2"));
        }
    }
}
