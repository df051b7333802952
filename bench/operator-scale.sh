#!/usr/bin/env bash
# Operator scale benchmark: N VaultKeys (default 5000) against the real kube-apiserver and etcd
# (the control plane scripts/install-deps builds) and a real Redis.
# Builds release binaries, runs once, prints the table and writes bench/results/operator-scale.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps >/dev/null
cargo build --release -q -p keybrake-operator -p keybrake-bench
exec target/release/operator-scale "${1:-5000}"
