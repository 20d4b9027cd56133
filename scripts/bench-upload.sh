#!/usr/bin/env bash
# Upload ingestion benchmark, release build, everything in one sitting on this machine:
#   1. the shared generator's 1M-row debtor file (../shared/bench/gen_debtors.py, seed 20240601);
#   2. the importer a data engineer would write (../shared/bench/py_import_debtors.py: pandas,
#      per-row checks, dedupe, psycopg COPY), in its own database;
#   3. `finworker upload` of the same file to *validated* debtors, against a worker daemon (its
#      own process): wall time, worker and Postgres CPU seconds, worker peak RSS (VmHWM);
#   4. `psql \copy` of exactly the debtor rows finworker stored into a table shaped like debtors
#      with its indexes: the Postgres ceiling for this result;
#   5. a generated 200k-row XLSX through `finworker upload` (on emptied tables), beside a bare
#      calamine read of the same file;
#   6. with 10M debtors stored: files of other debtors (the generator's next seeds), each
#      beside the same file into an empty table, in alternating pairs; then the last file
#      again (every row linked).
# Usage: scripts/bench-upload.sh            ROWS=1000000 BIG_TABLE=10000000 XLSX_ROWS=200000
#        PARTS="csv xlsx big" (default: all)   PAIRS=3 (empty-table / big-table runs, part big)
# Needs the shared bench venv: python3 -m venv /var/tmp/fw-bench &&
#   /var/tmp/fw-bench/bin/pip install -r ../shared/bench/requirements.txt
source "$(dirname "$0")/bench-lib.sh"

ROWS=${ROWS:-1000000}
BIG_TABLE=${BIG_TABLE:-10000000}
XLSX_ROWS=${XLSX_ROWS:-200000}
PARTS=${PARTS:-csv xlsx big}
PAIRS=${PAIRS:-3}
part() { [[ " $PARTS " == *" $1 "* ]]; }
SHARED=${SHARED:-../shared/bench}
PY=${PY:-/var/tmp/fw-bench/bin/python}
export FINWORKER__PRIVACY__IBAN_KEY="${FINWORKER__PRIVACY__IBAN_KEY:-bench-iban-key-0123456789abcdef0123456789}"
export FINWORKER__VOP__ENABLED=false FINWORKER__SWEEPER__ENABLED=false
q() { psql -X -q -tA -h 127.0.0.1 -p 5432 -U finworker -d "$DB" -c "$1"; }
pg_cpu() { # centiseconds of CPU used by every postgres process so far
  local s=0 p
  for p in $(pgrep -x postgres); do s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$s"
}
secs() { awk "BEGIN{printf \"%.2f\", $1/1000}"; }
# Before each measured run: write out what the previous step left dirty in shared buffers,
# so no run pays the checkpoint of the one before (the 10M-row fill above all). Needs the
# postgres superuser; skipped (with a note) when this script cannot become it.
settle() {
  su postgres -c "psql -X -q -c CHECKPOINT" 2>/dev/null || echo "  (no CHECKPOINT: not allowed to become postgres)"
}

# Databases of this run besides $DB, dropped on exit.
EXTRA_DBS=()
extra_db() {
  psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d finworker -c "CREATE DATABASE $1"
  EXTRA_DBS+=("$1")
}
drop_extra_dbs() {
  local d
  for d in "${EXTRA_DBS[@]}"; do drop_db "$d"; done
}
trap 'drop_extra_dbs; bench_cleanup' EXIT
# use_db NAME: the database q, the daemon and `finworker upload` talk to from now on.
use_db() {
  DB=$1
  export FINWORKER__DATABASE__URL="postgres://finworker@127.0.0.1:6432/$1"
  export FINWORKER__DATABASE__DIRECT_URL="postgres://finworker@127.0.0.1:5432/$1"
}

start_daemon() {
  "$BIN" run --no-http --queues upload,upload_chunk,validation,validation_chunk >"$WORK/daemon.log" 2>&1 &
  DAEMON=$!
  PIDS+=("$DAEMON")
  sleep 0.5
}
stop_daemon() {
  kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=""
}

