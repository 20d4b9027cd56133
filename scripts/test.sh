#!/usr/bin/env bash
# Runs every test against real Postgres, PgBouncer (transaction mode) and Redis on loopback,
# and an S3-protocol server (moto), setting them up first if needed (scripts/setup.sh). Extra arguments go to cargo nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-s3
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi
exec cargo nextest run --workspace "$@"
