//! Tests that need what this machine may lack (root, network namespaces): under `CI=true`
//! they fail, saying what is missing; elsewhere they are noted as skipped, and the test
//! command (`scripts/test`) lists them at the end.
#![allow(dead_code)]

use std::io::Write;

/// Where skipped tests are noted, one line each: `<test>: <why>`.
pub fn skipped_list() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt")
}

/// Call where `test` cannot run because of `why`, then return from the test. Panics when
/// `CI` is `true`: there, nothing may pass by not running.
pub fn cannot_run(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test} cannot run here and CI=true: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(skipped_list())
    {
        let _ = writeln!(f, "{test}: {why}");
    }
}