# upload_validated <file> <rows> <label> [extra upload args]: file → validated, with CPU split.
upload_validated() {
  local f=$1 rows=$2 label=$3; shift 3
  settle
  start_daemon
  local t0 t1 pg0 pg1 ms id w hwm
  pg0=$(pg_cpu); t0=$(date +%s%N)
  id=$("$BIN" upload --no-wait "$@" "$f")
  # Poll gently (each psql is a process: polling fast would take CPU from the run), and take
  # the end from the database's own timestamp.
  until [ -n "$(q "SELECT 1 FROM uploads WHERE id = '$id' AND (validated_at IS NOT NULL OR status = 'failed')")" ]; do sleep 0.5; done
  pg1=$(pg_cpu)
  t1=$(q "SELECT (extract(epoch FROM coalesce(validated_at, finished_at)) * 1e9)::bigint FROM uploads WHERE id = '$id'")
  w=$(awk '{print $14+$15}' "/proc/$DAEMON/stat"); hwm=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON/status")
  # After completing, the worker adds the upload's keys to the linking filter (not part of
  # file → validated); the next run must not find it half done, so wait for it here.
  local f0 f1
  f0=$(date +%s%N)
  until [ -n "$(q "SELECT 1 FROM uploads WHERE id = '$id' AND (key_filtered OR status = 'failed')")" ]; do sleep 0.2; done
  f1=$(date +%s%N)
  stop_daemon
  ms=$(( (t1 - t0) / 1000000 ))
  q "SELECT format('    %s: %s rows: %s imported (%s new, %s unchanged, %s changed), %s duplicates, %s rejected; %s valid, %s invalid; split %s s, import+validation after split %s s',
      status, rows_seen, rows_imported, rows_new, rows_unchanged, rows_changed, rows_duplicate, rows_rejected,
      rows_valid, rows_invalid, round(extract(epoch FROM split_at - started_at)::numeric, 2),
      round(extract(epoch FROM validated_at - split_at)::numeric, 2)) FROM uploads WHERE id = '$id'"
  echo "    its keys were in the linking filter $(secs $(( (f1 - t1) / 1000000 ))) s after it was validated"
  printf '  %-44s %8d rows in %6s s = %7d rows/s | worker CPU %5s s, Postgres CPU %5s s, worker peak RSS %d MB\n' \
    "$label" "$rows" "$(secs $ms)" $(( rows * 1000 / ms )) "$(secs $((w * 10)))" "$(secs $(( (pg1 - pg0) * 10 )))" $((hwm / 1024))
  LAST_MS=$ms
}

if part csv; then
echo "== 1M-row file → validated debtors: pandas importer vs finworker, and the Postgres ceiling"
f="$WORK/debtors-$ROWS.csv"
"$PY" "$SHARED/gen_debtors.py" --rows "$ROWS" --seed 20240601 --out "$f" 2>"$WORK/gen.txt"
echo "  file: $ROWS rows, $(( $(stat -c %s "$f") / 1000000 )) MB ($(sed 's/^# gen_debtors: //' "$WORK/gen.txt" | cut -c1-120)…)"

PEER_DB="${DB}_peer"
extra_db "$PEER_DB"
settle
t0=$(date +%s%N)
BENCH_PG_DSN="postgresql://finworker:$PGPASSWORD@127.0.0.1:5432/$PEER_DB" "$PY" "$SHARED/py_import_debtors.py" "$f" --load copy >"$WORK/py.txt"
t1=$(date +%s%N)
PY_MS=$(( (t1 - t0) / 1000000 ))
printf '  %-44s %8d rows in %6s s = %7d rows/s | %s\n' "pandas importer (read+validate+dedupe+COPY)" "$ROWS" "$(secs $PY_MS)" \
  $(( ROWS * 1000 / PY_MS )) "$(grep -E '^(READ_S|VALIDATE_S|LOAD_S|MAXRSS_MB)=' "$WORK/py.txt" | tr '\n' ' ')"

upload_validated "$f" "$ROWS" "finworker upload → validated (empty table)"
EMPTY_MS=$LAST_MS

# The ceiling: exactly what finworker stored, copied in bare into a debtors-shaped table
# with debtors' indexes (identity key, (upload_id, row_no), iban_key).
cols="upload_id, row_no, reference, first_name, last_name, name, email, iban, bic, amount_minor, currency, mandate_id, mandate_date, country, usage, iban_key, previous_debtor_id, changes, valid, sepa_name, issues"
q "\\copy (SELECT $cols FROM debtors ORDER BY id) TO '$WORK/debtors.tsv'"
n=$(wc -l <"$WORK/debtors.tsv")
q "DROP TABLE IF EXISTS ceiling; CREATE TABLE ceiling (LIKE debtors INCLUDING ALL)"
settle
t0=$(date +%s%N)
q "\\copy ceiling ($cols) FROM '$WORK/debtors.tsv'"
t1=$(date +%s%N)
CEIL_MS=$(( (t1 - t0) / 1000000 ))
printf '  %-44s %8d rows in %6s s = %7d rows/s\n' "psql \\copy of those debtor rows, with indexes" "$n" "$(secs $CEIL_MS)" $(( n * 1000 / CEIL_MS ))
q "DROP TABLE ceiling"
awk -v py="$PY_MS" -v fw="$EMPTY_MS" -v c="$CEIL_MS" -v n="$n" -v rows="$ROWS" 'BEGIN {
  printf "  ratio: finworker file→validated is %.2fx the pandas importer (>1 = faster); %.0f%% of the \\copy ceiling rate (%d debtor rows of %d file rows)\n", py/fw, 100*(rows/fw)/(n/c), n, rows }'

fi

