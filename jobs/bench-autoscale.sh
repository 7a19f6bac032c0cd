#!/usr/bin/env bash
# jobs/bench-autoscale.sh - how the deployment-agent's autoscaler answers a load step:
# time to the needed capacity, overshoot, latency once scaled against a fixed pool of the
# needed size, time to shrink back, errors.
#
# Run `jobs/bench-autoscale.sh -h` for usage. The load generator, the sampler and the
# results writer live in jobs/bench/autoscale.py.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: jobs/bench-autoscale.sh [options]

Runs the deployment-agent and the balancer (release binaries) on the host against the
local Docker engine and a throwaway redis-server, with the playground image as the app
on CPU-limited containers, and sends an open-loop load step THROUGH the balancer:

  auto   DEFAULT_CONTAINER=1, MAX_CONTAINERS=8: warm-up (the pool of 1 scored and
         routed, WARMUP seconds at LIGHT_RATE), then the step to RATE req/s of
         GET /cpu?ms=CPU_MS for LOAD_SECONDS, then LIGHT_RATE again until the pool is
         back at DEFAULT_CONTAINER (and the SUNDOWN containers are gone) or
         SHRINK_TIMEOUT seconds have passed
  fixed  the reference: a fixed pool of the needed size (DEFAULT_CONTAINER =
         MAX_CONTAINERS = needed), the same load and seed, the same warm-up and step,
         then FIXED_TAIL seconds at LIGHT_RATE

RATE defaults to LOAD_FACTOR x the capacity of one container (capacity =
CONTAINER_CPUS x 1000 / CPU_MS req/s); needed = the smallest pool whose utilisation is
<= MAX_UTIL: ceil(RATE / (MAX_UTIL x capacity)). Every second the agent (/queue,
/health, /stats) and the balancer (admin /health) are sampled; every request's start,
latency and status are recorded. Reported against the targets: needed capacity serving
<= 10 s after the step, peak pool <= needed + 1, p99 from step + P99_FROM s to the end
of the load <= 1.5 x the fixed pool's, zero errors while shrinking; plus the time to
shrink back and the agent's scale events with their reasons. Targets are reported, not
asserted: the exit status is 0 when the runs completed, whatever the figures.
Takes about 8-10 minutes with the defaults (plus the cargo build).

Everything it creates is its own: containers labelled application=<APP_PREFIX>-<run
id>-<auto|fixed> (removed by label on exit, even on failure), one bridge network, one
redis-server on a free port, the agent and balancer processes. Nothing else is touched.

Options:
  -h, --help          show this help and exit
  --only LIST         auto, fixed or auto,fixed (default both; the report shows what ran)
  --out DIR           output directory (default: <repo>/artefacts)
  --no-install        never call apt-get / pip; fail if a tool is missing

