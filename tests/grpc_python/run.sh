#!/usr/bin/env bash
# Runs tests/grpc_python/lifecycle.py, a Python gRPC client generated from
# proto/, against a real `usersvc serve` on a fresh PostgreSQL database.
#
# Run from the repository root:   bash tests/grpc_python/run.sh
#
# Needs: python3 (3.11), psql, PostgreSQL at 127.0.0.1:5432 (user postgres,
# trust auth), and a built binary (default target/debug/usersvc; override
# with USERSVC_BIN). PYTHON picks the interpreter for the venv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
HERE=$ROOT/tests/grpc_python
BIN=${USERSVC_BIN:-$ROOT/target/debug/usersvc}
VENV=$ROOT/target/pyvenv
PG_HOST=127.0.0.1
PG_PORT=5432
PSQL=(psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -q -X)

if [[ ! -x $BIN ]]; then
  echo "run.sh: no usersvc binary at $BIN (build it, or set USERSVC_BIN)" >&2
  exit 1
fi

# --- Python environment (reused between runs) ----------------------------
if [[ ! -x $VENV/bin/python ]]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r "$HERE/requirements.txt"
PY=$VENV/bin/python

# --- State cleaned up on any exit ----------------------------------------
DB=usersvc_pycheck_$(date +%s)_$$
SERVER_PID=
LOG=$(mktemp -t usersvc-pycheck.XXXXXX.log)
DB_CREATED=0

cleanup() {
  local rc=$?
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -s $LOG ]]; then
    echo "--- usersvc log (last 40 lines) ---" >&2
    tail -n 40 "$LOG" >&2
  fi
  rm -f "$LOG"
  if [[ $DB_CREATED == 1 ]]; then
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" \
      || echo "run.sh: could not drop database $DB" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Database and application --------------------------------------------
"${PSQL[@]}" -d postgres -c "CREATE DATABASE \"$DB\""
DB_CREATED=1
export DATABASE_URL="postgres://postgres@$PG_HOST:$PG_PORT/$DB"
# A master key for this run only: PII is encrypted under it.
USERSVC_MASTER_KEY=$("$BIN" keys generate)
export USERSVC_MASTER_KEY

# `app create` migrates the blank database itself.
APP_JSON=$("$BIN" app create --name pycheck)
API_KEY=$(printf '%s' "$APP_JSON" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])')
APP_ID=$(printf '%s' "$APP_JSON" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["appId"])')
echo "run.sh: database $DB, application $APP_ID"

# --- Server ----------------------------------------------------------------
read -r GRPC_PORT HTTP_PORT < <("$PY" - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*(s.getsockname()[1] for s in socks))
EOF
)
GRPC_ADDR=127.0.0.1:$GRPC_PORT

RUST_LOG=${RUST_LOG:-info} "$BIN" serve \
  --grpc-addr "$GRPC_ADDR" --http-addr "127.0.0.1:$HTTP_PORT" --admin-addr 127.0.0.1:0 >"$LOG" 2>&1 &
SERVER_PID=$!

ready=0
for _ in $(seq 200); do  # 200 x 0.1 s = 20 s
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "run.sh: usersvc exited before listening" >&2
    exit 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$GRPC_PORT") 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
if [[ $ready != 1 ]]; then
  echo "run.sh: usersvc did not accept connections on $GRPC_ADDR within 20 s" >&2
  exit 1
fi
echo "run.sh: usersvc (pid $SERVER_PID) serving gRPC on $GRPC_ADDR"

# --- The client ------------------------------------------------------------
# USERSVC_BIN, USERSVC_APP_ID and DATABASE_URL let it make a supervisor
# through the admin CLI (for the group checks).
USERSVC_GRPC_ADDR=$GRPC_ADDR USERSVC_API_KEY=$API_KEY USERSVC_APP_ID=$APP_ID \
  USERSVC_BIN=$BIN USERSVC_PROTO_DIR=$ROOT/proto "$PY" "$HERE/lifecycle.py"