if part xlsx; then
echo "== XLSX: finworker upload (to validated) vs a bare calamine read, on empty tables"
q "TRUNCATE uploads, upload_chunks, debtors, upload_duplicates, upload_rejects, upload_raw CASCADE"
x="$WORK/debtors-$XLSX_ROWS.xlsx"
"$PY" "$SHARED/gen_debtors.py" --rows "$XLSX_ROWS" --seed 20240601 --format xlsx --out "$x" 2>/dev/null
echo "  file: $XLSX_ROWS rows, $(( $(stat -c %s "$x") / 1000000 )) MB"
upload_validated "$x" "$XLSX_ROWS" "finworker upload → validated (xlsx)"
XLSX_MS=$LAST_MS
settle
"$BIN" bench xlsx-read "$x" | tee "$WORK/xlsx.txt" | sed 's/^/  /'
CAL_RATE=$(grep -o '= *[0-9.]* rows/s' "$WORK/xlsx.txt" | head -1 | tr -dc '0-9.')
awk -v r="$XLSX_ROWS" -v ms="$XLSX_MS" -v c="$CAL_RATE" 'BEGIN {
  printf "  ratio: finworker xlsx file→validated runs at %.0f%% of the bare calamine read rate\n", 100*(r*1000/ms)/c }'

fi

if part big; then
echo "== a file of other debtors with $BIG_TABLE debtors already stored, then the same file again"
# Filler debtors of a completed upload, with random lookup keys like real ones.
q "INSERT INTO uploads (id, object_key, file_name, status, chunk_rows, finished_at) VALUES
   ('00000000-0000-0000-0000-00000000f111', 'filler', 'filler', 'completed', 5000, now() - interval '1 day')"
t0=$(date +%s%N)
have=$(q "SELECT count(*) FROM debtors")
q "INSERT INTO debtors (upload_id, row_no, reference, name, iban, amount_minor, currency, iban_key, valid)
   SELECT '00000000-0000-0000-0000-00000000f111', g, 'F-' || g, 'Filler Debtor', 'DE' || lpad(g::text, 20, '0'), 1000, 'EUR',
          ('x' || substr(md5(g::text), 1, 16))::bit(64)::bigint, true
   FROM generate_series(1, $BIG_TABLE - $have) g"
q "VACUUM ANALYZE debtors"
t1=$(date +%s%N)
echo "  filled to $(q "SELECT count(*) FROM debtors") debtors in $(secs $(( (t1 - t0) / 1000000 ))) s"
# Debtors stored by SQL are outside the linking filter (imports would probe every key, as
# after a restore) until this adds them.
t0=$(date +%s%N)
"$BIN" uploads filter-keys | sed 's/^/  /'
t1=$(date +%s%N)
echo "  (finworker uploads filter-keys took $(secs $(( (t1 - t0) / 1000000 ))) s)"
# The table-size effect alone, measured in pairs: the same file of other debtors (the same
# generator, another seed) into an empty debtors table (a second database, new for each run)
# and into the big one, adjacent in time, the order alternating (ABBA) so that the
# machine's drift during the sitting falls on both sides. Each pair uses a new seed, so no row
# of the big-table run repeats an earlier one (the empty-table run links none either); the big
# table grows by each run's debtors.
BIG_DB=$DB
EMPTY_DB="${DB}_empty"
# empty_run / big_run: pair $i's file $f2 into a new empty database / into the big one.
empty_run() {
  # A new database each time, as in part csv: a truncated table runs slower than a new one
  # (measured: 16.9 s against 11.6 s), which would flatter the big table.
  extra_db "${EMPTY_DB}_$i"
  use_db "${EMPTY_DB}_$i"; "$BIN" migrate >/dev/null
  upload_validated "$f2" "$ROWS" "pair $i: empty table"
  E=$LAST_MS
  use_db "$BIG_DB"
}
big_run() {
  upload_validated "$f2" "$ROWS" "pair $i: $stored debtors stored"
  B=$LAST_MS
}
ratios=()
for i in $(seq 1 "$PAIRS"); do
  f2="$WORK/debtors-$ROWS-$i.csv"
  "$PY" "$SHARED/gen_debtors.py" --rows "$ROWS" --seed $((20240601 + i)) --out "$f2" 2>/dev/null
  stored=$(q "SELECT count(*) FROM debtors")
  if (( i % 2 )); then empty_run; big_run; else big_run; empty_run; fi
  ratios+=("$(awk -v e="$E" -v b="$B" 'BEGIN { printf "%.1f", 100*e/b }')")
  echo "  pair $i: rate with the big table is ${ratios[-1]}% of the rate on an empty table"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ a[NR] = $1 } END {
  printf "  ratio: rate with the big table is %.0f%% of the empty-table rate (median of %d pairs; each: ", a[int((NR + 1) / 2)], NR
  for (i = 1; i <= NR; i++) printf "%s%%%s", a[i], (i < NR ? ", " : ")\n") }'
# Next cycle's file: every debtor repeats one just stored, so every row is linked and compared.
upload_validated "$f2" "$ROWS" "the same file again (every row linked)" --allow-same-file
fi
