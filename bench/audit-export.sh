#!/usr/bin/env bash
# Audit export benchmark: 1,000,000 audit entries from Redis to PostgreSQL by two sinks, then a
# steady load at the proxy's saturation rate. Builds release binaries, runs once, prints the
# table beside its anchors and writes bench/results/audit-export.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps >/dev/null
cargo build --release -q -p keybrake-bench --bin audit-export
exec target/release/audit-export
