//! Audit export: 1,000,000 audit entries exported from Redis to PostgreSQL by two sinks (two
//! proxy replicas), then a steady load at the proxy's measured saturation rate; prints entries
//! per second and the export lag beside their anchors. Run with `bash bench/audit-export.sh`.
//!
//! The backlog is written with pipelined XADDs carrying exactly the fields the scripts write
//! (running a million calls through the scripts would measure them, not the export).

use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use keybrake_audit::{AuditDbFlags, Db, ExportMetrics, Sink, metrics::StreamLabel};
use keybrake_bench::{Row, print_table, start_redis, write_results};
use keybrake_ledger::{
    Keyspace, Ledger, LedgerConfig, PolicyTag,
    connection::{ConnectConfig, Connection, Mode},
};
use serde_json::json;

/// Entries in the backlog.
const FULL_BACKLOG: usize = 1_000_000;
/// Policies (streams) the entries are spread over.
const POLICIES: usize = 4;
/// The proxy's saturation on this kind of machine (bench/results/proxy.json, 2 cores): every
/// metered call writes one entry, so an export slower than this falls behind a saturated proxy.
const PROXY_CALLS_PER_SEC: f64 = 11_938.0;
/// How long the steady phase runs.
const FULL_STEADY: Duration = Duration::from_secs(20);

fn fields(i: usize) -> Vec<(&'static str, String)> {
    vec![
        ("id", format!("bench{i:08}")),
        ("ts", jiff::Timestamp::now().as_millisecond().to_string()),
        ("key", format!("kb_bench_{}", i % 50)),
        ("vk", format!("bench/run-{}", i % 50)),
        ("run", format!("bench/run-{}", i % 500)),
        ("vendor", "stripe".into()),
        ("method", "POST".into()),
        ("path", "/v1/payment_intents".into()),
        ("estimate", "12500000".into()),
        ("actual", "12500000".into()),
        ("status", "200".into()),
        ("request_id", format!("req_{i}")),
        ("outcome", "ok".into()),
        ("rule", String::new()),
        ("overshoot", "0".into()),
    ]
}

/// Appends entries `from..to`, spread over the streams, in pipelines of 1,000.
async fn produce(
    conn: &mut redis::aio::MultiplexedConnection,
    streams: &[String],
    from: usize,
    to: usize,
) -> Result<()> {
    for chunk in (from..to).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.xadd(&streams[i % streams.len()], "*", &fields(i))
                .ignore();
        }
        let _: () = pipe.query_async(conn).await?;
    }
    Ok(())
}

