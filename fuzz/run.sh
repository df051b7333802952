#!/usr/bin/env bash
# Runs each libFuzzer target for SECONDS (default 60). cargo-fuzz needs nightly flags; on the
# project's stable toolchain RUSTC_BOOTSTRAP=1 enables them. Crashes land in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
for target in data_path_request issuance_request money_and_endpoints; do
  echo "== $target"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="${1:-60}" -print_final_stats=1 2>&1 \
    | grep -E "stat::number_of_executed_units|stat::peak_rss|ERROR|panicked" || true
done
