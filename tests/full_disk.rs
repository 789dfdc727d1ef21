//! A full disk under the data dir: room for ledger lines is secured before money is spent,
//! so no answer a client received is missing from the ledger; hit lines wait for room
//! (bounded) and arrive when space returns.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use futures_util::future::join_all;
use http::StatusCode;
use support::daemon::*;
use support::FakeUpstream;

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the remaining space; returns the filler file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn post_as(d: &Daemon, project: &str, body: &str) -> Resp {
    let h = [("authorization", KEY), ("x-chatcache-project", project)];
    post_with(&d.url("/chat/completions"), body, &h).await
}

fn lines_of(data: &Path, outcome: &str) -> Vec<serde_json::Value> {
    ledger_lines(data)
        .into_iter()
        .filter(|l| l["outcome"] == outcome)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_before_spending_and_loses_no_line() {
    let disk = match SmallDisk::mount("16m") {
        Ok(d) => d,
        Err(e) => {
            support::skip::cannot_run(
                "full_disk_refuses_before_spending_and_loses_no_line",
                &format!("cannot mount a small tmpfs (needs root): {e}"),
            );
            return;
        }
    };
    let fake = FakeUpstream::start().await;
    let data = disk.path().join("data");
    let d = Daemon::start_in(&data, &fake.url(), "").await;
    let cached = chat("cached while there was room");
    let first = post_as(&d, "hits", &cached).await;
    assert_eq!(first.status, StatusCode::OK);
    // The answer must be stored before the disk fills: ask until it is a hit (each ask is
    // counted below).
    let mut hits_ok = 0usize;
    for _ in 0..50 {
        let r = post_as(&d, "hits", &cached).await;
        assert_eq!(r.status, StatusCode::OK);
        if r.header("x-chatcache") == Some("hit") {
            hits_ok += 1;
            break;
        }
    }
    assert_eq!(hits_ok, 1, "the answer was never served from the cache");

    let filler = disk.fill();

    // Misses go upstream only while room for their line is held; then every one is refused.
    let mut answered: Vec<String> = Vec::new();
    let (mut refused, mut refused_in_a_row) = (0usize, 0usize);
    for i in 0.. {
        assert!(i < 5000, "misses were never refused on a full disk");
        let project = format!("full-{i}");
        let r = post_as(&d, &project, &chat(&format!("no room {i}"))).await;
        match r.status {
            StatusCode::OK => {
                answered.push(project);
                refused_in_a_row = 0;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.json()["error"]["code"], "ledger_unavailable");
                refused += 1;
                refused_in_a_row += 1;
            }
            other => panic!("{other}: {}", r.text()),
        }
        if refused_in_a_row == 20 {
            break;
        }
    }
    let upstream_calls = fake.count("/chat/completions");
    let r = post_as(&d, "late", &chat("still no room")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    refused += 1;
    assert_eq!(
        fake.count("/chat/completions"),
        upstream_calls,
        "fail closed: upstream untouched"
    );

    // Every answer a client received has its line, on disk already.
    let have: BTreeSet<String> = lines_of(&data, "miss")
        .iter()
        .filter_map(|l| l["project"].as_str().map(str::to_string))
        .collect();
    let unrecorded = answered.iter().filter(|p| !have.contains(*p)).count();
    eprintln!(
        "full disk: {} misses answered 200, {refused} refused, {unrecorded} answered without a ledger line",
        answered.len()
    );
    assert_eq!(unrecorded, 0, "answers were served without a ledger line");

    // Hits are served while their lines can wait; once too many wait, they are refused.
    let mut hits_refused = 0usize;
    while hits_refused == 0 {
        assert!(hits_ok < 20_000, "hits were never refused");
        let round = join_all((0..32).map(|_| post_as(&d, "hits", &cached))).await;
        for r in round {
            match r.status {
                StatusCode::OK => {
                    assert_eq!(r.header("x-chatcache"), Some("hit"));
                    hits_ok += 1;
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(r.json()["error"]["code"], "ledger_unavailable");
                    hits_refused += 1;
                }
                other => panic!("{other}: {}", r.text()),
            }
        }
    }
    let health = get(&d.url("/_chatcache/health")).await.json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["ledger"]["room"]["short"], true, "{health}");
    let waiting = metric(&d, "chatcache_ledger_waiting_lines").await;
    assert!(waiting > 0.0, "no lines shown waiting");
    assert_eq!(metric(&d, "chatcache_ledger_room_short").await, 1.0);
    eprintln!("full disk: {hits_ok} hits served, {hits_refused} refused, {waiting} lines waiting");

    // Space returns: the waiting lines arrive on their own, and misses go upstream again.
    std::fs::remove_file(filler).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Polled: the daemon tries for room again on a timer, with nothing to wait on here.
    loop {
        let h = get(&d.url("/_chatcache/health")).await.json();
        if h["status"] == "ok" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        lines_of(&data, "hit").len(),
        hits_ok,
        "every hit served has its line"
    );
    let r = post_as(&d, "after", &chat("room again")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    d.stop().await;
    let lines = ledger_lines(&data);
    assert!(lines.iter().any(|l| l["project"] == "after"));
    assert_eq!(
        lines.len(),
        1 + answered.len() + hits_ok + 1,
        "a line too many or too few"
    );
}
