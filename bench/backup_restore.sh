#!/usr/bin/env bash
# Base backup and restore benchmark: synapse-backup `backup` / `restore` against pgBackRest 2.45
# and pg_basebackup, all in the same run on the same database (issues 3 and 4).
#
# What it does
#   0. initdb -k (data checksums) in a mktemp -d work dir; PostgreSQL on a unix socket in that
#      dir only (listen_addresses=''), archive_mode=on, archive_command =
#      bin/archive-to-synapse-and-pgbackrest.sh %p, a wrapper that feeds BOTH repositories:
#        synapse-backup wal-push %p && pgbackrest archive-push %p   (archive-async=y, process-max=2)
#      so each tool's backup passes its own archive check (pgBackRest's archive-check stays on).
#      The wrapper discards WAL (exit 0) while pgbench -i runs (nobody needs it) and whenever its
#      working directory is not the benchmark cluster (restored copies do not archive into the
#      benchmark repositories). pgbench -i -s SCALE, CHECKPOINT; the database is quiet from then
#      on until step 3.
#   1. Base backup (issue 3), REPS rounds, the order of the three tools rotated each round,
#      a CHECKPOINT (untimed) before each:
#        a) synapse-backup backup              (parallelism 2, compress_level 6, file:// repo)
#        b) pgbackrest backup --type=full      (compress-type=gz, compress-level=6, process-max=2,
#                                               start-fast=y)
#        c) pg_basebackup -Ft -z -X fetch -c fast   (stored = size of its *.tar.gz files)
#      Wall time, MB/s (= PGDATA size without pg_wal / wall), stored size, peak RSS
#      (GNU time %M; for pgBackRest that of the main process and its waited-for workers).
#   2. Restore (issue 4), REPS rounds, of the newest backup of each tool into an empty dir
#      (deleted between rounds, `sync` before each timed step):
#        a) synapse-backup restore --latest --pgdata D1   (no --start)
#        b) pgbackrest restore --process-max=2 --pg1-path=D2
#        c) tar -xzf of the pg_basebackup output into D3  (tar alone, and tar + sync -f)
#      Our restored directory is checked with pg_verifybackup -n (untimed; VERIFY=0 skips it).
#   3. WAL: pgbench write load (-c 4 -j 2, synchronous_commit=off, rounds of 10 s) until
#      pg_current_wal_lsn has advanced SEGMENTS x 16 MB past the newest backup. Then a
#      marker row 'before' is committed, the target time T (whole seconds, UTC) is taken > 1 s
#      after it, and > 1 s after T a marker row 'after' is committed; pg_switch_wal and wait
#      until pg_stat_archiver shows the switched segment archived (the wrapper returns only when
#      both repositories hold it). The cluster is then stopped (the restored servers reuse its
#      port and socket dir).
#   4. Restore plus recovery to T, one run each:
#        a) synapse-backup restore --to 'T' --start --pgdata D4  (wall time of the command, which
#           returns when recovery reached the target and the server is up and promoted; its
#           stderr is time-stamped to split download/extract from recovery)
#        b) pgbackrest restore --type=time --target='T' --target-action=promote --pg1-path=D5,
#           then pg_ctl start -w and polling (0.2 s) until pg_is_in_recovery() is false
#      Each restored server must show the 'before' row and not the 'after' row, then is stopped.
#   All runs use a warm page cache (23 GB of RAM; the database is read from memory).
#   Only same-run ratios mean anything: the 2-core machine is shared and noisy.
#
# Comparing two builds of synapse-backup (COMPARE_BIN=/path/to/older/synapse-backup)
#   Every synapse-backup measurement is then also taken with the second binary, in the same run,
#   into its own repository (own config file, same settings): it is one more tool in the rotated
#   order of steps 1 and 2 (placed next to ours, so the two swap places from round to round), and
#   in step 4 both restore --to T --start run, PITR_REPS rounds in alternating order (D4 and
#   cmp-pitr/D4, each server log next to its directory), before pgBackRest's single run. The
#   archive_command wrapper then runs both wal-push calls at the same time (so neither backup's
#   archive wait is favoured), the second one on its own view of pg_wal (cmp-wal/: links to the
#   waiting segments, archive_status shared, its own synapse_spool), so the two look-aheads never
#   see each other's markers. The tables get a row per binary and a "new/<label>" ratio line per
#   figure (wall time, MB/s, stored bytes, peak RSS; per-round wall ratios), each marked ok when
#   within 5 % or better. The targets are checked for the new binary only, as without COMPARE_BIN.
#
# Encrypted row (ENCRYPTED=1, issue 14)
#   Without COMPARE_BIN, ENCRYPTED=1 runs the comparison above with the SAME binary into an
#   encrypted repository ([repository.encryption], an age-keygen operator key, `key init` while
#   the cluster runs): every row and "new/encrypted" ratio line is then plain vs encrypted in the
#   same run (targets: encrypted backup and restore >= 90 % of plain throughput, i.e. a
#   new/encrypted MB_per_s ratio <= 1.11; peak RSS within 10 %).
#
# Usage (as root, PostgreSQL and all tools then run as postgres via runuser; or as postgres):
#   cargo build --release && bench/backup_restore.sh
# Environment:
#   SCALE=100  REPS=3  SEGMENTS=500  PORT=54341  PGBIN=/usr/lib/postgresql/15/bin
#   SYNAPSE_BIN=<binary, default target/release/synapse-backup; a private copy is used>
#   PARTS=backup,restore,pitr (which parts to run; restore and pitr need backup)
#   VERIFY=1 (pg_verifybackup -n of our restored dir)  KEEP=0 (1 keeps the work dir)
#   GEN_TIMEOUT=1800 (s of WAL load at most)  ARCHIVE_TIMEOUT=1800 (s to wait for archiving)
#   STRICT=0 (1: exit 2 if a target is missed)
#   COMPARE_BIN=<second synapse-backup binary, e.g. the build before a change; unset: no comparison>
#   COMPARE_LABEL=old (its name in the tables)  PITR_REPS=1 (rounds of our restore --to T --start)
# Exit: 0 when everything ran (targets missed or not), 1 on a failure of the harness or a
# reference tool, 3 when one of our own commands failed (the tables show which).
set -euo pipefail
export LC_ALL=C

SCALE=${SCALE:-100}
REPS=${REPS:-3}
SEGMENTS=${SEGMENTS:-500}
PORT=${PORT:-54341}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PARTS=${PARTS:-backup,restore,pitr}
VERIFY=${VERIFY:-1}
KEEP=${KEEP:-0}
GEN_TIMEOUT=${GEN_TIMEOUT:-1800}
ARCHIVE_TIMEOUT=${ARCHIVE_TIMEOUT:-1800}
STRICT=${STRICT:-0}
COMPARE_BIN=${COMPARE_BIN:-}
COMPARE_LABEL=${COMPARE_LABEL:-old}
ENCRYPTED=${ENCRYPTED:-0}
ENC=0
if [ "$ENCRYPTED" = 1 ] && [ -z "$COMPARE_BIN" ]; then
    ENC=1
    COMPARE_LABEL=encrypted
