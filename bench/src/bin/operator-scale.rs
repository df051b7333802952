//! Operator scale: applies N VaultKeys (default 5,000) to kube-lite and reports the time until
//! all are Active, reconciles per second, API writes per key and the operator's peak memory.
//! Run with `bash bench/operator-scale.sh [N]`.

use std::{sync::Arc, time::Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use keybrake_bench::{
    Proc, Row, bin_dir, free_port, http_get, print_table, setup_stripe_policy, start_redis,
    wait_tcp, write_results,
};
use keybrake_crds::{KeyPhase, VaultKey};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn current_rv(client: &Client) -> Result<u64> {
    let list = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await?;
    Ok(list
        .metadata
        .resource_version
        .context("list without resourceVersion")?
        .parse()?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5000);
    let server = kube_lite::KubeLite::start(kube_lite::Options {
        history: Some(200_000),
        ..Default::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig())?;
    let client = Client::try_from(kube::Config::new(server.url().parse()?))?;
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

    let keys: Api<VaultKey> = Api::namespaced(client.clone(), "bench");
    let rv_start = current_rv(&client).await?;
    let started = Instant::now();
    let keys_arc = Arc::new(keys.clone());
    let created: Vec<Result<()>> = stream::iter(0..n)
        .map(|i| {
            let keys = keys_arc.clone();
            async move {
                let vk: VaultKey = serde_json::from_value(json!({
                    "apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey", "metadata": {"name": format!("run-{i:05}")},
                    "spec": {"policyRef": {"name": "stripe"}, "dailyUsdCap": 50, "ttl": "2h", "runLabel": format!("bench/run-{i}")}
                }))?;
                keys.create(&PostParams::default(), &vk).await?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    created.into_iter().collect::<Result<Vec<_>>>()?;
    let applied_in = started.elapsed();

    let mut peak_rss: f64 = 0.0;
    let ready_in = loop {
        let list = keys.list(&ListParams::default()).await?;
        let active = list
            .items
            .iter()
            .filter(|k| k.status.as_ref().and_then(|s| s.phase) == Some(KeyPhase::Active))
            .count();
        peak_rss = peak_rss.max(operator.memory_mib().1);
        if active == n {
            break started.elapsed();
        }
        if started.elapsed().as_secs() > 900 {
            bail!("only {active} of {n} keys Active after 15 minutes");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    // Let the tail of reconciles (status settling, events) finish before counting writes.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let rv_end = current_rv(&client).await?;
    let text = http_get(metrics_port, "/metrics").await?;
    let reconciles = metric(
        &text,
        "keybrake_operator_reconciles_total{kind=\"vaultkey\"}",
    );
    let failures: f64 = text
        .lines()
        .filter(|l| l.starts_with("keybrake_operator_reconcile_failures_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b);
    let (hwm, _) = operator.memory_mib();
    let writes = (rv_end - rv_start) as f64;
    let operator_writes_per_key = (writes - n as f64) / n as f64;

    let rows = vec![
        Row {
            what: "keys".into(),
            value: n.to_string(),
            target: "5000".into(),
        },
        Row {
            what: "keys created by the client (s)".into(),
            value: format!("{:.1}", applied_in.as_secs_f64()),
            target: String::new(),
        },
        Row {
            what: "time until all Active (s)".into(),
            value: format!("{:.1}", ready_in.as_secs_f64()),
            target: String::new(),
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
    let by_kind = server.store.lock().writes_since(rv_start);
    println!("\nwrites by resource (retained history since the first key):");
    for ((plural, kind), count) in &by_kind {
        println!("  {plural:<40} {kind:<9} {count}");
    }
    print_table(
        "operator scale (kube-lite + redis-server + release keybrake-operator)",
        &rows,
    );
    let path = write_results(
        "operator-scale",
        &json!({
            "keys": n, "created_s": applied_in.as_secs_f64(), "all_active_s": ready_in.as_secs_f64(),
            "reconciles": reconciles, "reconciles_per_s": reconciles / ready_in.as_secs_f64(), "failures": failures,
            "api_writes_per_key": operator_writes_per_key, "rss_idle_mib": idle, "rss_peak_mib": hwm.max(peak_rss),
        }),
    )?;
    println!("\nresults: {}", path.display());
    drop(operator);
    server.shutdown().await;
    Ok(())
}
