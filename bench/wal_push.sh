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
# Comparing two builds of synapse-backup (COMPARE_BIN=/path/to/older/synapse-backup)
#   The same segments are then also archived by the second binary in the same run, into its own
#   repository and its own fake data directory (same settings). REPS rounds (default 1) of the
#   synapse-backup runs, each round on fresh copies and empty repositories, the order of the two
#   binaries alternating (new first in odd rounds); cp and pgBackRest run once, in round 1, in
#   their usual places (cp first, pgBackRest last; its async workers are waited for before the
#   next round). Per synapse binary the table shows the median wall time over the rounds
#   (segments/s from it), the max peak RSS and the fast-path/other medians over all calls; a
#   "new/<label>" line gives the ratio of each figure (wall, segments/s, peak RSS, fast-path and
#   other median, stored bytes), marked ok when within 5 % or better, and the per-round wall
#   ratios. The targets are checked for the new binary only, as without COMPARE_BIN.
#
# Usage (as root or as postgres; PostgreSQL itself runs as postgres via runuser when root):
#   cargo build --release && bench/wal_push.sh
# Environment:
#   SEGMENTS=64  SCALE=10  WAL_LOAD=plain|checkpoints  GEN_TIMEOUT=1800 (s of load at most)
#   PUSH_PARALLELISM=4  COMPRESS_LEVEL=6  CP_BASELINE=1  STRICT=0
#   KEEP_WORKDIR=0 (1 keeps the work dir for inspection)  SYNAPSE_BIN=<path of the binary>
#   COMPARE_BIN=<second synapse-backup binary, e.g. the build before a change; unset: no comparison>
#   COMPARE_LABEL=old (its name in the table)  REPS=1 (rounds of the synapse-backup runs)
#   ENCRYPTED=1 (default) adds a row: the same binary into an encrypted repository (issue 14:
#   [repository.encryption], keys made once by `key init` while the cluster runs, an age-keygen
#   operator key), with an encrypted/plain line (wal-push median within +10 %, peak RSS within
#   10 %); its objects are checked with the stock age CLI. Not with REPO=s3 (file:// only).
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
COMPARE_BIN=${COMPARE_BIN:-}
COMPARE_LABEL=${COMPARE_LABEL:-old}
REPS=${REPS:-1}
ENCRYPTED=${ENCRYPTED:-1}

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
case $REPS in '' | *[!0-9]* | 0) die "REPS must be a positive integer" ;; esac
CMP=0
if [ -n "$COMPARE_BIN" ]; then
    CMP=1
    [ -x "$COMPARE_BIN" ] || die "COMPARE_BIN=$COMPARE_BIN is not an executable"
    case $COMPARE_LABEL in '' | *[!A-Za-z0-9._-]*) die "COMPARE_LABEL must be letters, digits, '.', '_' or '-'" ;; esac
fi
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
    local pids
    pids=$(wait_pgbr_workers)
    [ -n "${pids:-}" ] && kill $pids 2>/dev/null
    if [ "$KEEP_WORKDIR" = 1 ]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
