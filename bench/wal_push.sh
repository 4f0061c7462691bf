#!/usr/bin/env bash
# WAL archiving benchmark: synapse-backup `wal-push` against pgBackRest 2.45 `archive-push`.
#
# What it measures
#   The same SEGMENTS (default 64) real 16 MB WAL segments are archived by
#     * synapse-backup wal-push          (gzip level COMPRESS_LEVEL, look-ahead push_parallelism
#                                         PUSH_PARALLELISM, file:// repository, or S3, see below)
#     * pgbackrest archive-push           (archive-async=y, process-max=2, compress-type=gz,
#                                         compress-level=COMPRESS_LEVEL — 6 by default, the same
#                                         level as ours)
#     * cp + sync                         (a floor: copy and fsync, no compression; CP_BASELINE=0
#                                         skips it)
#   invoked one segment at a time as PostgreSQL's archiver does (bench/archiver_sim.sh): a fresh
#   fake pg_wal holding all segments with archive_status/<name>.ready; in WAL order `cd` to the
#   data directory, run the archive_command once through `sh -c` with %p = pg_wal/<name> (a
#   non-zero exit is retried after 1 s, retry time counted), rename .ready to .done.
#   Reported per tool: wall time of the whole loop, segments/s, peak RSS of one call (GNU time
#   %M, max over calls; for pgBackRest that is the foreground process only, its async worker is
#   not counted), and for synapse-backup the median latency of calls whose segment had already
#   been pushed ahead (a marker in pg_wal/synapse_spool/pushed/ before the call).
#   At the end every stored object is counted and decompressed and compared with its segment;
#   the script fails unless each repository holds exactly the SEGMENTS segments.
#   Targets (issue): synapse >= 2x pgBackRest async segments/s in the same run, fast-path
#   median < 10 ms, peak RSS of one call < 64 MB. STRICT=1 makes a missed target exit 2.
#
# How the segments are made
#   initdb -k in a mktemp -d work dir, PostgreSQL on a unix socket in that dir only
#   (listen_addresses=''), archive_mode=on, archive_command='cp %p <hold>/%f'; pgbench -i -s SCALE
#   then rounds of 5 s of pgbench (TPC-B-like) write load until SEGMENTS segments were archived
#   naturally (complete segments, no pg_switch_wal, so none is padded with zeros); then the
#   cluster is stopped. WAL_LOAD=plain (default) leaves checkpoints to their normal schedule, so
#   the load WAL is mostly small records (gzip -6 gets ~3.5:1 over the set, slowly: ~18 MB/s);
#   WAL_LOAD=checkpoints runs CHECKPOINT before each round, so it is mostly full-page images
#   (~10:1, compressed 4x faster, and generated much faster). The mix changes the result a lot.
#   pgBackRest's stanza is created while the cluster is up; pushing then uses copies of its data
#   directory, so the segments' system identifier matches the stanza.
#
# Usage (as root or as postgres; PostgreSQL itself runs as postgres via runuser when root):
#   cargo build --release && bench/wal_push.sh
# Environment:
#   SEGMENTS=64  SCALE=10  WAL_LOAD=plain|checkpoints  GEN_TIMEOUT=1800 (s of load at most)
#   PUSH_PARALLELISM=4  COMPRESS_LEVEL=6  CP_BASELINE=1  STRICT=0
#   KEEP_WORKDIR=0 (1 keeps the work dir for inspection)  SYNAPSE_BIN=<path of the binary>
#   REPO=file|s3 — with REPO=s3 and S3_ENDPOINT, S3_BUCKET, AWS_ACCESS_KEY_ID,
#   AWS_SECRET_ACCESS_KEY set, synapse-backup pushes to s3://$S3_BUCKET/bench-<random>
#   (endpoint = $S3_ENDPOINT, allow_http = true); pgBackRest still uses its local repository.
set -euo pipefail
export LC_ALL=C

