#!/usr/bin/env bash
# What a synchronous standby costs each commit, on this machine: pgbench's
# simple-update load (an UPDATE and an INSERT per transaction, the shape of an
# audited write) against a private primary alone, then with a streaming
# standby made by pg_basebackup -R and synchronous_standby_names = '*'
# (synchronous_commit = on), alternating, the median of REPS runs each.
# Usage: bench/sync_standby.sh [SECONDS=10] [REPS=3] [CLIENTS=8]
# Needs PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup); as root
# the clusters run as the postgres user. Touches nothing but a temp folder.
set -euo pipefail
SECS=${1:-10}
REPS=${2:-3}
CLIENTS=${3:-8}
BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$BIN/initdb" ] || { echo "sync_standby: PostgreSQL server binaries not found (set PG_BIN)" >&2; exit 2; }
DIR=$(mktemp -d /tmp/usersvc-sync.XXXXXX)
P1=${P1:-55432}
P2=${P2:-55433}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres: "$DIR"
cleanup() {
  as_pg "$BIN/pg_ctl" -D "$DIR/standby" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$BIN/pg_ctl" -D "$DIR/primary" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT
as_pg "$BIN/initdb" -D "$DIR/primary" -U postgres --auth=trust >/dev/null
cat >>"$DIR/primary/postgresql.conf" <<CONF
port = $P1
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
wal_level = replica
max_wal_senders = 4
synchronous_commit = on
shared_buffers = 256MB
CONF
echo "host replication postgres 127.0.0.1/32 trust" >>"$DIR/primary/pg_hba.conf"
as_pg "$BIN/pg_ctl" -D "$DIR/primary" -l "$DIR/primary.log" -w start >/dev/null
as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$P1" -U postgres -D "$DIR/standby" -R -X stream >/dev/null
cat >>"$DIR/standby/postgresql.conf" <<CONF
port = $P2
CONF
as_pg "$BIN/pg_ctl" -D "$DIR/standby" -l "$DIR/standby.log" -w start >/dev/null
pgbench -h 127.0.0.1 -p "$P1" -U postgres -i -s 10 -q postgres >/dev/null 2>&1
sync_names() {
  psql -h 127.0.0.1 -p "$P1" -U postgres -qAtc "ALTER SYSTEM SET synchronous_standby_names = '$1'" postgres
  psql -h 127.0.0.1 -p "$P1" -U postgres -qAtc "SELECT pg_reload_conf()" postgres >/dev/null
  sleep 1
}
run() {
  pgbench -h 127.0.0.1 -p "$P1" -U postgres -N -c "$CLIENTS" -j 2 -T "$SECS" postgres 2>/dev/null |
    awk '/^tps = /{print $3; exit}'
}
median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
alone=() sync=()
for _ in $(seq "$REPS"); do
  sync_names ''
  alone+=("$(run)")
  sync_names '*'
  state=$(psql -h 127.0.0.1 -p "$P1" -U postgres -qAtc "SELECT sync_state FROM pg_stat_replication" postgres)
  [ "$state" = sync ] || { echo "sync_standby: the standby is '$state', not sync" >&2; exit 1; }
  sync+=("$(run)")
done
a=$(printf '%s\n' "${alone[@]}" | median)
s=$(printf '%s\n' "${sync[@]}" | median)
echo "pgbench -N, $CLIENTS clients, ${SECS}s x $REPS: primary alone ${alone[*]} tps (median $a); with a synchronous standby ${sync[*]} tps (median $s); ratio $(awk -v a="$a" -v s="$s" 'BEGIN{printf "%.2f", s/a}')"
