#!/usr/bin/env bash
# Webhook receiver benchmark, release build, one sitting, wrk on loopback (bounded runs):
#   1. the HTTP ceiling: GET /healthz of the same finworker server (a static 200);
#   2. finworker: POST /api/webhooks/emp/bench with valid SHA-256-signed Genesis notifications,
#      each a new unique_id, durable storage on (verify, group commit, then the echo) — as fast
#      as it goes, then at fixed offered loads (RATES, default 2000 and 10000 req/s);
#   3. what a web developer would write: ../shared/bench/receiver_aiohttp.py --mode db (aiohttp +
#      asyncpg, a commit per request) with the same notifications as JSON, as fast as it goes and
#      at the same offered loads.
# After each finworker run every acknowledged delivery is counted in Postgres.
# The daemon runs HTTP only (--no-workers): the receiver is measured, not the processing.
# 256 connections: a gateway's burst after an outage, retrying many deliveries at once (with 64,
# throughput is capped at 64 / commit latency).
# Usage: scripts/bench-webhooks.sh    DURATION=10s CONNS=256 RATES="2000 10000"
source "$(dirname "$0")/bench-lib.sh"
DURATION=${DURATION:-10s}
CONNS=${CONNS:-256}
RATES=${RATES:-"2000 10000"}
PORT=${PORT:-18480}
AIO_PORT=${AIO_PORT:-18481}
VENV=${VENV:-/var/tmp/fw-bench}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import aiohttp, asyncpg" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r ../shared/bench/requirements.txt
fi
q() { psql -X -q -t -A -h 127.0.0.1 -p 5432 -U finworker -d "$1" -c "$2"; }
PASSWORD=bench-webhook-password-0123456789
export FINWORKER__GATEWAY__ACCOUNTS__BENCH__ENDPOINT=http://127.0.0.1:9
export FINWORKER__GATEWAY__ACCOUNTS__BENCH__TERMINAL_TOKEN=bench
export FINWORKER__GATEWAY__ACCOUNTS__BENCH__USERNAME=bench
export FINWORKER__GATEWAY__ACCOUNTS__BENCH__PASSWORD=$PASSWORD
export FINWORKER__HTTP__BIND=127.0.0.1:$PORT
export FINWORKER__SWEEPER__ENABLED=false FINWORKER__BILLING__RECURRING=false
export FINWORKER__LIFECYCLE__RECONCILE_SCHEDULE="" FINWORKER__LIFECYCLE__LEDGER_SYNC_SCHEDULE=""
export FINWORKER__LIFECYCLE__SWEEP_SCHEDULE="" FINWORKER__LIFECYCLE__BIC_BLACKLIST_SCHEDULE=""

# Notifications: one per line, form-encoded (finworker) and JSON (aiohttp), ~330 bytes each. Each
# finworker run has a file of its own (new unique_ids: a repeat would be counted, not stored).
PER_RUN=${PER_RUN:-300000}
FW_RUNS=$((1 + $(wc -w <<<"$RATES")))
python3 - "$WORK" "$PER_RUN" "$FW_RUNS" "$PASSWORD" <<'PY'
import hashlib, json, sys, urllib.parse
work, n, runs, pw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def fields(i):
    uid = f"bench{i:027x}"
    return {"transaction_id": f"fw-bench-{i}", "unique_id": uid, "transaction_type": "sdd_sale",
            "terminal_token": "bench", "status": "approved", "amount": str(1000 + i % 5000),
            "currency": "EUR", "signature": hashlib.sha256((uid + pw).encode()).hexdigest()}
for r in range(runs):
    with open(f"{work}/form-{r}.txt", "w") as f:
        for i in range(r * n, (r + 1) * n):
            f.write(urllib.parse.urlencode(fields(i)) + "\n")
with open(f"{work}/json.txt", "w") as j:
    for i in range(n):
        j.write(json.dumps(fields(i)) + "\n")
PY
# The Lua script: each wrk thread takes every k-th line from its own offset and counts 200s.
# With a RATE, each thread hands out send times on a fixed schedule (rate / threads per second,
# whatever the answers' latency: an open loop, as long as connections are free) — the offered load.
cat > "$WORK/post.lua" <<'LUA'
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_usec; } fw_timeval; int gettimeofday(fw_timeval *tv, void *tz); ]]
local tv = ffi.new("fw_timeval")
local function now_ms() ffi.C.gettimeofday(tv, nil); return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000 end
local threads, counter = {}, 0
function setup(thread)
  thread:set("id", counter); counter = counter + 1; table.insert(threads, thread)
