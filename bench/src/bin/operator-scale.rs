//! Operator scale: applies N VaultKeys (default 5,000) to the real kube-apiserver and etcd and
//! reports the time from the last create until all are Active, reconciles per second, API writes
//! per key and the operator's peak memory. The server's own write rate is the ceiling: the same
//! creates with no operator running, on a fresh control plane, are timed first and printed beside.
//! Run with `bash bench/operator-scale.sh [N]`.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use keybrake_bench::{
    Proc, Row, bin_dir, free_port, http_get, print_table, setup_stripe_policy, start_redis,
    wait_tcp, write_results,
};
use keybrake_control_plane::ControlPlane;
use keybrake_crds::{KeyPhase, VaultKey};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Failed reconciles of both kinds, from the operator's metrics.
fn failures(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("keybrake_operator_reconcile_failures_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// How long the run may take from the first create (`KEYBRAKE_BENCH_DEADLINE_S`, default 600)
/// before it stops with how far it got.
fn deadline() -> Result<Duration> {
    let secs = match std::env::var("KEYBRAKE_BENCH_DEADLINE_S") {
        Ok(v) => v
            .parse()
            .context("KEYBRAKE_BENCH_DEADLINE_S: a whole number of seconds")?,
        Err(_) => 600,
    };
    Ok(Duration::from_secs(secs))
}

/// Creates `n` VaultKeys in `bench`, 32 at a time, counting them in `done`; how long it took.
async fn create_keys(client: &Client, n: usize, done: Arc<AtomicUsize>) -> Result<Duration> {
    let keys = Arc::new(Api::<VaultKey>::namespaced(client.clone(), "bench"));
    let started = Instant::now();
    let created: Vec<Result<()>> = stream::iter(0..n)
        .map(|i| {
            let (keys, done) = (keys.clone(), done.clone());
            async move {
                let vk: VaultKey = serde_json::from_value(json!({
                    "apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey", "metadata": {"name": format!("run-{i:05}")},
                    "spec": {"policyRef": {"name": "stripe"}, "dailyUsdCap": 50, "ttl": "2h", "runLabel": format!("bench/run-{i}")}
                }))?;
                keys.create(&PostParams::default(), &vk).await?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    created.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(started.elapsed())
}

/// The API server's count of successful writes, by `VERB resource[/subresource]`, from its
/// `/metrics` (`apiserver_request_total`).
async fn writes(client: &Client) -> Result<BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            let key = format!("{name}=\"");
            line.find(&key).and_then(|i| {
                let rest = &line[i + key.len()..];
                rest.find('"').map(|j| rest[..j].to_owned())
            })
        };
        let (Some(verb), Some(code)) = (label("verb"), label("code")) else {
            continue;
        };
        if !matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY")
            || !code.starts_with('2')
        {
            continue;
        }
        let resource = label("resource").unwrap_or_default();
        let sub = label("subresource").unwrap_or_default();
        let what = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        let count: f64 = line
            .split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(what).or_insert(0.0) += count;
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5000);

    // The ceiling: the same creates on a fresh server with nothing else writing.
    let ceiling = {
        let plane = ControlPlane::start(Default::default()).await?;
        let client = plane.client().await?;
        setup_stripe_policy(&client, 1000, None).await?;
        create_keys(&client, n, Arc::default()).await?
    };

    let server = ControlPlane::start(Default::default()).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()?)?;
    let client = server.client().await?;
    let (_redis, redis_port) = start_redis().await?;

    setup_stripe_policy(&client, 1000, None).await?;

    let metrics_port = free_port()?;
    let operator_bin = bin_dir()?.join("keybrake-operator");
    if !operator_bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p keybrake-operator`",
            operator_bin.display()
        );
    }
    let operator = Proc(
        std::process::Command::new(&operator_bin)
            .env("KUBECONFIG", &kubeconfig)
            .env("KEYBRAKE_PROXY_URL", "http://127.0.0.1:1")
            .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}/"))
            .env("KEYBRAKE_REDIS_PREFIX", "bench")
            .env("KEYBRAKE_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "warn")
            .spawn()
            .context("starting keybrake-operator")?,
    );
    wait_tcp(metrics_port).await?;
    let idle = operator.memory_mib().1;

    // Count Active keys from a watch (a list of every key each poll would load the server more
    // than the operator does).
    let keys: Api<VaultKey> = Api::namespaced(client.clone(), "bench");
    let (active_tx, mut active_rx) = tokio::sync::watch::channel(0usize);
    let counter = tokio::spawn(async move {
        let mut active = HashSet::new();
        let mut events = watcher(keys, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Ok(Some(vk)) = events.try_next().await {
            let name = vk.metadata.name.clone().unwrap_or_default();
            if vk.status.as_ref().and_then(|s| s.phase) == Some(KeyPhase::Active) {
                active.insert(name);
            } else {
                active.remove(&name);
            }
            let _ = active_tx.send(active.len());
        }
    });

    let writes_before = writes(&client).await?;
    let started = Instant::now();
    let created = Arc::new(AtomicUsize::new(0));
    let creating = tokio::spawn({
        let (client, created) = (client.clone(), created.clone());
        async move { create_keys(&client, n, created).await }
    });
    let deadline = deadline()?;
    let mut peak_rss: f64 = 0.0;
    let mut applied_in = None;
    let mut creating = Some(creating);
    let ready_in = loop {
        peak_rss = peak_rss.max(operator.memory_mib().1);
        if let Some(task) = creating.take_if(|t| t.is_finished()) {
            applied_in = Some(task.await??);
        }
        if applied_in.is_some() && *active_rx.borrow() == n {
            break started.elapsed();
        }
        if started.elapsed() > deadline {
            // Partial progress, then a clear failure: a run that cannot finish must not hang.
            let text = http_get(metrics_port, "/metrics").await.unwrap_or_default();
            bail!(
                "deadline of {}s (KEYBRAKE_BENCH_DEADLINE_S) passed: {} of {n} keys created, {} Active; \
                 operator peak RSS {:.1} MiB, {:.0} VaultKey reconciles, {:.0} failed reconciles \
                 (all {n} created in {:.1}s with no operator)",
                deadline.as_secs(),
                created.load(Ordering::Relaxed),
                *active_rx.borrow(),
                operator.memory_mib().0.max(peak_rss),
                metric(
                    &text,
                    "keybrake_operator_reconciles_total{kind=\"vaultkey\"}"
                ),
                failures(&text),
                ceiling.as_secs_f64(),
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), active_rx.changed()).await;
    };
    let applied_in = applied_in.unwrap_or_default();
    counter.abort();
    let after_last_create = ready_in.saturating_sub(applied_in);
    // Let the tail of reconciles (status settling, events) finish before counting writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_after = writes(&client).await?;
    let by_kind: BTreeMap<String, f64> = writes_after
        .iter()
        .map(|(k, v)| (k.clone(), v - writes_before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let text = http_get(metrics_port, "/metrics").await?;
    let reconciles = metric(
        &text,
        "keybrake_operator_reconciles_total{kind=\"vaultkey\"}",
    );
    let failures = failures(&text);
    let (hwm, _) = operator.memory_mib();
    let total_writes: f64 = by_kind.values().sum();
    // Everything but the client's own creates (and the API server's own lease renewals).
    let own = by_kind
        .iter()
        .filter(|(k, _)| k.as_str() == "POST vaultkeys" || k.contains("leases"))
        .map(|(_, v)| v)
        .sum::<f64>();
    let operator_writes_per_key = (total_writes - own) / n as f64;

    let rows = vec![
        Row {
            what: "keys".into(),
            value: n.to_string(),
            target: "5000".into(),
        },
        Row {
            what: "creates alone, no operator: the server's ceiling (s)".into(),
            value: format!("{:.1}", ceiling.as_secs_f64()),
            target: String::new(),
        },
        Row {
            what: "creates with the operator running (s)".into(),
            value: format!("{:.1}", applied_in.as_secs_f64()),
            target: String::new(),
        },
        Row {
            what: "all Active, after the last create (s)".into(),
            value: format!("{:.1}", after_last_create.as_secs_f64()),
            target: "10".into(),
        },
        Row {
            what: "VaultKey reconciles".into(),
            value: format!("{reconciles:.0}"),
            target: format!(
                "~{} (one per event a key causes: create, finalizer, Secret, status)",
                4 * n
            ),
        },
        Row {
            what: "reconciles per second".into(),
            value: format!("{:.0}", reconciles / ready_in.as_secs_f64()),
            target: String::new(),
        },
        Row {
            what: "failed reconciles".into(),
            value: format!("{failures:.0}"),
            target: "0".into(),
        },
        Row {
            what: "API writes per key, operator (incl. Events)".into(),
            value: format!("{operator_writes_per_key:.2}"),
            target: "finalizer + Secret + status + Event(x2 views) = 5".into(),
        },
        Row {
            what: "operator RSS idle (MiB)".into(),
            value: format!("{idle:.1}"),
            target: String::new(),
        },
        Row {
            what: "operator peak RSS (MiB)".into(),
            value: format!("{:.1}", hwm.max(peak_rss)),
            target: String::new(),
        },
    ];
    println!("\nsuccessful writes by verb and resource (the API server's own count):");
    for (what, count) in &by_kind {
        println!("  {what:<40} {count}");
    }
    print_table(
        "operator scale (kube-apiserver + etcd + redis-server + release keybrake-operator)",
        &rows,
    );
    let path = write_results(
        "operator-scale",
        &json!({
            "keys": n, "ceiling_created_s": ceiling.as_secs_f64(), "created_s": applied_in.as_secs_f64(),
            "all_active_s": ready_in.as_secs_f64(), "active_after_last_create_s": after_last_create.as_secs_f64(),
            "reconciles": reconciles, "reconciles_per_s": reconciles / ready_in.as_secs_f64(), "failures": failures,
            "api_writes_per_key": operator_writes_per_key, "rss_idle_mib": idle, "rss_peak_mib": hwm.max(peak_rss),
        }),
    )?;
    println!("\nresults: {}", path.display());
    drop(operator);
    drop(server);
    Ok(())
}
