#!/usr/bin/env bash
# Runs the same load against two builds of usersvc, one after the other, each
# on a fresh database: median and tail latency of GetUser and UpdateUser over
# gRPC, and GET /v2/users/{id} over HTTP.
#
#   bench/compare.sh BEFORE_BIN AFTER_BIN [connections] [seconds]
#
# Uses target/release/examples/loadgen (cargo build --release --example loadgen).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1
AFTER=$2
CONNS=${3:-1}
SECS=${4:-5}
LOADGEN=${LOADGEN:-target/release/examples/loadgen}
PSQL=(psql -h 127.0.0.1 -U postgres -qAt)

run() {
  local label=$1 bin=$2 db
  db=usersvc_bench_$(date +%s%N)
  "${PSQL[@]}" -c "CREATE DATABASE $db"
  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
  USERSVC_MASTER_KEY=$("$bin" keys generate 2>/dev/null || true)
  export USERSVC_MASTER_KEY
  local key
  key=$("$bin" app create --name bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])')
  "$bin" serve --grpc-addr 127.0.0.1:50151 --http-addr 127.0.0.1:18151 >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/50151) 2>/dev/null && break; sleep 0.1; done
  USERSVC_API_KEY=$key USERSVC_GRPC_ADDR=127.0.0.1:50151 USERSVC_HTTP_ADDR=127.0.0.1:18151 LOADGEN_UPDATE=1 \
    "$LOADGEN" "$CONNS" "$SECS" 2>/dev/null | sed "s/^{/{\"build\":\"$label\",/"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  "${PSQL[@]}" -c "DROP DATABASE $db WITH (FORCE)"
}

run before "$BEFORE"
run after "$AFTER"
