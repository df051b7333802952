//! The proxy against a direct call and nginx, in one run on loopback: throughput at saturation,
//! latency at fixed rates (no coordinated omission), the accounting under 500 concurrent callers,
//! the Redis limit (redis-benchmark on our own reserve script), and the proxy's memory.
//! Run with `bash bench/proxy.sh`; prints a table beside the targets, writes
//! bench/results/proxy.json (and bench/plot.py draws bench/results/proxy-latency.png).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use k8s_openapi::api::core::v1::Secret;
use keybrake_bench::{
    Proc, Row, bin_dir, cpu_time, free_port, http_get,
    load::{self, Mode, Outcome, Shot},
    print_table, setup_stripe_policy, start_redis, start_redis_cluster, wait_tcp, write_results,
};
use keybrake_control_plane::ControlPlane;
use keybrake_crds::{KeyPhase, Usd, VaultKey};
use keybrake_ledger::{Keyspace, Ledger, LedgerConfig, ReserveRequest, Token};
use kube::{Api, Client, api::PostParams};
use serde_json::{Value, json};

const CONNECTIONS: u64 = 64;
const RATES: [u64; 2] = [1_000, 5_000];
const PREFIX: &str = "bench";
/// One cent, so a long run stays far under the caps.
const BODY: &str = "amount=1&currency=usd";

fn spawn(program: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> Result<Proc> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(Proc(cmd.spawn().with_context(|| {
        format!("starting {}", program.display())
    })?))
}

