#!/usr/bin/env bash
# Incremental backup benchmark (issue 15): synapse-backup block-level incrementals against
# pgBackRest 2.45's file-level --type=incr and --type=diff and against our own full, all in the
# same run on the same database.
#
# What it does
#   0. initdb -k in a mktemp -d work dir; PostgreSQL on a unix socket only; archive_command feeds
#      both repositories (synapse-backup wal-push, then pgbackrest archive-push). pgbench -i -s
#      SCALE (its WAL discarded), CHECKPOINT.
#   1. Full backups: ours (`backup`), pgBackRest --type=full (gz level 6, process-max 2).
#   2. CHAIN rounds: pgbench -c 2 -t TX (TX transactions per client: with scale 100 about 2 % of
#      the cluster's blocks change per round; the fraction measured is printed), then our
#      `backup --type incr` and `pgbackrest backup --type=incr`. After the last round,
#      `pgbackrest backup --type=diff` (everything since its full).
#   3. Restore, REPS rounds in alternating order: ours of the full (`restore --backup FULL`) and
#      of the newest incremental (its chain: the full + CHAIN incrementals) into empty dirs.
#   Wall time and peak RSS (GNU time) of each command; stored bytes from our manifests (parts +
#   block map) and from pgBackRest's info. Targets (issue 15): our incremental's stored bytes
#   <= 10 % of pgBackRest's incr and <= 5 % of our full; its wall time <= 35 % of our full;
#   chain restore <= 1.3 x full restore; peak RSS < 256 MB.
#
# Usage (as root: PostgreSQL and the tools run as postgres; or as postgres):
#   cargo build --release && bench/incremental.sh
# Environment: SCALE=100 CHAIN=6 TX=1500 REPS=2 PORT=54361 PGBIN=/usr/lib/postgresql/15/bin
#   SYNAPSE_BIN=<default target/release/synapse-backup, or $CARGO_TARGET_DIR/release/…>
#   KEEP=0 (1 keeps the work dir)
set -euo pipefail
export LC_ALL=C

