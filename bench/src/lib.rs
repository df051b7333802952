//! Shared pieces of the benchmarks: child processes, free ports, memory readings, reports.
#![forbid(unsafe_code)]

pub mod load;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The folder of this binary (the release `target/` folder, where the other binaries are).
pub fn bin_dir() -> Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("binary has no folder")?
        .to_path_buf())
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Peak and current resident memory in MiB (`VmHWM`, `VmRSS`).
    pub fn memory_mib(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state; utime and stime
    // are fields 14 and 15 of the whole line, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Installs the CRDs, the `bench` namespace, a Stripe credentials Secret and the SpendPolicy
/// `bench/stripe` (daily limit `max_daily_usd`, upstream if given) on a fresh API server.
pub async fn setup_stripe_policy(
    client: &kube::Client,
    max_daily_usd: u64,
    upstream: Option<&str>,
) -> Result<()> {
    use k8s_openapi::{
        api::core::v1::{Namespace, Secret},
        apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    };
    use keybrake_crds::SpendPolicy;
    use kube::{Api, api::PostParams};
    use serde_json::json;
    let post = PostParams::default();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in keybrake_crds::manifests::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.create(&post, &crd).await?;
        // A real API server serves a CRD's objects only once it is Established.
        let established = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            kube::runtime::wait::await_condition(crds.clone(), &name, established),
        )
        .await??;
    }
    Api::<Namespace>::all(client.clone())
        .create(
            &post,
            &serde_json::from_value(json!({"metadata": {"name": "bench"}}))?,
        )
        .await?;
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "stripe-credentials"}, "stringData": {"apiKey": "sk_test_bench"}}),
    )?;
    Api::<Secret>::namespaced(client.clone(), "bench")
        .create(&post, &secret)
        .await?;
    let mut spec = json!({"vendor": "stripe", "credentialsSecretRef": {"name": "stripe-credentials"},
        "limits": {"maxDailyUsd": max_daily_usd, "maxTtl": "24h", "allowedEndpoints": ["POST /v1/payment_intents"]}});
    if let Some(url) = upstream {
        spec["upstream"] = json!(url);
    }
    let policy: SpendPolicy = serde_json::from_value(json!({
        "apiVersion": "keybrake.com/v1alpha1", "kind": "SpendPolicy", "metadata": {"name": "stripe"}, "spec": spec
    }))?;
    Api::<SpendPolicy>::namespaced(client.clone(), "bench")
        .create(&post, &policy)
        .await?;
    Ok(())
}

/// Starts a redis-server on a free port and waits for it.
pub async fn start_redis() -> Result<(Proc, u16)> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (scripts/install-deps installs it)")?;
    let proc = Proc(child);
    wait_tcp(port).await?;
    Ok((proc, port))
}

/// Starts a three-primary Redis Cluster on free ports; returns the processes and `REDIS_URL`
/// (the seed nodes, comma-separated) once `cluster_state:ok`.
pub async fn start_redis_cluster(dir: &std::path::Path) -> Result<(Vec<Proc>, String)> {
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    for i in 0..3 {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
            ])
            .args(["--cluster-config-file", &format!("bench-nodes-{i}.conf")])
            .args(["--dir", &dir.display().to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (scripts/install-deps installs it)")?;
        procs.push(Proc(child));
        wait_tcp(port).await?;
        ports.push(port);
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&nodes)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .context("running redis-cli --cluster create")?;
    if !out.status.success() {
        bail!(
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", ports[0]))?;
    for _ in 0..200 {
        let mut c = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut c)
            .await?;
        if info.contains("cluster_state:ok") {
            let urls: Vec<String> = ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}/"))
                .collect();
            return Ok((procs, urls.join(",")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the bench cluster never reached cluster_state:ok")
}

/// Waits until something listens on the port.
pub async fn wait_tcp(port: u16) -> Result<()> {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing listens on port {port}")
}

/// A plain GET on loopback, returning the body.
pub async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// One row of a results table: what, the figure, the target beside it.
pub struct Row {
    /// What was measured.
    pub what: String,
    /// The figure.
    pub value: String,
    /// The anchor or target, if any.
    pub target: String,
}

/// Prints rows as an aligned table.
pub fn print_table(title: &str, rows: &[Row]) {
    let w0 = rows.iter().map(|r| r.what.len()).max().unwrap_or(0).max(6);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0).max(6);
    println!("\n{title}");
    println!("{:<w0$}  {:>w1$}  target", "figure", "value");
    for r in rows {
        println!("{:<w0$}  {:>w1$}  {}", r.what, r.value, r.target);
    }
}

/// `BENCH_SMOKE=1`: a run of a few seconds with small sizes, to show the benchmark still runs
/// (CI runs each this way; its figures mean nothing).
pub fn smoke() -> bool {
    std::env::var("BENCH_SMOKE").is_ok_and(|v| v == "1")
}

/// Writes a JSON result under `bench/results/`, or under `BENCH_RESULTS_DIR` when set (a smoke
/// run must not replace the measured figures).
pub fn write_results(name: &str, value: &serde_json::Value) -> Result<PathBuf> {
    let dir = std::env::var_os("BENCH_RESULTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("bench/results"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
    Ok(path)
}
