#!/usr/bin/env bash
# Encryption micro-benchmark (issue 14): the age encrypting writer and decrypting reader of
# src/crypt against a plain copy, on BYTES (default 1 GiB) of gzip-like (incompressible) data.
#
# What it measures
#   The `crypt::bench::crypt_throughput` test (ignored by default), one process per mode so
#   that each peak RSS is its own:
#     copy     1 MiB buffers from the source into a sink (the floor)
#     encrypt  the same through EncryptingWriter (ChaCha20-Poly1305, 64 KiB age chunks)
#     read     a plain file, written first (untimed), read back from the page cache
#     decrypt  the encrypted file, written first (untimed), read through DecryptingReader
#   Reported per mode: MiB/s of the timed part (one core) and peak RSS (GNU time %M when
#   /usr/bin/time exists, else the process's VmHWM). The test binary is the debug test build,
#   whose dependencies (age, chacha20poly1305) are optimized (profile.dev.package."*").
#
# Usage: bench/crypt.sh            BYTES=268435456 bench/crypt.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BYTES=${BYTES:-1073741824}

bin=$(cargo test --lib --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*synapse_backup-[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build the test binary" >&2; exit 1; }

printf '%-8s %10s %10s %12s\n' mode seconds MiB/s peak_RSS_MB
for mode in copy encrypt read decrypt; do
    log=$(mktemp)
    if [ -x /usr/bin/time ]; then
        out=$(SYNAPSE_CRYPT_BENCH=$mode SYNAPSE_CRYPT_BENCH_BYTES=$BYTES \
            /usr/bin/time -f 'maxrss_kb=%M' -o "$log" \
            "$bin" crypt::bench::crypt_throughput --ignored --nocapture --exact --test-threads 1)
        rss_kb=$(sed -n 's/^maxrss_kb=//p' "$log")
    else
        out=$(SYNAPSE_CRYPT_BENCH=$mode SYNAPSE_CRYPT_BENCH_BYTES=$BYTES \
            "$bin" crypt::bench::crypt_throughput --ignored --nocapture --exact --test-threads 1)
        rss_kb=$(echo "$out" | sed -n 's/.*VmHWM=\([0-9]*\).*/\1/p')
    fi
    rm -f "$log"
    line=$(echo "$out" | grep -o 'crypt-bench .*')
    secs=$(echo "$line" | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p')
    mibs=$(echo "$line" | sed -n 's/.*MiB\/s=\([0-9]*\).*/\1/p')
    printf '%-8s %10s %10s %12s\n' "$mode" "$secs" "$mibs" "$((rss_kb / 1024))"
done
