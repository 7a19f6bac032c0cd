#!/usr/bin/env bash
# Builds a local stand-in for the official Redis image from Debian's redis-server.
#
# RustyBalancer's Compose files use the official image (REDIS_IMAGE, default redis:7).
# On a machine that cannot pull it (no registry access), jobs/run.sh calls this script
# and sets REDIS_IMAGE to the stand-in instead. It is never used when the pull works.
#
# The image is FROM scratch and holds only redis-server, redis-cli, the shared
# libraries they load (found with ldd, copied at their paths with the dynamic loader),
# a one-line /etc/passwd and an empty /data owned by uid 999 (the uid of the official
# image's `redis` user, so one data volume works with both images). It runs as 999,
# not root. Like the official image it has no config file: Compose passes options on
# the command line (--appendonly, --save, --protected-mode no, ...).
set -euo pipefail

IMAGE=${REDIS_STANDIN_IMAGE:-rustybalancer/redis-standin:latest}
INSTALL=1
QUIET=0

usage() {
    cat <<USAGE
Usage: $(basename "$0") [-t IMAGE] [-n] [-q] [-h]

Builds IMAGE (default: \$REDIS_STANDIN_IMAGE or rustybalancer/redis-standin:latest),
a FROM scratch image with Debian's redis-server and redis-cli and the shared
libraries they need. Installs Debian's redis-server package first when it is missing
(needs root and apt-get). Prints the image name on stdout when done.

Options:
  -t IMAGE  image name:tag to build
  -n        never install packages; fail if redis-server is missing
  -q        quiet: only errors and the image name
  -h        show this help

Used by jobs/run.sh only when the official image (REDIS_IMAGE, default redis:7)
is neither present locally nor pullable.
USAGE
}

log() {
    ((QUIET)) || printf '[redis-standin %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

die() {
    printf '[redis-standin %s] error: %s\n' "$(date +%H:%M:%S)" "$*" >&2
    exit 1
}

ensure_redis_installed() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return
    fi
    ((INSTALL)) || die "redis-server/redis-cli not found and -n given; install Debian's redis-server package"
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "redis-server is missing and cannot be installed here (needs root and apt-get): install Debian's redis-server package, or make the official image available (docker pull redis:7)"
    fi
    log "installing redis-server from Debian's packages (apt-get)"
    local apt_log
    apt_log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; } >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        rm -f "$apt_log"
        die "apt-get install redis-server failed"
    fi
    rm -f "$apt_log"
    # The package may start a system instance; the stand-in doesn't need it.
    if command -v service >/dev/null 2>&1; then service redis-server stop >/dev/null 2>&1 || true; fi
}

# Copies FILE into ROOTFS at the same path, following symlinks (the copy is a regular file).
stage() {
    local file=$1 rootfs=$2
    mkdir -p "$rootfs$(dirname "$file")"
    cp -L "$file" "$rootfs$file"
}

# Prints every shared library (absolute path) that the given binaries load, loader included.
shared_libraries() {
    ldd "$@" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3 }
        $1 ~ /^\// && $2 ~ /^\(/ { print $1 }
    ' | sort -u
}

main() {
    local opt
    while getopts ':t:nqh' opt; do
        case $opt in
            t) IMAGE=$OPTARG ;;
            n) INSTALL=0 ;;
            q) QUIET=1 ;;
            h)
                usage
                exit 0
                ;;
            :) die "option -$OPTARG needs a value (see -h)" ;;
            *) die "unknown option -$OPTARG (see -h)" ;;
        esac
    done
    shift $((OPTIND - 1))
    (($# == 0)) || die "unexpected argument '$1' (see -h)"

    command -v docker >/dev/null 2>&1 || die "docker not found"
    command -v ldd >/dev/null 2>&1 || die "ldd not found (libc-bin)"
    ensure_redis_installed

    local server cli version
    # On Debian, redis-server is a symlink to redis-check-rdb: one binary that acts on
    # its argv[0]. The copy is named redis-server, so it starts as the server.
    server=$(readlink -f "$(command -v redis-server)")
    cli=$(readlink -f "$(command -v redis-cli)")
    version=$(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p')
    [[ -n $version ]] || die "cannot read the version of $server"

    local context
    context=$(mktemp -d "${TMPDIR:-/tmp}/redis-standin.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this context
    trap "rm -rf '$context'" EXIT
    local rootfs=$context/rootfs
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$context/data"
    cp -L "$server" "$rootfs/usr/local/bin/redis-server"
    cp -L "$cli" "$rootfs/usr/local/bin/redis-cli"
    local lib count=0
    while read -r lib; do
        stage "$lib" "$rootfs"
        count=$((count + 1))
    done < <(shared_libraries "$server" "$cli")
    printf 'redis:x:999:999:redis:/data:/nonexistent\n' >"$rootfs/etc/passwd"
    printf 'redis:x:999:\n' >"$rootfs/etc/group"
    log "staged redis $version ($server, $cli) and $count shared libraries: $(du -sh "$rootfs" | cut -f1)"

    cat >"$context/Dockerfile" <<DOCKERFILE
# Generated by jobs/build-redis-standin.sh: a stand-in for the official redis image,
# used only where that image cannot be pulled.
FROM scratch
LABEL org.opencontainers.image.title="rustybalancer-redis-standin" \\
      org.opencontainers.image.description="Debian's redis-server $version in a scratch image (stand-in for the official redis image)" \\
      org.opencontainers.image.version="$version"
COPY rootfs/ /
COPY --chown=999:999 data /data
ENV PATH=/usr/local/bin:/usr/bin:/bin \\
    LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
WORKDIR /data
USER 999:999
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=5 \\
    CMD ["redis-cli", "ping"]
CMD ["redis-server", "--protected-mode", "no"]
DOCKERFILE

    log "building $IMAGE"
    local -a build
    if docker buildx version >/dev/null 2>&1; then
        build=(docker buildx build --load)
    else
        build=(env DOCKER_BUILDKIT=0 docker build)
    fi
    local build_log=$context.log
    if ! "${build[@]}" -t "$IMAGE" -t "${IMAGE%:*}:$version" "$context" >"$build_log" 2>&1; then
        cat "$build_log" >&2
        rm -f "$build_log"
        die "docker build of $IMAGE failed"
    fi
    rm -f "$build_log"
    rm -rf "$context"
    trap - EXIT

    # Smoke test: the image starts and answers PING.
    local name="redis-standin-check-$$" _
    docker run -d --rm --name "$name" "$IMAGE" >/dev/null
    for _ in $(seq 1 50); do
        if docker exec "$name" redis-cli -e ping >/dev/null 2>&1; then
            docker rm -f "$name" >/dev/null
            local size
            size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
            log "built $IMAGE (redis $version, $((size / 1024 / 1024)) MiB); it answers PING"
            echo "$IMAGE"
            return 0
        fi
        sleep 0.1
    done
    docker logs "$name" >&2 || true
    docker rm -f "$name" >/dev/null 2>&1 || true
    die "$IMAGE was built but does not answer PING"
}

main "$@"
