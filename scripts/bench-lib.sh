# Sourced by the bench-*.sh scripts: set-up, a release build, a fresh database and Redis
# namespace of their own, and a clean-up on exit that stops every process listed in PIDS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export FINWORKER__DATABASE__PASSWORD="${FINWORKER__DATABASE__PASSWORD:-finworker}"
export PGPASSWORD="$FINWORKER__DATABASE__PASSWORD"
export FINWORKER__LOG__LEVEL="${FINWORKER__LOG__LEVEL:-warn}"
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/finworker"
WORK=$(mktemp -d /var/tmp/fw-bench-XXXXXX)
DB="fw_bench_$$"
export FINWORKER__DATABASE__URL="postgres://finworker@127.0.0.1:6432/$DB"
export FINWORKER__DATABASE__DIRECT_URL="postgres://finworker@127.0.0.1:5432/$DB"
export FINWORKER__REDIS__PREFIX="fwbench$$"
export FINWORKER__STORAGE__LOCAL_ROOT="$WORK/storage"
export FINWORKER__HTTP__API_TOKEN="bench-token-0123456789"
PIDS=()
# drop_db NAME: an autovacuum worker in it cannot be terminated by the app role, so wait for it
# a little, then ask the postgres superuser when this script can become it (on a 10M-row table
# autovacuum can run for minutes, and each database left behind holds gigabytes).
drop_db() {
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d finworker -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" 2>/dev/null && return 0
    sleep 1
  done
  su postgres -c "psql -X -q -c 'DROP DATABASE IF EXISTS $1 WITH (FORCE)'" 2>/dev/null ||
    echo "note: database $1 is left behind (drop it as the postgres superuser)" >&2
}
bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  drop_db "$DB"
  redis-cli --scan --pattern "$FINWORKER__REDIS__PREFIX:*" | xargs -r redis-cli del >/dev/null || true
  rm -rf "$WORK"
}
trap bench_cleanup EXIT
psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d finworker -c "CREATE DATABASE $DB"
"$BIN" migrate >/dev/null
