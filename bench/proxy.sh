#!/usr/bin/env bash
# Proxy benchmark: direct vs nginx vs keybrake-proxy on loopback, in one run. Installs what it
# drives (scripts/install-deps, nginx among them) and matplotlib (PyPI) if missing, builds release
# binaries, prints the table beside the targets, writes bench/results/proxy.json and
# bench/results/proxy-latency.png. BENCH_SECS (default 10) sets the length of each measured run;
# BENCH_SMOKE=1 BENCH_SECS=1 is the few-second run CI makes (tests/tests/e2e/benchmarks.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps >/dev/null
python3 -c "import matplotlib" 2>/dev/null || pip install -q "matplotlib==3.9.2"
cargo build --release -q -p keybrake-proxy -p keybrake-operator -p keybrake-bench
target/release/proxy-bench
python3 bench/plot.py
