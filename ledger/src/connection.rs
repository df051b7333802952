//! One connection type for the deployables, whatever Redis they are pointed at: a single node
//! (a managed primary, the bundled StatefulSet) or a Redis Cluster. The ledger's scripts run
//! unchanged on both, because every key one script touches shares its policy's hash tag; the
//! cluster client follows MOVED and ASK redirects, refreshes the topology and reloads a script
//! on a node that answers NOSCRIPT (after a failover or on a new primary).

use std::{str::FromStr, time::Duration};

use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};

/// How Redis is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One primary (`REDIS_URL` is one URL).
    #[default]
    Single,
    /// A Redis Cluster (`REDIS_URL` lists one or more seed nodes, comma-separated).
    Cluster,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "single" => Ok(Mode::Single),
            "cluster" => Ok(Mode::Cluster),
            other => Err(format!(
                "redis mode {other:?} is not one of single, cluster"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Single => "single",
            Mode::Cluster => "cluster",
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
}

/// Connects to `urls` (one URL, or comma-separated seed nodes in cluster mode). `timeout` bounds
/// connecting and each response.
pub async fn connect(mode: Mode, urls: &str, timeout: Duration) -> redis::RedisResult<Connection> {
    match mode {
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
            let nodes: Vec<&str> = urls
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            let client = ClusterClient::builder(nodes)
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
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
        assert!(
            "sentinel"
                .parse::<Mode>()
                .unwrap_err()
                .contains("single, cluster")
        );
        assert_eq!(Mode::Cluster.to_string(), "cluster");
    }
}
