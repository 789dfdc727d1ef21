//! Redis for tests: a key prefix of a test's own in the test Redis (deleted after), a relay
//! to it that can go silent or be the TLS end of a `rediss://` server, and `redis-server`
//! processes of a test's own (a 3-node cluster; one server to kill and start again); a
//! daemon's settings for a team cache on it, and waits on a daemon's team tier.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redis::Commands;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A key prefix of this test's own in the test Redis; its keys are deleted when it goes
/// (also when the test fails).
pub struct Prefix {
    pub name: String,
    redis: redis::Client,
}

impl Prefix {
    pub fn new() -> Prefix {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).unwrap();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let redis = redis::Client::open(super::redis_url()).unwrap();
        let mut conn = redis.get_connection().unwrap_or_else(|e| {
            panic!(
                "these tests need Redis at {} (set CHATCACHE_TEST_REDIS): {e}",
                super::redis_url()
            )
        });
        let _: () = redis::cmd("PING").query(&mut conn).unwrap();
        Prefix {
            name: format!("chatcache-test:{hex}:"),
            redis,
        }
    }

    pub fn conn(&self) -> redis::Connection {
        self.redis.get_connection().unwrap()
    }

    /// Every key under the prefix.
    pub fn keys(&self) -> Vec<String> {
        let mut conn = self.conn();
        let found: Result<Vec<String>, _> = conn
            .scan_match(format!("{}*", self.name))
            .unwrap()
            .collect();
        found.unwrap()
    }
}

impl Prefix {
    /// The shared entries under the prefix (not the leases of fetches in flight).
    pub fn entries(&self) -> Vec<String> {
        let mut conn = self.conn();
        let found: Result<Vec<String>, _> = conn
            .scan_match(format!("{}e:*", self.name))
            .unwrap()
            .collect();
        found.unwrap()
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let keys = self.keys();
        if !keys.is_empty() {
            let _: Result<(), _> = self.conn().del(keys);
        }
    }
}

/// A TCP relay to the test Redis that can be made to stall: while stalled, what clients
/// send is held, never passed on, so Redis seems alive but silent (a frozen server, a
/// dropped route). With `tls`, it is the TLS end (as a `rediss://` server is) of a plain
/// connection to Redis.
pub struct Relay {
    pub url: String,
    pub stall: watch::Sender<bool>,
}

impl Relay {
    pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Relay {
        let target = super::redis_url()
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("rediss://localhost:{port}/0"),
            None => format!("redis://127.0.0.1:{port}/0"),
        };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let (stall, stalled) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (from_server, to_server) = server.into_split();
                let stalled = stalled.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            // A client that does not trust the certificate ends here.
                            let Ok(tls) = a.accept(client).await else {
                                return;
                            };
                            let (from_client, to_client) = tokio::io::split(tls);
                            tokio::spawn(pipe(from_server, to_client, None));
                            pipe(from_client, to_server, Some(stalled)).await;
                        }
                        None => {
                            let (from_client, to_client) = client.into_split();
                            tokio::spawn(pipe(from_server, to_client, None));
                            pipe(from_client, to_server, Some(stalled)).await;
                        }
                    }
                });
            }
        });
        Relay { url, stall }
    }
}

