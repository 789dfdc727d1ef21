//! `[team]` keys of the shared answer cache: the Redis server, or the nodes of a Redis
//! Cluster (`redis`, or env `CHATCACHE_REDIS_URL`), the team secret that keys credential fingerprints
//! (`secret_file`), the size cap per shared entry (`max_entry`), how long a request may wait
//! for Redis (`timeout`), the prefix of the keys it writes (`redis_prefix`) and the CA that
//! vouches for a `rediss://` server (`redis_ca_file`; else the system's roots), and how long
//! a daemon's lease on fetching an answer for the team lasts unrenewed (`lease`).

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{err, ConfigError};

/// The environment variable that names the Redis server, over the file's `team.redis`.
pub const REDIS_ENV: &str = "CHATCACHE_REDIS_URL";
/// `team.max_entry` unless set: chat answers are far smaller; Redis values should stay small.
pub const DEFAULT_TEAM_MAX_ENTRY: u64 = 1 << 20;
/// `team.timeout` unless set: a lookup in Redis on the local network takes well under this.
pub const DEFAULT_TEAM_TIMEOUT: Duration = Duration::from_millis(50);
/// `team.lease` unless set: how long a daemon's claim to fetch an answer for the team
/// outlives the daemon if it dies (a live one renews it).
pub const DEFAULT_TEAM_LEASE: Duration = Duration::from_secs(10);
pub const DEFAULT_REDIS_PREFIX: &str = "chatcache:";
const MAX_PREFIX: usize = 64;

/// The keys of `[team]` that belong to the shared cache (`RawTeamCache`'s fields).
pub(super) const KEYS: &[&str] = &[
    "redis",
    "secret_file",
    "max_entry",
    "timeout",
    "redis_prefix",
    "redis_ca_file",
    "lease",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTeamCache {
    pub(super) redis: Option<RawRedis>,
    pub(super) secret_file: Option<PathBuf>,
    pub(super) max_entry: Option<ByteSize>,
    #[serde(default, with = "humantime_serde")]
    pub(super) timeout: Option<Duration>,
    pub(super) redis_prefix: Option<String>,
    pub(super) redis_ca_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub(super) lease: Option<Duration>,
}

/// `team.redis`: one server's URL, or a list of a cluster's nodes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawRedis {
    One(String),
    Cluster(Vec<String>),
}

/// Where the shared cache lives: one server, or a Redis Cluster known by some of its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisServers {
    pub urls: Vec<RedisUrl>,
    pub cluster: bool,
}

impl RedisServers {
    /// Whether the connections are TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        self.urls.iter().all(is_tls)
    }

    /// The URLs with their passwords masked, for logs.
    pub fn redacted(&self) -> String {
        let shown: Vec<String> = self.urls.iter().map(RedisUrl::redacted).collect();
        shown.join(", ")
    }
}

#[derive(Debug, Clone)]
pub struct TeamCacheConfig {
    /// The shared cache's server(s); none: the cache is this daemon's alone.
    pub redis: Option<RedisServers>,
    /// The team's shared secret: credential fingerprints are keyed with it instead of the
    /// daemon's own, so that every daemon of the team partitions the cache alike.
    pub secret_file: Option<PathBuf>,
    /// The largest entry (as stored) sent to Redis.
    pub max_entry: u64,
    /// The longest a request waits for Redis before going on without it.
    pub timeout: Duration,
    /// Every key the daemon writes in Redis starts with this.
    pub redis_prefix: String,
    /// PEM certificates of the CAs trusted for `rediss://` instead of the system's roots.
    pub redis_ca_file: Option<PathBuf>,
    /// How long the lease of a daemon fetching an answer for the team lasts unrenewed.
    pub lease: Duration,
}

impl Default for TeamCacheConfig {
    fn default() -> TeamCacheConfig {
        TeamCacheConfig {
            redis: None,
            secret_file: None,
            max_entry: DEFAULT_TEAM_MAX_ENTRY,
            timeout: DEFAULT_TEAM_TIMEOUT,
            redis_prefix: DEFAULT_REDIS_PREFIX.to_string(),
            redis_ca_file: None,
            lease: DEFAULT_TEAM_LEASE,
        }
    }
}

/// A Redis URL (its password masked wherever it is shown).
pub type RedisUrl = super::SecretUrl;

