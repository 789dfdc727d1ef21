//! Redis for tests: a key prefix of a test's own in the test Redis (deleted after), and a
//! relay to it that can go silent or be the TLS end of a `rediss://` server.
#![allow(dead_code)]

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
