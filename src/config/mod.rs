//! Configuration: where the file is found, the env and flag overlay, and validation into
//! the `Config` the daemon runs with. Precedence is flag > env > file > default. Each
//! section with more than a few settings has a file of its own below.

mod alerts;
mod cache;
mod projects;
mod secret_url;
mod spend;
mod team;
mod team_cache;
mod upstream;

pub use alerts::AlertsConfig;
pub use cache::{CacheConfig, ReplayPace, Scope, PENDING_LIMIT};
pub use projects::{check_project_name, BudgetPeriod, ProjectConfig, DEFAULT_MAX_REQUEST_COST};
pub use secret_url::SecretUrl;
pub use spend::SpendConfig;
pub use team::{BudgetWhenDown, DatabaseUrl, TeamConfig, POSTGRES_ENV};
pub use team_cache::{RedisServers, RedisUrl, TeamCacheConfig, REDIS_ENV};
pub use upstream::UpstreamConfig;

use alerts::RawAlerts;
use cache::RawCache;
use projects::{RawProject, RawToken};
use spend::RawSpend;
use upstream::RawUpstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use thiserror::Error;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8484";
pub const DEFAULT_UPSTREAM: &str = "https://chatapi.ai-now.space";

#[derive(Debug, Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Daemon-wide cache mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Record,
    Replay,
    Refresh,
    Passthrough,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Record => "record",
            Mode::Replay => "replay",
            Mode::Refresh => "refresh",
            Mode::Passthrough => "passthrough",
        }
    }

    fn parse(s: &str) -> Result<Mode, ConfigError> {
        match s {
            "record" => Ok(Mode::Record),
            "replay" => Ok(Mode::Replay),
            "refresh" => Ok(Mode::Refresh),
            "passthrough" => Ok(Mode::Passthrough),
            other => Err(err(format!(
                "unknown mode {other:?}: expected record, replay, refresh or passthrough"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

// ---------------------------------------------------------------- raw file shape

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    mode: Option<String>,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    spend: RawSpend,
    #[serde(default)]
    alerts: RawAlerts,
    #[serde(default)]
    projects: BTreeMap<String, RawProject>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    #[serde(default)]
    team: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body: Option<ByteSize>,
    #[serde(default, with = "humantime_serde")]
    header_read_timeout: Option<Duration>,
    max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    token: Option<String>,
    show_prompts: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
}

// ---------------------------------------------------------------- validated config

#[derive(Debug, Clone)]
pub struct Config {
    /// The file the settings came from, if any.
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub mode: Mode,
    pub upstream: UpstreamConfig,
    pub limits: Limits,
    pub cache: CacheConfig,
    pub admin: AdminConfig,
    pub log_format: LogFormat,
    pub projects: BTreeMap<String, ProjectConfig>,
    /// Local client tokens: blake3 hex of the token → project.
    pub tokens: BTreeMap<String, Arc<str>>,
    pub spend: SpendConfig,
    pub alerts: AlertsConfig,
    pub team: TeamConfig,
    /// `[team]`'s shared answer cache (Redis).
    pub team_cache: TeamCacheConfig,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body: u64,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub token: Option<String>,
    pub show_prompts: bool,
}

/// Values that may come from flags or the environment, above the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub mode: Option<String>,
}

impl Overrides {
    /// The `CHATCACHE_*` environment variables, read through `get` so tests need no
    /// process-wide state.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Overrides {
        Overrides {
            config: get("CHATCACHE_CONFIG").map(PathBuf::from),
            listen: get("CHATCACHE_LISTEN"),
            upstream: get("CHATCACHE_UPSTREAM"),
            data_dir: get("CHATCACHE_DATA_DIR").map(PathBuf::from),
            mode: get("CHATCACHE_MODE"),
        }
    }

    /// `self` wins over `lower` field by field.
    pub fn over(self, lower: Overrides) -> Overrides {
        Overrides {
            config: self.config.or(lower.config),
            listen: self.listen.or(lower.listen),
            upstream: self.upstream.or(lower.upstream),
            data_dir: self.data_dir.or(lower.data_dir),
            mode: self.mode.or(lower.mode),
        }
    }
}

/// Where the settings file is looked for when none is named: the XDG config home, then /etc.
pub fn default_config_paths(get: impl Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(xdg) = get("XDG_CONFIG_HOME").filter(|s| !s.is_empty()) {
        paths.push(PathBuf::from(xdg).join("chatcache/chatcache.toml"));
    } else if let Some(home) = get("HOME").filter(|s| !s.is_empty()) {
        paths.push(PathBuf::from(home).join(".config/chatcache/chatcache.toml"));
    }
    paths.push(PathBuf::from("/etc/chatcache/chatcache.toml"));
    paths
}

fn default_data_dir(get: &impl Fn(&str) -> Option<String>) -> Result<PathBuf, ConfigError> {
    if let Some(xdg) = get("XDG_DATA_HOME").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(xdg).join("chatcache"));
    }
    match get("HOME").filter(|s| !s.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/chatcache")),
        None => Err(err(
            "no data directory: set data_dir, --data-dir, CHATCACHE_DATA_DIR or HOME",
        )),
    }
}

