//! One connection type for the deployables, whatever Redis they are pointed at: a single node
//! (a managed primary, the bundled StatefulSet), a Redis Cluster, or a primary/replica set
//! managed by Redis Sentinel. The ledger's scripts run
//! unchanged on both, because every key one script touches shares its policy's hash tag; the
//! cluster client follows MOVED and ASK redirects, refreshes the topology and reloads a script
//! on a node that answers NOSCRIPT (after a failover or on a new primary).

use std::{
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    sentinel::Sentinel,
};

/// How Redis is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One primary (`REDIS_URL` is one URL).
    #[default]
    Single,
    /// A Redis Cluster (`REDIS_URL` lists one or more seed nodes, comma-separated).
    Cluster,
    /// A primary and its replicas managed by Redis Sentinel (`REDIS_URL` lists the sentinels,
    /// comma-separated; `KEYBRAKE_REDIS_SENTINEL_MASTER` names the set).
    Sentinel,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "single" => Ok(Mode::Single),
            "cluster" => Ok(Mode::Cluster),
            "sentinel" => Ok(Mode::Sentinel),
            other => Err(format!(
                "redis mode {other:?} is not one of single, cluster, sentinel"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Single => "single",
            Mode::Cluster => "cluster",
            Mode::Sentinel => "sentinel",
        })
    }
}

/// A connection to Redis in either mode; clones share it.
#[derive(Clone)]
pub enum Connection {
    /// A single node, reconnecting on its own.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
    /// Whichever node the sentinels name as the primary.
    Sentinel(Arc<Sentinelled>),
}

/// The primary of a Sentinel-managed set: asked of the sentinels when there is no connection,
/// and asked again after any failure (a failover demotes the old primary, which then answers
/// READONLY or not at all). The call that meets the failure is refused; the next one goes to
/// the new primary.
pub struct Sentinelled {
    sentinel: tokio::sync::Mutex<Sentinel>,
    master: String,
    timeout: Duration,
    current: Mutex<Option<MultiplexedConnection>>,
}

impl Sentinelled {
    async fn primary(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(c);
        }
        let client = self
            .sentinel
            .lock()
            .await
            .async_master_for(&self.master, None)
            .await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn forget(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn listed(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Connects to `urls` (one URL; or comma-separated seed nodes or sentinels). `timeout` bounds
/// connecting and each response. `master` names the Sentinel set (Sentinel mode only).
pub async fn connect(
    mode: Mode,
    urls: &str,
    master: &str,
    timeout: Duration,
) -> redis::RedisResult<Connection> {
    match mode {
        Mode::Sentinel => {
            let sentinelled = Sentinelled {
                sentinel: tokio::sync::Mutex::new(Sentinel::build(listed(urls))?),
                master: master.to_owned(),
                timeout,
                current: Mutex::new(None),
            };
            // Fail at start, not on the first call, when no sentinel names a primary.
            sentinelled.primary().await?;
            Ok(Connection::Sentinel(Arc::new(sentinelled)))
        }
        Mode::Single => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            let client = redis::Client::open(urls.trim())?;
            Ok(Connection::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
        Mode::Cluster => {
            let client = ClusterClient::builder(listed(urls))
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()?;
            Ok(Connection::Cluster(client.get_async_connection().await?))
        }
    }
}

impl Connection {
    /// Waits until `replicas` replicas of the primary holding `key` have every write this
    /// connection sent it so far (Redis `WAIT`), at most `timeout`; returns how many did.
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        let acked: i64 = match self {
            Connection::Single(c) => wait.query_async(c).await?,
            Connection::Sentinel(_) => wait.query_async(self).await?,
            Connection::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                redis::from_redis_value(c.route_command(wait, route).await?)?
            }
        };
        Ok(u32::try_from(acked.max(0)).unwrap_or(u32::MAX))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
            Connection::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut conn = s.primary().await?;
                    let reply = conn.req_packed_command(cmd).await;
                    if reply.is_err() {
                        s.forget();
                    }
                    reply
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut conn = s.primary().await?;
                    let reply = conn.req_packed_commands(pipeline, offset, count).await;
                    if reply.is_err() {
                        s.forget();
                    }
                    reply
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
            Connection::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        assert_eq!("cluster".parse::<Mode>(), Ok(Mode::Cluster));
        assert_eq!("single".parse::<Mode>(), Ok(Mode::Single));
        assert_eq!("sentinel".parse::<Mode>(), Ok(Mode::Sentinel));
        assert!(
            "replica"
                .parse::<Mode>()
                .unwrap_err()
                .contains("single, cluster, sentinel")
        );
        assert_eq!(Mode::Cluster.to_string(), "cluster");
    }
}
