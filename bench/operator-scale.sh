#!/usr/bin/env bash
# Operator scale benchmark: N VaultKeys (default 5000) against the real kube-apiserver and etcd
# (the control plane scripts/install-deps builds) and a real Redis.
# Builds release binaries (into $CARGO_TARGET_DIR when set), runs once, prints the table and writes
# bench/results/operator-scale.json. KEYBRAKE_BENCH_DEADLINE_S (default 600) bounds the run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps >/dev/null
cargo build --release -q -p keybrake-operator -p keybrake-bench
exec "${CARGO_TARGET_DIR:-target}/release/operator-scale" "${1:-5000}"