fi
PITR_REPS=${PITR_REPS:-1}
COMPRESS_LEVEL=6
PROCESS_MAX=2
WAL_SEG=16777216

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crate=$(dirname "$here")
SYNAPSE_BIN=${SYNAPSE_BIN:-$crate/target/release/synapse-backup}
[ "$ENC" = 1 ] && COMPARE_BIN=$SYNAPSE_BIN

log() { printf '[%s +%4ds] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
want() { case ",$PARTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# ---------------------------------------------------------------- prerequisites
[ -x /usr/bin/pgbackrest ] || die "pgbackrest is not installed: apt-get install pgbackrest"
[ -x /usr/bin/time ] || die "GNU time is not installed: apt-get install time"
command -v jq >/dev/null || die "jq is not installed: apt-get install jq"
[ -x "$PGBIN/initdb" ] || die "PostgreSQL binaries not found in $PGBIN (set PGBIN)"
[ -x "$SYNAPSE_BIN" ] || die "$SYNAPSE_BIN not found: run 'cargo build --release' in $crate"
if [ -n "$COMPARE_BIN" ]; then
    [ -x "$COMPARE_BIN" ] || die "COMPARE_BIN=$COMPARE_BIN is not an executable"
    case $COMPARE_LABEL in '' | *[!A-Za-z0-9._-]*) die "COMPARE_LABEL must be letters, digits, '.', '_' or '-'" ;; esac
fi
for v in SCALE REPS SEGMENTS PORT PITR_REPS; do
    case ${!v} in '' | *[!0-9]* | 0) die "$v must be a positive integer" ;; esac
done
if want restore || want pitr; then want backup || die "PARTS: restore and pitr need backup"; fi

if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user"
    RUN_USER=postgres
    as_pg() { runuser -u postgres -- "$@"; }
    chown_pg() { chown -R postgres: "$@"; }
else
    RUN_USER=$(id -un)
    as_pg() { "$@"; }
    chown_pg() { :; }
fi

# ---------------------------------------------------------------- work dir and cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/backup-bench.XXXXXX")
chmod 755 "$WORK"
SRC=$WORK/pgdata
SOCK=$WORK/sock
RES=$WORK/results
BIN=$WORK/bin/synapse-backup
SYN_CONF=$WORK/synapse.toml
SYN_REPO=$WORK/synapse-repo
PGBR_CONF=$WORK/pgbackrest.conf
PGBR_REPO=$WORK/pgbr-repo
CMP_BIN=$WORK/bin/synapse-backup-cmp   # COMPARE_BIN: its private copy, config, repository,
CMP_CONF=$WORK/synapse-cmp.toml        # view of pg_wal (see the header)
CMP_REPO=$WORK/synapse-cmp-repo
CMP_WAL=$WORK/cmp-wal
STARTED=()   # data directories of servers this script (or our restore --start) started