end
function init(args)
  local file, ctype, nthreads, rate = args[1], args[2], tonumber(args[3]), tonumber(args[4]) or 0
  interval = rate > 0 and 1000 * nthreads / rate or 0
  bodies, i = {}, 0
  local n = 0
  for line in io.lines(file) do
    if n % nthreads == id then bodies[#bodies + 1] = line end
    n = n + 1
  end
  wrk.method = "POST"; wrk.headers["Content-Type"] = ctype
  ok, other = 0, 0
end
function request()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[(i - 1) % #bodies + 1])
end
function delay()
  if interval == 0 then return 0 end
  local t = now_ms()
  if next_at == nil or next_at < t - 1000 then next_at = t end
  next_at = next_at + interval
  local d = next_at - t
  if d < 0 then return 0 end
  return d
end
function response(status, headers, body)
  if status == 200 then ok = ok + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local o, x = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); x = x + t:get("other") end
  io.write(string.format("RESULT requests=%d ok=%d other=%d errors=%d seconds=%.2f rps=%.0f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
    summary.requests, o, x, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
LUA
cat > "$WORK/get.lua" <<'LUA'
function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d seconds=%.2f rps=%.0f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
LUA

"$BIN" run --no-workers >"$WORK/daemon.log" 2>&1 &
FW_PID=$!
PIDS+=($FW_PID)
ticks() { local s=0; for p in "$@"; do s=$((s + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $s; }
cores() { python3 -c "import sys; a,b,t0,t1=map(float,sys.argv[1:]); print(f'{(b-a)/100/(t1-t0):.2f}')" "$@"; }
until curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null; do sleep 0.2; done
AIO_DB="fw_bench_aio_$$"
psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d finworker -c "CREATE DATABASE $AIO_DB"
trap 'bench_cleanup; psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d finworker -c "DROP DATABASE IF EXISTS $AIO_DB WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
BENCH_PG_DSN="postgresql://finworker:$PGPASSWORD@127.0.0.1:5432/$AIO_DB" \
  "$VENV/bin/python" ../shared/bench/receiver_aiohttp.py --port "$AIO_PORT" --mode db >"$WORK/aio.log" 2>&1 &
PIDS+=($!)
until curl -s -o /dev/null "http://127.0.0.1:$AIO_PORT/"; do sleep 0.2; done

acked_total=0
run() { # run <label> <url> <lua> <file> <ctype> [rate]
  local label=$1 url=$2 lua=$3 file=${4:-} ctype=${5:-} rate=${6:-0}
  local out fw0 pg0 bo0 t0 t1
  fw0=$(ticks "$FW_PID"); pg0=$(ticks $(pgrep -x postgres)); bo0=$(ticks $(pgrep -x pgbouncer)); t0=$(date +%s.%N)
  out=$(wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$lua" "$url" -- "$file" "$ctype" 2 "$rate" 2>&1 | grep '^RESULT' || true)
  t1=$(date +%s.%N)
  out="$out cpu_cores[finworker=$(cores "$fw0" "$(ticks "$FW_PID")" "$t0" "$t1") postgres=$(cores "$pg0" "$(ticks $(pgrep -x postgres))" "$t0" "$t1") pgbouncer=$(cores "$bo0" "$(ticks $(pgrep -x pgbouncer))" "$t0" "$t1")]"
  [ "$rate" = 0 ] && rate=
  printf '%-44s %s\n' "$label${rate:+ @ $rate/s offered}" "${out#RESULT }"
  if [[ $label == finworker* && $out == *ok=* ]]; then
    local ok=${out#*ok=}; acked_total=$((acked_total + ${ok%% *}))
  fi
}
FORM=application/x-www-form-urlencoded
echo "== same sitting: $(nproc) cores, wrk -t2, $DURATION per run, $CONNS connections unless paced"
run "ceiling: finworker GET /healthz" "http://127.0.0.1:$PORT/healthz" "$WORK/get.lua"
run "finworker POST /api/webhooks/emp (durable)" "http://127.0.0.1:$PORT/api/webhooks/emp/bench" "$WORK/post.lua" "$WORK/form-0.txt" $FORM
run "aiohttp+asyncpg --mode db" "http://127.0.0.1:$AIO_PORT/webhook" "$WORK/post.lua" "$WORK/json.txt" application/json
k=0
for r in $RATES; do
  k=$((k + 1))
  run "finworker POST /api/webhooks/emp (durable)" "http://127.0.0.1:$PORT/api/webhooks/emp/bench" "$WORK/post.lua" "$WORK/form-$k.txt" $FORM "$r"
  run "aiohttp+asyncpg --mode db" "http://127.0.0.1:$AIO_PORT/webhook" "$WORK/post.lua" "$WORK/json.txt" application/json "$r"
done
stored=$(q "$DB" "SELECT count(*) + coalesce(sum(repeats), 0) FROM webhook_deliveries WHERE verdict = 'accepted'")
rows=$(q "$DB" "SELECT count(*) FROM webhook_deliveries")
# wrk stops with requests in flight: those are stored but their answer is never read, so
# stored may exceed acknowledged by at most the connections of the runs; never the reverse.
echo "acknowledged by finworker (200 + echo): $acked_total; in Postgres afterwards: $stored (rows $rows, repeats counted on their first)"
if [ "$stored" -ge "$acked_total" ] && [ $((stored - acked_total)) -le $((CONNS * FW_RUNS)) ]; then
  echo "every acknowledged delivery is stored ($((stored - acked_total)) more were stored whose answers wrk did not wait for at the end of a run)"
else
  echo "MISMATCH"; exit 1
fi
