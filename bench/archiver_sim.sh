#!/usr/bin/env bash
# Helper of bench/wal_push.sh: plays PostgreSQL's archiver against a fake data directory.
#
#   archiver_sim.sh DATADIR 'ARCHIVE_COMMAND with %p and %f' OUT_PREFIX
#
# DATADIR/pg_wal holds the segments and pg_wal/archive_status/<name>.ready for each. In WAL
# order, for each .ready: cd DATADIR, run the archive command once through `sh -c` (as
# PostgreSQL does: %p = pg_wal/<name>, %f = <name>), retry a failure after 1 s (PostgreSQL's
# archiver sleeps 1 s between retries; the retry time counts), then rename .ready to .done.
# Each call runs under GNU time for its peak RSS.
#
# Writes OUT_PREFIX.calls (one line per segment: name elapsed_us attempts maxrss_kb fastpath,
# where fastpath=1 means pg_wal/synapse_spool/pushed/<name> existed before the call),
# OUT_PREFIX.wall_us (wall time of the whole loop), OUT_PREFIX.harness_us (median cost of one
# call of an empty command through the same harness) and OUT_PREFIX.stderr (the tool's stderr).
set -euo pipefail
export LC_ALL=C

datadir=$1
command_template=$2
out=$3
max_attempts=${MAX_ATTEMPTS:-10}

cd "$datadir"
status=pg_wal/archive_status
marker_dir=pg_wal/synapse_spool/pushed
rss_file=$(mktemp "${out}.rss.XXXXXX")
: >"$out.calls"
: >"$out.stderr"

# The list is fixed at the start: PostgreSQL would see the same files, since nothing new arrives.
mapfile -t names < <(find "$status" -maxdepth 1 -name '*.ready' -printf '%f\n' | sed 's/\.ready$//' | sort)
if [ "${#names[@]}" -eq 0 ]; then
    echo "archiver_sim: no .ready files in $datadir/$status" >&2
    exit 1
fi

# The harness's own cost per call (GNU time + sh -c + an empty command), median of 21.
for i in $(seq 1 21); do
    t0=${EPOCHREALTIME/./}
    /usr/bin/time -f %M -o "$rss_file" sh -c true
    t1=${EPOCHREALTIME/./}
    echo $((t1 - t0))
done | sort -n | sed -n 11p >"$out.harness_us"

loop_start=${EPOCHREALTIME/./}
for name in "${names[@]}"; do
    cmd=${command_template//%p/pg_wal\/$name}
    cmd=${cmd//%f/$name}
    fastpath=0
    [ -e "$marker_dir/$name" ] && fastpath=1
    attempts=0
    max_rss=0
    call_start=${EPOCHREALTIME/./}
    while :; do
        attempts=$((attempts + 1))
        rc=0
        /usr/bin/time -f %M -o "$rss_file" sh -c "$cmd" 2>>"$out.stderr" || rc=$?
        # GNU time writes "Command exited with non-zero status N" before %M on failure.
        rss=$(tail -n 1 "$rss_file")
        [ "$rss" -gt "$max_rss" ] && max_rss=$rss
        [ "$rc" -eq 0 ] && break
        echo "archiver_sim: $name: attempt $attempts exited $rc" >>"$out.stderr"
        if [ "$attempts" -ge "$max_attempts" ]; then
            echo "archiver_sim: $name failed $attempts times, giving up; see $out.stderr" >&2
            exit 1
        fi
        sleep 1
    done
    call_end=${EPOCHREALTIME/./}
    mv "$status/$name.ready" "$status/$name.done"
    echo "$name $((call_end - call_start)) $attempts $max_rss $fastpath" >>"$out.calls"
done
loop_end=${EPOCHREALTIME/./}
echo $((loop_end - loop_start)) >"$out.wall_us"
rm -f "$rss_file"
