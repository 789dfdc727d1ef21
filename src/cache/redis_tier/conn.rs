//! The connection to the team's Redis: to one server through a connection manager (which
//! reconnects by itself after a reset), or to a Redis Cluster through a cluster connection
//! (which follows the cluster's slots and nodes). The tier's probe makes it, and drops it
//! when Redis stops answering on it. A reader of a live stream gets a connection of its own
//! (`connect_own`): a blocking XREAD holds its connection until it returns, and would stall
//! every command queued behind it on the shared one.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisResult, Value};

use crate::config::{RedisServers, TeamCacheConfig};

/// What connections are made from.
pub(super) enum Client {
    One(redis::Client, ConnectionManagerConfig),
    Cluster(ClusterClient),
}

#[derive(Clone)]
pub(super) enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
    /// To one server, not shared and not remade: a blocking reader's own.
    Own(MultiplexedConnection),
}

impl Client {
    /// A client for `servers`, trusting `team.redis_ca_file` if set; commands and
    /// connections that take longer than `slow` fail.
    pub(super) fn new(
        servers: &RedisServers,
        cfg: &TeamCacheConfig,
        slow: Duration,
    ) -> anyhow::Result<Client> {
        let certs = match &cfg.redis_ca_file {
            Some(path) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("cannot read team.redis_ca_file {}: {e}", path.display())
                })?),
            }),
            None => None,
        };
        let urls: Vec<&str> = servers.urls.iter().map(|u| u.expose()).collect();
        let built = if servers.cluster {
            let mut b = ClusterClient::builder(urls)
                .connection_timeout(slow)
                .response_timeout(slow)
                .retries(1);
            if let Some(certs) = certs {
                b = b.certs(certs);
            }
            b.build().map(Client::Cluster)
        } else {
            let url = urls.first().copied().unwrap_or_default();
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(url, certs),
                None => redis::Client::open(url),
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(slow))
                .set_response_timeout(Some(slow))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            client.map(|c| Client::One(c, config))
        };
        // Errors are reworded, never passed on: they could quote a URL.
        built.map_err(|_| {
            anyhow::anyhow!(
                "team.redis {} is not a Redis URL (or list of them), or its CA file holds no certificate",
                servers.redacted()
            )
        })
    }

    pub(super) async fn connect(&self) -> RedisResult<Conn> {
        match self {
            Client::One(client, config) => {
                ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                    .map(Conn::One)
            }
            Client::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }
}

impl Client {
    /// Whether waiters subscribe to news (one server), so that there is any point in
    /// publishing it; on a cluster they check the lease instead.
    pub(super) fn subscribable(&self) -> bool {
        matches!(self, Client::One(..))
    }

    /// Messages on `channel`, on a connection of their own; None for a cluster (whose
    /// waiters check the lease instead) or if Redis did not take the subscription in `within`.
    pub(super) async fn subscribe(
        &self,
        channel: &str,
        within: Duration,
    ) -> Option<redis::aio::PubSubStream> {
        let Client::One(client, _) = self else {
            return None;
        };
        let sub = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(ps.into_on_message())
        };
        tokio::time::timeout(within, sub).await.ok()?.ok()
    }
}

impl Client {
    /// A connection for one blocking reader, made within `within`. Its commands have no
    /// time limit of their own: the reader bounds each by how long it blocks. A cluster
    /// connection keeps the client's limit (`slow`), which a reader's blocks stay under.
    pub(super) async fn connect_own(&self, within: Duration) -> Option<Conn> {
        let made = async {
            match self {
                Client::One(client, _) => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(within))
                        .set_response_timeout(None);
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Conn::Own)
                }
                Client::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        tokio::time::timeout(within, made).await.ok()?.ok()
    }
}

impl Conn {
    pub(super) async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::One(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
            Conn::Own(c) => cmd.query_async(c).await,
        }
    }

    pub(super) async fn query_pipe<T: FromRedisValue>(&mut self, p: &Pipeline) -> RedisResult<T> {
        match self {
            Conn::One(c) => p.query_async(c).await,
            Conn::Cluster(c) => p.query_async(c).await,
            Conn::Own(c) => p.query_async(c).await,
        }
    }

    /// `cmds` in order, each with its own result; Err only if the exchange failed. To one
    /// server: one pipeline, one round trip. To a cluster: one after another, since a
    /// pipeline there must keep to one slot and these commands' keys need not.
    pub(super) async fn query_each(
        &mut self,
        cmds: Vec<Cmd>,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        let c = match self {
            Conn::Cluster(c) => c,
            one => {
                let mut p = redis::pipe();
                p.ignore_errors();
                // Moved, not copied: a command may carry a whole entry.
                for cmd in cmds {
                    p.add_command(cmd);
                }
                return one.query_pipe(&p).await;
            }
        };
        let mut out = Vec::with_capacity(cmds.len());
        for cmd in &cmds {
            match cmd.query_async::<Value>(c).await {
                Ok(v) => out.push(Ok(v)),
                // Redis's answer to this command; the exchange itself went through.
                Err(e) if e.code().is_some() => out.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
