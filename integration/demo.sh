#!/usr/bin/env bash
# The main job, end to end, on the embedded default (a local repository and a throwaway
# PostgreSQL 15 cluster): initdb, WAL archiving, a base backup, rows written, an "accident"
# (DROP TABLE), `restore --to` the moment before it, start, and the rows are back.
# Everything lives in a temporary directory that is removed at the end; only the PostgreSQL
# servers this script starts are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$PG_BIN/initdb" ] || { echo "demo: PostgreSQL 15 is not installed ($PG_BIN): apt-get install postgresql-15"; exit 1; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# archive_command runs as the postgres user: the binary must be reachable by it.
if [ "$(id -u)" = 0 ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/synapse-backup-target}"
  mkdir -p "$CARGO_TARGET_DIR" && chmod 755 "$CARGO_TARGET_DIR"
fi
step "build synapse-backup (release)"
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/synapse-backup"

WORK=$(mktemp -d /tmp/synapse-demo.XXXXXX)
chmod 755 "$WORK"
PGDATA="$WORK/pgdata" RESTORED="$WORK/restored" SOCK="$WORK/sock" PORT=54987
mkdir -p "$SOCK" "$WORK/repo"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$SOCK" "$WORK/repo" "$WORK"
cleanup() {
  for d in "$RESTORED" "$PGDATA"; do
    [ -f "$d/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
psql_() { as_pg "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres -c "$1"; }

CONFIG="$WORK/synapse.toml"
cat > "$CONFIG" <<TOML
timezone = "UTC"
[repository]
url = "file://$WORK/repo"
[[cluster]]
name = "demo"
pgdata = "$PGDATA"
connection = "host=$SOCK port=$PORT user=postgres dbname=postgres"
TOML
[ "$(id -u)" = 0 ] && chown postgres:postgres "$CONFIG"
sb() { as_pg "$BIN" --config "$CONFIG" "$@"; }

step "1. initdb a throwaway PostgreSQL 15 cluster (data checksums on), archive_command = synapse-backup wal-push"
as_pg "$PG_BIN/initdb" -k -A trust -U postgres -D "$PGDATA" >/dev/null
cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$SOCK'
port = $PORT
archive_mode = on
archive_command = '$BIN --config $CONFIG wal-push %p'
CONF
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$WORK/pg.log" -w start >/dev/null
echo "started: $PGDATA (socket $SOCK, port $PORT)"

step "2. write rows"
psql_ "create table orders(id int primary key, item text); insert into orders select g, 'item ' || g from generate_series(1, 1000) g"
echo "orders: $(psql_ 'select count(*) from orders') rows"

step "3. base backup"
sb backup
sb list

step "4. more rows after the backup"
psql_ "insert into orders select g, 'late item ' || g from generate_series(1001, 1500) g"
echo "orders: $(psql_ 'select count(*) from orders') rows"
sleep 1.2
BEFORE=$(psql_ "select to_char(now() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS')")
sleep 1.2

step "5. the accident, at $(date -u '+%H:%M:%S') UTC: DROP TABLE orders"
psql_ "drop table orders"
SEG=$(psql_ "select pg_walfile_name(pg_switch_wal())")
for _ in $(seq 300); do
  done_wal=$(psql_ "select coalesce(last_archived_wal, '') from pg_stat_archiver")
  [[ -n "$done_wal" && ! "$done_wal" < "$SEG" ]] && break
  sleep 0.2
done
echo "archived up to: $(psql_ 'select last_archived_wal from pg_stat_archiver')"
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
echo "stopped the damaged cluster"

step "6. what the repository can restore"
sb list

step "7. restore --to '$BEFORE' (UTC, the moment before the accident) and start"
sb restore --to "$BEFORE" --pgdata "$RESTORED" --start

step "8. the rows are back"
COUNT=$(psql_ 'select count(*) from orders')
echo "orders: $COUNT rows"
[ "$COUNT" = 1500 ] || { echo "demo FAILED: expected 1500 rows"; exit 1; }
echo "demo OK: all 1500 rows restored to the moment before the DROP"
