//! How the Redis index reaches its servers, from `[index] url`:
//!
//! | url | topology |
//! |---|---|
//! | `redis://[user:pass@]host:port[/db]`, `rediss://…` | one server |
//! | `redis+sentinel://[user:pass@]host:port[,host:port…]/service[/db]` | the master Sentinel names for `service` |
//! | `redis+cluster://[user:pass@]host:port[,host:port…]` | a Redis Cluster, from a seed list |
//!
//! Sentinel: the master is asked of the sentinels when connecting, and again
//! after any error that says the server is no longer the master (`READONLY`
//! after a failover demoted it) or is gone (connection errors), so writes
//! follow a failover within one failed call. The user and password are the
//! master's; the sentinels are reached without.
//!
//! Cluster: every command names one key, except `MGET`/`UNLINK`/`DBSIZE`,
//! which the cluster client splits by slot and node; pipelines (one slot
//! only in a cluster) become concurrent single-key commands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use recache_core::config::redis_url::RedisUrl;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Where the index's servers are.
pub enum Topology {
    Single(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(ClusterClient),
}

/// A connection for any topology; cheap to clone (shared, multiplexed).
#[derive(Clone)]
pub enum Conn {
    Server {
        conn: ConnectionManager,
        /// Set when an error says this server should be resolved again.
        stale: Arc<AtomicBool>,
    },
    Cluster(ClusterConnection),
}

/// Errors after which the master is looked up again: a demoted master
/// (`READONLY`), or a server that is gone.
fn needs_new_master(e: &redis::RedisError) -> bool {
    e.code() == Some("READONLY")
        || e.code() == Some("MASTERDOWN")
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
}

impl Conn {
    /// Whether an error said this connection's server should be resolved again.
    pub(crate) fn is_stale(&self) -> bool {
        match self {
            Conn::Server { stale, .. } => stale.load(Ordering::Relaxed),
            Conn::Cluster(_) => false,
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    fn note<T>(stale: &AtomicBool, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r {
            if needs_new_master(e) {
                stale.store(true, Ordering::Relaxed);
            }
        }
        r
    }

    /// The cluster's primaries, as `(host, port)` (empty outside a cluster).
    pub(crate) async fn primaries(&mut self) -> RedisResult<Vec<(String, u16)>> {
        let Conn::Cluster(c) = self else {
            return Ok(Vec::new());
        };
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
        let mut out: Vec<(String, u16)> = nodes
            .lines()
            .filter(|l| {
                let flags = l.split(' ').nth(2).unwrap_or("");
                flags.split(',').any(|f| f == "master") && !flags.contains("fail")
            })
            .filter_map(|l| {
                // <id> <ip:port@cport[,hostname]> <flags> …
                let addr = l.split(' ').nth(1)?.split('@').next()?;
                let (host, port) = addr.rsplit_once(':')?;
                Some((host.to_string(), port.parse().ok()?))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Runs a command on one node of the cluster.
    pub(crate) async fn on_node(&mut self, cmd: Cmd, host: &str, port: u16) -> RedisResult<Value> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        match self {
            Conn::Cluster(c) => {
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.to_string(),
                        port,
                    }),
                )
                .await
            }
            other => cmd.query_async(other).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server { conn, stale } => {
                Box::pin(async move { Self::note(stale, conn.req_packed_command(cmd).await) })
            }
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server { conn, stale } => {
                Box::pin(async move { Self::note(stale, conn.req_packed_commands(cmd, offset, count).await) })
            }
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server { conn, .. } => conn.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// `[user[:pass]@]` split from a host list.
fn bad(detail: impl Into<String>) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad index url", detail.into()))
}

impl Topology {
    /// Parses the URL (the config's own parser, [`RedisUrl`]); connects to nothing.
    pub fn parse(url: &str) -> RedisResult<Self> {
        match RedisUrl::parse(url).map_err(bad)? {
            RedisUrl::Sentinel {
                user,
                pass,
                hosts,
                service,
                db,
            } => {
                let mut info = redis::RedisConnectionInfo::default().set_db(db);
                if let Some(u) = user {
                    info = info.set_username(u);
                }
                if let Some(p) = pass {
                    info = info.set_password(p);
                }
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
                let client = SentinelClient::build(hosts, service, Some(node), SentinelServerType::Master)?;
                Ok(Topology::Sentinel(tokio::sync::Mutex::new(client)))
            }
            RedisUrl::Cluster { user, pass, hosts } => {
                let mut b = ClusterClient::builder(hosts);
                if let Some(u) = user {
                    b = b.username(u);
                }
                if let Some(p) = pass {
                    b = b.password(p);
                }
                Ok(Topology::Cluster(b.build()?))
            }
            RedisUrl::Single(url) => Ok(Topology::Single(redis::Client::open(url)?)),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Topology::Single(_) => "standalone",
            Topology::Sentinel(_) => "sentinel",
            Topology::Cluster(_) => "cluster",
        }
    }

    /// Connects: to the server, to the master Sentinel names now, or to the cluster.
    pub async fn connect(&self, timeout: Duration) -> RedisResult<Conn> {
        let t = timeout.max(Duration::from_millis(200));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let client = match self {
            Topology::Single(c) => c.clone(),
            Topology::Sentinel(s) => tokio::time::timeout(t * 4, s.lock().await.async_get_client())
                .await
                .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "no sentinel answered in time")))??,
            Topology::Cluster(c) => {
                let conn = tokio::time::timeout(t * 4, c.get_async_connection())
                    .await
                    .map_err(|_| {
                        redis::RedisError::from((redis::ErrorKind::Io, "no cluster node answered in time"))
                    })??;
                return Ok(Conn::Cluster(conn));
            }
        };
        Ok(Conn::Server {
            conn: ConnectionManager::new_with_config(client, config).await?,
            stale: Arc::new(AtomicBool::new(false)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_topology() {
        assert_eq!(
            Topology::parse("redis://127.0.0.1:6379/2").unwrap().kind(),
            "standalone"
        );
        assert_eq!(
            Topology::parse("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/1")
                .unwrap()
                .kind(),
            "sentinel"
        );
        assert_eq!(
            Topology::parse("redis+sentinel://:secret@127.0.0.1:26379/mymaster")
                .unwrap()
                .kind(),
            "sentinel"
        );
        assert_eq!(
            Topology::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
                .unwrap()
                .kind(),
            "cluster"
        );
        let e = Topology::parse("redis+sentinel://127.0.0.1:26379").err().unwrap();
        assert!(e.to_string().contains("service name"), "{e}");
        assert!(
            Topology::parse("redis+sentinel://h:1/m/x").is_err(),
            "a database is a number"
        );
    }
}