cleanup() {
    local rc=$? d pids i
    set +e
    for d in "${STARTED[@]}"; do
        if [ -f "$d/postmaster.pid" ]; then
            as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1
        fi
    done
    # pgBackRest's async archive-push/get workers may outlive the last call: wait for the
    # processes started with our config file (its path is unique), end only those by PID.
    for i in $(seq 1 60); do
        pids=$(pgrep -f -- "--config=$PGBR_CONF" || true)
        [ -z "$pids" ] && break
        sleep 0.5
    done
    [ -n "${pids:-}" ] && kill $pids 2>/dev/null
    if [ "$KEEP" = 1 ]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$SOCK" "$RES" "$WORK/bin" "$SYN_REPO" "$PGBR_REPO" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool" "$WORK/basebackup"
# A private copy of the binary: a rebuild during the run must not change what is measured.
cp "$SYNAPSE_BIN" "$BIN"
BIN_DESC="$SYNAPSE_BIN as of $(stat -c '%y' "$SYNAPSE_BIN" | cut -d. -f1) (private copy; $("$BIN" --version))"
CMP=0
if [ -n "$COMPARE_BIN" ]; then
    CMP=1
    cp "$COMPARE_BIN" "$CMP_BIN"
    CMP_DESC="$COMPARE_BIN as of $(stat -c '%y' "$COMPARE_BIN" | cut -d. -f1) (private copy; $("$CMP_BIN" --version))"
    mkdir -p "$CMP_REPO" "$CMP_WAL" "$WORK/cmp-pitr"
    ln -s "$SRC/pg_wal/archive_status" "$CMP_WAL/archive_status"
fi

# ---------------------------------------------------------------- helpers
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { printf '%s\n' "$@" | { grep -v -e '^-$' -e '^$' || true; } | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
mb() { awk -v b="$1" 'BEGIN { if (b == "-") print "-"; else printf "%.1f", b / 1e6 }'; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { if (s == "-" || s <= 0) print "-"; else printf "%.1f", b / 1e6 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b <= 0) print "-"; else printf "%.2f", a / b }'; }
rss_mb() { local f=$1; [ -s "$f" ] && awk 'END { printf "%.1f", $1 / 1024 }' "$f" || echo "-"; }
psql_q() { as_pg "$PGBIN/psql" -X -h "$SOCK" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 -Atqc "$1"; }
data_bytes() { find "$1" -path "$1/pg_wal" -prune -o -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
dir_bytes() { du -sb "$1" | cut -f1; }
syn() { as_pg "$BIN" --config "$SYN_CONF" "$@"; }
pgbr() { as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench "$@"; }
# A timestamp on each line of stdin (for splitting our restore into its phases).
stamp() { local l; while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done; }
tail_err() { tail -n "${2:-15}" "$1" | sed 's/^/    | /' >&2; }

OURS_FAILED=0
FAILURES=()
our_failure() { OURS_FAILED=1; FAILURES+=("$1"); log "OUR TOOL FAILED: $1"; }

log "work dir $WORK; tools run as $RUN_USER; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
log "synapse-backup: $BIN_DESC"
[ "$CMP" = 1 ] && log "synapse-backup [$COMPARE_LABEL] (COMPARE_BIN): $CMP_DESC"
log "$(pgbackrest version); $("$PGBIN/postgres" --version)"
log "SCALE=$SCALE REPS=$REPS SEGMENTS=$SEGMENTS PARTS=$PARTS"

# ---------------------------------------------------------------- 0. the cluster
ARCHIVE_SH=$WORK/bin/archive-to-synapse-and-pgbackrest.sh   # pgBackRest insists that archive_command contains "pgbackrest"
if [ "$CMP" = 0 ]; then
cat >"$ARCHIVE_SH" <<EOF
#!/bin/sh
# archive_command of the benchmark cluster (bench/backup_restore.sh): \$1 = %p, cwd = data dir.
[ "\$(pwd -P)" = "$(cd "$WORK" && pwd -P)/pgdata" ] || exit 0   # a restored copy: archive nothing
[ -e "$WORK/archive.discard" ] && exit 0                       # pgbench -i: nobody needs this WAL
"$BIN" --config "$SYN_CONF" wal-push "\$1" || exit \$?
exec pgbackrest --config="$PGBR_CONF" --stanza=bench archive-push "\$1"
EOF
else
cat >"$ARCHIVE_SH" <<EOF
#!/bin/sh
# archive_command of the benchmark cluster (bench/backup_restore.sh with COMPARE_BIN): \$1 = %p,
# cwd = data dir. Both synapse-backup binaries push at the same time, the second one through
# its own view of pg_wal ($CMP_WAL: links to the waiting files, its own look-ahead markers).
[ "\$(pwd -P)" = "$(cd "$WORK" && pwd -P)/pgdata" ] || exit 0   # a restored copy: archive nothing
[ -e "$WORK/archive.discard" ] && exit 0                       # pgbench -i: nobody needs this WAL
here=\$(pwd -P)
for r in pg_wal/archive_status/*.ready; do
    n=\${r##*/}; n=\${n%.ready}
    [ -e "$CMP_WAL/\$n" ] || ln -sfn "\$here/pg_wal/\$n" "$CMP_WAL/\$n"
done
"$BIN" --config "$SYN_CONF" wal-push "\$1" & new=\$!
"$CMP_BIN" --config "$CMP_CONF" wal-push "$CMP_WAL/\${1##*/}" & cmp=\$!
rc=0
wait \$new || rc=\$?
wait \$cmp || { r=\$?; [ \$rc -ne 0 ] || rc=\$r; }
# Links whose file PostgreSQL has recycled or removed since.
find "$CMP_WAL" -maxdepth 1 -type l -name '0*' ! -exec test -e {} \; -delete 2>/dev/null
[ \$rc -eq 0 ] || exit \$rc
exec pgbackrest --config="$PGBR_CONF" --stanza=bench archive-push "\$1"
EOF
fi
chmod 755 "$ARCHIVE_SH"

syn_conf() { # repository dir: our config file for it
cat <<EOF
timezone = "UTC"

[repository]
url = "file://$1"

[archive]
compress_level = $COMPRESS_LEVEL

[backup]
parallelism = $PROCESS_MAX
compress_level = $COMPRESS_LEVEL

[[cluster]]
name = "bench"
pgdata = "$SRC"
connection = "host=$SOCK port=$PORT user=postgres dbname=postgres"
pg_bin_dir = "$PGBIN"
EOF
}
syn_conf "$SYN_REPO" >"$SYN_CONF"
[ "$CMP" = 1 ] && syn_conf "$CMP_REPO" >"$CMP_CONF"
if [ "$ENC" = 1 ]; then
    command -v age-keygen >/dev/null || die "age is not installed: apt-get install age (or ENCRYPTED=0)"
    age-keygen -o "$WORK/operator.key" 2>/dev/null
    # The encryption table goes into [repository] (before [archive]).
    awk -v r="$(age-keygen -y "$WORK/operator.key")" -v id="$WORK/operator.key" '
        /^\[archive\]/ { printf "[repository.encryption]\nrecipients = [\"%s\"]\nidentity_file = \"%s\"\n\n", r, id }
        { print }' "$CMP_CONF" >"$CMP_CONF.new" && mv "$CMP_CONF.new" "$CMP_CONF"
fi

cat >"$PGBR_CONF" <<EOF
[global]
repo1-path=$PGBR_REPO
repo1-retention-full=99
compress-type=gz
compress-level=$COMPRESS_LEVEL
process-max=$PROCESS_MAX
start-fast=y
archive-async=y
spool-path=$WORK/pgbr-spool
lock-path=$WORK/pgbr-lock
log-path=$WORK/pgbr-log
log-level-console=warn
log-level-stderr=warn
log-level-file=info

[bench]
pg1-path=$SRC
pg1-socket-path=$SOCK
pg1-port=$PORT
EOF
: >"$WORK/archive.discard"
chown_pg "$WORK"

log "initdb -k, start PostgreSQL on unix socket $SOCK port $PORT"
as_pg "$PGBIN/initdb" -k -D "$SRC" -U postgres --auth=trust -E UTF8 --no-instructions >"$WORK/initdb.log"
cat >>"$SRC/postgresql.conf" <<EOF
# --- bench/backup_restore.sh
listen_addresses = ''
unix_socket_directories = '$SOCK'
port = $PORT
archive_mode = on
archive_command = '$ARCHIVE_SH %p'
EOF
STARTED+=("$SRC")
as_pg "$PGBIN/pg_ctl" -D "$SRC" -l "$WORK/postgresql.log" -w start >/dev/null

as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench stanza-create >"$RES/stanza-create.log" 2>&1 \
    || { tail_err "$RES/stanza-create.log"; die "pgbackrest stanza-create failed"; }
if [ "$ENC" = 1 ]; then
    as_pg "$CMP_BIN" --config "$CMP_CONF" key init >"$RES/key-init.log" 2>&1 \
        || { tail_err "$RES/key-init.log"; die "key init of the encrypted repository failed"; }
    log "encrypted repository: $(head -n 1 "$RES/key-init.log")"
fi

log "pgbench -i -s $SCALE (WAL discarded meanwhile)"
t0=$(now)
as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -i -s "$SCALE" -q postgres >"$RES/pgbench-init.log" 2>&1 \
    || { tail_err "$RES/pgbench-init.log"; die "pgbench -i failed"; }
psql_q "create table bench_marker (tag text primary key, at timestamptz not null default clock_timestamp())"
psql_q "checkpoint"
log "  done in $(elapsed "$t0" "$(now)") s"

# Archive for real from the next segment on, and check that both repositories receive it.
wait_archived() { # segment name, timeout s: until pg_stat_archiver has archived it (or later)
    local seg=$1 limit=$2 start=$SECONDS last
    while :; do
        last=$(psql_q "select coalesce(last_archived_wal, '') from pg_stat_archiver")
        # Same timeline: names compare in WAL order.
        if [ -n "$last" ] && [[ ! "$last" < "$seg" ]]; then return 0; fi
        [ $((SECONDS - start)) -lt "$limit" ] || return 1
        sleep 0.5
    done
}
rm -f "$WORK/archive.discard"
seg=$(psql_q "select pg_walfile_name(pg_switch_wal())")
wait_archived "$seg" 300 || die "segment $seg was not archived in 300 s: see $WORK/postgresql.log and pg_stat_archiver"
[ -f "$SYN_REPO/bench/wal/${seg:0:16}/$seg.gz" ] || die "segment $seg archived, but not in our repository $SYN_REPO"
if [ "$CMP" = 1 ]; then
    [ -f "$CMP_REPO/bench/wal/${seg:0:16}/$seg.gz" ] || die "segment $seg archived, but not in the $COMPARE_LABEL binary's repository $CMP_REPO"
fi
compgen -G "$PGBR_REPO/archive/bench/*/${seg:0:16}/$seg-*" >/dev/null || die "segment $seg archived, but not in pgBackRest's repository"
log "archiving to both repositories works ($seg)"

DATA_BYTES=$(data_bytes "$SRC")
log "PGDATA without pg_wal: $(mb "$DATA_BYTES") MB"

# ---------------------------------------------------------------- 1. base backups
declare -A BK_WALL BK_STORED BK_RSS
BK_TOOLS=(synapse pgbackrest pg_basebackup)
[ "$CMP" = 1 ] && BK_TOOLS=(synapse cmp pgbackrest pg_basebackup)
SYN_LAST_ID=""
CMP_LAST_ID=""
# synapse-backup binaries: "synapse" (SYNAPSE_BIN) and, with COMPARE_BIN, "cmp".
syn_bin() { if [ "$1" = cmp ]; then echo "$CMP_BIN"; else echo "$BIN"; fi; }
syn_cfg() { if [ "$1" = cmp ]; then echo "$CMP_CONF"; else echo "$SYN_CONF"; fi; }
syn_repo() { if [ "$1" = cmp ]; then echo "$CMP_REPO"; else echo "$SYN_REPO"; fi; }
syn_tag() { if [ "$1" = cmp ]; then echo "[$COMPARE_LABEL] "; fi; }   # prefix of failure messages
PGBB_LAST=""
backup_one() { # tool, round -> appends wall, stored, rss
    local tool=$1 r=$2 t0 t1 out=$RES/backup-$1-$2 id label dir
    psql_q "checkpoint"
    sync
    case $tool in
        synapse | cmp)
            t0=$(now)
            if as_pg /usr/bin/time -f %M -o "$out.rss" "$(syn_bin "$tool")" --config "$(syn_cfg "$tool")" backup >"$out.stdout" 2>"$out.stderr"; then
                t1=$(now)
                id=$(tail -n 1 "$out.stdout" | tr -d '[:space:]')
                dir=$(syn_repo "$tool")/bench/backups/$id
                [ -n "$id" ] && [ -d "$dir" ] || { our_failure "$(syn_tag "$tool")backup round $r: printed id '$id' but $dir does not exist"; return 0; }
                if [ "$tool" = cmp ]; then CMP_LAST_ID=$id; else SYN_LAST_ID=$id; fi
                BK_WALL[$tool]+=" $(elapsed "$t0" "$t1")"
                BK_STORED[$tool]+=" $(dir_bytes "$dir")"
                BK_RSS[$tool]+=" $(rss_mb "$out.rss")"
            else
                our_failure "$(syn_tag "$tool")backup round $r exited non-zero: $(grep -v '^Command exited' "$out.stderr" | tail -n 3 | tr '\n' ' ')"
                tail_err "$out.stderr"
            fi
            ;;
        pgbackrest)
            local before
            before=$(ls "$PGBR_REPO/backup/bench" 2>/dev/null | grep -E '^[0-9]{8}-[0-9]{6}F$' | sort | tail -n 1 || true)
            t0=$(now)
            as_pg /usr/bin/time -f %M -o "$out.rss" pgbackrest --config="$PGBR_CONF" --stanza=bench --type=full backup >"$out.stdout" 2>"$out.stderr" \
                || { tail_err "$out.stderr"; die "pgbackrest backup failed"; }
            t1=$(now)
            label=$(ls "$PGBR_REPO/backup/bench" | grep -E '^[0-9]{8}-[0-9]{6}F$' | sort | tail -n 1)
            [ -n "$label" ] && [ "$label" != "$before" ] || die "pgbackrest backup: no new backup set in $PGBR_REPO/backup/bench"
            BK_WALL[$tool]+=" $(elapsed "$t0" "$t1")"
            BK_STORED[$tool]+=" $(dir_bytes "$PGBR_REPO/backup/bench/$label")"
            BK_RSS[$tool]+=" $(rss_mb "$out.rss")"
            ;;
        pg_basebackup)
            dir=$WORK/basebackup/r$r
            t0=$(now)
            as_pg /usr/bin/time -f %M -o "$out.rss" "$PGBIN/pg_basebackup" -h "$SOCK" -p "$PORT" -U postgres \
                -Ft -z -X fetch -c fast -D "$dir" >"$out.stdout" 2>"$out.stderr" \
                || { tail_err "$out.stderr"; die "pg_basebackup failed"; }
            t1=$(now)
            BK_WALL[$tool]+=" $(elapsed "$t0" "$t1")"
            BK_STORED[$tool]+=" $(cat "$dir"/*.tar.gz | wc -c)"
            BK_RSS[$tool]+=" $(rss_mb "$out.rss")"
            # Keep only the newest one (for the restore part).
            [ -n "$PGBB_LAST" ] && rm -rf "$PGBB_LAST"
            PGBB_LAST=$dir
            ;;
    esac
    log "  $tool: $(echo "${BK_WALL[$tool]:-}" | awk '{ print $NF }') s"
}