/// Whether a Redis URL connects with TLS (`rediss://`).
fn is_tls(url: &RedisUrl) -> bool {
    url.scheme() == "rediss"
}

/// Validates the shared cache's keys of `[team]`; `get_env` gives `CHATCACHE_REDIS_URL`,
/// which wins over the file.
pub(super) fn validate(
    t: RawTeamCache,
    get_env: &impl Fn(&str) -> Option<String>,
) -> Result<TeamCacheConfig, ConfigError> {
    // In the environment, a list of cluster nodes is written with commas between them.
    let env = get_env(REDIS_ENV).filter(|v| !v.is_empty()).map(|v| {
        if v.contains(',') {
            RawRedis::Cluster(v.split(',').map(|u| u.trim().to_string()).collect())
        } else {
            RawRedis::One(v)
        }
    });
    let redis = match env.or(t.redis) {
        None => None,
        Some(RawRedis::One(url)) => Some(RedisServers {
            urls: vec![check_redis_url(url)?],
            cluster: false,
        }),
        Some(RawRedis::Cluster(urls)) => {
            let urls = urls
                .into_iter()
                .map(check_redis_url)
                .collect::<Result<Vec<_>, _>>()?;
            if urls.is_empty() {
                return Err(err("team.redis: a cluster needs at least one node"));
            }
            if urls.iter().any(is_tls) != urls.iter().all(is_tls) {
                return Err(err(
                    "team.redis: a cluster's nodes are all redis:// or all rediss://",
                ));
            }
            Some(RedisServers {
                urls,
                cluster: true,
            })
        }
    };
    let max_entry = t.max_entry.map_or(DEFAULT_TEAM_MAX_ENTRY, |b| b.as_u64());
    if max_entry == 0 {
        return Err(err("team.max_entry must be more than 0"));
    }
    let timeout = t.timeout.unwrap_or(DEFAULT_TEAM_TIMEOUT);
    if timeout.is_zero() {
        return Err(err("team.timeout must be longer than 0s"));
    }
    let lease = t.lease.unwrap_or(DEFAULT_TEAM_LEASE);
    if lease < Duration::from_millis(3) {
        return Err(err("team.lease must be at least 3ms"));
    }
    let redis_prefix = t
        .redis_prefix
        .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_string());
    if redis_prefix.is_empty()
        || redis_prefix.len() > MAX_PREFIX
        || redis_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '?' | '[' | ']'))
    {
        return Err(err(format!(
            "team.redis_prefix: {redis_prefix:?} must be 1 to {MAX_PREFIX} characters, without spaces, control characters or glob characters"
        )));
    }
    if t.secret_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err(err("team.secret_file must name a file"));
    }
    if t.redis_ca_file.is_some() && !redis.as_ref().is_some_and(RedisServers::tls) {
        return Err(err(
            "team.redis_ca_file is for a rediss:// server; team.redis is not one",
        ));
    }
    Ok(TeamCacheConfig {
        redis,
        secret_file: t.secret_file,
        max_entry,
        timeout,
        redis_prefix,
        redis_ca_file: t.redis_ca_file,
        lease,
    })
}

