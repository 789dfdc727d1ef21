//! Configuration: the raw TOML shape, the env and flag overlay, and validation into the
//! `Config` the daemon runs with. Precedence is flag > env > file > default.

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

/// Daemon-wide cache mode (design.md, "Modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
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

/// Who shares cache entries (`cache.scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Key,
    Project,
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayPace {
    Instant,
    Recorded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    Month,
    Total,
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
    projects: BTreeMap<String, RawProject>,
    #[serde(default)]
    tokens: Vec<RawToken>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
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
struct RawCache {
    scope: Option<Scope>,
    ignore_fields: Option<Vec<String>>,
    max_bytes: Option<ByteSize>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    models_ttl: Option<Duration>,
    replay_pace: Option<ReplayPace>,
    memory: Option<ByteSize>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    budget: Option<f64>,
    budget_period: Option<BudgetPeriod>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    project: String,
    hash: String,
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

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body: u64,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub scope: Scope,
    pub ignore_fields: Vec<String>,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub models_ttl: Duration,
    pub replay_pace: ReplayPace,
    pub memory: u64,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub token: Option<String>,
    pub show_prompts: bool,
}

#[derive(Debug, Clone)]
pub struct ProjectConfig {
    pub budget: Option<f64>,
    pub budget_period: BudgetPeriod,
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
    let u = raw.upstream;
    let url_text = ov
        .upstream
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
    let c = raw.cache;
    let cache = CacheConfig {
        scope: c.scope.unwrap_or(Scope::Key),
        ignore_fields: c.ignore_fields.unwrap_or_else(|| vec!["user".to_string()]),
        max_bytes: c.max_bytes.map(|b| b.as_u64()).unwrap_or(1 << 30),
        max_age: positive("cache.max_age", c.max_age, 30 * 24 * 3600)?,
        models_ttl: positive("cache.models_ttl", c.models_ttl, 300)?,
        replay_pace: c.replay_pace.unwrap_or(ReplayPace::Instant),
        memory: c.memory.map(|b| b.as_u64()).unwrap_or(8 << 20),
    };
    for field in &cache.ignore_fields {
        if matches!(field.as_str(), "model" | "messages" | "stream") {
            return Err(err(format!(
                "cache.ignore_fields: {field:?} decides the answer and cannot be ignored"
            )));
        }
    }
    let admin = AdminConfig {
        token: raw.admin.token.filter(|t| !t.is_empty()),
        show_prompts: raw.admin.show_prompts.unwrap_or(false),
    };
    let mut projects = BTreeMap::new();
    for (name, p) in raw.projects {
        check_project_name(&name)?;
        if let Some(b) = p.budget {
            if !(b.is_finite() && b >= 0.0) {
                return Err(err(format!("projects.{name}.budget must be a number >= 0")));
            }
        }
        projects.insert(
            name,
            ProjectConfig {
                budget: p.budget,
                budget_period: p.budget_period.unwrap_or(BudgetPeriod::Month),
            },
        );
    }
    let mut tokens = BTreeMap::new();
    for t in raw.tokens {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    const HOME: &[(&str, &str)] = &[("HOME", "/home/u")];

    #[test]
    fn defaults_need_no_file() {
        let c = Config::from_parts(None, None, Overrides::default(), env(HOME)).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.upstream.url.to_string(), "https://chatapi.ai-now.space/");
        assert_eq!(c.data_dir, PathBuf::from("/home/u/.local/share/chatcache"));
        assert_eq!(c.mode, Mode::Record);
        assert_eq!(c.limits.max_body, 16 << 20);
        assert_eq!(c.cache.ignore_fields, vec!["user".to_string()]);
        assert_eq!(c.cache.scope, Scope::Key);
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let file = "listen = \"127.0.0.1:1\"\nmode = \"replay\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n";
        let env_vars: &'static [(&str, &str)] = &[
            ("HOME", "/h"),
            ("CHATCACHE_LISTEN", "127.0.0.1:2"),
            ("CHATCACHE_MODE", "refresh"),
        ];
        let flags = Overrides {
            listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let merged = flags.over(Overrides::from_env(env(env_vars)));
        let c = Config::from_parts(None, Some(file), merged, env(env_vars)).unwrap();
        assert_eq!(c.listen.port(), 3, "flag wins");
        assert_eq!(c.mode, Mode::Refresh, "env beats file");
        assert_eq!(
            c.upstream.url.to_string(),
            "http://127.0.0.1:9/",
            "file beats default"
        );
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let e = Config::from_parts(
            Some(PathBuf::from("/etc/x.toml")),
            Some("[cache]\nmax_byts = 3\n"),
            Overrides::default(),
            env(HOME),
        )
        .unwrap_err();
        assert!(e.0.contains("max_byts"), "{e}");
        assert!(e.0.contains("/etc/x.toml"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for bad in [
            "mode = \"offline\"",
            "listen = \"localhost\"",
            "[upstream]\nurl = \"ftp://x\"",
            "[limits]\nmax_body = 0",
            "[cache]\nignore_fields = [\"messages\"]",
            "[projects.\"a b\"]\nbudget = 1.0",
            "[projects.\"..\"]\nbudget = 1.0",
            "[projects.a]\nbudget = -1.0",
            "[[tokens]]\nproject = \"a\"\nhash = \"nothex\"",
            "[upstream]\nconnect_timeout = \"0s\"",
        ] {
            assert!(
                Config::from_parts(None, Some(bad), Overrides::default(), env(HOME)).is_err(),
                "accepted: {bad}"
            );
        }
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../config/chatcache.toml");
        let c = Config::from_parts(None, Some(text), Overrides::default(), env(HOME)).unwrap();
        let d = Config::from_parts(None, None, Overrides::default(), env(HOME)).unwrap();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.upstream.url, d.upstream.url);
        assert_eq!(c.limits.max_body, d.limits.max_body);
        assert_eq!(c.limits.header_read_timeout, d.limits.header_read_timeout);
        assert_eq!(c.limits.max_connections, d.limits.max_connections);
        assert_eq!(c.limits.shutdown_grace, d.limits.shutdown_grace);
        assert_eq!(c.upstream.connect_timeout, d.upstream.connect_timeout);
        assert_eq!(c.upstream.first_byte_timeout, d.upstream.first_byte_timeout);
        assert_eq!(c.upstream.idle_timeout, d.upstream.idle_timeout);
        assert_eq!(c.cache.max_bytes, d.cache.max_bytes);
        assert_eq!(c.cache.max_age, d.cache.max_age);
        assert_eq!(c.cache.memory, d.cache.memory);
        assert_eq!(c.cache.ignore_fields, d.cache.ignore_fields);
    }
}
