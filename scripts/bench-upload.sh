#!/usr/bin/env bash
# Upload ingestion benchmark, release build, in one run on this machine:
#   1. a generated CSV of ROWS rows (default 1,000,000 and 100,000) through `finworker upload`
#      against a worker daemon (its own process), until completed: rows/s and the daemon's
#      peak RSS (VmHWM);
#   2. `psql \copy` of the same file into a plain logged table: the ceiling; then the imported
#      debtors themselves copied in bare, without and with debtors' indexes (what the import
#      has to produce, at COPY speed);
#   3. a generated XLSX (default 200,000 rows) through `finworker upload`, beside a bare
#      calamine read of the same file (`finworker bench xlsx-read`).
# Usage: scripts/bench-upload.sh [csv rows...]   (XLSX_ROWS=200000 by default)
source "$(dirname "$0")/bench-lib.sh"

start_daemon() {
  "$BIN" run --no-http --queues upload,upload_chunk >"$WORK/daemon.log" 2>&1 &
  DAEMON=$!
  PIDS+=("$DAEMON")
  sleep 0.5
}
stop_daemon() { # prints the daemon's peak RSS in MB
  local hwm
  hwm=$(awk '/VmHWM/ {print $2}' /proc/$DAEMON/status)
  kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=""
  echo $((hwm / 1024))
}
reset_tables() {
  psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d $DB -c \
    "TRUNCATE upload_duplicates, upload_rejects, debtors, upload_chunks, uploads CASCADE"
}
upload_rate() { # upload_rate <file> <rows> <label>
  reset_tables
  start_daemon
  local t0 t1 ms rss
  t0=$(date +%s%N)
  "$BIN" upload "$1" >"$WORK/upload.out"
  t1=$(date +%s%N)
  rss=$(stop_daemon)
  ms=$(( (t1 - t0) / 1000000 ))
  grep '^rows ' "$WORK/upload.out" | sed 's/^/    /'
  printf '  %-34s %9d rows in %6.2f s = %8d rows/s, worker peak RSS %4d MB\n' \
    "$3" "$2" "$(awk "BEGIN{print $ms/1000}")" $(( $2 * 1000 / ms )) "$rss"
}

echo "== CSV: finworker upload (end to end) vs psql \\copy (ceiling)"
for rows in ${@:-100000 1000000}; do
  f="$WORK/debtors-$rows.csv"
  "$BIN" gen debtors --rows "$rows" --seed 7 --out "$f" --no-short-rows >/dev/null
  echo "  file: $rows rows, $(( $(stat -c %s "$f") / 1000000 )) MB"
  upload_rate "$f" "$rows" "finworker upload ($rows rows)"
  psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d $DB -c "DROP TABLE IF EXISTS copy_ceiling; CREATE TABLE copy_ceiling (
    customer_number text, first_name text, last_name text, email text, iban text, bic text,
    amount text, currency text, mandate_reference text, mandate_date text, usage text)"
  t0=$(date +%s%N)
  psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d $DB \
    -c "\\copy copy_ceiling FROM '$f' WITH (FORMAT csv, HEADER true, DELIMITER ';')"
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
  printf '  %-34s %9d rows in %6.2f s = %8d rows/s\n' "psql \\copy (plain table)" "$rows" \
    "$(awk "BEGIN{print $ms/1000}")" $(( rows * 1000 / ms ))
  # What the import must produce, copied in bare: the imported debtors (typed, as stored)
  # into a debtors-shaped table without indexes, then into one with debtors' own indexes
  # (identity key, dedup key, row key). The floor of Postgres work for this result.
  cols="upload_id, row_no, reference, first_name, last_name, name, email, iban, bic, amount_minor, currency, mandate_id, mandate_date, country, usage"
  psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d $DB -c "\\copy (SELECT $cols FROM debtors ORDER BY upload_id, row_no) TO '$WORK/debtors.tsv'"
  n=$(wc -l <"$WORK/debtors.tsv")
  for shape in "no indexes:INCLUDING DEFAULTS INCLUDING IDENTITY" "debtors' indexes:INCLUDING ALL"; do
    psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d $DB -c "DROP TABLE IF EXISTS schema_ceiling; CREATE TABLE schema_ceiling (LIKE debtors ${shape#*:})"
    t0=$(date +%s%N)
    psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d $DB -c "\\copy schema_ceiling ($cols) FROM '$WORK/debtors.tsv'"
    t1=$(date +%s%N)
    ms=$(( (t1 - t0) / 1000000 ))
    printf '  %-34s %9d rows in %6.2f s = %8d rows/s\n' "\\copy debtors rows, ${shape%%:*}" "$n" \
      "$(awk "BEGIN{print $ms/1000}")" $(( n * 1000 / ms ))
  done
  psql -X -q -h 127.0.0.1 -p 5432 -U finworker -d $DB -c "DROP TABLE schema_ceiling"
done

XLSX_ROWS=${XLSX_ROWS:-200000}
echo "== XLSX: finworker upload (end to end) vs a bare calamine read"
x="$WORK/debtors-$XLSX_ROWS.xlsx"
"$BIN" gen debtors --rows "$XLSX_ROWS" --seed 7 --format xlsx --out "$x" >/dev/null
echo "  file: $XLSX_ROWS rows, $(( $(stat -c %s "$x") / 1000000 )) MB"
upload_rate "$x" "$XLSX_ROWS" "finworker upload (xlsx)"
"$BIN" bench xlsx-read "$x" | sed 's/^/  /'