/// Creates a key with a daily cap and returns its bearer token once it is Active.
async fn key(client: &Client, name: &str, daily_cap: u64) -> Result<String> {
    let keys: Api<VaultKey> = Api::namespaced(client.clone(), "bench");
    let vk: VaultKey = serde_json::from_value(json!({
        "apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey", "metadata": {"name": name},
        "spec": {"policyRef": {"name": "stripe"}, "dailyUsdCap": daily_cap, "ttl": "2h", "runLabel": format!("bench/{name}")}
    }))?;
    keys.create(&PostParams::default(), &vk).await?;
    for _ in 0..400 {
        let k = keys.get(name).await?;
        if k.status.as_ref().and_then(|s| s.phase) == Some(KeyPhase::Active) {
            let secret = Api::<Secret>::namespaced(client.clone(), "bench")
                .get(name)
                .await?;
            let token = secret
                .data
                .unwrap_or_default()
                .remove("STRIPE_API_KEY")
                .context("no token")?;
            return Ok(String::from_utf8(token.0)?);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("VaultKey {name} did not become Active")
}

fn nginx(upstream_port: u16) -> Result<(Proc, u16, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let d = dir.path().display();
    // One worker, like the proxy's one runtime thread; keep-alive both ways; no logging.
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n keepalive_requests 10000000;\n keepalive_timeout 300s;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         upstream vendor {{ server 127.0.0.1:{upstream_port}; keepalive 128; keepalive_requests 10000000; }}\n\
         server {{\n  listen 127.0.0.1:{port};\n  location / {{\n   proxy_pass http://vendor;\n\
         proxy_http_version 1.1;\n   proxy_set_header Connection \"\";\n\
         proxy_set_header Authorization \"Bearer sk_test_bench\";\n  }}\n }}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf)?;
    let nginx =
        which("nginx").context("nginx not found: bench/proxy.sh installs the Debian package")?;
    let proc = spawn(
        &nginx,
        &["-p", &d.to_string(), "-c", &path.display().to_string()],
        &[],
    )?;
    Ok((proc, port, dir))
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.exists())
}

/// Waits until a proxy's admin port answers `/readyz` with ok.
async fn ready(admin_port: u16) -> Result<()> {
    wait_tcp(admin_port).await?;
    for _ in 0..200 {
        if http_get(admin_port, "/readyz")
            .await
            .is_ok_and(|b| b.trim() == "ok")
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the proxy on admin port {admin_port} never became ready")
}

/// Saturation with the proxy and the operator on a three-primary Redis Cluster (their own API
/// server, so the two operators never share objects): what cluster mode costs per call, and that
/// one policy is bounded by one primary.
async fn cluster_saturation(up_port: u16, duration: Duration) -> Result<Outcome> {
    let bin = bin_dir()?;
    let dir = tempfile::tempdir()?;
    let (_nodes, redis_url) = start_redis_cluster(dir.path()).await?;
    let server = ControlPlane::start(Default::default()).await?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()?)?;
    let client = server.client().await?;
    setup_stripe_policy(
        &client,
        1_000_000,
        Some(&format!("http://127.0.0.1:{up_port}")),
    )
    .await?;
    let (proxy_port, admin_port, metrics_port) = (free_port()?, free_port()?, free_port()?);
    let common = [
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("REDIS_URL", redis_url),
        ("KEYBRAKE_REDIS_MODE", "cluster".to_owned()),
        ("KEYBRAKE_REDIS_PREFIX", PREFIX.to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let _proxy = spawn(
        &bin.join("keybrake-proxy"),
        &[],
        &[
            &common[..],
            &[
                ("KEYBRAKE_LISTEN", format!("127.0.0.1:{proxy_port}")),
                // Loopback only: the TLS listener is measured by its own test.
                ("KEYBRAKE_PLAINTEXT", "true".to_owned()),
                ("KEYBRAKE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
                ("TOKIO_WORKER_THREADS", "1".into()),
            ],
        ]
        .concat(),
    )?;
    let _operator = spawn(
        &bin.join("keybrake-operator"),
        &[],
        &[
            &common[..],
            &[
                (
                    "KEYBRAKE_PROXY_URL",
                    format!("http://127.0.0.1:{proxy_port}"),
                ),
                ("KEYBRAKE_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ],
        ]
        .concat(),
    )?;
    ready(admin_port).await?;
    let token = key(&client, "load", 1_000_000).await?;
    let target = shot(proxy_port, Some(&token));
    load::run(&target, Mode::Saturate, CONNECTIONS, Duration::from_secs(1))?;
    let o = load::run(&target, Mode::Saturate, CONNECTIONS, duration)?;
    println!(
        "saturation keybrake on Redis Cluster: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {}",
        o.rps(),
        o.ms(50.0),
        o.ms(99.0),
        o.errors
    );
    drop(client);
    drop(server);
    Ok(o)
}

fn shot(port: u16, auth: Option<&str>) -> Shot {
    let mut headers = vec![(
        "content-type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    )];
    if let Some(a) = auth {
        headers.push(("authorization".to_owned(), format!("Bearer {a}")));
    }
    Shot {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        path: "/v1/payment_intents".into(),
        headers,
        body: Bytes::from_static(BODY.as_bytes()),
    }
}

fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

fn curve(o: &Outcome) -> Value {
    let points: Vec<Value> = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0]
        .iter()
        .map(|p| json!({"percentile": p, "ms": o.ms(*p)}))
        .collect();
    json!(points)
}

fn summary(o: &Outcome) -> Value {
    json!({"rps": o.rps(), "ok": o.ok, "errors": o.errors, "statuses": o.statuses,
           "service_p50_ms": o.service_ms(50.0), "service_p99_ms": o.service_ms(99.0), "p50_ms": o.ms(50.0), "p99_ms": o.ms(99.0), "p999_ms": o.ms(99.9), "max_ms": o.ms(100.0), "curve": curve(o)})
}

/// Opens `n` keep-alive connections, sends one metered call on each, and keeps them open.
async fn hold_connections(
    addr: SocketAddr,
    token: &str,
    n: usize,
) -> Result<Vec<tokio::net::TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut held = Vec::with_capacity(n);
    let request = format!(
        "POST /v1/payment_intents HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await?;
        held.push(s);
    }
    Ok(held)
}

/// 500 callers on one capped key, each calling until refused.
async fn accounting(
    addr: SocketAddr,
    token: &str,
    callers: usize,
) -> Result<(u64, u64, u64, Vec<u64>)> {
    let body = "amount=100&currency=usd"; // $1.00
    let mut tasks = Vec::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(callers));
    for _ in 0..callers {
        let token = token.to_owned();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            barrier.wait().await;
            let (mut forwarded, mut refused, mut other, mut refusal_us) =
                (0u64, 0u64, 0u64, Vec::new());
            for _ in 0..1000 {
                let req = hyper::Request::post("/v1/payment_intents")
                    .header("host", "bench")
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(http_body_util::Full::new(Bytes::from_static(
                        body.as_bytes(),
                    )))?;
                let t = Instant::now();
                let resp = sender.send_request(req).await?;
                let status = resp.status().as_u16();
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                match status {
                    200 => forwarded += 1,
                    429 => {
                        refused += 1;
                        refusal_us.push(t.elapsed().as_micros() as u64);
                        break;
                    }
                    _ => other += 1,
                }
            }
            anyhow::Ok((forwarded, refused, other, refusal_us))
        }));
    }
    let (mut f, mut r, mut o, mut lat) = (0, 0, 0, Vec::new());
    for t in tasks {
        let (a, b, c, d) = t.await??;
        f += a;
        r += b;
        o += c;
        lat.extend(d);
    }
    lat.sort_unstable();
    Ok((f, r, o, lat))
}

/// Redis time per proxied call by command (`INFO commandstats`, reset before the run): the
/// scripts (`evalsha`) and, inside them, each command they call. Sorted, largest first.
fn command_time(info: &str, calls: u64) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let usec = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("usec="))?
                .parse::<f64>()
                .ok()?;
            Some((name.to_owned(), usec / calls as f64))
        })
        .filter(|(n, _)| n != "config" && n != "info")
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let duration = Duration::from_secs(secs);
    let bin = bin_dir()?;
    for b in ["keybrake-proxy", "keybrake-operator", "canned-upstream"] {
        if !bin.join(b).exists() {
            bail!("{b} not built: run bash bench/proxy.sh");
        }
    }
    let up_port = free_port()?;
    let upstream = spawn(&bin.join("canned-upstream"), &[&up_port.to_string()], &[])?;
    wait_tcp(up_port).await?;
    let (redis_proc, redis_port) = start_redis().await?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}/");
    let server = ControlPlane::start(Default::default()).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()?)?;
    let client = server.client().await?;
    setup_stripe_policy(
        &client,
        1_000_000,
        Some(&format!("http://127.0.0.1:{up_port}")),
    )
    .await?;

    let (proxy_port, admin_port, metrics_port) = (free_port()?, free_port()?, free_port()?);
    let proxy = spawn(
        &bin.join("keybrake-proxy"),
        &[],
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("REDIS_URL", redis_url.clone()),
            ("KEYBRAKE_REDIS_PREFIX", PREFIX.into()),
            ("KEYBRAKE_LISTEN", format!("127.0.0.1:{proxy_port}")),
            // Loopback only: the TLS listener is measured by its own test.
            ("KEYBRAKE_PLAINTEXT", "true".to_owned()),
            ("KEYBRAKE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            // The same thread budget as nginx's one worker.
            ("TOKIO_WORKER_THREADS", "1".into()),
            ("RUST_LOG", "warn".into()),
        ],
    )?;
    let _operator = spawn(
        &bin.join("keybrake-operator"),
        &[],
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("REDIS_URL", redis_url.clone()),
            ("KEYBRAKE_REDIS_PREFIX", PREFIX.into()),
            (
                "KEYBRAKE_PROXY_URL",
                format!("http://127.0.0.1:{proxy_port}"),
            ),
            ("KEYBRAKE_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ("RUST_LOG", "warn".into()),
        ],
    )?;
    ready(admin_port).await?;
    let load_token = key(&client, "load", 1_000_000).await?;
    let acct_token = key(&client, "accounting", 50).await?;
    let (nginx_proc, nginx_port, _nginx_dir) = nginx(up_port)?;
    wait_tcp(nginx_port).await?;
    let rss_idle = proxy.memory_mib().1;

    let targets = [
        ("direct", shot(up_port, Some("sk_test_bench"))),
        ("nginx", shot(nginx_port, None)),
        ("keybrake", shot(proxy_port, Some(&load_token))),
    ];
    for (name, s) in &targets {
        let w = load::run(s, Mode::Saturate, CONNECTIONS, Duration::from_secs(1))?;
        if w.ok == 0 {
            bail!("{name}: warm-up got no 2xx answers ({:?})", w.statuses);
        }
    }

    // Saturation, with the proxy's RSS sampled and its Lua calls counted.
    let mut saturation = BTreeMap::new();
    let mut cpu: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut redis_time: Vec<(String, f64)> = Vec::new();
    let (mut rss_saturation, mut lua_per_sec) = (0.0f64, 0.0f64);
    for (name, s) in &targets {
        let before = http_get(admin_port, "/metrics").await?;
        let mut stats_conn = redis::Client::open(redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut stats_conn)
            .await?;
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let sampling = sampling.clone();
            let pid = proxy.0.id();
            tokio::spawn(async move {
                let mut peak: f64 = 0.0;
                while sampling.load(Ordering::Relaxed) {
                    let status =
                        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                    let rss = status
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                        .unwrap_or(0.0)
                        / 1024.0;
                    peak = peak.max(rss);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                peak
            })
        };
        let pids = [
            ("proxy", proxy.0.id()),
            ("redis", redis_proc.0.id()),
            ("nginx", nginx_proc.0.id()),
            ("upstream", upstream.0.id()),
        ];
        let cpu_before: Vec<Duration> = pids.iter().map(|(_, p)| cpu_time(*p)).collect();
        let o = load::run(s, Mode::Saturate, CONNECTIONS, duration)?;
        let answered = (o.ok + o.errors).max(1) as f64;
        let per_request: BTreeMap<String, f64> = pids
            .iter()
            .zip(cpu_before)
            .map(|((n, p), b)| {
                (
                    n.to_string(),
                    (cpu_time(*p) - b).as_secs_f64() * 1e6 / answered,
                )
            })
            .filter(|(_, us)| *us > 0.05)
            .collect();
        println!("  CPU per request (us): {per_request:?}");
        cpu.insert(name.to_string(), per_request);
        sampling.store(false, Ordering::Relaxed);
        let peak = sampler.await?;
        if *name == "keybrake" {
            rss_saturation = peak;
            let after = http_get(admin_port, "/metrics").await?;
            let calls = metric_sum(&after, "keybrake_proxy_redis_seconds_count")
                - metric_sum(&before, "keybrake_proxy_redis_seconds_count");
            lua_per_sec = calls / o.elapsed.as_secs_f64();
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut stats_conn)
                .await?;
            redis_time = command_time(&info, (o.ok + o.errors).max(1));
        }
        println!(
            "saturation {name}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {}",
            o.rps(),
            o.ms(50.0),
            o.ms(99.0),
            o.errors
        );
        saturation.insert(name.to_string(), o);
    }
    let on_cluster = cluster_saturation(up_port, duration).await?;
    let mut rated: BTreeMap<u64, BTreeMap<String, Outcome>> = BTreeMap::new();
    for rate in RATES {
        for (name, s) in &targets {
            let o = load::run(s, Mode::Rate(rate), CONNECTIONS, duration)?;
            println!(
                "{rate}/s {name}: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, achieved {:.0}/s, errors {}",
                o.ms(50.0),
                o.ms(99.0),
                o.ms(99.9),
                o.rps(),
                o.errors
            );
            rated.entry(rate).or_default().insert(name.to_string(), o);
        }
    }

    // Memory with 1,000 open keep-alive connections.
    let held = hold_connections(
        SocketAddr::from(([127, 0, 0, 1], proxy_port)),
        &load_token,
        1000,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_1000 = proxy.memory_mib().1;
    drop(held);

    // Accounting: 500 callers, one key capped at $50 a day, $1 a call.
    let count = |body: String| body.trim().parse::<u64>().unwrap_or(0);
    let seen_before = count(http_get(up_port, "/__count").await?);
    let (forwarded, refused, other, refusal_us) = accounting(
        SocketAddr::from(([127, 0, 0, 1], proxy_port)),
        &acct_token,
        500,
    )
    .await?;
    let seen = count(http_get(up_port, "/__count").await?) - seen_before;
    let conn = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let ledger = Ledger::new(conn, Keyspace::new(PREFIX), LedgerConfig::default());
    let acct_id = Token::parse_bearer(&acct_token)?.key_id;
    let recorded = ledger.key_spend(&acct_id).await?.total;
    let cap = 50_000_000u64;
    let overshoot_recorded = recorded.saturating_sub(cap);
    let overshoot_seen = (seen * 1_000_000).saturating_sub(cap);

    // The Redis limit: redis-benchmark running our reserve script with the load key's record.
    let load = Token::parse_bearer(&load_token)?;
    let hash = load.secret_hash();
    let req = ReserveRequest {
        key_id: &load.key_id,
        secret_hash: &hash,
        method: "POST",
        path: "/v1/payment_intents",
        estimate: Usd::from_micros(1).unwrap_or(Usd::ZERO),
        idempotency: None,
        read: false,
        mode: keybrake_ledger::Mode::Reserve,
        owned: &[],
        run_scope: false,
        commits_until_ms: None,
    };
    let cmd = ledger.reserve_command(&req, "bench-__rand_int__");
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &redis_port.to_string(),
            "-n",
            &(secs * 20_000).to_string(),
            "-c",
            "50",
            "-r",
            "1000000000",
            "-q",
        ])
        .args(&cmd)
        .output()
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let evalsha_rps: f64 = text
        .lines()
        .filter_map(|l| l.split_once(" requests per second").map(|(a, _)| a))
        .filter_map(|a| a.rsplit(' ').next()?.parse().ok())
        .next_back()
        .context(format!("redis-benchmark printed {text}"))?;

    let sat = |n: &str| saturation.get(n).map_or(0.0, Outcome::rps);
    let at = |rate: u64, n: &str, p: f64| {
        rated
            .get(&rate)
            .and_then(|m| m.get(n))
            .map_or(0.0, |o| o.ms(p))
    };
    let mut rows = vec![
        Row {
            what: "throughput direct (req/s)".into(),
            value: format!("{:.0}", sat("direct")),
            target: format!("{CONNECTIONS} connections, one client thread"),
        },
        Row {
            what: "throughput nginx (req/s)".into(),
            value: format!("{:.0}", sat("nginx")),
            target: "1 worker".into(),
        },
        Row {
            what: "throughput keybrake (req/s)".into(),
            value: format!("{:.0}", sat("keybrake")),
            target: "1 runtime thread; reserve + settle per call".into(),
        },
        Row {
            what: "keybrake / nginx throughput".into(),
            value: format!("{:.2}", sat("keybrake") / sat("nginx").max(1.0)),
            target: ">= 0.6".into(),
        },
    ];
    for rate in RATES {
        for n in ["direct", "nginx", "keybrake"] {
            rows.push(Row {
                what: format!("{rate}/s {n} p50 / p99 / p99.9 (ms)"),
                value: format!(
                    "{:.3} / {:.3} / {:.3}",
                    at(rate, n, 50.0),
                    at(rate, n, 99.0),
                    at(rate, n, 99.9)
                ),
                target: String::new(),
            });
        }
        let (t50, t99) = if rate == 5_000 {
            ("<= 0.3", "<= 1.5")
        } else {
            ("", "")
        };
        rows.push(Row {
            what: format!("{rate}/s keybrake added p50 over direct (ms)"),
            value: format!(
                "{:.3}",
                at(rate, "keybrake", 50.0) - at(rate, "direct", 50.0)
            ),
            target: format!("{t50} (LiteLLM 2-12, Bifrost ~0.4)"),
        });
        rows.push(Row {
            what: format!("{rate}/s keybrake added p99 over direct (ms)"),
            value: format!(
                "{:.3}",
                at(rate, "keybrake", 99.0) - at(rate, "direct", 99.0)
            ),
            target: t99.into(),
        });
        let svc = |n: &str| {
            rated
                .get(&rate)
                .and_then(|m| m.get(n))
                .map_or(0.0, |o| o.service_ms(50.0))
        };
        rows.push(Row {
            what: format!("{rate}/s service time p50 direct / nginx / keybrake (ms)"),
            value: format!(
                "{:.3} / {:.3} / {:.3}",
                svc("direct"),
                svc("nginx"),
                svc("keybrake")
            ),
            target: "from the actual send; the CO-corrected figures add the client's 1 ms timer"
                .into(),
        });
        rows.push(Row {
            what: format!("{rate}/s nginx added p50 over direct (ms)"),
            value: format!("{:.3}", at(rate, "nginx", 50.0) - at(rate, "direct", 50.0)),
            target: "the floor".into(),
        });
        rows.push(Row {
            what: format!("{rate}/s keybrake p99 / nginx p99"),
            value: format!(
                "{:.2}",
                at(rate, "keybrake", 99.0) / at(rate, "nginx", 99.0).max(0.001)
            ),
            target: String::new(),
        });
    }
    for (name, per) in &cpu {
        rows.push(Row {
            what: format!("saturation {name}: CPU per request (us)"),
            value: per
                .iter()
                .map(|(k, v)| format!("{k} {v:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            target: "where the time goes (2 cores shared by all)".into(),
        });
    }
    rows.push(Row {
        what: "saturation keybrake on Redis Cluster (3 primaries) / on one Redis (req/s)".into(),
        value: format!(
            "{:.0} / {:.0}",
            on_cluster.rps(),
            saturation.get("keybrake").map_or(0.0, Outcome::rps)
        ),
        target: "one key: one policy's slot, on one primary".into(),
    });
    rows.push(Row {
        what: "Redis time per keybrake call by command (us)".into(),
        value: redis_time
            .iter()
            .take(6)
            .map(|(n, us)| format!("{n} {us:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        target: "evalsha = both scripts, inner commands included".into(),
    });
    rows.extend([
        Row {
            what: "accounting: callers".into(),
            value: "500".into(),
            target: "one key, $50/day cap, $1 per call".into(),
        },
        Row {
            what: "accounting: forwarded / refused / other".into(),
            value: format!("{forwarded} / {refused} / {other}"),
            target: "50 / 500 / 0".into(),
        },
        Row {
            what: "accounting: overshoot recorded (micro-$)".into(),
            value: overshoot_recorded.to_string(),
            target: "0".into(),
        },
        Row {
            what: "accounting: overshoot the upstream saw (micro-$)".into(),
            value: overshoot_seen.to_string(),
            target: "0".into(),
        },
        Row {
            what: "accounting: refusal latency p50 / p99 (ms)".into(),
            value: format!(
                "{:.3} / {:.3}",
                pct(&refusal_us, 50.0),
                pct(&refusal_us, 99.0)
            ),
            target: String::new(),
        },
        Row {
            what: "redis-benchmark EVALSHA reserve (calls/s)".into(),
            value: format!("{evalsha_rps:.0}"),
            target: "the accounting's ceiling".into(),
        },
        Row {
            what: "proxy Lua calls/s at saturation".into(),
            value: format!("{lua_per_sec:.0}"),
            target: format!(
                "{:.0}% of the ceiling",
                100.0 * lua_per_sec / evalsha_rps.max(1.0)
            ),
        },
        Row {
            what: "proxy RSS idle (MiB)".into(),
            value: format!("{rss_idle:.1}"),
            target: String::new(),
        },
        Row {
            what: "proxy RSS, 1000 keep-alive connections (MiB)".into(),
            value: format!("{rss_1000:.1}"),
            target: "<= 64 MB".into(),
        },
        Row {
            what: "proxy RSS at saturation (MiB)".into(),
            value: format!("{rss_saturation:.1}"),
            target: String::new(),
        },
    ]);
    print_table(
        &format!(
            "keybrake-proxy vs nginx vs direct ({}s per run, {} cores)",
            secs,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        &rows,
    );

    let results = json!({
        "seconds_per_run": secs, "connections": CONNECTIONS, "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "saturation": saturation.iter().map(|(k, o)| (k.clone(), summary(o))).collect::<BTreeMap<_, _>>(),
        "saturation_on_redis_cluster": summary(&on_cluster),
        "rates": rated.iter().map(|(r, m)| (r.to_string(), m.iter().map(|(k, o)| (k.clone(), summary(o))).collect::<BTreeMap<_, _>>())).collect::<BTreeMap<_, _>>(),
        "accounting": {"callers": 500, "cap_micros": cap, "forwarded": forwarded, "refused": refused, "other": other,
                        "recorded_micros": recorded, "upstream_seen_calls": seen, "overshoot_recorded_micros": overshoot_recorded,
                        "overshoot_seen_micros": overshoot_seen, "refusal_p50_ms": pct(&refusal_us, 50.0), "refusal_p99_ms": pct(&refusal_us, 99.0)},
        "cpu_us_per_request_at_saturation": cpu,
        "redis_us_per_call_by_command": redis_time.iter().cloned().collect::<BTreeMap<_, _>>(),
        "redis": {"evalsha_reserve_per_sec": evalsha_rps, "proxy_lua_calls_per_sec_at_saturation": lua_per_sec},
        "rss_mib": {"idle": rss_idle, "connections_1000": rss_1000, "saturation": rss_saturation},
        "targets": {"throughput_vs_nginx": 0.6, "added_p50_ms_at_5000": 0.3, "added_p99_ms_at_5000": 1.5, "overshoot_micros": 0, "rss_mb_1000_connections": 64},
    });
    let path = write_results("proxy", &results)?;
    println!("\nwrote {}", path.display());
    drop(client);
    drop(server);
    Ok(())
}
