#!/usr/bin/env bash
# Build the PostgreSQL image that the docker runtime of `verify` is tested with, FROM scratch,
# out of the PostgreSQL installed on this machine (no registry is reachable here).
#
#   integration/docker-image.sh [IMAGE]        default IMAGE: synapse-verify-pg15:test
#
# Idempotent: an existing image of this script's IMAGE_VERSION is kept (REBUILD=1 replaces
# it). PG_MAJOR picks the installed major version (default 15). The image holds the server and
# client binaries under /usr/lib/postgresql/<major>/bin (where the official postgres:<major>
# image has them too), their shared libraries (found with ldd), the share directory, the time
# zone database and locales, a shell with cp and sleep (restore_command) and env, and
# /etc/passwd + /etc/group entries for the `postgres` user with this machine's uid/gid, so
# that files restored on the host belong to the same user inside.
set -euo pipefail

IMAGE=${1:-synapse-verify-pg15:test}
MAJOR=${PG_MAJOR:-15}
# Bump when the image's content changes, so that older test images are rebuilt.
IMAGE_VERSION=2
PGLIB=/usr/lib/postgresql/$MAJOR
PGSHARE=/usr/share/postgresql/$MAJOR

if ! docker info >/dev/null 2>&1; then
    echo "docker-image.sh: no Docker engine reachable (docker info failed)" >&2
    exit 1
fi
have=$(docker image inspect --format '{{ index .Config.Labels "org.synapse-backup.image-version" }}' "$IMAGE" 2>/dev/null || true)
if [ -z "${REBUILD:-}" ] && [ "$have" = "$IMAGE_VERSION" ]; then
    echo "$IMAGE (version $IMAGE_VERSION) already exists (REBUILD=1 to rebuild)"
    exit 0
fi
for d in "$PGLIB/bin" "$PGSHARE"; do
    [ -d "$d" ] || { echo "docker-image.sh: $d is missing: apt-get install postgresql-$MAJOR" >&2; exit 1; }
done
getent passwd postgres >/dev/null || { echo "docker-image.sh: no postgres user on this machine" >&2; exit 1; }

ctx=$(mktemp -d /var/tmp/synapse-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root"/{etc,tmp,bin,usr/bin,var/run/postgresql}
chmod 1777 "$root/tmp"

# Copy absolute paths into the root, keeping their paths (tar, not `cp --parents`: coreutils
# 9.1 fails on that combined with -a). `put -h` dereferences symlinks.
put() {
    local deref=
    if [ "$1" = -h ]; then deref=-h; shift; fi
    local rel=()
    for p in "$@"; do rel+=("${p#/}"); done
    tar -C / $deref -cf - "${rel[@]}" | tar -C "$root" -xf -
}

# PostgreSQL itself, the time zone database, and the few tools restore_command and probes use.
put "$PGLIB" "$PGSHARE"
[ -d /usr/share/zoneinfo ] && put /usr/share/zoneinfo
# The locales clusters are initialised with (C.UTF-8 on Debian; others if generated here).
[ -d /usr/lib/locale ] && put /usr/lib/locale
tools=()
for t in sh cp env cat ls rm mkdir sleep; do
    p=$(command -v "$t")
    p=$(readlink -f "$p")
    put "$p"
    tools+=("$p")
    # /bin/sh and friends under their usual names.
    [ -e "$root/bin/$t" ] || ln -s "$p" "$root/bin/$t"
done

# Shared libraries of every ELF file copied, and the dynamic loader.
elves=()
while IFS= read -r -d '' f; do
    if head -c 4 "$f" 2>/dev/null | grep -q 'ELF'; then elves+=("$f"); fi
done < <(find "$PGLIB" -type f \( -perm -u+x -o -name '*.so*' \) -print0)
elves+=("${tools[@]}")
ldd "${elves[@]}" 2>/dev/null | awk '/=> \//{print $3} /^\s*\/lib.*ld-linux/{print $1}' | sort -u |
while read -r lib; do
    put -h "$lib"
done
for loader in /lib64/ld-linux-x86-64.so.2 /lib/ld-linux-aarch64.so.1; do
    if [ -e "$loader" ]; then put -h "$loader"; fi
done
# Debian's usrmerge: /lib -> usr/lib; make both spellings work inside.
if [ -L /lib ] && [ -d "$root/lib" ] && [ ! -L "$root/lib" ]; then
    mkdir -p "$root/usr/lib"
    cp -a "$root/lib/." "$root/usr/lib/"
    rm -rf "$root/lib"
    ln -s usr/lib "$root/lib"
fi

uid=$(id -u postgres)
gid=$(id -g postgres)
printf 'root:x:0:0:root:/root:/bin/sh\npostgres:x:%s:%s:PostgreSQL:/var/lib/postgresql:/bin/sh\n' "$uid" "$gid" >"$root/etc/passwd"
printf 'root:x:0:\npostgres:x:%s:\n' "$gid" >"$root/etc/group"
chown "$uid:$gid" "$root/var/run/postgresql"

cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV PATH=$PGLIB/bin:/usr/bin:/bin LANG=C
LABEL org.synapse-backup.image-version=$IMAGE_VERSION
USER postgres
EOF
DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$ctx" >/dev/null 2>"$ctx/build.log" || {
    cat "$ctx/build.log" >&2
    exit 1
}
# Smoke test: the server binary runs inside.
docker run --rm --network none "$IMAGE" "$PGLIB/bin/postgres" --version
echo "built $IMAGE"