fn check_redis_url(url: String) -> Result<RedisUrl, ConfigError> {
    let url = RedisUrl::new(url);
    let text = url.expose();
    let rest = text
        .strip_prefix("redis://")
        .or_else(|| text.strip_prefix("rediss://"));
    if rest.is_none_or(str::is_empty) {
        // The redacted form: a URL in an error message may end up in a log.
        return Err(err(format!(
            "team.redis: {:?} must be a URL like redis://host:6379/0 or rediss://host:6380/0",
            url.redacted()
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<TeamCacheConfig, ConfigError> {
        super::super::parse_for_test(text, env).map(|c| c.team_cache)
    }

    #[test]
    fn no_team_section_means_no_shared_cache_and_the_defaults() {
        let t = parse("", &[]).unwrap();
        assert!(t.redis.is_none());
        assert!(t.secret_file.is_none());
        assert_eq!(t.max_entry, 1 << 20);
        assert_eq!(t.timeout, Duration::from_millis(50));
        assert_eq!(t.lease, Duration::from_secs(10));
        assert_eq!(t.redis_prefix, "chatcache:");
    }

    #[test]
    fn the_file_sets_every_key() {
        let t = parse(
            "[team]\nredis = \"rediss://cache.lan:6380/2\"\nsecret_file = \"/etc/chatcache/team.key\"\nmax_entry = \"256 KiB\"\ntimeout = \"20ms\"\nredis_prefix = \"ci:\"\nlease = \"3s\"\n",
            &[],
        )
        .unwrap();
        let servers = t.redis.unwrap();
        assert!(!servers.cluster);
        assert_eq!(servers.urls[0].expose(), "rediss://cache.lan:6380/2");
        assert!(servers.tls());
        assert_eq!(
            t.secret_file,
            Some(PathBuf::from("/etc/chatcache/team.key"))
        );
        assert_eq!(t.max_entry, 256 * 1024);
        assert_eq!(t.timeout, Duration::from_millis(20));
        assert_eq!(t.redis_prefix, "ci:");
        assert_eq!(t.lease, Duration::from_secs(3));
        let t = parse(
            "[team]\nredis = \"rediss://cache.lan/0\"\nredis_ca_file = \"/etc/ca.pem\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(t.redis_ca_file, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let t = parse(
            "[team]\nredis = \"redis://file:6379\"\n",
            &[(REDIS_ENV, "redis://env:6379/1")],
        )
        .unwrap();
        assert_eq!(t.redis.unwrap().urls[0].expose(), "redis://env:6379/1");
        let t = parse("", &[(REDIS_ENV, "redis://env")]).unwrap();
        assert!(!t.redis.unwrap().tls());
        let t = parse("[team]\nredis = \"redis://file\"\n", &[(REDIS_ENV, "")]).unwrap();
        assert_eq!(t.redis.unwrap().urls[0].expose(), "redis://file");
        let t = parse("", &[(REDIS_ENV, "redis://a:7000, redis://b:7001")]).unwrap();
        let servers = t.redis.unwrap();
        assert!(servers.cluster);
        assert_eq!(servers.redacted(), "redis://a:7000, redis://b:7001");
    }

    #[test]
    fn a_list_names_the_nodes_of_a_cluster() {
        let t = parse(
            "[team]\nredis = [\"redis://:hunter2@n1:7000\", \"redis://:hunter2@n2:7001\"]\n",
            &[],
        )
        .unwrap();
        let servers = t.redis.unwrap();
        assert!(servers.cluster);
        assert_eq!(servers.urls.len(), 2);
        assert_eq!(
            servers.redacted(),
            "redis://:***@n1:7000, redis://:***@n2:7001"
        );
        let one = parse("[team]\nredis = [\"redis://cfg:7000\"]\n", &[]).unwrap();
        assert!(
            one.redis.unwrap().cluster,
            "a list of one is still a cluster"
        );
        for bad in [
            "redis = []",
            "redis = [\"redis://a:1\", \"rediss://b:2\"]",
            "redis = [\"http://a:1\"]",
        ] {
            assert!(parse(&format!("[team]\n{bad}\n"), &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_are_refused_without_showing_the_password() {
        let e = parse("[team]\nredis = \"http://u:hunter2@cache/0\"\n", &[]).unwrap_err();
        assert!(e.0.contains("team.redis"), "{e}");
        assert!(!e.0.contains("hunter2"), "{e}");
        assert!(parse("[team]\nredis = \"redis://\"\n", &[]).is_err());
        for bad in [
            "max_entry = 0",
            "timeout = \"0s\"",
            "lease = \"1ms\"",
            "redis_prefix = \"\"",
            "redis_prefix = \"a b\"",
            "redis_prefix = \"a*\"",
            "secret_file = \"\"",
            "redis = \"redis://plain\"\nredis_ca_file = \"/ca.pem\"",
            "redis_typo = \"x\"",
        ] {
            let e = parse(&format!("[team]\n{bad}\n"), &[]);
            assert!(e.is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn the_password_never_shows() {
        for (url, shown) in [
            ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
            (
                "rediss://app:hunter2@cache:6380/1",
                "rediss://app:***@cache:6380/1",
            ),
            ("redis://app@cache/0", "redis://app@cache/0"),
            ("redis://cache:6379", "redis://cache:6379"),
            ("redis://u:p@ss:hunter2@cache/0", "redis://u:***@cache/0"),
            ("redis://:hunt/er2@cache/0", "redis://:***@cache/0"),
        ] {
            let u = RedisUrl::new(url.to_string());
            assert_eq!(u.to_string(), shown);
            assert!(!format!("{u:?}").contains("hunter2"));
        }
    }
}
