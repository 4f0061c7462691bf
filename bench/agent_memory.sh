#!/usr/bin/env bash
# Idle agent memory benchmark (issue 7: "idle agent resident memory under 30 MB"). Memory
# targets are measured here, by a script that prints the figures, never asserted in tests.
#
# What it does
#   1. initdb three clusters (core, analytics, revenue) in a mktemp -d work dir, each on a unix
#      socket in that dir only, archiving with `synapse-backup wal-push` into one local
#      repository; pgbench -i -s SCALE in each.
#   2. For each allocator setting (MALLOC_ARENA_MAX=2 as the systemd unit sets it, then glibc's
#      default): start `synapse-backup agent` (release build) with a once-a-day schedule, so its
#      only jobs are the missed runs at start-up: a backup of each cluster, expire, and the
#      verification of core's backup (a child process). Wait until /metrics shows the
#      verification's result and no job running, wait SETTLE seconds, then read VmRSS,
#      RssAnon and RssFile from /proc/PID/status; stop the agent with SIGTERM.
#   Prints one line per setting against the 30 MB target. The figures vary with what the
#   jobs happened to overlap (glibc keeps freed memory in its arenas), so REPS > 1 prints
#   each round.
#
# Usage (as root: PostgreSQL and the agent run as postgres via runuser, as under systemd):
#   cargo build --release && bash bench/agent_memory.sh
# Environment: SCALE=5 REPS=1 SETTLE=5 PORT=54361 (PORT..PORT+2 for the clusters, PORT+3 for
#   /metrics) PGBIN=/usr/lib/postgresql/15/bin SYNAPSE_BIN=target/release/synapse-backup KEEP=0
# Exit: 0 when everything ran (target met or not), 1 on a harness failure.
set -euo pipefail
export LC_ALL=C

SCALE=${SCALE:-5}
REPS=${REPS:-1}
SETTLE=${SETTLE:-5}
PORT=${PORT:-54361}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
KEEP=${KEEP:-0}
TARGET_KB=$((30 * 1000))

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crate=$(dirname "$here")
SYNAPSE_BIN=${SYNAPSE_BIN:-${CARGO_TARGET_DIR:-$crate/target}/release/synapse-backup}

log() { printf '[%s +%4ds] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -x "$PGBIN/initdb" ] || die "PostgreSQL binaries not found in $PGBIN (set PGBIN)"
[ -x "$SYNAPSE_BIN" ] || die "$SYNAPSE_BIN not found: run 'cargo build --release' in $crate"
command -v curl >/dev/null || die "curl is not installed"
for v in SCALE REPS SETTLE PORT; do
    case ${!v} in '' | *[!0-9]*) die "$v must be a non-negative integer" ;; esac
done
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/agent-memory-bench.XXXXXX")
chmod 755 "$WORK"
BIN=$WORK/bin/synapse-backup
CONF=$WORK/synapse.toml
CLUSTERS=(core analytics revenue)
METRICS_PORT=$((PORT + 3))
STARTED=()
AGENT_PID=

