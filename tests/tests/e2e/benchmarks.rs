//! The benchmarks still run. Each is run here in its smoke form (`BENCH_SMOKE=1`, one-second
//! phases, small sizes) from the debug build, and must end well and write its results. No figure
//! is asserted but the accounting's: timing belongs to the benchmarks themselves (`bench/`), on a
//! quiet machine.

use std::process::Command;

use anyhow::{Context, Result};
use keybrake_e2e::processes::binary;
use serde_json::Value;

/// Runs benchmark `name` with `args` in its smoke form; the JSON it wrote as `results`.
fn smoke(name: &str, args: &[&str], results: &str) -> Result<Value> {
    let out_dir = tempfile::tempdir()?;
    let out = Command::new(binary(name)?)
        .args(args)
        .env("BENCH_SMOKE", "1")
        .env("BENCH_SECS", "1")
        .env("BENCH_RESULTS_DIR", out_dir.path())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{name} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = out_dir.path().join(format!("{results}.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("{name} wrote no {path:?}"))?;
    Ok(serde_json::from_str(&text)?)
}

#[test]
fn the_proxy_benchmark_runs() -> Result<()> {
    let r = smoke("proxy-bench", &[], "proxy")?;
    for target in ["direct", "nginx", "keybrake"] {
        assert!(
            r["saturation"][target]["ok"].as_u64() > Some(0),
            "{target} answered nothing: {r:#}"
        );
    }
    // The one figure that is not a timing: 500 callers on a $50 key move no more than $50.
    assert_eq!(r["accounting"]["overshoot_recorded_micros"], 0, "{r:#}");
    assert_eq!(r["accounting"]["overshoot_seen_micros"], 0, "{r:#}");
    Ok(())
}

#[test]
fn the_audit_export_benchmark_runs() -> Result<()> {
    let r = smoke("audit-export", &[], "audit-export")?;
    assert!(r["backlog_entries_per_s"].as_f64() > Some(0.0), "{r:#}");
    Ok(())
}

#[test]
fn the_operator_scale_benchmark_runs() -> Result<()> {
    let r = smoke("operator-scale", &["20"], "operator-scale")?;
    assert_eq!(r["keys"], 20, "{r:#}");
    Ok(())
}
