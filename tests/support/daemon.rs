//! The daemon under test, run in-process on 127.0.0.1:0 with its own data dir, or as the
//! real binary; what tests check in its data dir. Its HTTP client is `client` (re-exported).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chatcache::app::App;
use chatcache::config::{Config, Overrides};
use chatcache::store::StoreError;
use tokio::sync::oneshot;

pub use super::client::*;

pub struct Daemon {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

/// Builds the config a test daemon runs with: `extra` is TOML added to the file.
pub fn test_config(upstream: &str, data_dir: &Path, extra: &str) -> Config {
    let text = format!("listen = \"127.0.0.1:0\"\n{extra}");
    let ov = Overrides {
        upstream: Some(upstream.to_string()),
        data_dir: Some(data_dir.to_path_buf()),
        ..Default::default()
    };
    Config::from_parts(None, Some(&text), ov, |_| None).expect("test config is valid")
}

impl Daemon {
    pub async fn start(upstream: &str) -> Daemon {
        Daemon::start_with(upstream, "").await
    }

    pub async fn start_with(upstream: &str, extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::start_in(dir.path(), upstream, extra).await;
        d._dir = Some(dir);
        d
    }

    /// Starts on an existing data dir (a restart).
    pub async fn start_in(data_dir: &Path, upstream: &str, extra: &str) -> Daemon {
        Daemon::start_config(test_config(upstream, data_dir, extra)).await
    }

    pub async fn start_config(config: Config) -> Daemon {
        let data_dir = config.data_dir.clone();
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = open_when_free(config).await;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(chatcache::run(app.clone(), listener, async {
            let _ = rx.await;
        }));
        Daemon {
            addr,
            app,
            data_dir,
            stop: Some(tx),
            task: Some(task),
            _dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Tells the daemon to stop (as SIGTERM does) without waiting for it; `stop` then waits.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Graceful stop; returns the data dir's owner so a restart can reuse it.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("daemon stopped in time")
                .unwrap();
        }
        self._dir.take()
    }
}

/// Every line of every ledger file, parsed.
pub fn ledger_lines(data_dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(data_dir.join("ledger")) else {
        return out;
    };
    let mut files: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            if let Ok(v) = serde_json::from_str(line) {
                out.push(v);
            }
        }
    }
    out
}

/// Waits until `cond` holds, up to 5 s. Only for what the daemon finishes on its own
/// threads with nothing to wait on from outside (a ledger line its writer appends).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The real binary, with every setting from the environment removed.
pub fn binary() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_chatcache"));
    c.env_remove("RUST_LOG").env("HOME", std::env::temp_dir());
    for k in [
        "CHATCACHE_CONFIG",
        "CHATCACHE_LISTEN",
        "CHATCACHE_UPSTREAM",
        "CHATCACHE_DATA_DIR",
        "CHATCACHE_MODE",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
    ] {
        c.env_remove(k);
    }
    c
}

/// Runs `cmd` to its end; fails the test with its stderr unless it exits 0.
pub fn succeed(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A daemon process of the real binary; killed if the test lets go of it still running.
pub struct Proc {
    pub child: std::process::Child,
    pub addr: String,
}

impl Proc {
    /// Sends a signal (`kill -SIG pid`).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `chatcache serve` on 127.0.0.1:0 with its log (at `log_level`, plus the
/// daemon's own start-up line) copied to `log`.
pub fn spawn_binary(
    upstream: &str,
    data_dir: &Path,
    extra: &[&str],
    log_level: &str,
    log: &Path,
) -> Proc {
    use std::io::{BufRead, BufReader, Write};
    let mut child = binary()
        .env(
            "RUST_LOG",
            match log_level {
                // Quieter levels still need the start-up line that says where it listens.
                "warn" | "error" => format!("{log_level},chatcache=info"),
                louder => louder.to_string(),
            },
        )
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut file = std::fs::File::create(log).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            if let Some(i) = line.find("listening on http://") {
                let addr = line[i + "listening on http://".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let mut proc = Proc {
        child,
        addr: String::new(),
    };
    proc.addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("daemon did not start; log in {}", log.display()));
    proc
}

/// What must never be found anywhere: the key, every 8-character piece of it, and its
/// SHA-256 and blake3 digests (hex).
pub fn secret_needles(key: &str) -> Vec<Vec<u8>> {
    use sha2::Digest;
    let mut needles: Vec<Vec<u8>> = (0..=key.len().saturating_sub(8))
        .map(|i| key.as_bytes()[i..i + 8].to_vec())
        .collect();
    let sha = sha2::Sha256::digest(key.as_bytes());
    let sha_hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    needles.push(sha_hex.into_bytes());
    needles.push(sha.to_vec());
    needles.push(blake3::hash(key.as_bytes()).to_hex().as_bytes().to_vec());
    needles
}

pub fn assert_no_secret(haystack: &[u8], needles: &[Vec<u8>], what: &str) {
    for n in needles {
        assert!(
            !haystack.windows(n.len()).any(|w| w == &n[..]),
            "{what} holds a piece of the key ({})",
            String::from_utf8_lossy(n)
        );
    }
}

/// Checks every file below `dir`; returns the files checked.
pub fn assert_no_secret_in_files(dir: &Path, needles: &[Vec<u8>]) -> Vec<PathBuf> {
    let files = files_under(dir);
    for f in &files {
        assert_no_secret(
            &std::fs::read(f).unwrap(),
            needles,
            &f.display().to_string(),
        );
    }
    files
}

/// Every file below `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Opens the app; on a restart in this process the store's own I/O threads may still hold
/// its lock for a moment after the last daemon let go, and the store says nothing when they
/// let go, so a locked store is retried until a deadline.
async fn open_when_free(config: Config) -> Arc<App> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match App::open(config.clone()) {
            Ok(app) => return app,
            Err(e)
                if e.downcast_ref::<StoreError>()
                    .is_some_and(|e| matches!(e, StoreError::Locked(_)))
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("cannot open the daemon: {e:#}"),
        }
    }
}
