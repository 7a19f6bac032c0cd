#!/usr/bin/env bash
# Builds RustyBalancer's Docker images from static binaries compiled on the host.
#
# There is no container registry here, so images are `FROM scratch` and the
# binaries are built outside Docker, then staged into a throwaway build context
# next to the image's Dockerfile. See usage() for options.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUST_TARGET=x86_64-unknown-linux-gnu
IMAGE_PREFIX=${IMAGE_PREFIX:-rustybalancer}
IMAGE_TAG=${IMAGE_TAG:-latest}
SKIP_CARGO=0
STRIP_DEBUG=1

# Known images, built in this order when no names are given.
# Each entry: NAME CRATE DOCKERFILE (relative to the repository root).
# The crate's binary must be named like the crate.
KNOWN_IMAGES=(
    "balancer balancer balancer/Dockerfile"
    "deployment-agent deployment-agent deployment-agent/Dockerfile"
    "playground playground playground/Dockerfile"
)

usage() {
    cat <<USAGE
Usage: $(basename "$0") [-t TAG] [-p PREFIX] [-n] [-g] [-h] [NAME...]

Builds Docker images tagged PREFIX/NAME:TAG from static binaries built on the host
(one cargo invocation for all of them). With no NAME, builds every known image.
Redis is not built here: see jobs/build-redis-standin.sh.

Known images: $(known_names)

Options:
  -t TAG     image tag (default: \$IMAGE_TAG or "latest")
  -p PREFIX  image name prefix (default: \$IMAGE_PREFIX or "rustybalancer")
  -n         don't run cargo; use the release binaries already built
  -g         keep debug info (line tables) in the staged binary; by default it is
             stripped (about 4x smaller; symbols are kept, so backtraces still name functions)
  -s         strip debug info (the default; kept for compatibility)
  -h         show this help

Environment:
  CARGO_TARGET_DIR  where cargo puts binaries (default: <repo>/target)
  IMAGE_TAG, IMAGE_PREFIX  defaults for -t and -p

Uses 'docker buildx build --load' when buildx exists, else the legacy builder
(DOCKER_BUILDKIT=0 docker build).
USAGE
}

log() {
    printf '[build-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

known_names() {
    local entry
    local -a names=()
    for entry in "${KNOWN_IMAGES[@]}"; do
        names+=("${entry%% *}")
    done
    echo "${names[*]}"
}

# Prints the known-images entry for NAME, or fails.
lookup_image() {
    local wanted=$1 entry
    for entry in "${KNOWN_IMAGES[@]}"; do
        if [[ ${entry%% *} == "$wanted" ]]; then
            echo "$entry"
            return 0
        fi
    done
    return 1
}

# Runs `docker build` on a context dir with BuildKit's buildx if present, else
# with the legacy builder. Arguments: CONTEXT_DIR IMAGE.
docker_build() {
    local context=$1 image=$2
    # Labels are deterministic (the commit, not the build time) so that rebuilding the
    # same binaries gives the same image id and Compose doesn't recreate containers.
    local -a labels=()
    local revision created
    if revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null); then
        created=$(git -C "$ROOT" log -1 --format=%cI HEAD)
        labels+=(--label "org.opencontainers.image.revision=$revision"
            --label "org.opencontainers.image.created=$created")
    fi
    if docker buildx version >/dev/null 2>&1; then
        log "docker buildx build -> $image"
        docker buildx build --load "${labels[@]}" -t "$image" "$context"
    else
        log "buildx not found; legacy builder (DOCKER_BUILDKIT=0) -> $image"
        DOCKER_BUILDKIT=0 docker build "${labels[@]}" -t "$image" "$context"
    fi
}

# Builds the static release binaries of the given crates in one cargo invocation
# (one dependency graph, one link step each: much faster than one cargo run per crate).
build_binaries() {
    local -a packages=()
    local crate
    for crate in "$@"; do
        packages+=(-p "$crate")
    done
    log "cargo build --release --target $RUST_TARGET ${packages[*]} (static)"
    (cd "$ROOT" && RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --target "$RUST_TARGET" "${packages[@]}")
}

