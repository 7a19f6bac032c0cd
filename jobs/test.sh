#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, lints, unit and integration tests.
#
# Provisions what the tests need and fails with a clear message when it cannot:
#   - a throwaway redis-server on a free loopback port (installed from Debian's packages
#     when missing), exported as RUSTYBALANCER_TEST_REDIS_URL and stopped on exit;
#   - headless Chromium for the dashboard's browser test (deployment-agent/tests/dashboard.rs),
#     installed from Debian's `chromium` package when missing, exported as
#     RUSTYBALANCER_CHROMIUM (unless that is already set);
#   - the Docker engine is checked and reported (tests that need it fail under CI=true
#     when it is missing; they never pass silently);
#   - the images are built once, in one cargo invocation (jobs/build-images.sh: balancer,
#     deployment-agent, playground); the playground image is what the agent's Docker tests
#     run (RUSTYBALANCER_TEST_IMAGE, unless that is already set), all three are what the
#     end-to-end test runs.
# After the cargo tests, a short fuzz run (jobs/fuzz.sh 3: every cargo-fuzz target for 3 s,
# non-zero on a crash; the first build of the instrumented targets takes about 2½ minutes,
# later ones reuse ~/.cache/rustybalancer/fuzz-target), then the end-to-end test
# (jobs/e2e.sh --no-build, about 1 minute):
# the slim stack started with jobs/run.sh, checked through its published ports; then the
# fault-injection suite (jobs/chaos.sh, about 4½ minutes): agent restarts and crashes, Redis
# down or flushed, Docker cut or hung, each under a trickle of requests that must all succeed.
#
# Usage: jobs/test.sh [-h] [--no-e2e] [-- extra cargo test args]
#   --no-e2e (or RUSTYBALANCER_E2E=0): skip the end-to-end test and the fault-injection
#   suite, for local iteration only: refused under CI=true, where every test runs.
set -euo pipefail

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
}

E2E=${RUSTYBALANCER_E2E:-1}
while (($#)); do
    case $1 in
        -h | --help)
            usage
            exit 0
            ;;
        --no-e2e) E2E=0 ;;
        --)
            shift
            break
            ;;
        *) break ;;
    esac
    shift
done

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
if [[ "$E2E" != "1" ]]; then
    [[ "${CI:-}" != "true" ]] || die "CI must run the end-to-end test: don't pass --no-e2e or RUSTYBALANCER_E2E=0 under CI=true"
    log "the end-to-end test is skipped (--no-e2e or RUSTYBALANCER_E2E=0)"
fi

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

ensure_chromium() {
    if [[ -n "${RUSTYBALANCER_CHROMIUM:-}" ]]; then
        [[ -x "$RUSTYBALANCER_CHROMIUM" ]] \
            || die "RUSTYBALANCER_CHROMIUM=$RUSTYBALANCER_CHROMIUM is not an executable file"
        log "chromium at $RUSTYBALANCER_CHROMIUM (RUSTYBALANCER_CHROMIUM is set)"
        return
    fi
    local bin
    bin="$(command -v chromium || command -v chromium-browser || true)"
    if [[ -z "$bin" ]]; then
        if [[ "$(id -u)" != "0" ]] || ! command -v apt-get >/dev/null; then
            die "chromium is missing and cannot be installed here (needs root and apt-get); install Debian's chromium package or set RUSTYBALANCER_CHROMIUM"
        fi
        log "installing chromium from Debian's packages (the dashboard's browser test)"
        apt-get update -qq >"$WORK/apt-chromium.log" 2>&1 \
            || { cat "$WORK/apt-chromium.log" >&2; die "apt-get update failed"; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >>"$WORK/apt-chromium.log" 2>&1 \
            || { cat "$WORK/apt-chromium.log" >&2; die "apt-get install chromium failed"; }
        bin="$(command -v chromium)" || die "chromium was installed but is not on PATH"
    fi
    export RUSTYBALANCER_CHROMIUM="$bin"
    log "$("$bin" --version 2>/dev/null || echo chromium) at $bin"
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

# The images: all three for the end-to-end test (one cargo invocation), else only the
# playground for the agent's Docker tests (unless RUSTYBALANCER_TEST_IMAGE names another).
build_test_images() {
    if ! docker info >/dev/null 2>&1; then
        return
    fi
    local -a names=(balancer deployment-agent playground)
    if [[ "$E2E" != "1" ]]; then
        if [[ -n "${RUSTYBALANCER_TEST_IMAGE:-}" ]]; then
            log "using the test image $RUSTYBALANCER_TEST_IMAGE (RUSTYBALANCER_TEST_IMAGE is set)"
            return
        fi
        names=(playground)
    fi
    log "building the images (jobs/build-images.sh ${names[*]})"
    jobs/build-images.sh "${names[@]}" >"$WORK/build-images.log" \
        || { tail -n 40 "$WORK/build-images.log" >&2; die "building the images failed"; }
    if [[ -n "${RUSTYBALANCER_TEST_IMAGE:-}" ]]; then
        log "using the test image $RUSTYBALANCER_TEST_IMAGE (RUSTYBALANCER_TEST_IMAGE is set)"
    else
        export RUSTYBALANCER_TEST_IMAGE="rustybalancer/playground:latest"
    fi
}

run_e2e() {
    [[ "$E2E" == "1" ]] || return 0
    if ! docker info >/dev/null 2>&1; then
        # Under CI=true check_docker has already failed.
        log "WARNING: Docker engine not reachable; the end-to-end test is skipped"
        return
    fi
    log "end-to-end test (jobs/e2e.sh --no-build)"
    jobs/e2e.sh --no-build || die "the end-to-end test failed"
    log "fault-injection suite (jobs/chaos.sh, on the images just built)"
    jobs/chaos.sh || die "the fault-injection suite failed"
}

ensure_redis
ensure_chromium
check_docker
build_test_images

log "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run cargo fmt"
log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test --workspace"
cargo test --workspace "$@"
log "fuzzing: every target for 3 s (jobs/fuzz.sh 3)"
jobs/fuzz.sh 3 || die "a fuzz target crashed (see fuzz/artifacts/)"
run_e2e
log "all tests passed in $((SECONDS / 60))m$((SECONDS % 60))s"
