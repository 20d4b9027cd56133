#!/usr/bin/env bash
# Runs the demo pipeline: sets up Postgres, PgBouncer and Redis if needed, builds finworker,
# then `finworker demo`: a fresh database `finworker_demo`, jobs over HTTP and in bulk, upload →
# validation → VOP/BAV → VOP report → billing run → notifications, a chargeback, reconciliation
# → ledger sync against the sandbox provider, a summary table; then it keeps serving the
# dashboard until Ctrl-C (add --exit to stop after the summary). Arguments go to `finworker demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Local development credentials created by setup.sh; production sets its own.
export FINWORKER__DATABASE__PASSWORD="${FINWORKER__DATABASE__PASSWORD:-finworker}"
# Only warnings and errors on stderr: the demo prints its own story on stdout.
export FINWORKER__LOG__LEVEL="${FINWORKER__LOG__LEVEL:-warn}"
target="${CARGO_TARGET_DIR:-target}"
if [ ! -x "$target/release/finworker" ]; then
  echo "demo: building finworker (release) for the first time: about 5 minutes on 2 cores; cargo shows its progress below" >&2
fi
# Not --quiet: cargo's own progress bar ("Building [====>   ] 210/380") is the progress.
cargo build --release --bin finworker
exec "$target/release/finworker" demo "$@"