fn lag(metrics: &ExportMetrics, tags: &[PolicyTag]) -> (i64, f64) {
    tags.iter().fold((0, 0.0f64), |(n, s), t| {
        let label = StreamLabel {
            stream: t.as_str().to_owned(),
        };
        (
            n + metrics.lag_entries.get_or_create(&label).get(),
            s.max(metrics.lag_seconds.get_or_create(&label).get()),
        )
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let (backlog, steady) = if keybrake_bench::smoke() {
        (10_000, Duration::from_secs(2))
    } else {
        (FULL_BACKLOG, FULL_STEADY)
    };
    let (_redis, port) = start_redis().await?;
    let redis_url = format!("redis://127.0.0.1:{port}/");
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let pg = keybrake_cli::postgres::LocalPostgres::start(dir.path()).await?;
    let flags = AuditDbFlags {
        batch: 1000,
        ..AuditDbFlags::at(&pg.url())
    };
    let db = Db::connect(&flags).await?;

    let keys = Keyspace::new("bench");
    let tags: Vec<PolicyTag> = (0..POLICIES)
        .map(|i| PolicyTag::of("bench", &format!("policy-{i}")))
        .collect();
    let streams: Vec<String> = tags.iter().map(|t| keys.policy(t).audit()).collect();
    let mut conn = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    for t in &tags {
        let _: () = redis::cmd("SADD")
            .arg(keys.policy_index())
            .arg(t.as_str())
            .query_async(&mut conn)
            .await?;
    }
    let started = Instant::now();
    produce(&mut conn, &streams, 0, backlog).await?;
    let fill = started.elapsed();
    println!("backlog: {backlog} entries written in {fill:.1?}");

    // Two sinks, as two proxy replicas run them.
    let metrics = ExportMetrics::default();
    let ledger = {
        let c = keybrake_ledger::connection::connect(&ConnectConfig::new(
            Mode::Single,
            &redis_url,
            "",
            Duration::from_secs(2),
        ))
        .await
        .context("connecting the sinks to Redis")?;
        Ledger::<Connection>::new(c, keys.clone(), LedgerConfig::default())
    };
    let sinks: Vec<_> = ["replica-a", "replica-b"]
        .into_iter()
        .map(|name| {
            tokio::spawn(Sink::new(ledger.clone(), db.clone(), name, &flags, metrics.clone()).run())
        })
        .collect();
    let started = Instant::now();
    let mut peak_lag = 0i64;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let exported = metrics.exported.get();
        peak_lag = peak_lag.max(lag(&metrics, &tags).0);
        if exported >= backlog as u64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1200),
            "the backlog was not exported in 20 minutes ({exported} of {backlog})"
        );
    }
    let drain = started.elapsed();
    let backlog_rate = backlog as f64 / drain.as_secs_f64();

    // Steady: entries arrive at the proxy's saturation rate while the sinks export.
    let per_tick = (PROXY_CALLS_PER_SEC / 10.0) as usize;
    let started = Instant::now();
    let mut next = backlog;
    let mut worst_lag_s = 0.0f64;
    let mut worst_lag_n = 0i64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < steady {
        tick.tick().await;
        produce(&mut conn, &streams, next, next + per_tick).await?;
        next += per_tick;
        let (n, s) = lag(&metrics, &tags);
        worst_lag_n = worst_lag_n.max(n);
        worst_lag_s = worst_lag_s.max(s);
    }
    let steady_rate = (next - backlog) as f64 / started.elapsed().as_secs_f64();
    let caught_up = Instant::now();
    while metrics.exported.get() < next as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        anyhow::ensure!(
            caught_up.elapsed() < Duration::from_secs(120),
            "the steady load was not exported"
        );
    }
    let tail = caught_up.elapsed();
    for s in sinks {
        s.abort();
    }
    let (client, conn_task) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn_task);
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT (policy_tag, stream_id)) FROM calls",
            &[],
        )
        .await?;
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    anyhow::ensure!(
        rows == next as i64 && distinct == rows,
        "{rows} rows ({distinct} distinct) for {next} entries"
    );
    let mut stream_left = 0u64;
    for s in &streams {
        let n: u64 = redis::cmd("XLEN").arg(s).query_async(&mut conn).await?;
        stream_left += n;
    }

    let rows_out = vec![
        Row {
            what: "backlog exported (entries/s, 2 sinks)".into(),
            value: format!("{backlog_rate:.0}"),
            target: format!(
                ">= {PROXY_CALLS_PER_SEC:.0} (the proxy's saturation, one entry per call)"
            ),
        },
        Row {
            what: format!("{backlog}-entry backlog drained in"),
            value: format!("{:.1} s", drain.as_secs_f64()),
            target: format!(
                "<= {:.0} s at that rate",
                backlog as f64 / PROXY_CALLS_PER_SEC
            ),
        },
        Row {
            what: "steady load (entries/s)".into(),
            value: format!("{steady_rate:.0}"),
            target: format!("{PROXY_CALLS_PER_SEC:.0}"),
        },
        Row {
            what: "worst export lag under it (entries)".into(),
            value: worst_lag_n.to_string(),
            target: "bounded (not growing)".into(),
        },
        Row {
            what: "worst export lag under it (s, oldest entry)".into(),
            value: format!("{worst_lag_s:.2}"),
            target: "< 300 (the KeybrakeAuditExportLagging alert)".into(),
        },
        Row {
            what: "caught up after the load stopped in".into(),
            value: format!("{:.2} s", tail.as_secs_f64()),
            target: "".into(),
        },
        Row {
            what: "rows / entries, duplicates".into(),
            value: format!("{rows} / {next}, {}", rows - distinct),
            target: "equal, 0".into(),
        },
        Row {
            what: "entries left in Redis after export".into(),
            value: stream_left.to_string(),
            target: format!("<= {POLICIES} (one per stream is kept until the next trim)"),
        },
    ];
    print_table("Audit export: Redis streams to PostgreSQL", &rows_out);
    let path = write_results(
        "audit-export",
        &json!({
            "backlog_entries": backlog,
            "streams": POLICIES,
            "sinks": 2,
            "batch": flags.batch,
            "backlog_fill_s": fill.as_secs_f64(),
            "backlog_drain_s": drain.as_secs_f64(),
            "backlog_entries_per_s": backlog_rate,
            "backlog_peak_lag_entries": peak_lag,
            "steady_entries_per_s": steady_rate,
            "steady_worst_lag_entries": worst_lag_n,
            "steady_worst_lag_s": worst_lag_s,
            "catch_up_s": tail.as_secs_f64(),
            "rows": rows,
            "duplicates": rows - distinct,
            "anchor_proxy_calls_per_s": PROXY_CALLS_PER_SEC,
        }),
    )?;
    println!("\nwrote {}", path.display());
    Ok(())
}
