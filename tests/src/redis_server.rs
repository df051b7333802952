//! Real `redis-server` processes for tests: one node, or a three-node cluster, on loopback.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

fn free_port() -> Result<u16> {
    // The port is free now; redis-server binds it a moment later (a small, accepted race).
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(dir: &Path, port: u16, extra: &[&str]) -> Result<Child> {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // Lets the fault tests stall Redis with DEBUG SLEEP (from loopback only).
            "--enable-debug-command",
            "local",
        ])
        .args(["--dir", dir.to_str().context("temp dir is not UTF-8")?])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (install it with scripts/install-deps)")
}

async fn wait_ready(port: u16) -> Result<()> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    for _ in 0..200 {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("redis-server on port {port} did not answer")
}

/// One redis-server, killed on drop.
pub struct RedisServer {
    child: Child,
    /// Its port.
    pub port: u16,
    dir: TempDir,
    durable: bool,
}

/// AOF with an fsync per write: nothing acknowledged is lost to a SIGKILL.
const DURABLE: [&str; 4] = ["--appendonly", "yes", "--appendfsync", "always"];

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> Result<RedisServer> {
        RedisServer::start_with(false).await
    }

    /// Starts a server with AOF on (every write fsynced), for tests that kill and restart it.
    pub async fn start_durable() -> Result<RedisServer> {
        RedisServer::start_with(true).await
    }

    async fn start_with(durable: bool) -> Result<RedisServer> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let child = spawn(dir.path(), port, if durable { &DURABLE[..] } else { &[] })?;
        let server = RedisServer {
            child,
            port,
            dir,
            durable,
        };
        wait_ready(port).await?;
        Ok(server)
    }

    /// Kills the server with SIGKILL (no shutdown save).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and folder (with a durable server, the data is back).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.child = spawn(
            self.dir.path(),
            self.port,
            if self.durable { &DURABLE[..] } else { &[] },
        )?;
        wait_ready(self.port).await
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A multiplexed connection.
    pub async fn connect(&self) -> Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A three-master Redis Cluster on loopback, killed on drop.
pub struct RedisCluster {
    children: Vec<Child>,
    /// Node ports.
    pub ports: Vec<u16>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts three primaries, joins them with `redis-cli --cluster create`, and waits for
    /// `cluster_state:ok`.
    pub async fn start() -> Result<RedisCluster> {
        RedisCluster::start_with_replicas(0).await
    }

    /// Three primaries with `replicas` replicas each.
    pub async fn start_with_replicas(replicas: usize) -> Result<RedisCluster> {
        let dir = tempfile::tempdir()?;
        let mut children = Vec::new();
        let mut ports = Vec::new();
        for i in 0..3 * (1 + replicas) {
            let port = free_port()?;
            let conf = format!("nodes-{i}.conf");
            children.push(spawn(
                dir.path(),
                port,
                &["--cluster-enabled", "yes", "--cluster-config-file", &conf],
            )?);
            ports.push(port);
        }
        let cluster = RedisCluster {
            children,
            ports,
            _dir: dir,
        };
        for p in &cluster.ports {
            wait_ready(*p).await?;
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", cluster.ports[0]))?;
        for _ in 0..200 {
            let mut c = client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut c)
                .await?;
            if info.contains("cluster_state:ok") {
                return Ok(cluster);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the cluster never reached cluster_state:ok")
    }

    /// The seed nodes as `REDIS_URL` takes them in cluster mode (comma-separated).
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A cluster connection that follows slots across the nodes.
    pub async fn connect(&self) -> Result<redis::cluster_async::ClusterConnection> {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect();
        Ok(redis::cluster::ClusterClient::new(nodes)?
            .get_async_connection()
            .await?)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