async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    stalled: Option<watch::Receiver<bool>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.as_ref().is_some_and(|s| *s.borrow()) {
            // Held for good: this connection never hears back.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A 3-node Redis Cluster of `redis-server` processes on loopback, made for one test and
/// stopped (its files removed) when dropped.
pub struct Cluster {
    pub urls: Vec<String>,
    nodes: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        while ports.len() < 3 {
            // Each node also listens on its port + 10000 (the cluster bus).
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                ports.push(port);
            }
        }
        for port in &ports {
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(dir.path().join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(dir.path())
                .args(["--save", "", "--appendonly", "no"]);
            nodes.push(spawn_ready(&mut cmd, "a cluster node started"));
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let made = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(made.success(), "redis-cli --cluster create failed");
        let urls: Vec<String> = addrs.iter().map(|a| format!("redis://{a}")).collect();
        // The nodes agree on the slots a moment after `create` returns, and say so only
        // when asked: a bounded poll of each node's CLUSTER INFO.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        for url in &urls {
            let mut conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            loop {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the cluster never got ready"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Cluster {
            urls,
            nodes,
            _dir: dir,
        }
    }

    /// `config` with its `redis = "CLUSTER"` naming this cluster's nodes instead.
    pub fn in_config(&self, config: &str) -> String {
        let nodes: Vec<String> = self.urls.iter().map(|u| format!("\"{u}\"")).collect();
        config.replace(
            "redis = \"CLUSTER\"",
            &format!("redis = [{}]", nodes.join(", ")),
        )
    }

    /// How many keys each node holds.
    pub fn keys_per_node(&self) -> Vec<usize> {
        self.urls
            .iter()
            .map(|u| {
                let mut conn = redis::Client::open(u.as_str())
                    .unwrap()
                    .get_connection()
                    .unwrap();
                redis::cmd("DBSIZE").query(&mut conn).unwrap()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

/// Starts `cmd` (a `redis-server`) and returns once it says it accepts connections.
fn spawn_ready(cmd: &mut std::process::Command, what: &str) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-server is installed");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Read to the end (a full pipe would stall the server); say when it is ready.
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("Ready to accept connections") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(std::time::Duration::from_secs(10)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what}: redis-server never said it was ready");
    }
    child
}

/// A `redis-server` of one test's own on a free loopback port, which the test can kill
/// (SIGKILL: no goodbye to its clients) and start again, empty, on the same port. Stopped
/// when dropped.
pub struct Server {
    pub port: u16,
    pub url: String,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Server {
            port,
            url: format!("redis://127.0.0.1:{port}/0"),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        server.restart();
        server
    }

    /// Starts it (again) on its port; returns once it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the test's Redis is already running");
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "no"]);
        self.child = Some(spawn_ready(&mut cmd, "the test's Redis started"));
    }

    /// Kills it with SIGKILL and waits until it is gone (its port closed).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A team secret file in `dir`, as `openssl rand -hex 32` makes one (every byte `byte`).
pub fn team_secret(dir: &Path, byte: u8) -> PathBuf {
    let path = dir.join(format!("team-{byte}.key"));
    std::fs::write(&path, format!("{}\n", format!("{byte:02x}").repeat(32))).unwrap();
    path
}

/// A daemon's settings for a team cache on `redis` under `prefix`, answers kept an hour,
/// with the team secret in `secret` if any. More lines of the `[team]` table may follow.
pub fn team_cache_config(redis: &str, prefix: &str, secret: Option<&Path>) -> String {
    let secret = secret.map_or(String::new(), |p| {
        format!("secret_file = \"{}\"\n", p.display())
    });
    format!(
        "[cache]\nmax_age = \"1h\"\n[team]\nredis = \"{redis}\"\nredis_prefix = \"{prefix}\"\n{secret}"
    )
}

/// The daemon's team tier state, as it tells it.
pub fn watch_team(
    d: &super::daemon::Daemon,
) -> watch::Receiver<chatcache::cache::redis_tier::TeamState> {
    d.app
        .team_cache
        .as_ref()
        .expect("the team tier is on")
        .watch()
}

/// Waits for the daemon's team tier to reach `cond` (it says so itself: no polling).
pub async fn team_reaches(
    d: &super::daemon::Daemon,
    what: &str,
    cond: impl FnMut(&chatcache::cache::redis_tier::TeamState) -> bool,
) {
    let mut rx = watch_team(d);
    let reached = tokio::time::timeout(std::time::Duration::from_secs(10), rx.wait_for(cond))
        .await
        .map(|r| r.is_ok());
    assert!(
        matches!(reached, Ok(true)),
        "the team tier never got {what}: {:?}",
        *rx.borrow()
    );
}
