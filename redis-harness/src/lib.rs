//! keybrake-redis-harness: real `redis-server` processes for tests, killed on drop: one node, a
//! three-primary Redis Cluster, or a primary, a replica and three sentinels, on loopback; TLS only
//! (certificates from a test-time CA, [`TlsMaterial`]) where a test asks for it. The ledger's
//! script tests and the end-to-end suite (`keybrake-e2e`) share it.
#![forbid(unsafe_code)]

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use redis::TlsCertificates;
use tempfile::TempDir;

/// The certificates of a TLS-only server and its clients, from a CA made at test time
/// (`keybrake-e2e`'s `TestPki`): a trait, so this crate makes no certificates of its own.
pub trait TlsMaterial {
    /// redis-server flags for TLS only, on `port` (no plain-text port); with `auth_clients`,
    /// every client must show a certificate the CA signed.
    fn server_args(&self, port: u16, auth_clients: bool) -> Vec<String>;
    /// What redis-rs takes to trust the CA; with `client`, also the client certificate it shows.
    fn certificates(&self, client: bool) -> Result<TlsCertificates>;
}

/// The workspace root (the parent of this crate's folder).
fn workspace_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A free port below the kernel's ephemeral range (32768 and up), so no client connection of
/// the tests can take it between now and the server binding it; tried at random until one
/// binds. Its cluster bus port (10000 above, what a cluster node binds too) is free and below
/// that range as well.
pub fn free_port() -> Result<u16> {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in 0..1000 {
        let port = rand::random_range(10_000..22_000);
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    bail!("no free port between 10000 and 22000 (with its cluster bus port)")
}

/// A free loopback address, from [`free_port`].
pub fn free_addr() -> Result<std::net::SocketAddr> {
    Ok(std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?)))
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

/// `redis://127.0.0.1:PORT/`, or `rediss://` with TLS: every server and sentinel here listens
/// on loopback.
fn url_of(port: u16, tls: Option<&TlsCertificates>) -> String {
    let s = if tls.is_some() { "s" } else { "" };
    format!("redis{s}://127.0.0.1:{port}/")
}

/// A client for the node on `port`, trusting the test CA (and showing its client certificate
/// if there is one) with TLS.
fn client_of(port: u16, tls: Option<&TlsCertificates>) -> Result<redis::Client> {
    let url = url_of(port, tls);
    Ok(match tls {
        Some(certs) => redis::Client::build_with_tls(url, certs.clone())?,
        None => redis::Client::open(url)?,
    })
}

