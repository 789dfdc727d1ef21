//! Shared integration-test support: its modules, where the test Redis and PostgreSQL are,
//! a port nothing listens on, and the open-files limit.
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod browser;
pub mod client;
pub mod credits;
pub mod daemon;
pub mod fake_upstream;
pub mod faults;
pub mod flight_team;
pub mod forward;
pub mod h2;
pub mod hold;
pub mod http1;
pub mod ledger_sums;
pub mod pg;
pub mod receiver;
pub mod redis;
pub mod respond;
pub mod skip;
pub mod streamed;
pub mod team;
pub mod tls;

pub use api::{
    expected_cost_fields, expected_costs, expected_costs_with_words, reply_text,
    reply_text_with_words, ExpectedCosts, MODELS_JSON,
};
pub use fake_upstream::{FakeUpstream, Recorded, DEFAULT_FRAME_DELAY_MS};
pub use faults::{Fault, FAULT_HEADER, WORDS_HEADER};
pub use tls::TestCa;

/// The Redis the tests use: `CHATCACHE_TEST_REDIS`, else the one `scripts/test` starts.
pub fn redis_url() -> String {
    std::env::var("CHATCACHE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The PostgreSQL server the tests use (user `postgres`, no password; each test makes its
/// own database): `CHATCACHE_TEST_POSTGRES`, else the one `scripts/test` starts.
pub fn postgres_url() -> String {
    std::env::var("CHATCACHE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A loopback port nothing listens on (bound, then let go): a connection to it is refused.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Raises this process's soft limit on open files to at least `need` (up to the hard
/// limit), for tests that hold many connections at once: each one is two descriptors here,
/// the client's and the daemon's, and a common default soft limit is 1024.
pub fn raise_fd_limit(need: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|soft| soft >= need) {
        return;
    }
    let hard = limit.maximum.unwrap_or(need);
    assert!(
        hard >= need,
        "this test needs {need} open files, and the hard limit is {hard} (raise it: ulimit -Hn)"
    );
    limit.current = Some(need);
    setrlimit(Resource::Nofile, limit).expect("raise the soft limit on open files");
}