Environment (defaults in brackets):
  CPU_MS=20           ms of CPU burnt per request (GET /cpu?ms=N)
  CONTAINER_CPUS=0.25 CPU limit of every app container
  LOAD_FACTOR=3       step rate as a multiple of one container's capacity
  RATE=               step rate in req/s (overrides LOAD_FACTOR)
  MAX_UTIL=0.585      utilisation that defines the needed pool; the default is the
                      agent's own CPU target with its default settings: the CPU
                      use at which the CPU alone brings a container's score to
                      HIGH_LOAD_THRESHOLD 55, (100 - 55) / 100 / 0.35^(1/4)
  LIGHT_RATE=4        req/s during the warm-up and after the step (0 = none)
  WARMUP=30           seconds of light load before the step (the agent learns the
                      CPU cost of a request from it, as it would from everyday traffic)
  LOAD_SECONDS=90     length of the step
  SHRINK_TIMEOUT=240  seconds allowed after the end of the step for the pool to shrink back
  FIXED_TAIL=15       seconds of light load after the step in the fixed run
  P99_FROM=30         the p99 comparison starts this many seconds after the step
  ARRIVALS=poisson    poisson (seeded) or uniform spacing
  SEED=1              arrival-time seed (the same for both runs)
  DEFAULT_CONTAINER=1 initial / minimum pool of the autoscaled run
  MAX_CONTAINERS=8    its maximum (8 x 0.25 CPU = the 2 CPUs of the reference host)
  SCALE_DOWN_STABILIZATION=30s  (agent default 60s; shorter to keep the run short)
  APP_MAX_CONCURRENCY=  when set: CONTAINER_ENV=MAX_CONCURRENCY=N for the app
  AGENT_EXTRA_ENV=    extra agent settings for both runs, "VAR=VALUE VAR2=VALUE2"
                      (printed in the report as non-default settings)
  AGENT_BIN=PATH      use this deployment-agent binary ...
  BALANCER_BIN=PATH   ... and this balancer binary; without both: cargo build --release
  IMAGE=rustybalancer/playground:latest   app image (built with
                      jobs/build-images.sh playground when absent)
  TARGET_PORT=5000    port of the app in its container
  POOL_TIMEOUT=180    seconds allowed for the initial pool to be scored and routed
  QUIET_MAX_CORES=0.3 before each run, wait until the machine uses at most this many
  QUIET_WAIT=300      CPU cores (3-s window; others' containers, builds ...), at most
                      QUIET_WAIT seconds; then run anyway (the report says so). The CPU
                      used by others during each run is measured and reported.
  APP_PREFIX=benchautoscale  prefix of the APP_IDENTIFIERs and the network name
  KEEP=1              keep the temp dir (logs, raw JSON) after success
  ONLY=...            same as --only

Outputs: <out>/bench-autoscale.md (results vs targets, method, settings, the agent's
events, environment), <out>/bench-autoscale.csv (one row per second and run:
run,t,active,serving,desired,p50_ms,p99_ms,errors,rate, then extra columns) and
<out>/bench-autoscale.png (pool size and p99 over time; needs matplotlib).

Examples:
  jobs/bench-autoscale.sh
  LOAD_SECONDS=60 SHRINK_TIMEOUT=120 jobs/bench-autoscale.sh --out /tmp/as
  AGENT_EXTRA_ENV="TARGET_CONCURRENCY=2" jobs/bench-autoscale.sh --only auto
EOF
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
HELPER=$SCRIPT_DIR/bench/autoscale.py
AGENT_HELPER=$SCRIPT_DIR/bench/agent.py
export PATH="$PATH:/usr/sbin:/sbin"

CPU_MS=${CPU_MS:-20}
CONTAINER_CPUS=${CONTAINER_CPUS:-0.25}
LOAD_FACTOR=${LOAD_FACTOR:-3}
RATE=${RATE:-}
MAX_UTIL=${MAX_UTIL:-0.585}
LIGHT_RATE=${LIGHT_RATE:-4}
WARMUP=${WARMUP:-30}
LOAD_SECONDS=${LOAD_SECONDS:-90}
SHRINK_TIMEOUT=${SHRINK_TIMEOUT:-240}
FIXED_TAIL=${FIXED_TAIL:-15}
P99_FROM=${P99_FROM:-30}
ARRIVALS=${ARRIVALS:-poisson}
SEED=${SEED:-1}
DEFAULT_CONTAINER=${DEFAULT_CONTAINER:-1}
MAX_CONTAINERS=${MAX_CONTAINERS:-8}
SCALE_DOWN_STABILIZATION=${SCALE_DOWN_STABILIZATION:-30s}
APP_MAX_CONCURRENCY=${APP_MAX_CONCURRENCY:-}
AGENT_EXTRA_ENV=${AGENT_EXTRA_ENV:-}
AGENT_BIN=${AGENT_BIN:-}
BALANCER_BIN=${BALANCER_BIN:-}
IMAGE=${IMAGE:-rustybalancer/playground:latest}
TARGET_PORT=${TARGET_PORT:-5000}
POOL_TIMEOUT=${POOL_TIMEOUT:-180}
QUIET_MAX_CORES=${QUIET_MAX_CORES:-0.3}
QUIET_WAIT=${QUIET_WAIT:-300}
APP_PREFIX=${APP_PREFIX:-benchautoscale}
KEEP=${KEEP:-0}
ONLY=${ONLY:-auto,fixed}
OUT_DIR=${OUT_DIR:-$REPO_ROOT/artefacts}
NO_INSTALL=${NO_INSTALL:-0}

log() { printf '[bench-autoscale %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { log "WARNING: $*"; }
die() { log "ERROR: $*"; exit 1; }

while (($#)); do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --only) [[ $# -ge 2 ]] || die "--only needs a value"; ONLY=$2; shift 2 ;;
        --only=*) ONLY=${1#*=}; shift ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a value"; OUT_DIR=$2; shift 2 ;;
        --out=*) OUT_DIR=${1#*=}; shift ;;
        --no-install) NO_INSTALL=1; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# ---------------------------------------------------------------- validation
RUNS=()
IFS=',' read -r -a _only <<<"$ONLY"
for o in "${_only[@]}"; do
    [[ $o == auto || $o == fixed ]] || die "unknown run '$o' in --only (valid: auto, fixed)"
done
for t in auto fixed; do
    for o in "${_only[@]}"; do [[ $o == "$t" ]] && RUNS+=("$t") && break; done
done
((${#RUNS[@]})) || die "--only selected no run"
want() { [[ " ${RUNS[*]} " == *" $1 "* ]]; }

posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }
posnum() { [[ $2 =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v v="$2" 'BEGIN { exit !(v > 0) }' ||
    die "$1 must be a number > 0, got '$2'"; }
nonneg() { [[ $2 =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$1 must be a number >= 0, got '$2'"; }
posint CPU_MS "$CPU_MS"
posnum CONTAINER_CPUS "$CONTAINER_CPUS"
posnum LOAD_FACTOR "$LOAD_FACTOR"
[[ -z $RATE ]] || posnum RATE "$RATE"
posnum MAX_UTIL "$MAX_UTIL"
awk -v v="$MAX_UTIL" 'BEGIN { exit !(v <= 1) }' || die "MAX_UTIL must be at most 1, got '$MAX_UTIL'"
nonneg LIGHT_RATE "$LIGHT_RATE"
posint WARMUP "$WARMUP"
posint LOAD_SECONDS "$LOAD_SECONDS"
posint SHRINK_TIMEOUT "$SHRINK_TIMEOUT"
posint FIXED_TAIL "$FIXED_TAIL"
nonneg P99_FROM "$P99_FROM"
awk -v a="$P99_FROM" -v b="$LOAD_SECONDS" 'BEGIN { exit !(a < b) }' ||
    die "P99_FROM ($P99_FROM) must be less than LOAD_SECONDS ($LOAD_SECONDS)"
[[ $ARRIVALS == poisson || $ARRIVALS == uniform ]] || die "ARRIVALS must be poisson or uniform, got '$ARRIVALS'"
[[ $SEED =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer, got '$SEED'"
posint DEFAULT_CONTAINER "$DEFAULT_CONTAINER"
posint MAX_CONTAINERS "$MAX_CONTAINERS"
((MAX_CONTAINERS >= DEFAULT_CONTAINER)) || die "MAX_CONTAINERS must be at least DEFAULT_CONTAINER"
[[ $SCALE_DOWN_STABILIZATION =~ ^[0-9]+(ms|s|m)?$ ]] ||
    die "SCALE_DOWN_STABILIZATION must look like 30s, 30, 1m or 500ms, got '$SCALE_DOWN_STABILIZATION'"
[[ -z $APP_MAX_CONCURRENCY ]] || posint APP_MAX_CONCURRENCY "$APP_MAX_CONCURRENCY"
posint TARGET_PORT "$TARGET_PORT"
posint POOL_TIMEOUT "$POOL_TIMEOUT"
posnum QUIET_MAX_CORES "$QUIET_MAX_CORES"
[[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "QUIET_WAIT must be a whole number of seconds, got '$QUIET_WAIT'"
[[ $APP_PREFIX =~ ^[a-z0-9][a-z0-9_.-]*$ ]] || die "APP_PREFIX must be lowercase letters, digits, '_', '.', '-'"
read -r -a EXTRA_ENV <<<"$AGENT_EXTRA_ENV"
for kv in "${EXTRA_ENV[@]}"; do
    [[ $kv =~ ^[A-Z_][A-Z0-9_]*=.*$ ]] || die "AGENT_EXTRA_ENV: '$kv' is not VAR=VALUE"
done

# capacity, rate and the needed pool
read -r CAPACITY RATE NEEDED < <(awk -v cpus="$CONTAINER_CPUS" -v ms="$CPU_MS" -v f="$LOAD_FACTOR" \
    -v rate="$RATE" -v u="$MAX_UTIL" 'BEGIN {
        cap = cpus * 1000 / ms
        if (rate == "") rate = f * cap
        x = rate / (u * cap) - 1e-9
        n = int(x); if (n < x) n++
        if (n < 1) n = 1
        printf "%.4g %.4g %d\n", cap, rate, n }')
((NEEDED <= MAX_CONTAINERS)) || die "the load needs $NEEDED containers, more than MAX_CONTAINERS=$MAX_CONTAINERS"
((NEEDED > DEFAULT_CONTAINER)) || warn "the load needs only $NEEDED container(s) = DEFAULT_CONTAINER: nothing to scale"
awk -v r="$RATE" 'BEGIN { exit !(r <= 200) }' || warn "RATE=$RATE req/s: the Python generator is meant for tens of req/s"

# ------------------------------------------------------------------ tooling
install_tools() {
    local missing=() b
    command -v python3 >/dev/null || die "python3 is required (load, sampling, report)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "python3 >= 3.8 is required"
    command -v docker >/dev/null || die "docker CLI not found"
    docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info)"
    for b in curl redis-server redis-cli; do
        command -v "$b" >/dev/null || missing+=("$b")
    done
    if ((${#missing[@]})); then
        ((NO_INSTALL == 0)) || die "missing tools: ${missing[*]} (and --no-install given)"
        [[ $EUID -eq 0 ]] || die "missing tools: ${missing[*]}; run as root or: sudo apt-get install -y curl redis-server"
        local pkgs=()
        for b in "${missing[@]}"; do
            case $b in redis-cli) pkgs+=(redis-tools) ;; *) pkgs+=("$b") ;; esac
        done
        log "installing: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y "${pkgs[@]}" >&2; then
            log "apt-get install failed; running apt-get update and retrying"
            apt-get update >&2 || die "apt-get update failed"
            apt-get install -y "${pkgs[@]}" >&2 || die "apt-get install ${pkgs[*]} failed"
        fi
        for b in "${missing[@]}"; do
            command -v "$b" >/dev/null || die "$b still missing after install"
        done
        # the package may start a system redis; ours runs on its own port, leave it be
    fi
    if ! python3 -c 'import matplotlib' 2>/dev/null; then
        if ((NO_INSTALL)) || ! { log "pip install matplotlib (for the plot)"; python3 -m pip install --quiet matplotlib >&2; }; then
            warn "matplotlib unavailable: no plot"
        fi
    fi
}

# ------------------------------------------------------------------ cleanup
RUN_ID=$(printf '%04x' $((RANDOM)))
NET=$APP_PREFIX-$RUN_ID-net
NET_CREATED=0
APPS=()            # every APP_IDENTIFIER used: their containers go on exit
AGENT_PID=""
BAL_PID=""
REDIS_PID=""
HELPER_PID=""      # a running jobs/bench/autoscale.py
TMP=""
RUN_OK=0

remove_app_containers() {  # remove_app_containers APP
    local ids
    ids=$(docker ps -aq --filter "label=application=$1" 2>/dev/null || true)
    [[ -z $ids ]] && return 0
    # shellcheck disable=SC2086
    docker rm -f $ids >/dev/null 2>&1 || warn "could not remove some containers of $1"
}

stop_pid() {  # stop_pid PID: TERM, up to 10 s, then KILL
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? app
    set +e
    trap - EXIT INT TERM
    [[ -n $HELPER_PID ]] && stop_pid "$HELPER_PID"
    [[ -n $BAL_PID ]] && stop_pid "$BAL_PID"
    [[ -n $AGENT_PID ]] && stop_pid "$AGENT_PID"
    for app in "${APPS[@]}"; do remove_app_containers "$app"; done
    ((NET_CREATED)) && { docker network rm "$NET" >/dev/null 2>&1 || warn "could not remove network $NET"; }
    [[ -n $REDIS_PID ]] && stop_pid "$REDIS_PID"
    if [[ -n $TMP && -d $TMP ]]; then
        if ((RUN_OK == 0)); then
            log "FAILED (exit $rc); logs and raw results kept in $TMP"
            local f
            for f in "$TMP"/*.log; do
                [[ -s $f ]] || continue
                printf -- '--- tail %s\n' "$f" >&2
                tail -n 15 "$f" >&2
            done
        elif ((KEEP)); then
            log "temp dir kept: $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# helper [OUTFILE] SUBCOMMAND ARGS...: runs jobs/bench/autoscale.py in the background and
# waits for it, so that a TERM/INT reaches our trap at once (bash runs traps only after a
# foreground child has finished) and the cleanup stops it. OUTFILE "-" = stdout.
helper() {
    local out=$1 rc=0
    shift
    if [[ $out == - ]]; then
        python3 "$HELPER" "$@" &
    else
        python3 "$HELPER" "$@" >"$out" &
    fi
    HELPER_PID=$!
    wait "$HELPER_PID" || rc=$?
    HELPER_PID=""
    return "$rc"
}

wait_http() {  # wait_http NAME PID URL SECONDS
    local deadline=$((SECONDS + $4))
    until curl -fsS --max-time 1 "$3" >/dev/null 2>&1; do
        kill -0 "$2" 2>/dev/null || die "$1 exited at start-up (log: $TMP/$1.log)"
        ((SECONDS < deadline)) || die "$1: GET $3 did not answer within $4 s"
        sleep 0.1
    done
}

# ------------------------------------------------------------ agent + balancer
AGENT_URL=""
BAL_URL=""
BAL_ADMIN=""
# start_stack APP [VAR=VALUE...]: the agent (clean environment: nothing leaks in from the
# caller's shell) with these settings, then a balancer subscribed to it.
start_stack() {
    local app=$1 http ws bp ba
    shift
    read -r http ws bp ba < <(python3 "$HELPER" free-ports 4)
    APPS+=("$app")
    AGENT_URL=http://127.0.0.1:$http
    local env_args=(PATH=/usr/bin:/bin HOME="${HOME:-/root}"
        RUST_LOG=info,deployment_agent::reconcile=debug
        REDIS_HOST=127.0.0.1 REDIS_PORT="$REDIS_PORT" BIND_ADDRESS=127.0.0.1
        HOST_PORT_HTTP_DEPLOYMENT_AGENT="$http" HOST_PORT_WS_DEPLOYMENT_AGENT="$ws"
        DOCKER_IMAGE="$IMAGE" TARGET_PORT="$TARGET_PORT" DOCKER_NETWORK="$NET"
        APP_IDENTIFIER="$app" "$@")
    [[ -n ${DOCKER_HOST:-} ]] && env_args+=(DOCKER_HOST="$DOCKER_HOST")
    printf '%s\n' "${env_args[@]}" >"$TMP/agent-$app.env"
    env -i "${env_args[@]}" "$AGENT_BIN" >"$TMP/agent-$app.log" 2>&1 &
    AGENT_PID=$!
    wait_http "agent-$app" "$AGENT_PID" "$AGENT_URL/health" 30
    log "agent up: app $app, pid $AGENT_PID, $AGENT_URL ($*)"

    BAL_URL=http://127.0.0.1:$bp
    BAL_ADMIN=http://127.0.0.1:$ba
    local bal_env=(PATH=/usr/bin:/bin HOME="${HOME:-/root}" RUST_LOG=info
        BIND_ADDRESS=127.0.0.1 HOST_PORT_HTTP_BALANCER="$bp" HOST_PORT_ADMIN_BALANCER="$ba"
        DEPLOYMENT_AGENT_URL="ws://127.0.0.1:$ws/ws" REDIS_HOST= APP_IDENTIFIER="$app"
        BALANCER_ID=bench-autoscale)
    printf '%s\n' "${bal_env[@]}" >"$TMP/balancer-$app.env"
    env -i "${bal_env[@]}" "$BALANCER_BIN" >"$TMP/balancer-$app.log" 2>&1 &
    BAL_PID=$!
    wait_http "balancer-$app" "$BAL_PID" "$BAL_ADMIN/health" 30
    log "balancer up: pid $BAL_PID, proxy $BAL_URL, admin $BAL_ADMIN"
}

stop_stack() {  # stops the balancer and the agent (it leaves its containers), removes them
    local app=$1
    stop_pid "$BAL_PID"
    BAL_PID=""
    stop_pid "$AGENT_PID"
    AGENT_PID=""
    remove_app_containers "$app"
}

# -------------------------------------------------------------------- main
install_tools
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

if [[ -z $AGENT_BIN || -z $BALANCER_BIN ]]; then
    command -v cargo >/dev/null || die "cargo not found (or set AGENT_BIN and BALANCER_BIN)"
    log "building: cargo build --release -p deployment-agent -p balancer"
    (cd "$REPO_ROOT" && cargo build --release -p deployment-agent -p balancer) >&2 ||
        die "cargo build --release -p deployment-agent -p balancer failed"
    TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
    AGENT_BIN=${AGENT_BIN:-$TARGET_DIR/release/deployment-agent}
    BALANCER_BIN=${BALANCER_BIN:-$TARGET_DIR/release/balancer}
fi
[[ -x $AGENT_BIN ]] || die "agent binary not executable: $AGENT_BIN"
[[ -x $BALANCER_BIN ]] || die "balancer binary not executable: $BALANCER_BIN"

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    [[ $IMAGE == rustybalancer/playground:latest ]] || die "image $IMAGE not found locally (no registry here)"
    log "image $IMAGE missing: jobs/build-images.sh playground"
    "$SCRIPT_DIR/build-images.sh" playground >&2 || die "jobs/build-images.sh playground failed"
fi

TMP=$(mktemp -d /tmp/bench-autoscale.XXXXXX)
log "run id $RUN_ID, temp dir $TMP"
# private copies: a concurrent rebuild must not swap a binary mid-run
cp "$AGENT_BIN" "$TMP/deployment-agent"
cp "$BALANCER_BIN" "$TMP/balancer"
AGENT_SRC=$(cd "$(dirname "$AGENT_BIN")" && pwd)/$(basename "$AGENT_BIN")
BALANCER_SRC=$(cd "$(dirname "$BALANCER_BIN")" && pwd)/$(basename "$BALANCER_BIN")
AGENT_BIN=$TMP/deployment-agent
BALANCER_BIN=$TMP/balancer

docker network create --driver bridge --label "rustybalancer.bench=$APP_PREFIX-$RUN_ID" "$NET" >/dev/null ||
    die "docker network create $NET failed"
NET_CREATED=1
SUBNET=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$NET")
log "network $NET ($SUBNET)"

read -r REDIS_PORT < <(python3 "$HELPER" free-ports 1)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --protected-mode no --daemonize no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!
deadline=$((SECONDS + 10))
until [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; do
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited (log: $TMP/redis.log)"
    ((SECONDS < deadline)) || die "redis-server on port $REDIS_PORT did not answer within 10 s"
    sleep 0.1
done
log "redis-server up on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"

# settings common to both runs; the report lists every one that is not the agent's default
COMMON=(CONTAINER_CPUS="$CONTAINER_CPUS" SCALE_DOWN_STABILIZATION="$SCALE_DOWN_STABILIZATION")
[[ -n $APP_MAX_CONCURRENCY ]] && COMMON+=(CONTAINER_ENV="MAX_CONCURRENCY=$APP_MAX_CONCURRENCY")
COMMON+=("${EXTRA_ENV[@]}")

EST=$((2 * (WARMUP + LOAD_SECONDS + 25) + 60 + FIXED_TAIL))
log "plan: ${RUNS[*]}; one container serves $CAPACITY req/s (CONTAINER_CPUS=$CONTAINER_CPUS, CPU_MS=$CPU_MS); step to $RATE req/s; needed pool $NEEDED; about $((EST / 60))-$(((EST + SHRINK_TIMEOUT) / 60)) min"

RUN_NOTES=()
busy_ticks() {  # -> "busy total" ticks, all CPUs
    local _c u n s i w q sq st
    read -r _c u n s i w q sq st _ </proc/stat
    echo "$((u + n + s + st)) $((u + n + s + i + w + q + sq + st))"
}
# run_one NAME DEFAULT MAX RUNARGS...
run_one() {
    local name=$1 def=$2 max=$3 app=$APP_PREFIX-$RUN_ID-$1 b0 t0 b1 t1 la0 rustc0 quiet
    shift 3
    log "run '$name': waiting for a quiet machine (<= $QUIET_MAX_CORES CPU cores busy, at most ${QUIET_WAIT}s)"
    helper "$TMP/quiet-$name.json" quiet --max-cores "$QUIET_MAX_CORES" --timeout "$QUIET_WAIT" ||
        die "the quiet check failed"
    quiet=$(cat "$TMP/quiet-$name.json")
    log "run '$name': $quiet"
    [[ $quiet == *'"quiet": true'* ]] || warn "run '$name': the machine is still busy; running anyway (see the report)"
    log "run '$name': DEFAULT_CONTAINER=$def MAX_CONTAINERS=$max"
    start_stack "$app" DEFAULT_CONTAINER="$def" MAX_CONTAINERS="$max" "${COMMON[@]}"
    helper - wait-ready --agent "$AGENT_URL" --balancer-admin "$BAL_ADMIN" --n "$def" \
        --agent-pid "$AGENT_PID" --balancer-pid "$BAL_PID" --timeout "$POOL_TIMEOUT" >/dev/null ||
        die "run '$name': the pool of $def did not come up (logs: $TMP/agent-$app.log, $TMP/balancer-$app.log)"
    log "run '$name': $def container(s) scored and routed by the balancer"
    la0=$(cut -d' ' -f1 /proc/loadavg)
    rustc0=$(pgrep -c -x rustc || true)
    read -r b0 t0 < <(busy_ticks)
    helper "$TMP/$name.out" run --label "$name" --agent "$AGENT_URL" --balancer "$BAL_URL" \
        --balancer-admin "$BAL_ADMIN" --agent-pid "$AGENT_PID" --balancer-pid "$BAL_PID" \
        --redis-pid "$REDIS_PID" --rate "$RATE" --light-rate "$LIGHT_RATE" --cpu-ms "$CPU_MS" --warmup-s "$WARMUP" \
        --load-s "$LOAD_SECONDS" --seed "$SEED" --arrivals "$ARRIVALS" --default "$def" \
        --out "$TMP/$name.json" "$@" ||
        die "run '$name' failed (logs: $TMP/agent-$app.log, $TMP/balancer-$app.log)"
    read -r b1 t1 < <(busy_ticks)
    RUN_NOTES+=("$name run=before the run: $quiet (cores busy over 3 s, everything; waited for <= $QUIET_MAX_CORES); loadavg(1 min) $la0 at the start, $(cut -d' ' -f1 /proc/loadavg) at the end; all CPUs $(( (t1 - t0) > 0 ? 100 * (b1 - b0) / (t1 - t0) : 0 ))% busy on average over the run (everything); rustc processes running at the start / end: $rustc0 / $(pgrep -c -x rustc || true)")
    cp "$TMP/agent-$app.log" "$TMP/$name-agent.log"
    stop_stack "$app"
    log "run '$name' done"
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
OTHER_CONTAINERS=$(docker ps -q | wc -l)
want auto && run_one auto "$DEFAULT_CONTAINER" "$MAX_CONTAINERS" --until-default \
    --shrink-timeout "$SHRINK_TIMEOUT"
want fixed && run_one fixed "$NEEDED" "$NEEDED" --tail "$FIXED_TAIL"
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ----------------------------------------------------------------- report
ver() { "$@" 2>&1 | head -n1 || true; }
extra_lines() {
    local kv
    for kv in "${EXTRA_ENV[@]}"; do
        echo "- \`$kv\` (both runs): set by the caller through AGENT_EXTRA_ENV."
    done
}
META=$TMP/meta.txt
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host=$(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "load=$ARRIVALS arrivals (seed $SEED) of GET /cpu?ms=$CPU_MS through the balancer: $LIGHT_RATE req/s for ${WARMUP} s (warm-up), then $RATE req/s for ${LOAD_SECONDS} s (the step), then $LIGHT_RATE req/s again; app containers limited to $CONTAINER_CPUS CPU"
    echo "needed_formula=one container serves CONTAINER_CPUS × 1000 / CPU_MS = $CONTAINER_CPUS × 1000 / $CPU_MS = $CAPACITY req/s; the step is $RATE req/s ($(awk -v r="$RATE" -v c="$CAPACITY" 'BEGIN { printf "%.2f", r / c }') × that); needed = the smallest pool whose utilisation is ≤ $MAX_UTIL = ⌈rate / ($MAX_UTIL × capacity)⌉ = ⌈$RATE / $(awk -v u="$MAX_UTIL" -v c="$CAPACITY" 'BEGIN { printf "%.4g", u * c }')⌉ = **$NEEDED** (utilisation $(awk -v r="$RATE" -v c="$CAPACITY" -v n="$NEEDED" 'BEGIN { printf "%.2f", r / (c * n) }') at $NEEDED)."
    echo "kernel=$(uname -srm)"
    echo "docker=$(docker version -f '{{.Server.Version}}' 2>/dev/null || echo unknown) (storage driver $(docker info -f '{{.Driver}}' 2>/dev/null || echo '?'), cgroup $(docker info -f '{{.CgroupVersion}}' 2>/dev/null || echo '?'))"
    echo "python=$(python3 -V 2>&1)"
    echo "redis=$(ver redis-server --version)"
    echo "binaries=$AGENT_SRC, $BALANCER_SRC (release; copied before the runs)"
    echo "git=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown) (others may have been editing the sources; the binaries are what was built at the start)"
    echo "rustc=$(ver rustc -V)"
    echo "app image=$IMAGE ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-19), created $(docker image inspect -f '{{.Created}}' "$IMAGE" | cut -c1-19))"
    echo "network=$NET ($SUBNET); agent and balancer run on the host, the balancer reaches the containers' bridge IPs directly"
    echo "machine load=loadavg $LOADAVG_START at the start, $LOADAVG_END at the end; $OTHER_CONTAINERS other container(s) running at the start"
    for n in "${RUN_NOTES[@]}"; do echo "$n"; done
} >"$META"

NOTES=$TMP/notes.md
cat >"$NOTES" <<EOF
## Method

- **System under test**: the release \`deployment-agent\` and \`balancer\` binaries on the host
  (clean environments, \`env -i\`), a throwaway \`redis-server\` on a free loopback port, the
  playground image on a dedicated bridge network. Each run has its own \`APP_IDENTIFIER\`,
  agent and balancer; its containers are removed by label afterwards. The load goes
  **through the balancer**, which reports per-backend requests started / completed, in
  flight and p50 / p99 to the agent every second (\`REPORT_INTERVAL\` default); the agent's
  scaler uses those reports and its container scores.
- **Load generator** (\`jobs/bench/autoscale.py run\`, Python asyncio, one process):
  open loop. Arrival times are drawn up front per phase from a seeded RNG
  (\`$ARRIVALS\`, seed $SEED: both runs get the same schedule); each request runs in its own
  task on its own connection (\`Connection: close\`), so a slow answer never delays the next
  arrival; timeout 30 s (counted as an error, like any non-200 answer or
  transport failure). Latency is measured from the request's *scheduled* start to the last
  byte of the answer, so a late generator cannot hide queueing; the generator's own lateness
  is in the results table.
- **Phases**: the pool of \`DEFAULT_CONTAINER\` is scored by the agent and routed by the
  balancer (admin \`/health\` \`selectable\`), then ${WARMUP} s at $LIGHT_RATE req/s (the balancer
  has reported by then), then the step: $RATE req/s for ${LOAD_SECONDS} s, then $LIGHT_RATE req/s
  again. The autoscaled run continues until \`/health\` shows \`active\` = DEFAULT_CONTAINER and
  \`/stats\` shows no SUNDOWN container left (drained and removed), plus 5 s, or until
  SHRINK_TIMEOUT = ${SHRINK_TIMEOUT} s after the end of the step (the script's default is
  150 s); the fixed run ends ${FIXED_TAIL} s after the
  step (nothing to shrink).
- **Sampling**: once per second (aligned on the step): the agent's \`/queue\` (what the
  balancers route to; *serving* = its non-SUNDOWN items, INIT included since they get
  traffic), \`/health\` (*active* = not SUNDOWN, *desired*, the host's CPU busy fraction),
  \`/stats\` (containers including SUNDOWN ones, scores, in flight) and the balancer's admin
  \`/health\`. At the end, the agent's \`/events\`. Also per second: the CPU cores used by
  the whole host (\`/proc/stat\`), by our app containers and by every other container (their
  cgroups' CPU time), by our agent, balancer, generator and redis (\`/proc/PID/stat\`); the
  rest ("not ours": other containers, dockerd, other work on the machine) is the
  difference. This machine is shared: before each run the script waits (at most
  ${QUIET_WAIT} s) until at most ${QUIET_MAX_CORES} cores are busy.
- **Figures**: *capacity serving* = first sample at or after the step with ≥ $NEEDED serving
  containers (1-s resolution); *peak pool* = the largest \`active\`; *p99 once scaled* = over
  the successful requests **started** in [step + ${P99_FROM} s, end of the step) — about
  $(awk -v r="$RATE" -v l="$LOAD_SECONDS" -v p="$P99_FROM" 'BEGIN { printf "%d", r * (l - p) }') requests, the same
  window for both runs — and the ratio autoscaled / fixed; *time to shrink back* = from the
  end of the step to the first sample with \`active\` = DEFAULT_CONTAINER; *errors while
  shrinking* = failed requests among those started after the end of the step. Per-second
  p50 / p99 in the CSV and the plot are over the requests *completed* in that second
  (\`p99_by_start_ms\` groups by start instead); with ~$(awk -v r="$RATE" 'BEGIN { printf "%d", r }') requests per
  second the per-second p99 is close to that second's slowest request.

## Settings

Agent settings that differ from the defaults (everything else is the agent's default:
thresholds, \`SAMPLE_PERIOD\`, \`SCALE_CHECK_PERIOD\`, \`COOLDOWN_PERIOD\`, panic / stable
windows, \`SCALE_UP_RATE\`, \`SCALE_DOWN_RATE\`, \`HOST_SATURATION\`; \`TARGET_CONCURRENCY\` unset =
the concurrency signal is off unless set below):

- \`CONTAINER_CPUS=$CONTAINER_CPUS\` (both runs): CPU-limited containers, so one container's
  capacity is known ($CAPACITY req/s of /cpu?ms=$CPU_MS) and the step overloads it.
- \`DEFAULT_CONTAINER=$DEFAULT_CONTAINER\`, \`MAX_CONTAINERS=$MAX_CONTAINERS\` (autoscaled run): the
  initial pool of the issue; the cap is $MAX_CONTAINERS × $CONTAINER_CPUS CPU = $(awk -v m="$MAX_CONTAINERS" -v c="$CONTAINER_CPUS" 'BEGIN { print m * c }') CPUs (this host has $(nproc)), high
  enough not to bound a sane decision.
- \`DEFAULT_CONTAINER=MAX_CONTAINERS=$NEEDED\` (fixed run): the reference pool of the needed size;
  the scaler cannot move it.
- \`SCALE_DOWN_STABILIZATION=$SCALE_DOWN_STABILIZATION\` (both runs; default 60 s): keeps the run
  short; the shrink time measured is that much shorter than with the default.
$( [[ -n $APP_MAX_CONCURRENCY ]] && echo "- \`CONTAINER_ENV=MAX_CONCURRENCY=$APP_MAX_CONCURRENCY\` (both runs): the app processes at most $APP_MAX_CONCURRENCY /cpu requests at once and queues the rest (FIFO)." )
$(extra_lines)
- Plumbing, not behaviour: \`APP_IDENTIFIER\`, \`DOCKER_NETWORK\`, \`DOCKER_IMAGE\`,
  \`TARGET_PORT=$TARGET_PORT\`, ports, \`BIND_ADDRESS=127.0.0.1\`, \`REDIS_HOST\` / \`REDIS_PORT\`,
  \`RUST_LOG=info,deployment_agent::reconcile=debug\` (one \`scaling: …\` line per round).

Balancer: every setting at its default (\`weighted\` strategy, \`REQUEST_TIMEOUT=30s\`,
\`REPORT_INTERVAL=1s\`) except the ports, \`BIND_ADDRESS=127.0.0.1\`,
\`DEPLOYMENT_AGENT_URL=ws://127.0.0.1:<agent ws port>/ws\`, \`REDIS_HOST=\` (tasks off),
\`BALANCER_ID=bench-autoscale\`.
EOF

log "writing the report"
LOW=80
for kv in "${EXTRA_ENV[@]}"; do [[ $kv == LOW_LOAD_THRESHOLD=* ]] && LOW=${kv#*=}; done
REPORT_ARGS=(--meta "$META" --needed "$NEEDED" --p99-from "$P99_FROM" --low-threshold "$LOW" --notes "$NOTES"
    --md "$OUT_DIR/bench-autoscale.md" --csv "$OUT_DIR/bench-autoscale.csv" --png "$OUT_DIR/bench-autoscale.png")
want auto && REPORT_ARGS+=(--auto "$TMP/auto.json" --auto-log "$TMP/auto-agent.log")
want fixed && REPORT_ARGS+=(--fixed "$TMP/fixed.json")
helper - report "${REPORT_ARGS[@]}" || die "report writer failed"
log "done: $OUT_DIR/bench-autoscale.md, $OUT_DIR/bench-autoscale.csv, $OUT_DIR/bench-autoscale.png"
RUN_OK=1
