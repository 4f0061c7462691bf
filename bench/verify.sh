#!/usr/bin/env bash
# verify benchmark (issue 6): `synapse-backup verify` of a backup against a plain
# `synapse-backup restore --latest --start` of the same backup, in the same run.
# Target: verify takes no more than 1.3x the plain restore.
#
# What it does
#   0. initdb -k in a mktemp -d work dir; PostgreSQL on a unix socket in that dir only,
#      archive_mode=on, archive_command = a wrapper around `synapse-backup wal-push %p` that
#      archives only for this cluster's data directory (a restored, promoted copy archives
#      nothing) and discards WAL while pgbench -i runs. pgbench -i -s SCALE, CHECKPOINT,
#      `synapse-backup backup`, then LOAD_SECONDS of pgbench write load (-c 2), pg_switch_wal,
#      wait until archived, and stop the cluster (the restored copy reuses its port and socket).
#   1. REPS rounds, the order of the two alternating, each on a warm page cache after `sync`:
#        a) restore --latest --start --pgdata D (wall time of the command: download, extract,
#           check, start, replay all archived WAL, promote), then the server is stopped and D
#           removed (untimed);
#        b) verify --latest --runtime RUNTIME (wall time: restore into a scratch dir and stage the
#           same WAL in parallel, pg_verifybackup, isolated start, replay to the last archived
#           commit, promote, pg_amcheck --all, one probe, stop, clean up, store the report).
#      Both recover the same backup over the same WAL. Per-check durations of verify come from
#      its JSON report.
#   Only same-run ratios mean anything: the 2-core machine is shared and noisy.
#
# Usage (as root: PostgreSQL and our commands run as postgres via runuser, like the agent;
# with RUNTIME=docker verify runs as root, which has the Docker socket):
#   cargo build --release && bench/verify.sh
# Environment:
#   SCALE=100  REPS=1  LOAD_SECONDS=30  PORT=54351  RUNTIME=namespace  PGBIN=/usr/lib/postgresql/15/bin
#   SYNAPSE_BIN=<binary, default target/release/synapse-backup; a private copy is used>
#   IMAGE=synapse-verify-pg15:test (RUNTIME=docker; built by integration/docker-image.sh)
#   KEEP=0 (1 keeps the work dir)
# Exit: 0 when everything ran (target met or not), 1 on a harness failure, 3 when one of our
# commands failed.
set -euo pipefail
export LC_ALL=C

SCALE=${SCALE:-100}
REPS=${REPS:-1}
LOAD_SECONDS=${LOAD_SECONDS:-30}
PORT=${PORT:-54351}
RUNTIME=${RUNTIME:-namespace}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
IMAGE=${IMAGE:-synapse-verify-pg15:test}
KEEP=${KEEP:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crate=$(dirname "$here")
SYNAPSE_BIN=${SYNAPSE_BIN:-$crate/target/release/synapse-backup}

log() { printf '[%s +%4ds] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -x "$PGBIN/initdb" ] || die "PostgreSQL binaries not found in $PGBIN (set PGBIN)"
[ -x "$SYNAPSE_BIN" ] || die "$SYNAPSE_BIN not found: run 'cargo build --release' in $crate"
command -v jq >/dev/null || die "jq is not installed: apt-get install jq"
for v in SCALE REPS LOAD_SECONDS PORT; do
    case ${!v} in '' | *[!0-9]*) die "$v must be a non-negative integer" ;; esac
done
case $RUNTIME in namespace | docker) ;; *) die "RUNTIME must be namespace or docker" ;; esac

if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi
if [ "$RUNTIME" = docker ]; then
    as_verifier() { "$@"; }
    bash "$crate/integration/docker-image.sh" "$IMAGE" >&2 || die "cannot build $IMAGE"
else
    as_verifier() { as_pg "$@"; }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/verify-bench.XXXXXX")
chmod 755 "$WORK"
SRC=$WORK/pgdata
SOCK=$WORK/sock
BIN=$WORK/bin/synapse-backup
CONF=$WORK/synapse.toml
REPO=$WORK/repo
RESTORED=$WORK/restored/pgdata
STARTED=()