SEGMENTS=${SEGMENTS:-64}
SCALE=${SCALE:-10}
WAL_LOAD=${WAL_LOAD:-plain}
GEN_TIMEOUT=${GEN_TIMEOUT:-1800}
PUSH_PARALLELISM=${PUSH_PARALLELISM:-4}
COMPRESS_LEVEL=${COMPRESS_LEVEL:-6}
CP_BASELINE=${CP_BASELINE:-1}
STRICT=${STRICT:-0}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
REPO=${REPO:-file}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGPORT_BENCH=${PGPORT_BENCH:-54329}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crate=$(dirname "$here")
SYNAPSE_BIN=${SYNAPSE_BIN:-$crate/target/release/synapse-backup}
SIM=$here/archiver_sim.sh
WAL_SEG_SIZE=16777216

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites
[ -x /usr/bin/pgbackrest ] || { echo "pgbackrest is not installed: apt-get install pgbackrest" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time is not installed: apt-get install time" >&2; exit 1; }
[ -x "$PGBIN/initdb" ] || die "PostgreSQL binaries not found in $PGBIN (set PGBIN)"
[ -x "$SYNAPSE_BIN" ] || die "$SYNAPSE_BIN not found: run 'cargo build --release' in $crate"
case $SEGMENTS in '' | *[!0-9]* | 0) die "SEGMENTS must be a positive integer" ;; esac
case $WAL_LOAD in plain | checkpoints) ;; *) die "WAL_LOAD must be plain or checkpoints" ;; esac

if [ "$(id -u)" -eq 0 ]; then
    RUN_USER=postgres
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user"
    as_pg() { runuser -u postgres -- "$@"; }
else
    RUN_USER=$(id -un)
    as_pg() { "$@"; }