# build_image NAME CRATE DOCKERFILE: builds the image PREFIX/NAME:TAG from DOCKERFILE
# (path relative to the repo root) and the crate's static release binary, built before.
build_image() {
    local name=$1 crate=$2 dockerfile=$3
    local image="$IMAGE_PREFIX/$name:$IMAGE_TAG"
    local target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
    local binary="$target_dir/$RUST_TARGET/release/$crate"
    local started=$SECONDS

    [[ -f $ROOT/$dockerfile ]] || die "$name: Dockerfile $dockerfile not found"
    [[ -x $binary ]] || die "$name: binary $binary not found"
    if command -v readelf >/dev/null 2>&1 && readelf -l "$binary" | grep -q 'INTERP'; then
        die "$name: $binary is dynamically linked; a scratch image needs a static binary"
    fi

    local context
    context=$(mktemp -d "${TMPDIR:-/tmp}/build-images-$name.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this context
    trap "rm -rf '$context'" EXIT
    cp "$binary" "$context/$crate"
    if ((STRIP_DEBUG)); then
        if command -v strip >/dev/null 2>&1; then
            strip --strip-debug "$context/$crate"
        else
            log "$name: strip (binutils) not found; keeping debug info (bigger image)"
        fi
    fi
    cp "$ROOT/$dockerfile" "$context/Dockerfile"
    log "$name: staged $(du -h "$context/$crate" | cut -f1) binary in $context"

    local previous
    previous=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    docker_build "$context" "$image"
    rm -rf "$context"
    trap - EXIT
    # The image this tag named before is now untagged: remove it unless a container uses it.
    if [[ -n $previous && $previous != "$(docker image inspect --format '{{.Id}}' "$image")" ]]; then
        if docker rmi "$previous" >/dev/null 2>&1; then
            log "$name: removed the previous image ${previous#sha256:}"
        else
            log "$name: the previous image ${previous#sha256:} is still in use or tagged elsewhere; left in place"
        fi
    fi

    local size
    size=$(docker image inspect --format '{{.Size}}' "$image")
    log "$name: built $image ($((size / 1024)) KiB) in $((SECONDS - started))s"
}

main() {
    local opt
    while getopts ':t:p:nsgh' opt; do
        case $opt in
            t) IMAGE_TAG=$OPTARG ;;
            p) IMAGE_PREFIX=$OPTARG ;;
            n) SKIP_CARGO=1 ;;
            s) STRIP_DEBUG=1 ;;
            g) STRIP_DEBUG=0 ;;
            h)
                usage
                exit 0
                ;;
            :) die "option -$OPTARG needs a value (see -h)" ;;
            *) die "unknown option -$OPTARG (see -h)" ;;
        esac
    done
    shift $((OPTIND - 1))

    command -v docker >/dev/null 2>&1 || die "docker not found"
    command -v cargo >/dev/null 2>&1 || ((SKIP_CARGO)) || die "cargo not found"

    local -a names=("$@")
    if ((${#names[@]} == 0)); then
        read -r -a names <<<"$(known_names)"
    fi
    # Validate every name before building anything.
    local name
    for name in "${names[@]}"; do
        lookup_image "$name" >/dev/null || die "unknown image '$name' (known: $(known_names))"
    done

    local count=0 entry started=$SECONDS
    local -a spec crates=()
    for name in "${names[@]}"; do
        entry=$(lookup_image "$name")
        read -r -a spec <<<"$entry"
        crates+=("${spec[1]}")
    done
    if ((SKIP_CARGO)); then
        log "skipping cargo (-n): using the release binaries already built"
    else
        build_binaries "${crates[@]}"
    fi
    for name in "${names[@]}"; do
        count=$((count + 1))
        entry=$(lookup_image "$name")
        read -r -a spec <<<"$entry"
        log "[$count/${#names[@]}] building $name"
        build_image "${spec[@]}"
    done
    log "done: built ${#names[@]} image(s) in $((SECONDS - started))s"
}

main "$@"