SCALE=${SCALE:-100}
CHAIN=${CHAIN:-6}
TX=${TX:-1500}
REPS=${REPS:-2}
PORT=${PORT:-54361}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
KEEP=${KEEP:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crate=$(dirname "$here")
SYNAPSE_BIN=${SYNAPSE_BIN:-${CARGO_TARGET_DIR:-$crate/target}/release/synapse-backup}

log() { printf '[%s +%4ds] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -x /usr/bin/pgbackrest ] || die "pgbackrest is not installed: apt-get install pgbackrest"
[ -x /usr/bin/time ] || die "GNU time is not installed: apt-get install time"
command -v jq >/dev/null || die "jq is not installed: apt-get install jq"
[ -x "$SYNAPSE_BIN" ] || die "$SYNAPSE_BIN not found: cargo build --release"

if [ "$(id -u)" -eq 0 ]; then
    as_pg() { runuser -u postgres -- "$@"; }
    chown_pg() { chown -R postgres: "$@"; }
else
    as_pg() { "$@"; }
    chown_pg() { :; }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/incr-bench.XXXXXX")
chmod 755 "$WORK"
SRC=$WORK/pgdata SOCK=$WORK/sock RES=$WORK/results BIN=$WORK/bin/synapse-backup
SYN_CONF=$WORK/synapse.toml SYN_REPO=$WORK/synapse-repo
PGBR_CONF=$WORK/pgbackrest.conf PGBR_REPO=$WORK/pgbr-repo

cleanup() {
    local rc=$? d
    set +e
    for d in "$SRC" "$WORK"/restore-*; do
        [ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1
    done
    if [ "$KEEP" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$SOCK" "$RES" "$WORK/bin" "$SYN_REPO" "$PGBR_REPO" "$WORK/pgbr-log" "$WORK/pgbr-lock"
cp "$SYNAPSE_BIN" "$BIN"

psql_q() { as_pg "$PGBIN/psql" -X -h "$SOCK" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 -Atqc "$1"; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b <= 0) print "-"; else printf "%.1f", 100 * a / b }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b <= 0) print "-"; else printf "%.2f", a / b }'; }
mean() { printf '%s\n' "$@" | awk '{ s += $1 } END { if (NR) printf "%.2f", s / NR; else print "-" }'; }
# timed NAME CMD...: run as postgres under GNU time; sets T (s) and RSS (MB); logs in $RES/NAME.*
timed() {
    local name=$1; shift
    as_pg /usr/bin/time -f '%e %M' -o "$RES/$name.time" "$@" >"$RES/$name.out" 2>"$RES/$name.err" \
        || { tail -n 20 "$RES/$name.err" >&2; die "$name failed"; }
    T=$(cut -d' ' -f1 "$RES/$name.time" | tail -n1)
    RSS=$(awk '{ printf "%.1f", $2 / 1024 }' "$RES/$name.time" | tail -n1)
}
syn() { "$BIN" --config "$SYN_CONF" "$@"; }
pgbr() { pgbackrest --config="$PGBR_CONF" --stanza=bench "$@"; }
# Our stored bytes for a backup: its parts and block map (the manifest's own size aside).
syn_stored() { du -sb --exclude=manifest.json "$SYN_REPO/bench/backups/$1" | cut -f1; }
pgbr_stored() { # label: repo size of that pgBackRest backup
    as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench --output=json info \
        | jq -r --arg l "$1" '.[0].backup[] | select(.label == $l) | .info.repository.delta'
}
pgbr_last_label() {
    as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench --output=json info | jq -r '.[0].backup[-1].label'
}

ARCHIVE_SH=$WORK/bin/archive-to-synapse-and-pgbackrest.sh
cat >"$ARCHIVE_SH" <<EOF
#!/bin/sh
[ "\$(pwd -P)" = "$(cd "$WORK" && pwd -P)/pgdata" ] || exit 0
[ -e "$WORK/archive.discard" ] && exit 0
"$BIN" --config "$SYN_CONF" wal-push "\$1" || exit \$?
exec pgbackrest --config="$PGBR_CONF" --stanza=bench archive-push "\$1"
EOF
chmod 755 "$ARCHIVE_SH"
cat >"$SYN_CONF" <<EOF
timezone = "UTC"
[repository]
url = "file://$SYN_REPO"
[backup]
parallelism = 2
compress_level = 6
max_chain = $((CHAIN + 1))
[[cluster]]
name = "bench"
pgdata = "$SRC"
connection = "host=$SOCK port=$PORT user=postgres dbname=postgres"
EOF
cat >"$PGBR_CONF" <<EOF
[global]
repo1-path=$PGBR_REPO
repo1-retention-full=99
compress-type=gz
compress-level=6
process-max=2
start-fast=y
lock-path=$WORK/pgbr-lock
log-path=$WORK/pgbr-log
log-level-console=warn
log-level-stderr=warn
[bench]
pg1-path=$SRC
pg1-socket-path=$SOCK
pg1-port=$PORT
EOF
: >"$WORK/archive.discard"
chown_pg "$WORK"

log "initdb -k; PostgreSQL on $SOCK:$PORT; $(nproc) CPUs; $("$BIN" --version); $(pgbackrest version)"
as_pg "$PGBIN/initdb" -k -D "$SRC" -U postgres --auth=trust -E UTF8 --no-instructions >"$WORK/initdb.log"
cat >>"$SRC/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$SOCK'
port = $PORT
archive_mode = on
archive_command = '$ARCHIVE_SH %p'
max_wal_size = 4GB
EOF
as_pg "$PGBIN/pg_ctl" -D "$SRC" -l "$WORK/postgresql.log" -w start >/dev/null
as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench stanza-create >"$RES/stanza.log" 2>&1 || die "stanza-create"
log "pgbench -i -s $SCALE"
as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -i -s "$SCALE" -q postgres >"$RES/init.log" 2>&1
psql_q "checkpoint"
rm -f "$WORK/archive.discard"
psql_q "select pg_switch_wal()" >/dev/null

# ---------------------------------------------------------------- 1. fulls
log "full backups"
timed syn-full syn backup
FULL_ID=$(tail -n1 "$RES/syn-full.out"); SYN_FULL_T=$T; SYN_FULL_RSS=$RSS
SYN_FULL_B=$(syn_stored "$FULL_ID")
CLUSTER_B=$(jq '[.files[].size] | add' "$SYN_REPO/bench/backups/$FULL_ID/manifest.json")
timed pgbr-full pgbr backup --type=full
PGBR_FULL_T=$T; PGBR_FULL_B=$(pgbr_stored "$(pgbr_last_label)")
log "  ours $SYN_FULL_T s $(mb "$SYN_FULL_B") MB; pgBackRest $PGBR_FULL_T s $(mb "$PGBR_FULL_B") MB"

# ---------------------------------------------------------------- 2. incrementals
SI_T=() SI_B=() SI_RSS=() PI_T=() PI_B=() CHANGED=()
INCR_ID=
for i in $(seq 1 "$CHAIN"); do
    as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -n -c 2 -t "$TX" postgres >"$RES/pgbench-$i.log" 2>&1
    timed "syn-incr-$i" syn backup --type incr
    INCR_ID=$(tail -n1 "$RES/syn-incr-$i.out")
    m=$SYN_REPO/bench/backups/$INCR_ID/manifest.json
    [ "$(jq -r .kind "$m")" = incr ] || die "backup $INCR_ID is not an incremental"
    SI_T+=("$T") SI_RSS+=("$RSS") SI_B+=("$(syn_stored "$INCR_ID")")
    CHANGED+=("$(jq '[.files[] | select(.stored.kind == "blocks") | .stored.count] | add // 0' "$m")")
    timed "pgbr-incr-$i" pgbr backup --type=incr
    PI_T+=("$T") PI_B+=("$(pgbr_stored "$(pgbr_last_label)")")
    log "  round $i: ours ${SI_T[-1]} s $(mb "${SI_B[-1]}") MB (${CHANGED[-1]} blocks = $(pct $((CHANGED[-1] * 8192)) "$CLUSTER_B") % of the cluster); pgBackRest incr ${PI_T[-1]} s $(mb "${PI_B[-1]}") MB"
done
timed pgbr-diff pgbr backup --type=diff
PGBR_DIFF_T=$T; PGBR_DIFF_B=$(pgbr_stored "$(pgbr_last_label)")
psql_q "select pg_switch_wal()" >/dev/null

# ---------------------------------------------------------------- 3. restores
RF=() RC=() RF_RSS=() RC_RSS=()
for r in $(seq 1 "$REPS"); do
    for which in full chain; do
        [ $((r % 2)) = 0 ] && which=$([ "$which" = full ] && echo chain || echo full)
        d=$WORK/restore-$which-$r
        id=$([ "$which" = full ] && echo "$FULL_ID" || echo "$INCR_ID")
        sync
        timed "restore-$which-$r" syn restore --backup "$id" --latest --pgdata "$d"
        if [ "$which" = full ]; then RF+=("$T") RF_RSS+=("$RSS"); else RC+=("$T") RC_RSS+=("$RSS"); fi
        rm -rf "$d"
    done
done

# ---------------------------------------------------------------- the table
SI_TM=$(mean "${SI_T[@]}") SI_BM=$(mean "${SI_B[@]}") PI_TM=$(mean "${PI_T[@]}") PI_BM=$(mean "${PI_B[@]}")
CH=$(mean "${CHANGED[@]}")
RFM=$(mean "${RF[@]}") RCM=$(mean "${RC[@]}")
PEAK=$(printf '%s\n' "$SYN_FULL_RSS" "${SI_RSS[@]}" "${RF_RSS[@]}" "${RC_RSS[@]}" | sort -g | tail -n1)
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v <= t) ? "ok" : "MISSED" }'; }
{
echo
echo "## incremental backups: scale $SCALE, $CHAIN rounds of pgbench -c 2 -t $TX ($(pct "$(awk -v c="$CH" 'BEGIN{print c*8192}')" "$CLUSTER_B") % of $(mb "$CLUSTER_B") MB in changed blocks per round)"
echo
echo "| backup | wall s | stored MB | peak RSS MB |"
echo "| --- | ---: | ---: | ---: |"
echo "| ours full | $SYN_FULL_T | $(mb "$SYN_FULL_B") | $SYN_FULL_RSS |"
echo "| ours incr (mean of $CHAIN) | $SI_TM | $(mb "$SI_BM") | $(printf '%s\n' "${SI_RSS[@]}" | sort -g | tail -n1) |"
echo "| pgBackRest full | $PGBR_FULL_T | $(mb "$PGBR_FULL_B") | |"
echo "| pgBackRest incr (mean of $CHAIN) | $PI_TM | $(mb "$PI_BM") | |"
echo "| pgBackRest diff (after $CHAIN rounds) | $PGBR_DIFF_T | $(mb "$PGBR_DIFF_B") | |"
echo
echo "| restore | wall s (mean of $REPS) | peak RSS MB |"
echo "| --- | ---: | ---: |"
echo "| ours full | $RFM | $(printf '%s\n' "${RF_RSS[@]}" | sort -g | tail -n1) |"
echo "| ours full + $CHAIN incr | $RCM | $(printf '%s\n' "${RC_RSS[@]}" | sort -g | tail -n1) |"
echo
echo "| target | value | limit | |"
echo "| --- | ---: | ---: | --- |"
v=$(ratio "$SI_BM" "$PI_BM"); echo "| incr stored / pgBackRest incr | $v | 0.10 | $(verdict "$v" 0.10) |"
v=$(ratio "$SI_BM" "$SYN_FULL_B"); echo "| incr stored / our full | $v | 0.05 | $(verdict "$v" 0.05) |"
v=$(ratio "$SI_TM" "$SYN_FULL_T"); echo "| incr wall / our full | $v | 0.35 | $(verdict "$v" 0.35) |"
v=$(ratio "$RCM" "$RFM"); echo "| chain restore / full restore | $v | 1.30 | $(verdict "$v" 1.30) |"
echo "| peak RSS MB (ours) | $PEAK | 256 | $(verdict "$PEAK" 256) |"
} | tee "$RES/table.md"