impl Config {
    /// Loads the configuration: the file named by the overrides (which must exist), or
    /// the first default path that exists, or none; then the overrides on top.
    pub fn load(
        overrides: Overrides,
        get_env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (source, text) = match &overrides.config {
            Some(path) => (Some(path.clone()), Some(read_file(path)?)),
            None => match default_config_paths(&get_env)
                .into_iter()
                .find(|p| p.exists())
            {
                Some(path) => {
                    let text = read_file(&path)?;
                    (Some(path), Some(text))
                }
                None => (None, None),
            },
        };
        Config::from_parts(source, text.as_deref(), overrides, get_env)
    }

    /// Parses `text` (the file's contents, if any) and applies `overrides`.
    pub fn from_parts(
        source: Option<PathBuf>,
        text: Option<&str>,
        overrides: Overrides,
        get_env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let where_ = source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "configuration".to_string());
        let raw: RawConfig = match text {
            Some(t) => toml::from_str(t).map_err(|e| err(format!("{where_}: {}", e.message())))?,
            None => RawConfig::default(),
        };
        validate(raw, source, overrides, &get_env).map_err(|e| err(format!("{where_}: {}", e.0)))
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read config file {}: {e}", path.display())))
}

fn validate(
    raw: RawConfig,
    source: Option<PathBuf>,
    ov: Overrides,
    get_env: &impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let listen_text = ov
        .listen
        .or(raw.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        err(format!(
            "listen: {listen_text:?} is not an address like 127.0.0.1:8484"
        ))
    })?;
    let data_dir = match ov.data_dir.or(raw.data_dir) {
        Some(d) => d,
        None => default_data_dir(get_env)?,
    };
    let mode = match ov.mode.or(raw.mode) {
        Some(m) => Mode::parse(&m)?,
        None => Mode::Record,
    };
    let upstream = upstream::validate(raw.upstream, ov.upstream)?;
    let l = raw.limits;
    let limits = Limits {
        max_body: l.max_body.map(|b| b.as_u64()).unwrap_or(16 << 20),
        header_read_timeout: positive("limits.header_read_timeout", l.header_read_timeout, 10)?,
        max_connections: l.max_connections.unwrap_or(4096),
        shutdown_grace: positive("limits.shutdown_grace", l.shutdown_grace, 30)?,
    };
    if limits.max_body == 0 {
        return Err(err("limits.max_body must be more than 0"));
    }
    if limits.max_connections == 0 {
        return Err(err("limits.max_connections must be more than 0"));
    }
    let cache = cache::validate(raw.cache)?;
    let admin = AdminConfig {
        token: raw.admin.token.filter(|t| !t.is_empty()),
        show_prompts: raw.admin.show_prompts.unwrap_or(false),
    };
    let (projects, tokens) = projects::validate(raw.projects, raw.tokens)?;
    let (ledger, shared) = team::split(raw.team)?;
    let team = team::validate(ledger, get_env, team::hostname)?;
    let team_cache = team_cache::validate(shared, get_env)?;
    Ok(Config {
        source,
        listen,
        data_dir,
        mode,
        upstream,
        limits,
        cache,
        admin,
        log_format: raw.log.format.unwrap_or(LogFormat::Text),
        projects,
        tokens,
        spend: spend::validate(raw.spend)?,
        alerts: alerts::validate(raw.alerts)?,
        team,
        team_cache,
    })
}

fn positive(
    name: &str,
    value: Option<Duration>,
    default_secs: u64,
) -> Result<Duration, ConfigError> {
    let d = value.unwrap_or(Duration::from_secs(default_secs));
    if d.is_zero() {
        return Err(err(format!("{name} must be longer than 0s")));
    }
    Ok(d)
}

#[cfg(test)]
mod tests;

/// A config file's text with these environment variables (and a `HOME`), for the
/// sections' tests.
#[cfg(test)]
fn parse_for_test(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("HOME".into(), "/home/test".into()));
    let get = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    Config::from_parts(None, Some(text), Overrides::default(), get)
}