cleanup() {
    local rc=$? d
    set +e
    for d in "${STARTED[@]}"; do
        [ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1
    done
    if [ "$KEEP" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$SOCK" "$REPO" "$WORK/bin" "$WORK/scratch" "$WORK/restored"
cp "$SYNAPSE_BIN" "$BIN"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b <= 0) print "-"; else printf "%.2f", a / b }'; }
psql_q() { as_pg "$PGBIN/psql" -X -h "$SOCK" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 -Atqc "$1"; }
syn() { as_pg "$BIN" --config "$CONF" "$@"; }

OURS_FAILED=0
log "work dir $WORK; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
log "synapse-backup: $("$BIN" --version); $("$PGBIN/postgres" --version); SCALE=$SCALE REPS=$REPS RUNTIME=$RUNTIME"

# ---------------------------------------------------------------- 0. cluster, backup, WAL
ARCHIVE_SH=$WORK/bin/archive.sh
cat >"$ARCHIVE_SH" <<EOF
#!/bin/sh
# archive_command of the benchmark cluster: \$1 = %p, cwd = data dir.
[ "\$(pwd -P)" = "$(cd "$WORK" && pwd -P)/pgdata" ] || exit 0   # a restored copy: archive nothing
[ -e "$WORK/archive.discard" ] && exit 0                       # pgbench -i: nobody needs this WAL
exec "$BIN" --config "$CONF" wal-push "\$1"
EOF
chmod 755 "$ARCHIVE_SH"
cat >"$CONF" <<EOF
timezone = "UTC"
[repository]
url = "file://$REPO"
[verify]
runtime = "$RUNTIME"
scratch_dir = "$WORK/scratch"
docker_image = "$IMAGE"
[[cluster]]
name = "bench"
pgdata = "$SRC"
connection = "host=$SOCK port=$PORT user=postgres dbname=postgres"
[[cluster.verify_probe]]
name = "branches"
sql = "select count(*) from pgbench_branches"
expect = "$SCALE"
EOF
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"

as_pg "$PGBIN/initdb" -k -A trust -U postgres -D "$SRC" >/dev/null
cat >>"$SRC/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$SOCK'
port = $PORT
wal_level = replica
archive_mode = on
archive_command = '$ARCHIVE_SH %p'
max_wal_size = 4GB
shared_buffers = 256MB
EOF
touch "$WORK/archive.discard"
as_pg "$PGBIN/pg_ctl" -D "$SRC" -l "$WORK/pg.log" -w start >/dev/null
STARTED+=("$SRC")
log "pgbench -i -s $SCALE"
as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
psql_q "checkpoint"
rm -f "$WORK/archive.discard"
psql_q "select pg_switch_wal()" >/dev/null
t0=$(now)
ID=$(syn backup) || die "backup failed"
log "backup $ID in $(elapsed "$t0" "$(now)")s ($(du -sh "$REPO" | cut -f1) stored)"
if [ "$LOAD_SECONDS" -gt 0 ]; then
    log "pgbench write load for ${LOAD_SECONDS}s"
    as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -c 2 -j 2 -T "$LOAD_SECONDS" -n postgres >/dev/null 2>&1
fi
SEG=$(psql_q "select pg_walfile_name(pg_current_wal_lsn()) from (select pg_switch_wal()) s")
for _ in $(seq 600); do
    last=$(psql_q "select coalesce(last_archived_wal, '') from pg_stat_archiver")
    [[ "${last:0:24}" > "$SEG" || "${last:0:24}" == "$SEG" ]] && break
    sleep 0.5
done
as_pg "$PGBIN/pg_ctl" -D "$SRC" -m fast -w stop >/dev/null
log "archived through $SEG; $(find "$REPO" -path '*/wal/*' -name '*.gz' | wc -l) WAL files in the repository"

# ---------------------------------------------------------------- 1. restore --start vs verify
run_restore() {
    rm -rf "$WORK/restored" && mkdir -p "$WORK/restored" && { [ "$(id -u)" -ne 0 ] || chown postgres: "$WORK/restored"; }
    sync
    local t0 t1
    t0=$(now)
    STARTED+=("$RESTORED")
    if ! syn restore --latest --start --pgdata "$RESTORED" 2>"$WORK/restore.err"; then
        OURS_FAILED=1; tail -n 15 "$WORK/restore.err" >&2; echo "-"; return
    fi
    t1=$(now)
    as_pg "$PGBIN/pg_ctl" -D "$RESTORED" -m immediate -w stop >/dev/null 2>&1 || true
    elapsed "$t0" "$t1"
}
run_verify() {
    sync
    local t0 t1
    t0=$(now)
    if ! as_verifier "$BIN" --config "$CONF" verify --latest --json >"$WORK/verify.json" 2>"$WORK/verify.err"; then
        OURS_FAILED=1; tail -n 15 "$WORK/verify.err" >&2; echo "-"; return
    fi
    t1=$(now)
    elapsed "$t0" "$t1"
}

RESTORE_TIMES=()
VERIFY_TIMES=()
for r in $(seq 1 "$REPS"); do
    if [ $((r % 2)) -eq 1 ]; then order="restore verify"; else order="verify restore"; fi
    for what in $order; do
        if [ "$what" = restore ]; then
            t=$(run_restore); RESTORE_TIMES+=("$t"); log "round $r: restore --latest --start: ${t}s"
        else
            t=$(run_verify); VERIFY_TIMES+=("$t"); log "round $r: verify: ${t}s"
        fi
    done
done

median() { printf '%s\n' "$@" | grep -v '^-$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
R=$(median "${RESTORE_TIMES[@]}")
V=$(median "${VERIFY_TIMES[@]}")
echo
echo "verify benchmark: scale $SCALE, backup $ID, runtime $RUNTIME, $REPS round(s), median wall times"
printf '  %-44s %8ss\n' "restore --latest --start (plain restore)" "$R"
printf '  %-44s %8ss\n' "verify --latest" "$V"
if [ "$R" != "-" ] && [ "$V" != "-" ]; then
    RATIO=$(ratio "$V" "$R")
    verdict=$(awk -v r="$RATIO" 'BEGIN { print (r <= 1.3) ? "met" : "MISSED" }')
    printf '  %-44s %8s   (target <= 1.30: %s)\n' "ratio verify / restore (medians)" "$RATIO" "$verdict"
    per_round=()
    for i in "${!RESTORE_TIMES[@]}"; do
        per_round+=("$(ratio "${VERIFY_TIMES[$i]}" "${RESTORE_TIMES[$i]}")")
    done
    printf '  %-44s %s\n' "per round" "${per_round[*]}"
fi
if [ -s "$WORK/verify.json" ]; then
    echo "  last verify, per check:"
    jq -r '.checks[] | "    \(.name | .[0:36] | . + " " * (36 - length)) \(.duration_seconds | tostring | .[0:7])s \(if .ok then "ok" else "FAILED" end)"' "$WORK/verify.json"
    jq -r '"    target: \(.target.description); \(.target.segments_staged) WAL files staged"' "$WORK/verify.json"
fi
[ "$OURS_FAILED" = 0 ] || exit 3