fi
# Hand a path to the user the tools run as (no-op when not root).
chown_pg() { if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$@"; fi; }

use_s3=0
if [ "$REPO" = s3 ]; then
    if [ -n "${S3_ENDPOINT:-}" ] && [ -n "${S3_BUCKET:-}" ] && [ -n "${AWS_ACCESS_KEY_ID:-}" ] && [ -n "${AWS_SECRET_ACCESS_KEY:-}" ]; then
        use_s3=1
    else
        log "REPO=s3 but S3_ENDPOINT/S3_BUCKET/AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not all set: skipping S3, using a file:// repository"
    fi
fi

# ---------------------------------------------------------------- work dir and cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/walpush-bench.XXXXXX")
chmod 755 "$WORK"
PGDATA_BENCH=$WORK/pgdata
SOCK=$WORK/sock
HOLD=$WORK/segments
PGBR_CONF=$WORK/pgbackrest.conf
pg_started=0

cleanup() {
    local rc=$?
    set +e
    if [ "$pg_started" -eq 1 ] && [ -f "$PGDATA_BENCH/postmaster.pid" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_BENCH" -m immediate -w stop >/dev/null 2>&1
    fi
    # pgBackRest's async worker may outlive the last foreground call: wait for the processes
    # started with our config file (found by its unique path, ended only by their PIDs).
    local pids i
    for i in $(seq 1 60); do
        pids=$(pgrep -f -- "--config=$PGBR_CONF" || true)
        [ -z "$pids" ] && break
        sleep 0.5
    done
    [ -n "${pids:-}" ] && kill $pids 2>/dev/null
    if [ "$KEEP_WORKDIR" = 1 ]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$SOCK" "$HOLD" "$WORK/bin" "$WORK/results" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool"
# A private copy of the binary: a rebuild during the run must not change what is measured.
cp "$SYNAPSE_BIN" "$WORK/bin/synapse-backup"
BIN=$WORK/bin/synapse-backup
chown_pg "$WORK"

log "work dir $WORK, running tools as $RUN_USER, $(nproc) CPUs"
log "synapse-backup binary: $SYNAPSE_BIN ($(stat -c '%y' "$SYNAPSE_BIN" | cut -d. -f1)), $("$BIN" --version)"
log "$(pgbackrest version)"

# ---------------------------------------------------------------- 1. real WAL segments
psql_q() { as_pg "$PGBIN/psql" -X -h "$SOCK" -p "$PGPORT_BENCH" -d postgres -Atqc "$1"; }
count_held() { find "$HOLD" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9A-F]{24}' | wc -l; }

log "initdb -k and start PostgreSQL on unix socket $SOCK"
as_pg "$PGBIN/initdb" -k -D "$PGDATA_BENCH" -U postgres --auth=trust -E UTF8 --no-instructions >"$WORK/initdb.log"
cat >>"$PGDATA_BENCH/postgresql.conf" <<EOF
# --- bench/wal_push.sh
listen_addresses = ''
unix_socket_directories = '$SOCK'
port = $PGPORT_BENCH
archive_mode = on
archive_command = 'cp %p $HOLD/%f'
synchronous_commit = off
EOF
pg_started=1
as_pg "$PGBIN/pg_ctl" -D "$PGDATA_BENCH" -l "$WORK/postgresql.log" -w start >/dev/null

log "pgBackRest stanza-create on the running cluster"
cat >"$PGBR_CONF" <<EOF
[global]
repo1-path=$WORK/pgbr-repo
compress-type=gz
compress-level=$COMPRESS_LEVEL
archive-async=y
spool-path=$WORK/pgbr-spool
process-max=2
lock-path=$WORK/pgbr-lock
log-path=$WORK/pgbr-log
log-level-console=warn
log-level-stderr=warn
log-level-file=info

[bench]
pg1-path=$PGDATA_BENCH
pg1-socket-path=$SOCK
pg1-port=$PGPORT_BENCH
EOF
chown_pg "$PGBR_CONF"
as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench stanza-create >"$WORK/stanza-create.log" 2>&1 \
    || { cat "$WORK/stanza-create.log" >&2; die "pgbackrest stanza-create failed"; }

log "pgbench -i -s $SCALE, then write load until $SEGMENTS segments are archived"
as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PGPORT_BENCH" -i -s "$SCALE" -q postgres >"$WORK/pgbench.log" 2>&1
gen_start=$SECONDS
last_report=$SECONDS
while [ "$(count_held)" -lt "$SEGMENTS" ]; do
    [ $((SECONDS - gen_start)) -le "$GEN_TIMEOUT" ] || die "only $(count_held) segments after $GEN_TIMEOUT s of load (GEN_TIMEOUT)"
    # WAL_LOAD=checkpoints: a checkpoint before each round, so the round writes mostly
    # full-page images (much more compressible, and WAL fills faster).
    if [ "$WAL_LOAD" = checkpoints ]; then psql_q 'checkpoint' >/dev/null; fi
    as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PGPORT_BENCH" -n -c 2 -j 2 -T 5 postgres >>"$WORK/pgbench.log" 2>&1
    if [ $((SECONDS - last_report)) -ge 30 ]; then
        last_report=$SECONDS
        log "  $(count_held) of $SEGMENTS segments archived (current WAL file $(psql_q 'select pg_walfile_name(pg_current_wal_lsn())'))"
    fi
done
log "  $(count_held) segments archived after $((SECONDS - gen_start)) s of load"
system_id=$(psql_q 'select system_identifier from pg_control_system()')
as_pg "$PGBIN/pg_ctl" -D "$PGDATA_BENCH" -m fast -w stop >/dev/null   # the archiver finishes its copies first
pg_started=0

mapfile -t SEGS < <(find "$HOLD" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9A-F]{24}' -printf '%f\n' | sort | head -n "$SEGMENTS")
[ "${#SEGS[@]}" -eq "$SEGMENTS" ] || die "expected $SEGMENTS segments, have ${#SEGS[@]}"
for s in "${SEGS[@]}"; do
    [ "$(stat -c %s "$HOLD/$s")" -eq "$WAL_SEG_SIZE" ] || die "$s is not $WAL_SEG_SIZE bytes"
done
log "segments ${SEGS[0]} .. ${SEGS[-1]} (system id $system_id), $(du -sm "$HOLD" | cut -f1) MB in the holding dir"

# A fake data directory per tool: a copy of the stopped cluster whose pg_wal holds exactly the
# benchmark segments, each with archive_status/<name>.ready.
make_fake_datadir() {
    local dir=$1 s
    cp -a "$PGDATA_BENCH" "$dir"
    rm -rf "$dir/pg_wal" "$dir/postmaster.opts"
    mkdir -p "$dir/pg_wal/archive_status"
    for s in "${SEGS[@]}"; do
        cp "$HOLD/$s" "$dir/pg_wal/$s"
        : >"$dir/pg_wal/archive_status/$s.ready"
    done
    chown_pg "$dir"
    sync -f "$dir" # no write-back of the copies during the timed loop
}

# ---------------------------------------------------------------- 2. configurations
SYN_REPO_DIR=$WORK/synapse-repo
if [ "$use_s3" -eq 1 ]; then
    SYN_URL="s3://$S3_BUCKET/bench-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
    SYN_EXTRA="endpoint = \"$S3_ENDPOINT\"
allow_http = true"
else
    SYN_URL="file://$SYN_REPO_DIR"
    SYN_EXTRA=""
    mkdir -p "$SYN_REPO_DIR"
fi
SYN_CONF=$WORK/synapse.toml
cat >"$SYN_CONF" <<EOF
[repository]
url = "$SYN_URL"
$SYN_EXTRA

[archive]
push_parallelism = $PUSH_PARALLELISM
compress_level = $COMPRESS_LEVEL

[[cluster]]
name = "bench"
pgdata = "$WORK/fake-synapse"
EOF
sed -i "s#^pg1-path=.*#pg1-path=$WORK/fake-pgbackrest#" "$PGBR_CONF"
CP_DEST=$WORK/cp-dest
mkdir -p "$CP_DEST"
chown_pg "$WORK"

# ---------------------------------------------------------------- 3. the runs
run_tool() { # key, archive_command
    local key=$1 cmd=$2
    make_fake_datadir "$WORK/fake-$key"
    log "archiving $SEGMENTS segments with $key: $cmd"
    as_pg "$SIM" "$WORK/fake-$key" "$cmd" "$WORK/results/$key" \
        || { tail -n 20 "$WORK/results/$key.stderr" >&2; die "$key: archiving failed"; }
    log "  done in $(awk '{printf "%.2f", $1 / 1e6}' "$WORK/results/$key.wall_us") s"
}

if [ "$CP_BASELINE" = 1 ]; then
    run_tool cp "cp %p $CP_DEST/%f && sync $CP_DEST/%f"
fi
run_tool synapse "$BIN --config $SYN_CONF --cluster bench wal-push %p"
run_tool pgbackrest "pgbackrest --config=$PGBR_CONF --stanza=bench archive-push %p"

# ---------------------------------------------------------------- 4. what was really stored
# Every object must decompress to its segment byte for byte.
verify_failed=0
verify() { # key, objects found, function printing a segment's object path, how to read one
    local key=$1 found=$2 locate=$3 reader=$4 s obj bad=0
    for s in "${SEGS[@]}"; do
        obj=$($locate "$s")
        if [ -z "$obj" ] || ! $reader "$obj" | cmp -s - "$HOLD/$s"; then
            bad=$((bad + 1))
            log "  $key: $s missing or different in the repository"
        fi
    done
    STORED[$key]="$found"
    if [ "$found" -ne "$SEGMENTS" ] || [ "$bad" -ne 0 ]; then
        log "  $key: $found objects in the repository, $bad of $SEGMENTS segments missing or different: FAILED"
        verify_failed=1
    else
        log "  $key: $found objects, all $SEGMENTS segments stored intact"
    fi
}
declare -A STORED STORED_MB
log "verifying the repositories"

if [ "$CP_BASELINE" = 1 ]; then
    locate_cp() { [ -f "$CP_DEST/$1" ] && echo "$CP_DEST/$1"; true; }
    verify cp "$(find "$CP_DEST" -type f | wc -l)" locate_cp cat
    STORED_MB[cp]=$(du -sm "$CP_DEST" | cut -f1)
fi

if [ "$use_s3" -eq 1 ]; then
    # Count the objects with boto3 when it is there; the content is checked by fetching every
    # segment back with our own wal-fetch.
    s3_prefix=${SYN_URL#s3://$S3_BUCKET/}
    s3_count=$(python3 - "$S3_ENDPOINT" "$S3_BUCKET" "$s3_prefix/bench/wal/" 2>/dev/null <<'PY' || echo "?"
import sys, boto3
endpoint, bucket, prefix = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint)
n = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    n += sum(1 for o in page.get("Contents", []) if o["Key"].endswith(".gz"))
print(n)
PY
)
    fetch_dir=$WORK/fetch/pg_wal
    mkdir -p "$fetch_dir"
    chown_pg "$WORK/fetch"
    locate_s3() {
        if as_pg "$BIN" --config "$SYN_CONF" --cluster bench wal-fetch "$1" "$fetch_dir/$1" 2>>"$WORK/results/fetch.stderr"; then
            echo "$fetch_dir/$1"
        fi
        true
    }
    if [ "$s3_count" = "?" ]; then
        log "  (boto3 not available: counting the segments wal-fetch returns instead of listing the bucket)"
        s3_count=$SEGMENTS
    fi
    verify synapse "$s3_count" locate_s3 cat
    STORED_MB[synapse]="-"
else
    locate_syn() { local f="$SYN_REPO_DIR/bench/wal/${1:0:16}/$1.gz"; [ -f "$f" ] && echo "$f"; true; }
    verify synapse "$(find "$SYN_REPO_DIR" -path '*/wal/*' -name '*.gz' -type f | wc -l)" locate_syn "gzip -dc"
    STORED_MB[synapse]=$(du -sm "$SYN_REPO_DIR" | cut -f1)
fi

PGBR_ARCH=$WORK/pgbr-repo/archive/bench
locate_pgbr() { compgen -G "$PGBR_ARCH/*/${1:0:16}/$1-*.gz" | head -n 1; true; }
verify pgbackrest "$(find "$PGBR_ARCH" -regextype posix-extended -regex '.*/[0-9A-F]{24}-[0-9a-f]{40}\.gz' -type f | wc -l)" locate_pgbr "gzip -dc"
STORED_MB[pgbackrest]=$(du -sm "$WORK/pgbr-repo" | cut -f1)

leftover_markers=$(find "$WORK/fake-synapse/pg_wal/synapse_spool/pushed" -type f 2>/dev/null | wc -l)
synapse_warnings=$(grep -ciE 'warn|error' "$WORK/results/synapse.stderr" || true)

# ---------------------------------------------------------------- 5. report
# summary KEY -> "wall_s seg_per_s peak_rss_mb fastpath_calls fastpath_median_ms other_median_ms retries"
summary() {
    awk -v wall_us="$(cat "$WORK/results/$1.wall_us")" '
        function median(a, n,   i, j, t) {
            if (n == 0) return "-"
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return (n % 2) ? a[(n + 1) / 2] / 1000 : (a[n / 2] + a[n / 2 + 1]) / 2000
        }
        { n++; retries += $3 - 1; if ($4 > rss) rss = $4
          if ($5 == 1) fp[++nfp] = $2; else other[++nother] = $2 }
        END {
            fpm = median(fp, nfp); om = median(other, nother)
            printf "%.2f %.2f %.1f %d %s %s %d\n", wall_us / 1e6, n / (wall_us / 1e6), rss / 1024, nfp,
                (fpm == "-" ? "-" : sprintf("%.2f", fpm)), (om == "-" ? "-" : sprintf("%.1f", om)), retries
        }' "$WORK/results/$1.calls"
}

declare -A LABEL=(
    [synapse]="synapse-backup wal-push"
    [pgbackrest]="pgbackrest archive-push async"
    [cp]="cp + sync (baseline)"
)
keys=(synapse pgbackrest)
[ "$CP_BASELINE" = 1 ] && keys+=(cp)

echo
echo "WAL archive benchmark: $SEGMENTS real 16 MB segments, one call per segment; $(nproc) CPUs; load average now $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)"
echo "segments: pgbench -i -s $SCALE + TPC-B-like load, WAL_LOAD=$WAL_LOAD; $((SEGMENTS * 16)) MB, ${STORED_MB[pgbackrest]} MB after pgbackrest's gzip -6"
echo "synapse-backup: push_parallelism=$PUSH_PARALLELISM compress_level=$COMPRESS_LEVEL repository=$SYN_URL"
echo "pgbackrest 2.45: archive-async=y process-max=2 compress-type=gz compress-level=$COMPRESS_LEVEL"
echo
printf '%-31s %8s %8s %10s %12s %19s %15s %16s %8s %10s\n' tool segments wall_s seg_per_s peak_rss_mb fastpath_median_ms fastpath_calls other_median_ms retries stored_mb
declare -A RATE RSS FPM
for k in "${keys[@]}"; do
    read -r wall rate rss nfp fpm om retries <<<"$(summary "$k")"
    RATE[$k]=$rate RSS[$k]=$rss FPM[$k]=$fpm
    [ "$k" = synapse ] || { nfp="-"; fpm="-"; }
    printf '%-31s %8d %8s %10s %12s %19s %15s %16s %8s %10s\n' "${LABEL[$k]}" "$SEGMENTS" "$wall" "$rate" "$rss" "$fpm" "$nfp" "$om" "$retries" "${STORED_MB[$k]}"
done
ratio=$(awk -v a="${RATE[synapse]}" -v b="${RATE[pgbackrest]}" 'BEGIN { printf "%.2f", a / b }')
echo
echo "ratio synapse/pgbackrest: $ratio (target >= 2.0)"
echo "objects stored: synapse ${STORED[synapse]}, pgbackrest ${STORED[pgbackrest]}${STORED[cp]:+, cp ${STORED[cp]}} (expected $SEGMENTS each)"
echo "peak_rss_mb: max over calls of GNU time %M (pgbackrest: foreground process only); other_median_ms: calls that did the work"
echo "harness cost per call (GNU time + sh -c of an empty command, median), included in every call:$(for k in "${keys[@]}"; do awk -v k="$k" '{ printf " %s %.2f ms", k, $1 / 1000 }' "$WORK/results/$k.harness_us"; done)"
echo "synapse: look-ahead markers left over: $leftover_markers; stderr lines with warn/error: $synapse_warnings"

missed=0
check() { # description, awk condition
    if awk "BEGIN { exit !($2) }"; then echo "target met:    $1"; else echo "target MISSED: $1"; missed=1; fi
}
echo
check "synapse >= 2.0x pgbackrest async rate (got ${ratio}x)" "$ratio >= 2.0"
if [ "${FPM[synapse]}" = "-" ]; then
    echo "target MISSED: fast-path median < 10 ms (no call found its segment already pushed ahead)"; missed=1
else
        net=$(awk -v m="${FPM[synapse]}" -v h="$(cat "$WORK/results/synapse.harness_us")" 'BEGIN { printf "%.2f", m - h / 1000 }')
    check "fast-path median < 10 ms (got ${FPM[synapse]} ms; ${net} ms net of the harness)" "${FPM[synapse]} < 10"
fi
check "peak RSS of one synapse call < 64 MB (got ${RSS[synapse]} MB)" "${RSS[synapse]} < 64"

[ "$verify_failed" -eq 0 ] || die "a repository does not hold all $SEGMENTS segments intact"
[ "$STRICT" = 1 ] && [ "$missed" -eq 1 ] && exit 2
exit 0
