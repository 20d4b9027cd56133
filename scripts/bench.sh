#!/usr/bin/env bash
# The queue benchmark of the foundation issue, release build, with redis-benchmark beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FINWORKER__DATABASE__PASSWORD="${FINWORKER__DATABASE__PASSWORD:-finworker}"
export FINWORKER__LOG__LEVEL="${FINWORKER__LOG__LEVEL:-warn}"
exec cargo run --release --quiet -- bench queue "${@:---jobs=100000}"
