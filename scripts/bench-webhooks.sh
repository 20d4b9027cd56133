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
# Usage: scripts/bench-webhooks.sh    DURATION=10s CONNS=64 RATES="2000 10000"
source "$(dirname "$0")/bench-lib.sh"
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
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
# The Lua script: each wrk thread takes every k-th line from its own offset; with RATE set, each
# connection waits 1000*CONNS/RATE ms between requests (the offered load); counts 200s.
cat > "$WORK/post.lua" <<'LUA'
local threads, counter = {}, 0
function setup(thread)
  thread:set("id", counter); counter = counter + 1; table.insert(threads, thread)
end
function init(args)
  local file, ctype, nthreads = args[1], args[2], tonumber(args[3])
  delay_ms = tonumber(args[4]) or 0
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
function delay() return delay_ms end
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
PIDS+=($!)
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
  local label=$1 url=$2 lua=$3 file=${4:-} ctype=${5:-} rate=${6:-} delay=0 conns=$CONNS
  if [ -n "$rate" ]; then conns=$(( rate / 100 < CONNS ? rate / 100 : CONNS )); [ "$conns" -lt 2 ] && conns=2
    delay=$(( 1000 * conns / rate )); fi
  local out
  out=$(wrk -t2 -c"$conns" -d"$DURATION" --latency -s "$lua" "$url" -- "$file" "$ctype" 2 "$delay" 2>&1 | grep '^RESULT' || true)
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
echo "acknowledged by finworker (200 + echo): $acked_total; in Postgres afterwards: $stored (rows $rows, repeats counted on their first)"
[ "$acked_total" = "$stored" ] && echo "every acknowledged delivery is stored" || { echo "MISMATCH"; exit 1; }