cleanup() {
    local rc=$? d
    set +e
    [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
    for d in "${STARTED[@]}"; do
        as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1
    done
    if [ "$KEEP" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/bin" "$WORK/repo" "$WORK/scratch"
cp "$SYNAPSE_BIN" "$BIN"
{
    printf 'timezone = "UTC"\n[repository]\nurl = "file://%s"\n' "$WORK/repo"
    printf '[backup]\narchive_wait_seconds = 120\n'
    printf '[verify]\nruntime = "namespace"\nscratch_dir = "%s"\n' "$WORK/scratch"
    printf '[agent]\nlisten = "127.0.0.1:%s"\nbackup_schedule = "0 0 3 * * *"\n' "$METRICS_PORT"
    for i in "${!CLUSTERS[@]}"; do
        name=${CLUSTERS[$i]}
        printf '[[cluster]]\nname = "%s"\npgdata = "%s"\n' "$name" "$WORK/$name/pgdata"
        printf 'connection = "host=%s port=%s user=postgres dbname=postgres"\n' "$WORK/$name" $((PORT + i))
        [ "$name" = core ] || printf 'verify_after_backup = false\n'
    done
} >"$CONF"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$WORK"

log "work dir $WORK; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
log "synapse-backup: $("$BIN" --version); SCALE=$SCALE REPS=$REPS"
for i in "${!CLUSTERS[@]}"; do
    name=${CLUSTERS[$i]}
    d=$WORK/$name/pgdata
    as_pg mkdir -p "$WORK/$name"
    as_pg "$PGBIN/initdb" -k -A trust -U postgres -D "$d" >/dev/null
    cat >>"$d/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$WORK/$name'
port = $((PORT + i))
wal_level = replica
archive_mode = on
archive_command = '$BIN --config $CONF --cluster $name wal-push %p'
EOF
    as_pg "$PGBIN/pg_ctl" -D "$d" -l "$WORK/$name/pg.log" -w start >/dev/null
    STARTED+=("$d")
    as_pg "$PGBIN/pgbench" -h "$WORK/$name" -p $((PORT + i)) -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
done

metric() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

printf '\n%-22s %4s %10s %10s %10s %s\n' "setting" "rep" "VmRSS" "RssAnon" "RssFile" "target VmRSS < 30 MB"
for rep in $(seq "$REPS"); do
    for arenas in 2 default; do
        rm -rf "${WORK:?}/repo"/* "$WORK/agent.log"
        env=(NO_COLOR=1)
        [ "$arenas" = default ] || env+=(MALLOC_ARENA_MAX="$arenas")
        if [ "$(id -u)" -eq 0 ]; then
            runuser -u postgres -- env "${env[@]}" "$BIN" --config "$CONF" agent >"$WORK/agent.log" 2>&1 &
        else
            env "${env[@]}" "$BIN" --config "$CONF" agent >"$WORK/agent.log" 2>&1 &
        fi
        AGENT_PID=$!
        # runuser forks: the agent is its child.
        for _ in $(seq 50); do
            pid=$(pgrep -f -n "$BIN --config $CONF agent" || true)
            [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = synapse-backup ] && break
            sleep 0.1
        done
        [ -n "$pid" ] || die "the agent did not start: $(tail -n 20 "$WORK/agent.log")"
        ok=
        for _ in $(seq 1200); do
            kill -0 "$AGENT_PID" 2>/dev/null || die "the agent exited: $(tail -n 20 "$WORK/agent.log")"
            done_verify=$(metric 'synapse_backup_job_runs_total{cluster="core",job_type="verify"}')
            running=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -c '^synapse_backup_job_running{.* 1\(\.0\)\?$' || true)
            if [ -n "$done_verify" ] && [ "${done_verify%.*}" -ge 1 ] && [ "$running" = 0 ]; then ok=1; break; fi
            sleep 0.5
        done
        [ -n "$ok" ] || die "no verification within 10 minutes: $(tail -n 20 "$WORK/agent.log")"
        sleep "$SETTLE"
        rss=$(status_kb "$pid" VmRSS) anon=$(status_kb "$pid" RssAnon) file=$(status_kb "$pid" RssFile)
        verdict=$([ "$rss" -lt "$TARGET_KB" ] && echo met || echo MISSED)
        label=$([ "$arenas" = default ] && echo "glibc default arenas" || echo "MALLOC_ARENA_MAX=$arenas")
        printf '%-22s %4s %7.1f MB %7.1f MB %7.1f MB %s\n' "$label" "$rep" \
            "$(awk -v k="$rss" 'BEGIN { print k / 1000 }')" "$(awk -v k="$anon" 'BEGIN { print k / 1000 }')" \
            "$(awk -v k="$file" 'BEGIN { print k / 1000 }')" "$verdict"
        kill -TERM "$pid"
        wait "$AGENT_PID" 2>/dev/null || true
        AGENT_PID=
    done
done
