#!/usr/bin/env bash
# Measures usersvc on this machine against this machine's own limits, all in
# one session, and writes bench/results.md (see bench/README.md).
#
#   bench/run.sh [SECONDS]     (measured seconds per run; default 10)
#   BENCH_REPS=N               (runs of each ratio figure, alternating with
#                               its baseline; default 5)
#   BENCH_TRAIL_RECORDS=N      (trail records made for the at-scale listing
#                               figures; default 10000000, 0 skips them)
#   BENCH_GROWTH="N M"         (application sizes of the growth runs; default
#                               "10000 1000000", "" skips them)
#
# Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust), like the tests.
# Makes a fresh database, which it drops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-${BENCH_SECONDS:-10}}
REPS=${BENCH_REPS:-5}
CONNS=16
PGBASE=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
GRPC=127.0.0.1:50161
HTTP=127.0.0.1:18161

cargo build --release --bin usersvc --bin usersvc-bench
BIN=target/release/usersvc
BENCH=target/release/usersvc-bench

DB=usersvc_bench_$(date +%s)
export DATABASE_URL=$PGBASE/$DB
USERSVC_MASTER_KEY=$("$BIN" keys generate)
export USERSVC_MASTER_KEY
LINES=$(mktemp)
LOG=$(mktemp)
SERVER=
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  psql "$PGBASE/postgres" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  psql "$PGBASE/postgres" -qAtc "DROP DATABASE IF EXISTS ${DB}_trail WITH (FORCE)" >/dev/null 2>&1 || true
  rm -f "$LINES"
}
trap cleanup EXIT

# Every user of the load comes from this one address: no sign-up quota.
start() {
  "$BIN" serve --grpc-addr "$GRPC" --http-addr "$HTTP" --admin-addr 127.0.0.1:0 --log-format json --signup-per-address 0 "$@" >>"$LOG" 2>&1 &
  SERVER=$!
  for _ in $(seq 300); do
    curl -fs "http://$HTTP/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "bench: the service did not start; its log:" >&2
  cat "$LOG" >&2
  exit 1
}
stop() {
  kill "$SERVER" && wait "$SERVER" 2>/dev/null || true
  SERVER=
}
bench() {
  echo "bench: $*" >&2
  "$BENCH" "$@" | tee -a "$LINES"
}
load() {
  bench run --grpc-addr "$GRPC" --http-addr "$HTTP" --seconds "$SECS" "$@"
}

echo "bench: $(nproc) cores; $SECS s per run; database $DB" >&2
bench argon2 --seconds "$SECS"
start
# Figures that are ratios to a baseline are taken REPS times, alternating
# with the baseline, and pooled: a shared machine's speed drifts by 10-20 %
# within minutes, and each run is set against the baselines on either side.
pg_baseline() { bench postgres --database-url "$DATABASE_URL" -c "$CONNS" --seconds "$SECS"; }
load --scenario get --via grpc -c "$CONNS"
pg_baseline
for _ in $(seq "$REPS"); do
  load --scenario get --via http -c "$CONNS"
  pg_baseline
done
load --scenario get --via http -c "$CONNS" --storm 8
# Durable reads (the default) against the same binary with --read-trail
# async, restarted in turn: each durable run is set against the async run
# right after it.
for _ in $(seq 3); do
  load --scenario get --via http -c "$CONNS" --tag durable
  stop
  start --read-trail async
  load --scenario get --via http -c "$CONNS" --tag async
  stop
  start
done
pg_write() { bench postgres-write --database-url "$DATABASE_URL" -c "$CONNS" --seconds "$SECS"; }
for via in http grpc; do
  for scenario in signin create update groups mixed; do
    case $scenario in
      signin | create)
        bench argon2 --seconds "$SECS"
        for _ in $(seq "$REPS"); do
          load --scenario "$scenario" --via "$via" -c "$CONNS"
          bench argon2 --seconds "$SECS"
        done
        ;;
      update)
        # Against PostgreSQL's own UPDATE + trail INSERT, alternating.
        pg_write
        for _ in $(seq "$([ "$via" = http ] && echo "$REPS" || echo 1)"); do
          load --scenario update --via "$via" -c "$CONNS"
          pg_write
        done
        ;;
      mixed)
        since=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
        load --scenario mixed --via "$via" -c "$CONNS"
        if [ "$via" = http ]; then
          # Long enough for the last records' checkpoint.
          sleep 3
          bench checkpoint-lag --database-url "$DATABASE_URL" --since "$since"
        fi
        ;;
      *) load --scenario "$scenario" --via "$via" -c "$CONNS" ;;
    esac
  done
done
stop
# Memory on a fresh process: its peak over the whole run, preparation included.
start
load --scenario mixed --via http -c 64 --server-pid "$SERVER"
stop
# Start to ready on the now migrated database.
bench startup --readyz "http://$HTTP/readyz" --runs 5 -- "$BIN" serve --grpc-addr "$GRPC" --http-addr "$HTTP" \
  --admin-addr 127.0.0.1:0

# Growth (issue 21): a fresh server per size, its application seeded
# through import; its peak RSS over seeding and load. The largest size also
# times PostgreSQL's COPY of the same rows (import's baseline).
GROWTH=${BENCH_GROWTH:-10000 1000000}
LARGEST=$(echo "$GROWTH" | tr ' ' '\n' | sort -n | tail -1)
for n in $GROWTH; do
  start
  copy=
  [ "$n" = "$LARGEST" ] && copy=--copy-baseline
  bench growth --users "$n" $copy -c "$CONNS" --seconds "$SECS" --server-pid "$SERVER" \
    --grpc-addr "$GRPC" --http-addr "$HTTP"
  stop
done

# The trail at scale, in a database of its own (BENCH_TRAIL_RECORDS=0 skips it).
TRAIL_RECORDS=${BENCH_TRAIL_RECORDS:-10000000}
if [ "$TRAIL_RECORDS" -gt 0 ]; then
  bench trail-scale --database-url "$PGBASE/${DB}_trail" --records "$TRAIL_RECORDS"
  psql "$PGBASE/postgres" -qAtc "DROP DATABASE IF EXISTS ${DB}_trail WITH (FORCE)" >/dev/null 2>&1 || true
fi

"$BENCH" report "$LINES" >bench/results.md
sed -n '/^## Targets/,/^## Every run/p' bench/results.md | sed '$d'
echo "bench: wrote bench/results.md" >&2