# Wait (30 s at most) until no process started with our pgBackRest config file is left; prints
# the PIDs of those still there.
wait_pgbr_workers() {
    local pids="" i
    for i in $(seq 1 60); do
        pids=$(pgrep -f -- "--config=$PGBR_CONF" || true)
        [ -z "$pids" ] && break
        sleep 0.5
    done
    echo $pids
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$SOCK" "$HOLD" "$WORK/bin" "$WORK/results" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool"
# A private copy of the binary: a rebuild during the run must not change what is measured.
cp "$SYNAPSE_BIN" "$WORK/bin/synapse-backup"
BIN=$WORK/bin/synapse-backup
CMP_BIN=$WORK/bin/synapse-backup-cmp
[ "$CMP" = 1 ] && cp "$COMPARE_BIN" "$CMP_BIN"
chown_pg "$WORK"

log "work dir $WORK, running tools as $RUN_USER, $(nproc) CPUs"
log "synapse-backup binary: $SYNAPSE_BIN ($(stat -c '%y' "$SYNAPSE_BIN" | cut -d. -f1)), $("$BIN" --version)"
if [ "$CMP" = 1 ]; then
    CMP_DESC="$COMPARE_BIN ($(stat -c '%y' "$COMPARE_BIN" | cut -d. -f1)), $("$CMP_BIN" --version)"
    log "synapse-backup [$COMPARE_LABEL] (COMPARE_BIN): $CMP_DESC; REPS=$REPS"
fi
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
if [ "$ENCRYPTED" = 1 ] && [ "$use_s3" -eq 1 ]; then
    log "ENCRYPTED=1 is for file:// repositories only: no encrypted row with REPO=s3"
    ENCRYPTED=0
fi
if [ "$ENCRYPTED" = 1 ]; then
    # The encrypted repository's keys, made once while the cluster runs (`key init` reads its
    # identity); each round copies them into a fresh repository.
    command -v age-keygen >/dev/null || die "age is not installed: apt-get install age (or ENCRYPTED=0)"
    age-keygen -o "$WORK/operator.key" 2>/dev/null
    ENC_RECIPIENT=$(age-keygen -y "$WORK/operator.key")
    mkdir -p "$WORK/enc-template"
    chown_pg "$WORK/enc-template" "$WORK/operator.key"
    cat >"$WORK/enc-init.toml" <<EOF
[repository]
url = "file://$WORK/enc-template"
[repository.encryption]
recipients = ["$ENC_RECIPIENT"]
identity_file = "$WORK/operator.key"
[[cluster]]
name = "bench"
pgdata = "$PGDATA_BENCH"
connection = "host=$SOCK port=$PGPORT_BENCH user=postgres dbname=postgres"
EOF
    chown_pg "$WORK/enc-init.toml"
    as_pg "$BIN" --config "$WORK/enc-init.toml" key init >"$WORK/enc-init.log" 2>&1 \
        || { cat "$WORK/enc-init.log" >&2; die "key init failed"; }
    as_pg "$BIN" --config "$WORK/enc-init.toml" key export --identity-file "$WORK/operator.key" >"$WORK/repo.key"
fi
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
# synapse-backup keys: "synapse" (SYNAPSE_BIN) and, with COMPARE_BIN, "cmp"; each its own
# config file, repository and fake data directory. A round starts with an empty repository.
syn_bin() { if [ "$1" = cmp ]; then echo "$CMP_BIN"; else echo "$BIN"; fi; }
syn_conf_file() { echo "$WORK/$1.toml"; }
syn_repo_dir() { case $1 in cmp) echo "$WORK/cmp-repo" ;; enc) echo "$WORK/enc-repo" ;; *) echo "$WORK/synapse-repo" ;; esac; }
declare -A URL
new_syn_repo() { # key: a fresh repository and the config file pointing at it
    local key=$1 url extra
    if [ "$use_s3" -eq 1 ]; then
        url="s3://$S3_BUCKET/bench-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
        extra="endpoint = \"$S3_ENDPOINT\"
allow_http = true"
    else
        url="file://$(syn_repo_dir "$key")"
        extra=""
        rm -rf "$(syn_repo_dir "$key")"
        mkdir -p "$(syn_repo_dir "$key")"
        if [ "$key" = enc ]; then
            cp -a "$WORK/enc-template/bench" "$(syn_repo_dir "$key")/"
            extra="[repository.encryption]
recipients = [\"$ENC_RECIPIENT\"]"
        fi
        chown_pg "$(syn_repo_dir "$key")"
    fi
    URL[$key]=$url
    cat >"$(syn_conf_file "$key")" <<EOF
[repository]
url = "$url"
$extra

[archive]
push_parallelism = $PUSH_PARALLELISM
compress_level = $COMPRESS_LEVEL

[[cluster]]
name = "bench"
pgdata = "$WORK/fake-$key"
EOF
    chown_pg "$(syn_conf_file "$key")"
}
SYN_KEYS=(synapse)
[ "$CMP" = 1 ] && SYN_KEYS=(synapse cmp)
[ "$ENCRYPTED" = 1 ] && SYN_KEYS+=(enc)
SYN_REPO_DIR=$(syn_repo_dir synapse)
SYN_CONF=$(syn_conf_file synapse)
sed -i "s#^pg1-path=.*#pg1-path=$WORK/fake-pgbackrest#" "$PGBR_CONF"
CP_DEST=$WORK/cp-dest
mkdir -p "$CP_DEST"
chown_pg "$WORK"

# ---------------------------------------------------------------- 3. the runs
run_tool() { # key, archive_command, round
    local key=$1 cmd=$2 r=$3
    rm -rf "$WORK/fake-$key"
    make_fake_datadir "$WORK/fake-$key"
    log "archiving $SEGMENTS segments with $key$( [ "$REPS" -gt 1 ] && echo " (round $r of $REPS)"): $cmd"
    as_pg "$SIM" "$WORK/fake-$key" "$cmd" "$WORK/results/$key.r$r" \
        || { tail -n 20 "$WORK/results/$key.r$r.stderr" >&2; die "$key: archiving failed"; }
    log "  done in $(awk '{printf "%.2f", $1 / 1e6}' "$WORK/results/$key.r$r.wall_us") s"
}

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
declare -A STORED STORED_MB STORED_B LEFTOVER WARNINGS

verify_syn() { # key, round: its repository, look-ahead markers left over and warnings
    local key=$1 r=$2 url s3_prefix s3_count fetch_dir dir
    VBIN=$(syn_bin "$key") VCONF=$(syn_conf_file "$key")
    url=${URL[$key]}
    if [ "$use_s3" -eq 1 ]; then
        # Count the objects with boto3 when it is there; the content is checked by fetching every
        # segment back with our own wal-fetch.
        s3_prefix=${url#s3://$S3_BUCKET/}
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
        fetch_dir=$WORK/fetch-$key/pg_wal
        rm -rf "$WORK/fetch-$key"
        mkdir -p "$fetch_dir"
        chown_pg "$WORK/fetch-$key"
        locate_s3() {
            if as_pg "$VBIN" --config "$VCONF" --cluster bench wal-fetch "$1" "$fetch_dir/$1" 2>>"$WORK/results/fetch.stderr"; then
                echo "$fetch_dir/$1"
            fi
            true
        }
        if [ "$s3_count" = "?" ]; then
            log "  (boto3 not available: counting the segments wal-fetch returns instead of listing the bucket)"
            s3_count=$SEGMENTS
        fi
        verify "$key" "$s3_count" locate_s3 cat
        STORED_MB[$key]="-"
        STORED_B[$key]="-"
        rm -rf "$WORK/fetch-$key"
    else
        dir=$(syn_repo_dir "$key")
        locate_syn() { local f="$dir/bench/wal/${1:0:16}/$1.gz"; [ -f "$f" ] && echo "$f"; true; }
        read_enc() { age -d -i "$WORK/repo.key" "$1" | gzip -dc; }
        verify "$key" "$(find "$dir" -path '*/wal/*' -name '*.gz' -type f | wc -l)" locate_syn "$([ "$key" = enc ] && echo read_enc || echo "gzip -dc")"
        STORED_MB[$key]=$(du -sm "$dir" | cut -f1)
        STORED_B[$key]=$(du -sb "$dir" | cut -f1)
    fi
    LEFTOVER[$key]=$((${LEFTOVER[$key]:-0} + $(find "$WORK/fake-$key/pg_wal/synapse_spool/pushed" -type f 2>/dev/null | wc -l)))
    WARNINGS[$key]=$((${WARNINGS[$key]:-0} + $(grep -ciE 'warn|error' "$WORK/results/$key.r$r.stderr" || true)))
}

for r in $(seq 1 "$REPS"); do
    # The synapse-backup binaries of this round, alternating: new first in odd rounds.
    order=()
    for i in "${!SYN_KEYS[@]}"; do order+=("${SYN_KEYS[$(((i + r - 1) % ${#SYN_KEYS[@]}))]}"); done
    [ "$REPS" -gt 1 ] && log "round $r of $REPS: ${order[*]}$( [ "$r" -eq 1 ] && echo " (cp before, pgbackrest after)")"
    if [ "$r" -eq 1 ] && [ "$CP_BASELINE" = 1 ]; then
        run_tool cp "cp %p $CP_DEST/%f && sync $CP_DEST/%f" 1
    fi
    for key in "${order[@]}"; do
        new_syn_repo "$key"
        run_tool "$key" "$(syn_bin "$key") --config $(syn_conf_file "$key") --cluster bench wal-push %p" "$r"
    done
    if [ "$r" -eq 1 ]; then
        run_tool pgbackrest "pgbackrest --config=$PGBR_CONF --stanza=bench archive-push %p" 1
    fi

    log "verifying the repositories"
    if [ "$r" -eq 1 ] && [ "$CP_BASELINE" = 1 ]; then
        locate_cp() { [ -f "$CP_DEST/$1" ] && echo "$CP_DEST/$1"; true; }
        verify cp "$(find "$CP_DEST" -type f | wc -l)" locate_cp cat
        STORED_MB[cp]=$(du -sm "$CP_DEST" | cut -f1)
    fi
    for key in "${SYN_KEYS[@]}"; do verify_syn "$key" "$r"; done
    if [ "$r" -eq 1 ]; then
        PGBR_ARCH=$WORK/pgbr-repo/archive/bench
        locate_pgbr() { compgen -G "$PGBR_ARCH/*/${1:0:16}/$1-*.gz" | head -n 1; true; }
        verify pgbackrest "$(find "$PGBR_ARCH" -regextype posix-extended -regex '.*/[0-9A-F]{24}-[0-9a-f]{40}\.gz' -type f | wc -l)" locate_pgbr "gzip -dc"
        STORED_MB[pgbackrest]=$(du -sm "$WORK/pgbr-repo" | cut -f1)
    fi
    if [ "$r" -lt "$REPS" ]; then
        # Room for the next round; pgBackRest's async workers must be gone before it starts.
        rm -rf "$CP_DEST" "$WORK/fake-cp" "$WORK/fake-pgbackrest"
        for key in "${SYN_KEYS[@]}"; do rm -rf "$WORK/fake-$key"; done
        [ "$r" -eq 1 ] && { left=$(wait_pgbr_workers); [ -z "$left" ] || die "pgBackRest workers still running after 30 s: $left"; }
    fi
done
SYN_URL=${URL[synapse]}

# ---------------------------------------------------------------- 5. report
# summary KEY -> "wall_s seg_per_s peak_rss_mb fastpath_calls fastpath_median_ms other_median_ms retries"
# over the KEY's rounds: the median wall, calls per round / that wall; RSS, medians and retries
# over all calls.
summary() {
    local rounds wall_us
    rounds=$(ls "$WORK/results/$1".r*.wall_us | wc -l)
    wall_us=$(cat "$WORK/results/$1".r*.wall_us | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
    cat "$WORK/results/$1".r*.calls | awk -v wall_us="$wall_us" -v rounds="$rounds" '
        function median(a, n,   i, j, t) {
            if (n == 0) return "-"
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return (n % 2) ? a[(n + 1) / 2] / 1000 : (a[n / 2] + a[n / 2 + 1]) / 2000
        }
        { n++; retries += $3 - 1; if ($4 > rss) rss = $4
          if ($5 == 1) fp[++nfp] = $2; else other[++nother] = $2 }
        END {
            fpm = median(fp, nfp); om = median(other, nother)
            printf "%.2f %.2f %.1f %d %s %s %d\n", wall_us / 1e6, n / rounds / (wall_us / 1e6), rss / 1024, nfp,
                (fpm == "-" ? "-" : sprintf("%.2f", fpm)), (om == "-" ? "-" : sprintf("%.1f", om)), retries
        }'
}

declare -A LABEL=(
    [synapse]="synapse-backup wal-push"
    [pgbackrest]="pgbackrest archive-push async"
    [cp]="cp + sync (baseline)"
)
keys=(synapse pgbackrest)
W=31
LABEL[enc]="${LABEL[synapse]} [encrypted]"
[ "$ENCRYPTED" = 1 ] && { keys+=(enc); W=$((${#LABEL[enc]} + 1)); }
if [ "$CMP" = 1 ]; then
    LABEL[cmp]="${LABEL[synapse]} [$COMPARE_LABEL]"
    LABEL[synapse]+=" [new]"
    [ "${#LABEL[cmp]}" -lt "$W" ] || W=$((${#LABEL[cmp]} + 1))
    keys=(synapse cmp pgbackrest)
    [ "$ENCRYPTED" = 1 ] && keys+=(enc)
fi
[ "$CP_BASELINE" = 1 ] && keys+=(cp)

echo
echo "WAL archive benchmark: $SEGMENTS real 16 MB segments, one call per segment; $(nproc) CPUs; load average now $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)"
echo "segments: pgbench -i -s $SCALE + TPC-B-like load, WAL_LOAD=$WAL_LOAD; $((SEGMENTS * 16)) MB, ${STORED_MB[pgbackrest]} MB after pgbackrest's gzip -6"
echo "synapse-backup: push_parallelism=$PUSH_PARALLELISM compress_level=$COMPRESS_LEVEL repository=$SYN_URL"
echo "pgbackrest 2.45: archive-async=y process-max=2 compress-type=gz compress-level=$COMPRESS_LEVEL"
if [ "$CMP" = 1 ]; then
    echo "compared with [$COMPARE_LABEL] = COMPARE_BIN $CMP_DESC: same segments and settings, own repository, same run;"
    echo "  $REPS round(s) of the two synapse-backup binaries, order alternating (new first in odd rounds); cp and pgBackRest once, in round 1."
    echo "  new/$COMPARE_LABEL line: ratio per figure; ok = within 5 % or better (wall, RSS, latencies, stored <= 1.05; seg/s >= 0.95), WORSE otherwise."
fi
echo
printf "%-${W}s %8s %8s %10s %12s %19s %15s %16s %8s %10s\n" tool segments wall_s seg_per_s peak_rss_mb fastpath_median_ms fastpath_calls other_median_ms retries stored_mb
declare -A WALL RATE RSS FPM OM
for k in "${keys[@]}"; do
    read -r wall rate rss nfp fpm om retries <<<"$(summary "$k")"
    WALL[$k]=$wall RATE[$k]=$rate RSS[$k]=$rss FPM[$k]=$fpm OM[$k]=$om
    case $k in synapse | cmp | enc) ;; *) nfp="-"; fpm="-" ;; esac
    printf "%-${W}s %8d %8s %10s %12s %19s %15s %16s %8s %10s\n" "${LABEL[$k]}" "$SEGMENTS" "$wall" "$rate" "$rss" "$fpm" "$nfp" "$om" "$retries" "${STORED_MB[$k]}"
done
CMP_WORSE=()
if [ "$CMP" = 1 ]; then
    # One figure: name, new, old, lower|higher (is better) -> "name ratio ok|WORSE".
    fig() {
        awk -v n="$1" -v a="$2" -v b="$3" -v better="$4" 'BEGIN {
            if (a == "-" || b == "-" || a == "" || b == "" || b + 0 <= 0) { printf "%s - (no figure)", n; exit }
            r = a / b; ok = (better == "lower") ? (r <= 1.05) : (r >= 0.95)
            printf "%s %.3f %s", n, r, (ok ? "ok" : "WORSE")
        }'
    }
    line=""
    for f in "$(fig wall_s "${WALL[synapse]}" "${WALL[cmp]}" lower)" "$(fig seg_per_s "${RATE[synapse]}" "${RATE[cmp]}" higher)" \
        "$(fig peak_rss_mb "${RSS[synapse]}" "${RSS[cmp]}" lower)" "$(fig fastpath_median_ms "${FPM[synapse]}" "${FPM[cmp]}" lower)" \
        "$(fig other_median_ms "${OM[synapse]}" "${OM[cmp]}" lower)" "$(fig stored_bytes "${STORED_B[synapse]}" "${STORED_B[cmp]:-}" lower)"; do
        line+="${line:+, }$f"
        case $f in *WORSE | *"no figure)") CMP_WORSE+=("$f") ;; esac
    done
    echo "new/$COMPARE_LABEL wal-push: $line"
    walls() { for r in $(seq 1 "$REPS"); do awk '{ printf " %.2f", $1 / 1e6 }' "$WORK/results/$1.r$r.wall_us"; done; }
    echo "wall per round (s): new$(walls synapse); $COMPARE_LABEL$(walls cmp); new/$COMPARE_LABEL per round:$(for r in $(seq 1 "$REPS"); do
        awk -v a="$(cat "$WORK/results/synapse.r$r.wall_us")" -v b="$(cat "$WORK/results/cmp.r$r.wall_us")" 'BEGIN { printf " %.3f", a / b }'; done)"
    echo "stored bytes (last round): new ${STORED_B[synapse]}, $COMPARE_LABEL ${STORED_B[cmp]:-}"
fi
if [ "$ENCRYPTED" = 1 ]; then
    encr() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 <= 0) print "-"; else printf "%.3f", a / b }'; }
    ENC_OM=$(encr "${OM[enc]}" "${OM[synapse]}")
    ENC_RSS=$(encr "${RSS[enc]}" "${RSS[synapse]}")
    echo "encrypted/plain wal-push: seg_per_s $(encr "${RATE[enc]}" "${RATE[synapse]}"), other_median_ms $ENC_OM, fastpath_median_ms $(encr "${FPM[enc]}" "${FPM[synapse]}"), peak_rss_mb $ENC_RSS, stored_bytes $(encr "${STORED_B[enc]}" "${STORED_B[synapse]}")"
fi
ratio=$(awk -v a="${RATE[synapse]}" -v b="${RATE[pgbackrest]}" 'BEGIN { printf "%.2f", a / b }')
echo
echo "ratio synapse/pgbackrest: $ratio (target >= 2.0)"
echo "objects stored: synapse ${STORED[synapse]}${STORED[cmp]:+, $COMPARE_LABEL ${STORED[cmp]}}, pgbackrest ${STORED[pgbackrest]}${STORED[cp]:+, cp ${STORED[cp]}} (expected $SEGMENTS each)"
echo "peak_rss_mb: max over calls of GNU time %M (pgbackrest: foreground process only); other_median_ms: calls that did the work"
echo "harness cost per call (GNU time + sh -c of an empty command, median), included in every call:$(for k in "${keys[@]}"; do awk -v k="$( [ "$k" = cmp ] && echo "$COMPARE_LABEL" || echo "$k")" '{ printf " %s %.2f ms", k, $1 / 1000 }' "$WORK/results/$k.r1.harness_us"; done)"
echo "synapse: look-ahead markers left over: ${LEFTOVER[synapse]}; stderr lines with warn/error: ${WARNINGS[synapse]}"
[ "$CMP" = 1 ] && echo "synapse [$COMPARE_LABEL]: look-ahead markers left over: ${LEFTOVER[cmp]}; stderr lines with warn/error: ${WARNINGS[cmp]}"

missed=0
check() { # description, awk condition
    if awk "BEGIN { exit !($2) }"; then echo "target met:    $1"; else echo "target MISSED: $1"; missed=1; fi
}
echo
check "synapse >= 2.0x pgbackrest async rate (got ${ratio}x)" "$ratio >= 2.0"
if [ "${FPM[synapse]}" = "-" ]; then
    echo "target MISSED: fast-path median < 10 ms (no call found its segment already pushed ahead)"; missed=1
else
        net=$(awk -v m="${FPM[synapse]}" -v h="$(cat "$WORK/results/synapse.r1.harness_us")" 'BEGIN { printf "%.2f", m - h / 1000 }')
    check "fast-path median < 10 ms (got ${FPM[synapse]} ms; ${net} ms net of the harness)" "${FPM[synapse]} < 10"
fi
check "peak RSS of one synapse call < 64 MB (got ${RSS[synapse]} MB)" "${RSS[synapse]} < 64"
if [ "$ENCRYPTED" = 1 ]; then
    [ "$ENC_OM" = "-" ] || check "encrypted wal-push median within +10 % of plain (got ${ENC_OM}x)" "$ENC_OM <= 1.10"
    [ "$ENC_RSS" = "-" ] || check "encrypted peak RSS within 10 % of plain (got ${ENC_RSS}x)" "$ENC_RSS <= 1.10"
fi
if [ "$CMP" = 1 ]; then
    echo
    if [ "${#CMP_WORSE[@]}" -eq 0 ]; then
        echo "new vs $COMPARE_LABEL: every figure within 5 % or better"
    else
        echo "new vs $COMPARE_LABEL: more than 5 % worse (or missing) in this run: ${CMP_WORSE[*]}"
    fi
fi

[ "$verify_failed" -eq 0 ] || die "a repository does not hold all $SEGMENTS segments intact"
[ "$STRICT" = 1 ] && [ "$missed" -eq 1 ] && exit 2
exit 0