if want backup; then
    log "1. base backups, $REPS round(s)"
    for r in $(seq 1 "$REPS"); do
        # Rotate the order so no tool always goes first (or last) in a round.
        order=()
        for i in "${!BK_TOOLS[@]}"; do order+=("${BK_TOOLS[$(((i + r - 1) % ${#BK_TOOLS[@]}))]}"); done
        log " round $r: ${order[*]}"
        for tool in "${order[@]}"; do backup_one "$tool" "$r"; done
    done
    syn list --json >"$RES/list.json" 2>"$RES/list.stderr" || our_failure "list --json failed: $(tail -n 2 "$RES/list.stderr" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- 2. restores
declare -A RS_WALL RS_RSS
TAR_SYNC=""
if want restore; then
    log "2. restores of the newest backups, $REPS round(s)"
    RS_TOOLS=(synapse pgbackrest tar)
    [ "$CMP" = 1 ] && RS_TOOLS=(synapse cmp pgbackrest tar)
    for r in $(seq 1 "$REPS"); do
        order=()
        for i in "${!RS_TOOLS[@]}"; do order+=("${RS_TOOLS[$(((i + r - 1) % ${#RS_TOOLS[@]}))]}"); done
        log " round $r: ${order[*]}"
        for tool in "${order[@]}"; do
            out=$RES/restore-$tool-$r
            rm -rf "$WORK/D1" "$WORK/D2" "$WORK/D3" "$WORK/D1c"
            sync
            case $tool in
                synapse)
                    [ -n "$SYN_LAST_ID" ] || { log "  synapse: no backup of ours to restore"; continue; }
                    t0=$(now)
                    if as_pg /usr/bin/time -f %M -o "$out.rss" "$BIN" --config "$SYN_CONF" restore --latest --pgdata "$WORK/D1" >"$out.stdout" 2>"$out.stderr"; then
                        t1=$(now)
                        RS_WALL[$tool]+=" $(elapsed "$t0" "$t1")"
                        RS_RSS[$tool]+=" $(rss_mb "$out.rss")"
                        if [ "$VERIFY" = 1 ] && [ "$r" -eq "$REPS" ]; then
                            if as_pg "$PGBIN/pg_verifybackup" -n "$WORK/D1" >"$RES/verifybackup.log" 2>&1; then
                                log "  pg_verifybackup -n of our restored directory: ok"
                            else
                                our_failure "pg_verifybackup -n of our restored directory failed: $(tail -n 3 "$RES/verifybackup.log" | tr '\n' ' ')"
                            fi
                        fi
                    else
                        our_failure "restore --latest round $r exited non-zero: $(grep -v '^Command exited' "$out.stderr" | tail -n 3 | tr '\n' ' ')"
                        tail_err "$out.stderr"
                    fi
                    ;;
                cmp)
                    [ -n "$CMP_LAST_ID" ] || { log "  cmp: no backup of the $COMPARE_LABEL binary to restore"; continue; }
                    t0=$(now)
                    if as_pg /usr/bin/time -f %M -o "$out.rss" "$CMP_BIN" --config "$CMP_CONF" restore --latest --pgdata "$WORK/D1c" >"$out.stdout" 2>"$out.stderr"; then
                        t1=$(now)
                        RS_WALL[$tool]+=" $(elapsed "$t0" "$t1")"
                        RS_RSS[$tool]+=" $(rss_mb "$out.rss")"
                    else
                        our_failure "[$COMPARE_LABEL] restore --latest round $r exited non-zero: $(grep -v '^Command exited' "$out.stderr" | tail -n 3 | tr '\n' ' ')"
                        tail_err "$out.stderr"
                    fi
                    ;;
                pgbackrest)
                    as_pg mkdir -m 700 "$WORK/D2"
                    t0=$(now)
                    as_pg /usr/bin/time -f %M -o "$out.rss" pgbackrest --config="$PGBR_CONF" --stanza=bench \
                        --process-max=$PROCESS_MAX --pg1-path="$WORK/D2" restore >"$out.stdout" 2>"$out.stderr" \
                        || { tail_err "$out.stderr"; die "pgbackrest restore failed"; }
                    t1=$(now)
                    RS_WALL[$tool]+=" $(elapsed "$t0" "$t1")"
                    RS_RSS[$tool]+=" $(rss_mb "$out.rss")"
                    ;;
                tar)
                    as_pg mkdir -m 700 "$WORK/D3"
                    t0=$(now)
                    for f in "$PGBB_LAST"/*.tar.gz; do
                        as_pg tar -xzf "$f" -C "$WORK/D3" || die "tar -xzf $f failed"
                    done
                    t1=$(now)
                    sync -f "$WORK/D3"
                    t2=$(now)
                    RS_WALL[$tool]+=" $(elapsed "$t0" "$t1")"
                    TAR_SYNC+=" $(elapsed "$t0" "$t2")"
                    ;;
            esac
            log "  $tool: $(echo "${RS_WALL[$tool]:-}" | awk '{ print $NF }') s"
        done
    done
    rm -rf "$WORK/D1" "$WORK/D2" "$WORK/D3" "$WORK/D1c"
fi

# ---------------------------------------------------------------- 3. WAL after the backups
SEG_ACTUAL="-"
TARGET=""
GEN_S="-"
ARCH_WAIT_S="-"
if want pitr; then
    log "3. write load until $SEGMENTS WAL segments after the newest backup"
    lsn0=$(psql_q "select pg_current_wal_lsn()")
    archived0=$(psql_q "select archived_count from pg_stat_archiver")
    need=$((SEGMENTS * WAL_SEG))
    t0=$(now)
    gen_start=$SECONDS
    while :; do
        done_bytes=$(psql_q "select (pg_current_wal_lsn() - '$lsn0'::pg_lsn)::bigint")
        [ "$done_bytes" -ge "$need" ] && break
        [ $((SECONDS - gen_start)) -le "$GEN_TIMEOUT" ] || die "only $((done_bytes / WAL_SEG)) segments after $GEN_TIMEOUT s of load (GEN_TIMEOUT; or set SEGMENTS lower)"
        as_pg env PGOPTIONS="-c synchronous_commit=off" "$PGBIN/pgbench" -h "$SOCK" -p "$PORT" -n -c 4 -j 2 -T 10 postgres >>"$RES/pgbench-load.log" 2>&1 \
            || { tail_err "$RES/pgbench-load.log"; die "pgbench load failed"; }
        done_bytes=$(psql_q "select (pg_current_wal_lsn() - '$lsn0'::pg_lsn)::bigint")
        arch=$(psql_q "select archived_count - $archived0 || ' archived, ' || failed_count || ' archive failures, last ' || coalesce(last_archived_wal, '-') from pg_stat_archiver")
        log "  $((done_bytes / WAL_SEG)) of $SEGMENTS segments written; $arch"
    done
    # The target: after a committed 'before' row, before a committed 'after' row.
    psql_q "insert into bench_marker (tag) values ('before')"
    sleep 1.2
    TARGET=$(psql_q "select to_char(date_trunc('second', clock_timestamp() at time zone 'UTC'), 'YYYY-MM-DD HH24:MI:SS') || '+00'")
    sleep 1.2
    psql_q "insert into bench_marker (tag) values ('after')"
    lsn1=$(psql_q "select pg_current_wal_lsn()")
    SEG_ACTUAL=$(psql_q "select ceil((pg_current_wal_lsn() - '$lsn0'::pg_lsn) / $WAL_SEG)::int")
    last_seg=$(psql_q "select pg_walfile_name(pg_switch_wal())")
    GEN_S=$(elapsed "$t0" "$(now)")
    log "  $SEG_ACTUAL segments ($lsn0 .. $lsn1) in $GEN_S s; target time $TARGET; waiting until $last_seg is archived"
    t0=$(now)
    wait_archived "$last_seg" "$ARCHIVE_TIMEOUT" || die "$last_seg not archived after $ARCHIVE_TIMEOUT s: $(psql_q 'select * from pg_stat_archiver')"
    ARCH_WAIT_S=$(elapsed "$t0" "$(now)")
    ARCH_STATS=$(psql_q "select archived_count - $archived0 || ' segments archived since the load began, ' || failed_count || ' failed archive_command calls' from pg_stat_archiver")
    log "  archived after $ARCH_WAIT_S s more; $ARCH_STATS"
    SYN_WAL_B=$(dir_bytes "$SYN_REPO/bench/wal")
    SYN_WAL_MB=$(mb "$SYN_WAL_B")
    if [ "$CMP" = 1 ]; then
        CMP_WAL_B=$(dir_bytes "$CMP_REPO/bench/wal")
        CMP_WAL_MB=$(mb "$CMP_WAL_B")
    fi
    PGBR_WAL_MB=$(mb "$(dir_bytes "$PGBR_REPO/archive/bench")")
    as_pg "$PGBIN/pg_ctl" -D "$SRC" -m fast -w stop >/dev/null

    # ------------------------------------------------------------ 4. restore + recovery to TARGET
    check_markers() { # label -> "ok" or a description
        local got
        got=$(psql_q "select string_agg(tag, ',' order by tag) from bench_marker" 2>&1) || { echo "query failed: $got"; return; }
        [ "$got" = before ] && echo ok || echo "WRONG: marker rows '$got' (expected 'before' only)"
    }
    # One run of our restore --to T --start: key (synapse | cmp), round. Appends to PT_*[key].
    # The directory is D4 (cmp: cmp-pitr/D4, so that its server log, restore-<id>.log next to
    # the directory, is its own); a previous round's directory is removed first (untimed).
    declare -A PT_TOTAL PT_RESTORE PT_RECOVERY PT_RSS PT_CHECK
    pitr_ours() {
        local key=$1 r=$2 d out rc t0 t1 ts total restore recovery check tag
        tag=$(syn_tag "$key")
        if [ "$key" = cmp ]; then d=$WORK/cmp-pitr/D4; out=$RES/pitr-cmp; else d=$WORK/D4; out=$RES/pitr-synapse; fi
        [ "$PITR_REPS" -gt 1 ] && out=$out-$r
        log "4a. ${tag}synapse-backup restore --to '$TARGET' --start$( [ "$PITR_REPS" -gt 1 ] && echo " (round $r of $PITR_REPS)")"
        rm -rf "$d"
        sync
        t0=$(now)
        rc=0
        { as_pg /usr/bin/time -f %M -o "$out.rss" "$(syn_bin "$key")" --config "$(syn_cfg "$key")" restore --to "$TARGET" --start --pgdata "$d" 2>&1 1>"$out.stdout" | stamp >"$out.stderr"; } || rc=$?
        t1=$(now)
        total="-" restore="-" recovery="-" check="-"
        if [ "$rc" -eq 0 ]; then
            total=$(elapsed "$t0" "$t1")
            ts=$(grep -m1 'starting PostgreSQL' "$out.stderr" | cut -d' ' -f1 || true)
            if [ -n "$ts" ]; then
                restore=$(elapsed "$t0" "$ts")
                recovery=$(elapsed "$ts" "$t1")
            fi
            check=$(check_markers)
            [ "$check" = ok ] || our_failure "${tag}restore --to: $check"
            log "  $total s (restore $restore s + start/recovery $recovery s); markers: $check"
            PT_TOTAL[$key]+=" $total"
            PT_RESTORE[$key]+=" $restore"
            PT_RECOVERY[$key]+=" $recovery"
        else
            our_failure "${tag}restore --to '$TARGET' --start exited $rc: $(cut -d' ' -f2- "$out.stderr" | grep -v '^Command exited' | tail -n 3 | tr '\n' ' ')"
            cut -d' ' -f2- "$out.stderr" >"$out.stderr.plain"
            tail_err "$out.stderr.plain"
        fi
        if [ -f "$d/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$d" -m fast -w stop >/dev/null || true; fi
        PT_RSS[$key]+=" $(rss_mb "$out.rss")"
        # The markers column: the first result that is not ok, else ok.
        if [ -z "${PT_CHECK[$key]:-}" ] || [ "${PT_CHECK[$key]}" = ok ]; then PT_CHECK[$key]=$check; fi
    }
    STARTED+=("$WORK/D4")
    PITR_KEYS=(synapse)
    if [ "$CMP" = 1 ]; then
        PITR_KEYS=(synapse cmp)
        STARTED+=("$WORK/cmp-pitr/D4")
    fi
    for r in $(seq 1 "$PITR_REPS"); do
        # Rotate the order per round (with COMPARE_BIN: new first in odd rounds, last in even ones).
        for i in "${!PITR_KEYS[@]}"; do pitr_ours "${PITR_KEYS[$(((i + r - 1) % ${#PITR_KEYS[@]}))]}" "$r"; done
    done
    PITR_SYN=$(median ${PT_TOTAL[synapse]:-})
    PITR_SYN_RESTORE=$(median ${PT_RESTORE[synapse]:-})
    PITR_SYN_RECOVERY=$(median ${PT_RECOVERY[synapse]:-})
    PITR_SYN_RSS=$(median ${PT_RSS[synapse]:-})
    PITR_SYN_CHECK=${PT_CHECK[synapse]:--}

    PITR_SYN_LOG=$(ls "$WORK"/restore-*.log 2>/dev/null | head -n 1 || true)
    PITR_CMP_LOG=$(ls "$WORK"/cmp-pitr/restore-*.log 2>/dev/null | head -n 1 || true)

    log "4b. pgbackrest restore --type=time --target='$TARGET' --target-action=promote + pg_ctl start"
    D5=$WORK/D5
    out=$RES/pitr-pgbackrest
    as_pg mkdir -m 700 "$D5"
    sync
    t0=$(now)
    as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench --process-max=$PROCESS_MAX --pg1-path="$D5" \
        --type=time --target="$TARGET" --target-action=promote restore >"$out.stdout" 2>"$out.stderr" \
        || { tail_err "$out.stderr"; die "pgbackrest restore --type=time failed"; }
    t1=$(now)
    STARTED+=("$D5")
    as_pg "$PGBIN/pg_ctl" -D "$D5" -l "$WORK/D5.log" -t 3600 -w start >/dev/null \
        || { tail_err "$WORK/D5.log"; die "pg_ctl start of pgBackRest's restored directory failed"; }
    while [ "$(psql_q 'select pg_is_in_recovery()' 2>/dev/null || echo t)" != f ]; do
        [ -f "$D5/postmaster.pid" ] || { tail_err "$WORK/D5.log"; die "pgBackRest's restored server stopped during recovery"; }
        sleep 0.2
    done
    t2=$(now)
    PITR_PGBR_RESTORE=$(elapsed "$t0" "$t1")
    PITR_PGBR_RECOVERY=$(elapsed "$t1" "$t2")
    PITR_PGBR=$(elapsed "$t0" "$t2")
    PITR_PGBR_CHECK=$(check_markers)
    log "  $PITR_PGBR s (restore $PITR_PGBR_RESTORE s + start/recovery $PITR_PGBR_RECOVERY s); markers: $PITR_PGBR_CHECK"
    as_pg "$PGBIN/pg_ctl" -D "$D5" -m fast -w stop >/dev/null || true
fi

# ---------------------------------------------------------------- report
# "N segments, median/p90 s between them" from the 'restored log file' lines of a server log.
seg_pace() {
    [ -n "${1:-}" ] && [ -f "$1" ] || { echo "-"; return; }
    grep 'restored log file' "$1" | awk '
        { split($2, t, ":"); s = t[1] * 3600 + t[2] * 60 + t[3]
          if (n++) { d = s - p; if (d < 0) d += 86400; a[n - 1] = d }; p = s }
        END {
            m = n - 1
            if (m < 1) { print n " segments"; exit }
            for (i = 2; i <= m; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            printf "%d segments restored, %.3f s median / %.3f s p90 between them", n, a[int((m + 1) / 2)], a[(int(m * 0.9) > 0) ? int(m * 0.9) : 1]
        }'
}
med() { median ${1:-}; }
echo
echo "==================================================================================================="
echo "synapse-backup base backup / restore benchmark — $(date -u +%FT%TZ), $(nproc) CPUs, load average now $(cut -d' ' -f1-3 /proc/loadavg)"
echo "binary: $BIN_DESC; $(pgbackrest version); $("$PGBIN/postgres" --version)"
echo "database: pgbench -i -s $SCALE on initdb -k (data checksums); PGDATA without pg_wal $(mb "$DATA_BYTES") MB (the MB/s basis); warm page cache; quiet during backups and restores"
echo "shared, noisy machine: only the ratios of this run mean anything. Medians of $REPS round(s), tool order rotated per round."
echo "pgBackRest's archive check is ON: archive_command feeds both repositories (synapse wal-push && pgbackrest archive-push, async, process-max=2)."
if [ "$CMP" = 1 ]; then
    echo "compared with [$COMPARE_LABEL] = COMPARE_BIN $CMP_DESC"
    echo "  in the same run: own repository, same settings, rotated with the other tools; both wal-push calls run side by side in archive_command (the [$COMPARE_LABEL] one on its own view of pg_wal)."
    echo "  new/$COMPARE_LABEL lines: ratio of the medians per figure; ok = within 5 % or better (wall, stored, RSS <= 1.05; MB/s >= 0.95), WORSE otherwise."
fi

declare -A LABEL=(
    [synapse]="synapse-backup backup (par 2, gz 6)"
    [pgbackrest]="pgbackrest backup full (gz 6, pmax 2)"
    [pg_basebackup]="pg_basebackup -Ft -z -X fetch -c fast"
)
# With COMPARE_BIN: a row per binary, "[new]" and "[label]", and the label column wider if need be.
W=40
NEW_TAG=""
BK_ROWS=(synapse pgbackrest pg_basebackup)
RS_ROWS=(synapse pgbackrest tar)
CMP_WORSE=()
if [ "$CMP" = 1 ]; then
    NEW_TAG=" [new]"
    LABEL[cmp]="${LABEL[synapse]} [$COMPARE_LABEL]"
    LABEL[synapse]+=$NEW_TAG
    [ "${#LABEL[cmp]}" -lt "$W" ] || W=$((${#LABEL[cmp]} + 1))
    BK_ROWS=(synapse cmp pgbackrest pg_basebackup)
    RS_ROWS=(synapse cmp pgbackrest tar)
fi
# One figure of a new/COMPARE_LABEL line: name, new, old, lower|higher (is better).
fig() {
    awk -v n="$1" -v a="$2" -v b="$3" -v better="$4" 'BEGIN {
        if (a == "-" || b == "-" || a == "" || b == "" || b + 0 <= 0) { printf "%s - (no figure)", n; exit }
        r = a / b; ok = (better == "lower") ? (r <= 1.05) : (r >= 0.95)
        printf "%s %.3f %s", n, r, (ok ? "ok" : "WORSE")
    }'
}
# The new/COMPARE_LABEL line of a table: what, then figures (fig's output), joined by ", ".
cmp_line() {
    local what=$1 line="" f
    shift
    for f in "$@"; do
        line+="${line:+, }$f"
        case $f in *WORSE | *"no figure)") CMP_WORSE+=("$what: $f") ;; esac
    done
    echo "new/$COMPARE_LABEL $what: $line"
}
# Per-round ratios new/old of two lists of walls in round order ("-" unless both are complete).
per_round() {
    local a=($1) b=($2) i out=""
    [ "${#a[@]}" -eq "${#b[@]}" ] && [ "${#a[@]}" -gt 0 ] || { echo "-"; return; }
    for i in "${!a[@]}"; do out+="${out:+ }$(awk -v x="${a[$i]}" -v y="${b[$i]}" 'BEGIN { if (y > 0) printf "%.3f", x / y; else print "-" }')"; done
    echo "$out"
}
missed=0
check() { # description, awk condition (skipped when it mentions "-")
    if [[ "$2" == *" - "* || "$2" == "- "* || "$2" == *" -" ]]; then echo "target ??:     $1 (no figure)"; missed=1; return; fi
    if awk "BEGIN { exit !($2) }"; then echo "target met:    $1"; else echo "target MISSED: $1"; missed=1; fi
}

if want backup; then
    echo
    echo "1. BASE BACKUP (issue 3)"
    printf "%-${W}s %8s %10s %9s %11s %10s  %s\n" tool wall_s MB_per_s stored_MB peak_rss_MB rounds "all walls (s)"
    declare -A MW MR MS MM
    for t in "${BK_ROWS[@]}"; do
        MW[$t]=$(med "${BK_WALL[$t]:-}")
        MR[$t]=$(rate "$DATA_BYTES" "${MW[$t]}")
        MS[$t]=$(med "${BK_STORED[$t]:-}")
        MM[$t]=$(med "${BK_RSS[$t]:-}")
        n=$(echo "${BK_WALL[$t]:-}" | wc -w)
        printf "%-${W}s %8s %10s %9s %11s %10s  %s\n" "${LABEL[$t]}" "${MW[$t]}" "${MR[$t]}" "$(mb "${MS[$t]}")" "${MM[$t]}" "$n" "${BK_WALL[$t]:-}"
    done
    if [ "$CMP" = 1 ]; then
        cmp_line "backup" "$(fig wall_s "${MW[synapse]}" "${MW[cmp]}" lower)" "$(fig MB_per_s "${MR[synapse]}" "${MR[cmp]}" higher)" \
            "$(fig stored_bytes "${MS[synapse]}" "${MS[cmp]}" lower)" "$(fig peak_rss_MB "${MM[synapse]}" "${MM[cmp]}" lower)"
        echo "new/$COMPARE_LABEL backup wall per round: $(per_round "${BK_WALL[synapse]:-}" "${BK_WALL[cmp]:-}"); stored bytes (median) new ${MS[synapse]}, $COMPARE_LABEL ${MS[cmp]}"
    fi
    if [ -s "$RES/list.json" ] && [ -n "$SYN_LAST_ID" ]; then
        echo "our list --json for $SYN_LAST_ID: $(jq -c --arg id "$SYN_LAST_ID" '.backups[] | select(.id == $id) | {original_bytes, stored_bytes, duration_seconds, page_problems}' "$RES/list.json")"
    fi
    r_pgbr=$(ratio "${MR[synapse]}" "${MR[pgbackrest]}")
    r_pgbb=$(ratio "${MR[synapse]}" "${MR[pg_basebackup]}")
    r_size=$(ratio "${MS[synapse]}" "${MS[pgbackrest]}")
    echo "ratios: throughput ours/pgBackRest ${r_pgbr}x, ours/pg_basebackup ${r_pgbb}x, stored size ours/pgBackRest ${r_size}"
    check "backup throughput >= 1.5x pgBackRest (got ${r_pgbr}x)" "$r_pgbr >= 1.5"
    check "backup throughput >= 2x pg_basebackup (got ${r_pgbb}x)" "$r_pgbb >= 2.0"
    check "stored size within 5% of pgBackRest's (got ${r_size})" "$r_size <= 1.05 && $r_size >= 0.95"
    check "peak memory of our backup < 256 MB (got ${MM[synapse]} MB, median; max $(printf '%s\n' ${BK_RSS[synapse]:-0} | sort -g | tail -n 1) MB)" "${MM[synapse]} < 256"
fi

if want restore; then
    echo
    echo "2. RESTORE of the newest backup, no recovery (issue 4)"
    printf "%-${W}s %8s %10s %11s %10s  %s\n" tool wall_s MB_per_s peak_rss_MB rounds "all walls (s)"
    declare -A RW RR
    declare -A RLABEL=(
        [synapse]="synapse-backup restore --latest$NEW_TAG"
        [cmp]="synapse-backup restore --latest [$COMPARE_LABEL]"
        [pgbackrest]="pgbackrest restore (pmax 2)"
        [tar]="tar -xzf of pg_basebackup output"
    )
    for t in "${RS_ROWS[@]}"; do
        RW[$t]=$(med "${RS_WALL[$t]:-}")
        RR[$t]=$(rate "$DATA_BYTES" "${RW[$t]}")
        n=$(echo "${RS_WALL[$t]:-}" | wc -w)
        printf "%-${W}s %8s %10s %11s %10s  %s\n" "${RLABEL[$t]}" "${RW[$t]}" "${RR[$t]}" "$(med "${RS_RSS[$t]:-}")" "$n" "${RS_WALL[$t]:-}"
    done
    tsw=$(med "$TAR_SYNC")
    printf "%-${W}s %8s %10s %11s %10s  %s\n" "tar -xzf + sync -f (same runs)" "$tsw" "$(rate "$DATA_BYTES" "$tsw")" "-" "$(echo "$TAR_SYNC" | wc -w)" "$TAR_SYNC"
    if [ "$CMP" = 1 ]; then
        cmp_line "restore" "$(fig wall_s "${RW[synapse]}" "${RW[cmp]}" lower)" "$(fig MB_per_s "${RR[synapse]}" "${RR[cmp]}" higher)" \
            "$(fig peak_rss_MB "$(med "${RS_RSS[synapse]:-}")" "$(med "${RS_RSS[cmp]:-}")" lower)"
        echo "new/$COMPARE_LABEL restore wall per round: $(per_round "${RS_WALL[synapse]:-}" "${RS_WALL[cmp]:-}")"
    fi
    r_rs=$(ratio "${RR[synapse]}" "${RR[pgbackrest]}")
    r_tar=$(ratio "${RR[synapse]}" "${RR[tar]}")
    echo "ratios: throughput ours/pgBackRest ${r_rs}x, ours/tar ${r_tar}x"
    [ "$VERIFY" = 1 ] && echo "pg_verifybackup -n of our last restored directory: $( [ -s "$RES/verifybackup.log" ] && (grep -q 'successfully verified' "$RES/verifybackup.log" && echo ok || tail -n 2 "$RES/verifybackup.log" | tr '\n' ' ') || echo 'not run')"
    check "restore throughput >= 1.5x pgBackRest (got ${r_rs}x)" "$r_rs >= 1.5"
fi

if want pitr; then
    echo
    echo "3. RESTORE + RECOVERY to a target $SEG_ACTUAL WAL segments after the newest backup (issue 4)"
    echo "WAL: $SEG_ACTUAL segments of pgbench -c 4 load in $GEN_S s (+ $ARCH_WAIT_S s until archived); ${ARCH_STATS:-}; stored WAL: ours $SYN_WAL_MB MB, pgBackRest $PGBR_WAL_MB MB"
    echo "target time: $TARGET (a commit before it, one after it; restored servers must show only 'before')"
    printf '%-58s %9s %11s %12s %11s  %s\n' tool total_s restore_s recovery_s peak_rss_MB markers
    printf '%-58s %9s %11s %12s %11s  %s\n' "synapse-backup restore --to T --start$NEW_TAG" "$PITR_SYN" "$PITR_SYN_RESTORE" "$PITR_SYN_RECOVERY" "$PITR_SYN_RSS" "$PITR_SYN_CHECK"
    if [ "$CMP" = 1 ]; then
        PITR_CMP=$(median ${PT_TOTAL[cmp]:-})
        PITR_CMP_RESTORE=$(median ${PT_RESTORE[cmp]:-})
        PITR_CMP_RECOVERY=$(median ${PT_RECOVERY[cmp]:-})
        PITR_CMP_RSS=$(median ${PT_RSS[cmp]:-})
        printf '%-58s %9s %11s %12s %11s  %s\n' "synapse-backup restore --to T --start [$COMPARE_LABEL]" "$PITR_CMP" "$PITR_CMP_RESTORE" "$PITR_CMP_RECOVERY" "$PITR_CMP_RSS" "${PT_CHECK[cmp]:--}"
    fi
    printf '%-58s %9s %11s %12s %11s  %s\n' "pgbackrest restore --type=time + pg_ctl start, promote" "$PITR_PGBR" "$PITR_PGBR_RESTORE" "$PITR_PGBR_RECOVERY" "-" "$PITR_PGBR_CHECK"
    echo "(ours: restore_s = until it printed 'starting PostgreSQL'; it polls the server every 0.5-1 s. pgBackRest: recovery_s = pg_ctl start -w + polling pg_is_in_recovery() every 0.2 s)"
    [ "$PITR_REPS" -gt 1 ] && echo "(ours: medians of $PITR_REPS rounds; pgBackRest: one run) totals per round: new${PT_TOTAL[synapse]:-}$( [ "$CMP" = 1 ] && echo "; $COMPARE_LABEL${PT_TOTAL[cmp]:-}")"
    echo "restore_command pace (server logs): ours $(seg_pace "${PITR_SYN_LOG:-}"); pgBackRest $(seg_pace "$WORK/D5.log")"
    if [ "$CMP" = 1 ]; then
        echo "restore_command pace (server log) of [$COMPARE_LABEL]: $(seg_pace "${PITR_CMP_LOG:-}")"
        cmp_line "restore + recovery" "$(fig total_s "$PITR_SYN" "$PITR_CMP" lower)" "$(fig restore_s "$PITR_SYN_RESTORE" "$PITR_CMP_RESTORE" lower)" \
            "$(fig recovery_s "$PITR_SYN_RECOVERY" "$PITR_CMP_RECOVERY" lower)" "$(fig peak_rss_MB "$PITR_SYN_RSS" "$PITR_CMP_RSS" lower)" \
            "$(fig stored_WAL_bytes "$SYN_WAL_B" "$CMP_WAL_B" lower)"
        [ "$PITR_REPS" -gt 1 ] && echo "new/$COMPARE_LABEL restore + recovery total per round: $(per_round "${PT_TOTAL[synapse]:-}" "${PT_TOTAL[cmp]:-}")"
        echo "stored WAL of [$COMPARE_LABEL]: $CMP_WAL_MB MB (new $SYN_WAL_MB MB)"
    fi
    r_pitr=$(ratio "$PITR_SYN" "$PITR_PGBR")
    echo "ratio: total time ours/pgBackRest $r_pitr (lower is better)"
    check "restore + recovery no slower than pgBackRest (ours/pgBackRest ${r_pitr})" "$r_pitr <= 1.0"
fi

if [ "$CMP" = 1 ]; then
    echo
    if [ "${#CMP_WORSE[@]}" -eq 0 ]; then
        echo "new vs $COMPARE_LABEL: every figure within 5 % or better"
    else
        echo "new vs $COMPARE_LABEL: more than 5 % worse (or missing) in this run:"
        for f in "${CMP_WORSE[@]}"; do echo "  - $f"; done
    fi
fi
if [ "${#FAILURES[@]}" -gt 0 ]; then
    echo
    echo "FAILURES of synapse-backup in this run:"
    for f in "${FAILURES[@]}"; do echo "  - $f"; done
fi
echo "logs: $RES (kept with KEEP=1)"

[ "$OURS_FAILED" -eq 1 ] && exit 3
[ "$STRICT" = 1 ] && [ "$missed" -eq 1 ] && exit 2
exit 0