async fn wait_ready(port: u16, tls: Option<&TlsCertificates>) -> Result<()> {
    let client = client_of(port, tls)?;
    // Up to 20 s: on a loaded 2-core machine a server can take seconds to answer.
    for _ in 0..800 {
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
    /// Persistence flags, given again on a restart.
    persistence: Vec<String>,
    tls: Option<ServerTls>,
}

/// A TLS-only server's flags and what its clients need.
struct ServerTls {
    args: Vec<String>,
    certs: TlsCertificates,
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

    /// Starts a server with the persistence flags of the shipped Redis StatefulSet
    /// (`manifests/deploy/redis.yaml`, without its `--dir`), for tests of what it keeps.
    pub async fn start_shipped() -> Result<RedisServer> {
        let manifest =
            std::fs::read_to_string(workspace_root().join("manifests/deploy/redis.yaml"))?;
        let mut persistence = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&manifest) {
            let v = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc)?;
            let args = &v["spec"]["template"]["spec"]["containers"][0]["args"];
            if let Some(args) = args.as_sequence() {
                let args: Vec<String> = args
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect();
                let mut i = 0;
                while i < args.len() {
                    if args[i] == "--dir" {
                        i += 2;
                        continue;
                    }
                    persistence.push(args[i].clone());
                    i += 1;
                }
            }
        }
        anyhow::ensure!(
            !persistence.is_empty(),
            "no redis args in manifests/deploy/redis.yaml"
        );
        RedisServer::start_persisting(persistence).await
    }

    async fn start_with(durable: bool) -> Result<RedisServer> {
        let persistence = if durable {
            DURABLE.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        };
        RedisServer::start_persisting(persistence).await
    }

    async fn start_persisting(persistence: Vec<String>) -> Result<RedisServer> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let child = spawn(dir.path(), port, &strs(&persistence))?;
        let server = RedisServer {
            child,
            port,
            dir,
            persistence,
            tls: None,
        };
        wait_ready(port, None).await?;
        Ok(server)
    }

    /// Starts a server that speaks only TLS, with the certificate `pki` signed for 127.0.0.1;
    /// with `auth_clients`, it also requires a client certificate from that CA (mutual TLS).
    pub async fn start_tls(pki: &impl TlsMaterial, auth_clients: bool) -> Result<RedisServer> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let tls = ServerTls {
            args: pki.server_args(port, auth_clients),
            certs: pki.certificates(auth_clients)?,
        };
        let server = RedisServer {
            child: spawn(dir.path(), port, &strs(&tls.args))?,
            port,
            dir,
            persistence: Vec::new(),
            tls: Some(tls),
        };
        wait_ready(port, server.certs()).await?;
        Ok(server)
    }

    fn certs(&self) -> Option<&TlsCertificates> {
        self.tls.as_ref().map(|t| &t.certs)
    }

    fn args(&self) -> Vec<&str> {
        let mut args: Vec<&str> = strs(&self.persistence);
        args.extend(self.tls.iter().flat_map(|t| strs(&t.args)));
        args
    }

    /// Kills the server with SIGKILL (no shutdown save).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and folder (with a durable server, the data is back).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.child = spawn(self.dir.path(), self.port, &self.args())?;
        wait_ready(self.port, self.certs()).await
    }

    /// `redis://127.0.0.1:PORT/` (`rediss://` with TLS).
    pub fn url(&self) -> String {
        url_of(self.port, self.certs())
    }

    /// A multiplexed connection.
    pub async fn connect(&self) -> Result<redis::aio::MultiplexedConnection> {
        Ok(client_of(self.port, self.certs())?
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

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A three-master Redis Cluster on loopback, killed on drop.
pub struct RedisCluster {
    children: Vec<Child>,
    /// Node ports.
    pub ports: Vec<u16>,
    _dir: TempDir,
    tls: Option<TlsCertificates>,
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
            // A one-second node timeout: a dead primary's replica takes over within seconds.
            children.push(spawn(
                dir.path(),
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "1000",
                    // Replicas sync at once, and may take over whatever their data's age.
                    "--repl-diskless-sync-delay",
                    "0",
                    "--cluster-replica-validity-factor",
                    "0",
                ],
            )?);
            ports.push(port);
        }
        let cluster = RedisCluster {
            children,
            ports,
            _dir: dir,
            tls: None,
        };
        for p in &cluster.ports {
            wait_ready(*p, None).await?;
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
        cluster.wait_ok().await?;
        Ok(cluster)
    }

    /// A one-node cluster (every slot on one primary) that speaks only TLS, its node
    /// certificate signed by `pki` for 127.0.0.1 (with `auth_clients`, clients need one too):
    /// the cluster client's TLS path (topology from `CLUSTER SLOTS`, then a TLS connection to
    /// the node it names) with one process.
    pub async fn start_tls_one_node(
        pki: &impl TlsMaterial,
        auth_clients: bool,
    ) -> Result<RedisCluster> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut args = pki.server_args(port, auth_clients);
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes-0.conf",
                "--tls-cluster",
                "yes",
            ]
            .map(str::to_owned),
        );
        let cluster = RedisCluster {
            children: vec![spawn(dir.path(), port, &strs(&args))?],
            ports: vec![port],
            _dir: dir,
            tls: Some(pki.certificates(auth_clients)?),
        };
        wait_ready(port, cluster.tls.as_ref()).await?;
        let mut c = client_of(port, cluster.tls.as_ref())?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .exec_async(&mut c)
            .await?;
        cluster.wait_ok().await?;
        Ok(cluster)
    }

    async fn wait_ok(&self) -> Result<()> {
        let client = client_of(self.ports[0], self.tls.as_ref())?;
        for _ in 0..200 {
            let mut c = client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut c)
                .await?;
            if info.contains("cluster_state:ok") {
                return self.replicas_in_sync().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the cluster never reached cluster_state:ok")
    }

    /// The port of the primary that holds `key`'s slot, asked of any live node.
    pub async fn primary_of(&self, key: &str) -> Result<u16> {
        let slot = slot_of(key);
        for port in &self.ports {
            let Ok(client) = client_of(*port, self.tls.as_ref()) else {
                continue;
            };
            let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            let Ok(nodes) = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut c)
                .await
            else {
                continue;
            };
            for line in nodes.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                    continue;
                }
                let holds = f[8..].iter().any(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                });
                if holds {
                    let port = f[1].split(['@', ':']).nth(1).unwrap_or("");
                    return Ok(port.parse()?);
                }
            }
        }
        bail!("no live node knows the primary of slot {slot}")
    }

    /// Moves every slot of the primary on `from` to the primary on `to`, as an operator
    /// rebalancing a cluster would (`redis-cli --cluster reshard`), and waits for it to finish.
    pub async fn reshard(&self, from: u16, to: u16) -> Result<()> {
        anyhow::ensure!(self.tls.is_none(), "reshard is for plain-text clusters");
        let tls = self.tls.as_ref();
        let id = |port: u16| async move {
            let client = client_of(port, tls)?;
            let mut c = client.get_multiplexed_async_connection().await?;
            let id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(&mut c)
                .await?;
            anyhow::Ok(id)
        };
        let (from_id, to_id) = (id(from).await?, id(to).await?);
        let out = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", "16384", "--cluster-yes"])
            .output()
            .await
            .context("running redis-cli --cluster reshard")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster reshard failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Kills the node on `port` (SIGKILL, as a crash).
    pub fn kill(&mut self, port: u16) -> Result<()> {
        let i = self
            .ports
            .iter()
            .position(|p| *p == port)
            .context("no such node")?;
        self.children[i].kill()?;
        Ok(())
    }

    /// Starts the node on `port` again from its cluster config (it rejoins as a replica of
    /// whoever took over).
    pub async fn restart(&mut self, port: u16) -> Result<()> {
        anyhow::ensure!(self.tls.is_none(), "restart is for plain-text clusters");
        let i = self
            .ports
            .iter()
            .position(|p| *p == port)
            .context("no such node")?;
        let _ = self.children[i].wait();
        let conf = format!("nodes-{i}.conf");
        self.children[i] = spawn(
            self._dir.path(),
            port,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                "1000",
                "--repl-diskless-sync-delay",
                "0",
                "--cluster-replica-validity-factor",
                "0",
            ],
        )?;
        wait_ready(port, self.tls.as_ref()).await?;
        self.replicas_in_sync().await
    }

    /// Waits until every replica's link to its primary is up.
    pub async fn replicas_in_sync(&self) -> Result<()> {
        replicas_in_sync(&self.ports, self.tls.as_ref()).await
    }

    /// Waits until a live primary other than `dead` holds `key`'s slot and the cluster is ok.
    pub async fn failed_over(&self, key: &str, dead: u16) -> Result<u16> {
        for _ in 0..300 {
            if let Ok(p) = self.primary_of(key).await
                && p != dead
            {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("no replica took over from {dead}")
    }

    /// The seed nodes as `REDIS_URL` takes them in cluster mode (comma-separated).
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| url_of(*p, self.tls.as_ref()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A cluster connection that follows slots across the nodes.
    pub async fn connect(&self) -> Result<redis::cluster_async::ClusterConnection> {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| url_of(*p, self.tls.as_ref()))
            .collect();
        let mut builder = redis::cluster::ClusterClient::builder(nodes);
        if let Some(certs) = &self.tls {
            builder = builder.certs(certs.clone());
        }
        Ok(builder.build()?.get_async_connection().await?)
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

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag (or the whole key), mod 16384.
pub fn slot_of(key: &str) -> u16 {
    let tagged = key
        .find('{')
        .and_then(|a| key[a + 1..].find('}').map(|b| &key[a + 1..a + 1 + b]))
        .filter(|t| !t.is_empty())
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for b in tagged.bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// A primary, one replica and three sentinels watching them (quorum 2) on loopback, killed on
/// drop: the shape of a Sentinel-managed managed Redis.
pub struct RedisSentinelSet {
    /// Data nodes: the first starts as the primary.
    pub nodes: Vec<RedisServer>,
    sentinels: Vec<Child>,
    /// Sentinel ports.
    pub sentinel_ports: Vec<u16>,
    _dir: TempDir,
    tls: Option<TlsCertificates>,
}

impl RedisSentinelSet {
    /// Starts the set named `master` and waits until every sentinel knows the primary and the
    /// replica is in sync.
    pub async fn start(master: &str) -> Result<RedisSentinelSet> {
        let dir = tempfile::tempdir()?;
        let primary_port = free_port()?;
        let primary = RedisServer {
            child: spawn(
                dir.path(),
                primary_port,
                &["--repl-diskless-sync-delay", "0"],
            )?,
            port: primary_port,
            dir: tempfile::tempdir()?,
            persistence: Vec::new(),
            tls: None,
        };
        wait_ready(primary_port, None).await?;
        let replica_port = free_port()?;
        let replica = RedisServer {
            child: spawn(
                dir.path(),
                replica_port,
                &[
                    "--replicaof",
                    "127.0.0.1",
                    &primary.port.to_string(),
                    "--repl-diskless-sync-delay",
                    "0",
                ],
            )?,
            port: replica_port,
            dir: tempfile::tempdir()?,
            persistence: Vec::new(),
            tls: None,
        };
        wait_ready(replica_port, None).await?;
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_port()?;
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor {master} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {master} 1000\n\
                     sentinel failover-timeout {master} 3000\n",
                    primary.port
                ),
            )?;
            sentinels.push(
                Command::new("redis-server")
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting redis-server --sentinel")?,
            );
            sentinel_ports.push(port);
        }
        let set = RedisSentinelSet {
            nodes: vec![primary, replica],
            sentinels,
            sentinel_ports,
            _dir: dir,
            tls: None,
        };
        for p in &set.sentinel_ports {
            wait_ready(*p, None).await?;
        }
        set.in_sync().await?;
        for _ in 0..200 {
            if set.primary(master).await.is_ok() && set.replicas_known(master).await? {
                return Ok(set);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the sentinels never agreed on the set")
    }

    /// A TLS-only primary and one sentinel (quorum 1) watching it over TLS, all with
    /// certificates `pki` signed for 127.0.0.1 (with `auth_clients`, clients need one too): the
    /// TLS paths to the sentinels and to the primary they name, with two processes (no
    /// replica: nothing here fails over).
    pub async fn start_tls(
        master: &str,
        pki: &impl TlsMaterial,
        auth_clients: bool,
    ) -> Result<RedisSentinelSet> {
        let primary = RedisServer::start_tls(pki, auth_clients).await?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let conf = dir.path().join("sentinel.conf");
        let mut lines: Vec<String> = pki
            .server_args(port, auth_clients)
            .chunks(2)
            .map(|kv| kv.join(" ").trim_start_matches("--").to_owned())
            .collect();
        lines.extend([
            "bind 127.0.0.1".to_owned(),
            // The sentinel reaches the primary over TLS too (showing the server certificate
            // as its client certificate).
            "tls-replication yes".to_owned(),
            format!("sentinel monitor {master} 127.0.0.1 {} 1", primary.port),
        ]);
        std::fs::write(&conf, lines.join("\n") + "\n")?;
        let sentinel = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server --sentinel")?;
        let set = RedisSentinelSet {
            nodes: vec![primary],
            sentinels: vec![sentinel],
            sentinel_ports: vec![port],
            _dir: dir,
            tls: Some(pki.certificates(auth_clients)?),
        };
        wait_ready(port, set.tls.as_ref()).await?;
        for _ in 0..200 {
            if set.primary(master).await.is_ok() {
                return Ok(set);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the sentinel never named the primary")
    }

    /// `REDIS_URL` in Sentinel mode: the sentinels, comma-separated.
    pub fn urls(&self) -> String {
        self.sentinel_ports
            .iter()
            .map(|p| url_of(*p, self.tls.as_ref()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The primary's port as the first sentinel that answers names it.
    pub async fn primary(&self, master: &str) -> Result<u16> {
        for p in &self.sentinel_ports {
            let Ok(client) = client_of(*p, self.tls.as_ref()) else {
                continue;
            };
            let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            if let Ok((_, port)) = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async::<(String, u16)>(&mut c)
                .await
            {
                return Ok(port);
            }
        }
        bail!("no sentinel names a primary for {master}")
    }

    async fn replicas_known(&self, master: &str) -> Result<bool> {
        let client = client_of(self.sentinel_ports[0], self.tls.as_ref())?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(master)
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        Ok(!replicas.is_empty())
    }

    /// Waits until every data node that is a replica has its link to the primary up.
    pub async fn in_sync(&self) -> Result<()> {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        replicas_in_sync(&ports, self.tls.as_ref()).await
    }

    /// Kills the data node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) -> Result<()> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .context("no such node")?
            .kill();
        Ok(())
    }

    /// Starts the data node on `port` again; the sentinels make it a replica of the new primary.
    pub async fn restart(&mut self, port: u16) -> Result<()> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .context("no such node")?
            .restart()
            .await
    }
}

impl Drop for RedisSentinelSet {
    fn drop(&mut self) {
        for c in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until every node on `ports` that is a replica has its link to its primary up (a node
/// that cannot be reached counts as not yet in sync).
async fn replicas_in_sync(ports: &[u16], tls: Option<&TlsCertificates>) -> Result<()> {
    for _ in 0..300 {
        let mut all = true;
        for port in ports {
            let client = client_of(*port, tls)?;
            let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                all = false;
                continue;
            };
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            if info.contains("role:slave") && !info.contains("master_link_status:up") {
                all = false;
            }
        }
        if all {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the replicas never finished syncing")
}
