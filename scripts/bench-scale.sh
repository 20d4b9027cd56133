#!/usr/bin/env bash
# How throughput grows with worker processes sharing one Redis and one Postgres through
# PgBouncer (docs/scaling.md): `finworker bench scale`, release build, for the queue alone
# (noop) and for jobs that commit a row each (effect). Arguments go to both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FINWORKER__DATABASE__PASSWORD="${FINWORKER__DATABASE__PASSWORD:-finworker}"
export FINWORKER__LOG__LEVEL="${FINWORKER__LOG__LEVEL:-warn}"
cargo build --release --quiet --bin finworker
bin="${CARGO_TARGET_DIR:-target}/release/finworker"
"$bin" bench scale --job noop --jobs 200000 "$@"
"$bin" bench scale --job effect --jobs 100000 "$@"
