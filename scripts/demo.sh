#!/usr/bin/env bash
# Runs the demo pipeline: sets up Postgres, PgBouncer and Redis if needed, builds finworker,
# migrates, starts the daemon, enqueues a batch of jobs and prints what happened.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Local development credentials created by setup.sh; production sets its own.
export FINWORKER__DATABASE__PASSWORD="${FINWORKER__DATABASE__PASSWORD:-finworker}"
# Only warnings and errors on stderr: the demo prints its own story on stdout.
export FINWORKER__LOG__LEVEL="${FINWORKER__LOG__LEVEL:-warn}"
exec cargo run --release --quiet -- demo "$@"
