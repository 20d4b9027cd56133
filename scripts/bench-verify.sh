#!/usr/bin/env bash
# Validation and VOP/BAV benchmarks, release build, worker daemons in their own processes:
#   1. validation of VALIDATE_ROWS imported debtors (default 1,000,000) end to end (read,
#      check, write results): debtors/s, from the upload's completion to its validated_at;
#   2. VOP/BAV of VOP_ROWS debtors (default 10,000 = 20,000 calls) against `finworker
#      sandbox` answering after 20 ms, with a limit of VOP_RATE req/s (default 500) shared
#      by two worker processes: achieved req/s (from the sandbox's own call log) against the
#      limit, the busiest second, and the workers' CPU during verification.
# Usage: scripts/bench-verify.sh
source "$(dirname "$0")/bench-lib.sh"
VALIDATE_ROWS=${VALIDATE_ROWS:-1000000}
VOP_ROWS=${VOP_ROWS:-10000}
VOP_RATE=${VOP_RATE:-500}
SANDBOX_PORT=${SANDBOX_PORT:-9311}
q() { psql -X -q -t -A -h 127.0.0.1 -p 5432 -U finworker -d $DB -c "$1"; }
ticks() { # CPU ticks (user+system) of the given pids
  local s=0
  for p in "$@"; do s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done
  echo $s
}
wait_for() { # wait_for <sql returning t/f>
  until [ "$(q "$1")" = "t" ]; do sleep 0.2; done
}

echo "== Validation of $VALIDATE_ROWS imported debtors (one worker process, VOP off)"
f="$WORK/validate.csv"
"$BIN" gen debtors --rows "$VALIDATE_ROWS" --seed 11 --duplicates 0 --malformed 0 --out "$f" >/dev/null
FINWORKER__VOP__ENABLED=false "$BIN" run --no-http >"$WORK/validate.log" 2>&1 &
PIDS+=($!)
id=$("$BIN" upload "$f" --no-wait)
wait_for "SELECT validated_at IS NOT NULL FROM uploads WHERE id = '$id'"
q "SELECT format('  %s debtors imported, %s valid, %s invalid; import %s s; validation %s s = %s debtors/s (target >= 100000)',
     rows_imported, rows_valid, rows_invalid,
     round(extract(epoch from finished_at - split_at)::numeric, 2),
     round(extract(epoch from validated_at - finished_at)::numeric, 2),
     round(rows_imported / extract(epoch from validated_at - finished_at))::bigint)
   FROM uploads WHERE id = '$id'"
q "SELECT format('  findings written: %s (%s)', count(*), string_agg(DISTINCT code, ', ')) FROM debtor_issues"
kill "${PIDS[@]}"; wait 2>/dev/null || true; PIDS=()

echo "== VOP/BAV: $VOP_ROWS debtors, sandbox at 20 ms, limit $VOP_RATE req/s shared by two worker processes"
"$BIN" sandbox --bind "127.0.0.1:$SANDBOX_PORT" --latency 20ms >"$WORK/sandbox.log" 2>&1 &
PIDS+=($!)
export FINWORKER__VOP__BASE_URL="http://127.0.0.1:$SANDBOX_PORT"
export FINWORKER__VOP__RATE_LIMIT="$VOP_RATE"
export FINWORKER__REPORTS__AFTER_VOP=false
# 20 chunks of 500: both processes take vop jobs (each runs at most 4 at once).
export FINWORKER__UPLOAD__CHUNK_ROWS=500
"$BIN" run --no-http >"$WORK/w1.log" 2>&1 &
W1=$!; PIDS+=($W1)
"$BIN" run --no-http >"$WORK/w2.log" 2>&1 &
W2=$!; PIDS+=($W2)
sleep 0.5
curl -s -X DELETE "http://127.0.0.1:$SANDBOX_PORT/_sandbox/calls" >/dev/null
f="$WORK/vop.csv"
"$BIN" gen debtors --rows "$VOP_ROWS" --seed 12 --duplicates 0 --malformed 0 --out "$f" >/dev/null
id=$("$BIN" upload "$f" --no-wait)
wait_for "SELECT validated_at IS NOT NULL FROM uploads WHERE id = '$id'"
c0=$(ticks $W1 $W2); t0=$(date +%s%N)
wait_for "SELECT verified_at IS NOT NULL FROM uploads WHERE id = '$id'"
c1=$(ticks $W1 $W2); t1=$(date +%s%N)
hz=$(getconf CLK_TCK)
curl -s "http://127.0.0.1:$SANDBOX_PORT/_sandbox/calls" >"$WORK/calls.json"
python3 - "$WORK/calls.json" "$VOP_RATE" "$c0" "$c1" "$t0" "$t1" "$hz" <<'EOF'
import json, sys, collections
calls = json.load(open(sys.argv[1]))["calls"]
limit = int(sys.argv[2]); c0, c1, t0, t1, hz = map(int, sys.argv[3:8])
ok = [c for c in calls if c["status"] == 200]
t = sorted(c["at_ms"] for c in calls)
span = (t[-1] - t[0]) / 1000
rate = (len(t) - 1) / span
peak, lo = 0, 0
for hi in range(len(t)):
    while t[hi] - t[lo] >= 1000: lo += 1
    peak = max(peak, hi - lo + 1)
clients = collections.Counter(c.get("client") for c in calls)
wall = (t1 - t0) / 1e9
cpu = (c1 - c0) / hz
print(f"  {len(calls)} calls ({len(ok)} answered 200) in {span:.1f} s: {rate:.1f} req/s = {100*rate/limit:.1f}% of the {limit} req/s limit (target >= 95%, <= 105%)")
print(f"  busiest second: {peak} calls; calls per worker process: {sorted(clients.values())}")
print(f"  worker CPU while verifying: {cpu:.2f} s over {wall:.1f} s = {cpu/wall:.2f} cores for both processes, {cpu/wall/2:.2f} per process (target < 0.5)")
EOF
