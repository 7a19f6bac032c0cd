#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, lints, unit and integration tests.
#
# Provisions what the tests need and fails with a clear message when it cannot:
#   - a throwaway redis-server on a free loopback port (installed from Debian's packages
#     when missing), exported as RUSTYBALANCER_TEST_REDIS_URL and stopped on exit;
#   - the Docker engine is checked and reported (tests that need it fail under CI=true
#     when it is missing; they never pass silently);
#   - the playground image the agent's Docker tests run is built (jobs/build-images.sh
#     playground) and exported as RUSTYBALANCER_TEST_IMAGE, unless that is already set.
#
# Usage: jobs/test.sh [-h] [-- extra cargo test args]
set -euo pipefail

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi
if [[ "${1:-}" == "--" ]]; then
    shift
fi

cd "$(dirname "$0")/.."
log() { echo "[test] $*" >&2; }
die() {
    echo "[test] ERROR: $*" >&2
    exit 1
}

WORK="$(mktemp -d)"
REDIS_PID=""
cleanup() {
    if [[ -n "$REDIS_PID" ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) first"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

ensure_redis() {
    if ! command -v redis-server >/dev/null; then
        if [[ "$(id -u)" != "0" ]] || ! command -v apt-get >/dev/null; then
            die "redis-server is missing and cannot be installed here (needs root and apt-get); install Debian's redis-server package"
        fi
        log "installing redis-server from Debian's packages"
        apt-get update -qq >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "apt-get update failed"; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >>"$WORK/apt.log" 2>&1 \
            || { cat "$WORK/apt.log" >&2; die "apt-get install redis-server failed"; }
        # The package may start a system instance; the tests use their own.
        if command -v service >/dev/null; then service redis-server stop >/dev/null 2>&1 || true; fi
    fi
    local port
    port="$(free_port)"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --dir "$WORK" --logfile "$WORK/redis.log" &
    REDIS_PID=$!
    for _ in $(seq 1 50); do
        if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
            export RUSTYBALANCER_TEST_REDIS_URL="redis://127.0.0.1:$port"
            log "redis-server $(redis-server --version | awk '{print $3}') on $RUSTYBALANCER_TEST_REDIS_URL"
            return
        fi
        sleep 0.1
    done
    cat "$WORK/redis.log" >&2 || true
    die "redis-server did not answer PING on port $port"
}

check_docker() {
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        log "docker engine $(docker version --format '{{.Server.Version}}' 2>/dev/null) reachable"
    elif [[ "${CI:-}" == "true" ]]; then
        die "the Docker engine is not reachable (docker info failed); CI needs it"
    else
        log "WARNING: Docker engine not reachable; tests that need it will fail"
    fi
}

build_test_image() {
    if [[ -n "${RUSTYBALANCER_TEST_IMAGE:-}" ]]; then
        log "using the test image $RUSTYBALANCER_TEST_IMAGE (RUSTYBALANCER_TEST_IMAGE is set)"
        return
    fi
    if ! docker info >/dev/null 2>&1; then
        return
    fi
    log "building the test image (jobs/build-images.sh playground)"
    jobs/build-images.sh playground || die "building the playground image failed"
    export RUSTYBALANCER_TEST_IMAGE="rustybalancer/playground:latest"
}

ensure_redis
check_docker
build_test_image

log "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run cargo fmt"
log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test --workspace"
cargo test --workspace "$@"
log "all tests passed"
