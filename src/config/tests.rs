//! Tests of configuration parsing, precedence and validation.

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
    let file =
        "listen = \"127.0.0.1:1\"\nmode = \"replay\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n";
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
    let text = include_str!("../../config/chatcache.toml");
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
    assert_eq!(c.spend, d.spend);
    assert_eq!(c.alerts, d.alerts);
}

#[test]
fn one_team_table_holds_the_ledgers_and_the_caches_keys() {
    let file = "[team]\npostgres = \"postgres://u:pw@127.0.0.1/db\"\nname = \"laptop-7\"\nredis = \"redis://127.0.0.1:6379/0\"\ntimeout = \"20ms\"\n";
    let c = Config::from_parts(None, Some(file), Overrides::default(), env(HOME)).unwrap();
    assert_eq!(c.team.name, "laptop-7");
    assert!(c.team.postgres.is_some());
    assert!(c.team_cache.redis.is_some());
    assert_eq!(c.team_cache.timeout, Duration::from_millis(20));
    let e = Config::from_parts(
        None,
        Some("[team]\nredis = \"redis://127.0.0.1\"\nreddis = 1\n"),
        Overrides::default(),
        env(HOME),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("reddis"), "{e}");
}

#[test]
fn max_entry_is_bounded_by_what_may_wait_for_the_writer() {
    let ok = "[cache]\nmax_entry = \"32 MiB\"\n";
    assert!(Config::from_parts(None, Some(ok), Overrides::default(), env(HOME)).is_ok());
    let too_big = "[cache]\nmax_entry = \"512 MiB\"\n";
    let e = Config::from_parts(None, Some(too_big), Overrides::default(), env(HOME))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cache.max_entry must be at most 32"), "{e}");
}
