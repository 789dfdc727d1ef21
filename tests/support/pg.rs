//! A database of its own for each test on the test PostgreSQL server (`postgres_url`),
//! dropped afterwards, and what tests read from the team ledger in it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::NoTls;

pub struct TestDb {
    pub name: String,
    server: tokio_postgres::Config,
}

/// The server's settings (the database part of the URL is replaced per test).
fn server() -> tokio_postgres::Config {
    super::postgres_url()
        .parse()
        .expect("CHATCACHE_TEST_POSTGRES is a PostgreSQL URL")
}

impl TestDb {
    /// Creates a database with a random name.
    pub async fn create() -> TestDb {
        let server = server();
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let name = format!(
            "chatcache_test_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let admin = connect(&server, "postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDb { name, server }
    }

    /// The server's address (the first host and port of the URL).
    pub fn addr(&self) -> SocketAddr {
        let host = match self.server.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let port = self.server.get_ports().first().copied().unwrap_or(5432);
        let ip: std::net::IpAddr = if host == "localhost" {
            [127, 0, 0, 1].into()
        } else {
            host.parse()
                .expect("the test server's host is an IP address")
        };
        SocketAddr::new(ip, port)
    }

    /// The URL a daemon uses to reach this database at `addr` (the server's own address or
    /// a forwarder's). TLS is off: the test server is on loopback and its certificate,
    /// when it has one, is self-signed.
    pub fn url_at(&self, addr: SocketAddr, password: Option<&str>) -> String {
        let user = self.server.get_user().unwrap_or("postgres");
        let password = password
            .map(str::to_string)
            .or_else(|| {
                self.server
                    .get_password()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
            })
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        format!(
            "postgres://{user}{password}@{addr}/{}?sslmode=disable",
            self.name
        )
    }

    pub fn url(&self) -> String {
        self.url_at(self.addr(), None)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.server, &self.name).await
    }

    /// Rows in the team ledger (0 before the first daemon has made the table).
    pub async fn count(&self) -> i64 {
        let c = self.client().await;
        match c
            .query_one("SELECT count(*) FROM chatcache_ledger", &[])
            .await
        {
            Ok(row) => row.get(0),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
            Err(e) => panic!("counting the team ledger: {e}"),
        }
    }

    /// Waits until the team ledger holds `want` rows, up to `within`. A bounded poll: the
    /// rows arrive from another process's shipper, and PostgreSQL tells nobody.
    pub async fn wait_count(&self, want: i64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.count().await;
            if n == want {
                return;
            }
            assert!(n < want, "the team ledger holds {n} rows, more than {want}");
            if tokio::time::Instant::now() > deadline {
                panic!("the team ledger holds {n} rows, not {want}, after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (daemon, id) of every row, sorted.
    pub async fn ids(&self) -> Vec<(String, String)> {
        let c = self.client().await;
        let rows = c
            .query(
                "SELECT daemon, id FROM chatcache_ledger ORDER BY daemon, id",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}

impl TestDb {
    /// Drops the database now, closing the connections daemons hold to it: PostgreSQL
    /// gone from under them, as far as they can tell.
    pub async fn drop_now(&self) {
        let admin = connect(&self.server, "postgres").await;
        admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

async fn connect(server: &tokio_postgres::Config, db: &str) -> tokio_postgres::Client {
    let mut config = server.clone();
    config.dbname(db);
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, conn) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL server: {e}"));
    tokio::spawn(conn);
    client
}

impl Drop for TestDb {
    /// Drops the database, even when the test failed; on a thread of its own, as Drop
    /// cannot wait on the test's runtime.
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = connect(&server, "postgres").await;
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        });
        let _ = done.join();
    }
}
