#!/usr/bin/env bash
# jobs/bench-agent.sh - what the deployment-agent costs at idle, how fast it
# brings a pool up, and how long it takes to scale up under CPU load.
#
# Run `jobs/bench-agent.sh -h` for usage. The sampler, the load generator and the
# results writer live in jobs/bench/agent.py.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: jobs/bench-agent.sh [options]

Runs the deployment-agent binary on the host against the local Docker engine and
a throwaway redis-server, with the playground image as the app, and measures:
  idle     pool cold start (0 -> IDLE_CONTAINERS scored containers), then the
           agent's idle cost over WINDOW seconds: CPU (/proc/PID/stat), VmRSS /
           VmHWM, agent_scoring_round_seconds (every second), queue versions
           published, connections to the Docker socket
  scaleup  ROUNDS rounds, each with a fresh agent and APP_IDENTIFIER:
           DEFAULT_CONTAINER=2 MAX_CONTAINERS=4 CONTAINER_CPUS=0.25
           COOLDOWN_PERIOD=5s SCALE_CHECK_PERIOD=10s; once both containers are
           scored, LOAD_CONC client loops send GET /cpu?ms=LOAD_CPU_MS to the
           queue's addresses; times threshold crossing (/stats, polled every
           250 ms), the scale_up event (/events) and the 3rd /queue item
  fast     the same with SCALE_CHECK_PERIOD=FAST_CHECK_PERIOD (FAST_ROUNDS rounds)
Takes about 3-4 minutes with the defaults (plus the cargo build).

Everything it creates is its own: containers labelled application=<APP_PREFIX>-
<run id>-<phase> (removed by label on exit, even on failure), one bridge network,
one redis-server on a free port. Other containers and networks are not touched.

Options:
  -h, --help          show this help and exit
  --only LIST         comma-separated subset of idle,scaleup,fast
  --out DIR           output directory (default: <repo>/artefacts)
  --no-install        never call apt-get; fail if a tool is missing

Environment (defaults in brackets):
  WINDOW=60           idle sampling window, seconds
  ROUNDS=3            scale-up rounds with the default SCALE_CHECK_PERIOD
  FAST_ROUNDS=1       rounds with FAST_CHECK_PERIOD (0 = skip)
  FAST_CHECK_PERIOD=2s
  AGENT_BIN=PATH      use this deployment-agent binary, skip `cargo build`
  KEEP=1              keep the temp dir (agent logs, raw JSON) after success
  IMAGE=rustybalancer/playground:latest   app image (built with
                      jobs/build-images.sh playground when absent)
  TARGET_PORT=5000    port of the app in its container
  IDLE_CONTAINERS=10  pool size for the idle phase (MAX_CONTAINERS = +2)
  LOAD_CONC=8         concurrent client loops during scale-up
  LOAD_CPU_MS=200     ms of CPU burnt per request (GET /cpu?ms=N)
  ROUND_TIMEOUT=120   seconds allowed per scale-up round
  POOL_TIMEOUT=180    seconds allowed for a pool to come up and be scored
  APP_PREFIX=benchagent  prefix of the APP_IDENTIFIERs and the network name
  ONLY=...            same as --only

Outputs: <out>/bench-agent.md (tables, method, environment) and
<out>/bench-agent.csv (section,run,metric,value,unit).

Examples:
  jobs/bench-agent.sh
  WINDOW=20 ROUNDS=1 FAST_ROUNDS=0 jobs/bench-agent.sh
  AGENT_BIN=target/release/deployment-agent jobs/bench-agent.sh --only scaleup
EOF
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
HELPER=$SCRIPT_DIR/bench/agent.py
export PATH="$PATH:/usr/sbin:/sbin"

WINDOW=${WINDOW:-60}
ROUNDS=${ROUNDS:-3}
FAST_ROUNDS=${FAST_ROUNDS:-1}
FAST_CHECK_PERIOD=${FAST_CHECK_PERIOD:-2s}
AGENT_BIN=${AGENT_BIN:-}
KEEP=${KEEP:-0}
IMAGE=${IMAGE:-rustybalancer/playground:latest}
TARGET_PORT=${TARGET_PORT:-5000}
IDLE_CONTAINERS=${IDLE_CONTAINERS:-10}
LOAD_CONC=${LOAD_CONC:-8}
LOAD_CPU_MS=${LOAD_CPU_MS:-200}
ROUND_TIMEOUT=${ROUND_TIMEOUT:-120}
POOL_TIMEOUT=${POOL_TIMEOUT:-180}
APP_PREFIX=${APP_PREFIX:-benchagent}
ONLY=${ONLY:-idle,scaleup,fast}
OUT_DIR=${OUT_DIR:-$REPO_ROOT/artefacts}
NO_INSTALL=${NO_INSTALL:-0}
ALL_PHASES=(idle scaleup fast)

# Fixed by the brief: the production-like scale-up settings.
UP_DEFAULT=2
UP_MAX=4
UP_CPUS=0.25
UP_COOLDOWN=5s
UP_CHECK=10s
SAMPLE_PERIOD=2s
HIGH=55
CRITICAL=20

log() { printf '[bench-agent %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
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
PHASES=()
IFS=',' read -r -a _only <<<"$ONLY"
for o in "${_only[@]}"; do
    [[ " ${ALL_PHASES[*]} " == *" $o "* ]] || die "unknown phase '$o' in --only (valid: ${ALL_PHASES[*]})"
done
for t in "${ALL_PHASES[@]}"; do
    for o in "${_only[@]}"; do [[ $o == "$t" ]] && PHASES+=("$t") && break; done
done
((${#PHASES[@]})) || die "--only selected no phase"
want() { [[ " ${PHASES[*]} " == *" $1 "* ]]; }

posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }
posint WINDOW "$WINDOW"
posint ROUNDS "$ROUNDS"
[[ $FAST_ROUNDS =~ ^[0-9]+$ ]] || die "FAST_ROUNDS must be a non-negative integer, got '$FAST_ROUNDS'"
posint IDLE_CONTAINERS "$IDLE_CONTAINERS"
posint LOAD_CONC "$LOAD_CONC"
posint LOAD_CPU_MS "$LOAD_CPU_MS"
posint ROUND_TIMEOUT "$ROUND_TIMEOUT"
posint POOL_TIMEOUT "$POOL_TIMEOUT"
posint TARGET_PORT "$TARGET_PORT"
[[ $FAST_CHECK_PERIOD =~ ^[0-9]+(ms|s)$ ]] || die "FAST_CHECK_PERIOD must look like 2s or 1500ms, got '$FAST_CHECK_PERIOD'"
[[ $APP_PREFIX =~ ^[a-z0-9][a-z0-9_.-]*$ ]] || die "APP_PREFIX must be lowercase letters, digits, '_', '.', '-'"
if ((FAST_ROUNDS == 0)) && want fast; then
    _p=()
    for t in "${PHASES[@]}"; do [[ $t == fast ]] || _p+=("$t"); done
    PHASES=("${_p[@]}")
    ((${#PHASES[@]})) || die "FAST_ROUNDS=0 leaves no phase to run"
fi

seconds_of() {  # 2s / 1500ms -> seconds (decimal)
    case $1 in
        *ms) awk -v v="${1%ms}" 'BEGIN { print v / 1000 }' ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}

# ------------------------------------------------------------------ tooling
install_tools() {
    local missing=() b
    command -v python3 >/dev/null || die "python3 is required (sampling, load, report)"
    command -v docker >/dev/null || die "docker CLI not found"
    docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info)"
    for b in curl redis-server redis-cli ss; do
        command -v "$b" >/dev/null || missing+=("$b")
    done
    if ((${#missing[@]})); then
        ((NO_INSTALL == 0)) || die "missing tools: ${missing[*]} (and --no-install given)"
        [[ $EUID -eq 0 ]] || die "missing tools: ${missing[*]}; run as root or: sudo apt-get install -y curl redis-server iproute2"
        local pkgs=()
        for b in "${missing[@]}"; do
            case $b in ss) pkgs+=(iproute2) ;; redis-cli) pkgs+=(redis-tools) ;; *) pkgs+=("$b") ;; esac
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
    fi
}

# ------------------------------------------------------------------ cleanup
RUN_ID=$(printf '%04x' $((RANDOM)))
NET=$APP_PREFIX-$RUN_ID-net
NET_CREATED=0
APPS=()            # every APP_IDENTIFIER we used: their containers go on exit
AGENT_PID=""
REDIS_PID=""
HELPER_PID=""      # a running jobs/bench/agent.py (sampler / load generator)
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

# helper OUTFILE SUBCOMMAND ARGS...: runs jobs/bench/agent.py in the background
# and waits for it, so that a TERM/INT reaches our trap at once (bash runs traps
# only after a foreground child has finished) and the cleanup stops it.
helper() {
    local out=$1 rc=0
    shift
    python3 "$HELPER" "$@" >"$out" &
    HELPER_PID=$!
    wait "$HELPER_PID" || rc=$?
    HELPER_PID=""
    return "$rc"
}

# ------------------------------------------------------------------- agent
AGENT_URL=""
T_LAUNCH_MS=0
AGENT_LOG=info
# start_agent APP [VAR=VALUE...]: runs the agent with a clean environment
# (nothing leaks in from the caller's shell) and waits for GET /health.
start_agent() {
    local app=$1 http ws deadline
    shift
    read -r http ws < <(python3 "$HELPER" free-ports 2)
    APPS+=("$app")
    AGENT_URL=http://127.0.0.1:$http
    local env_args=(PATH=/usr/bin:/bin HOME="${HOME:-/root}" RUST_LOG="$AGENT_LOG"
        REDIS_HOST=127.0.0.1 REDIS_PORT="$REDIS_PORT" BIND_ADDRESS=127.0.0.1
        HOST_PORT_HTTP_DEPLOYMENT_AGENT="$http" HOST_PORT_WS_DEPLOYMENT_AGENT="$ws"
        DOCKER_IMAGE="$IMAGE" TARGET_PORT="$TARGET_PORT" DOCKER_NETWORK="$NET"
        APP_IDENTIFIER="$app" "$@")
    [[ -n ${DOCKER_HOST:-} ]] && env_args+=(DOCKER_HOST="$DOCKER_HOST")
    printf '%s\n' "${env_args[@]}" >"$TMP/agent-$app.env"
    T_LAUNCH_MS=$(date +%s%3N)
    env -i "${env_args[@]}" "$AGENT_BIN" >"$TMP/agent-$app.log" 2>&1 &
    AGENT_PID=$!
    deadline=$((SECONDS + 30))
    until curl -fsS --max-time 1 "$AGENT_URL/health" >/dev/null 2>&1; do
        kill -0 "$AGENT_PID" 2>/dev/null || die "agent $app exited at start-up (log: $TMP/agent-$app.log)"
        ((SECONDS < deadline)) || die "agent $app: GET /health did not answer within 30 s"
        sleep 0.1
    done
    log "agent up: app $app, pid $AGENT_PID, $AGENT_URL ($*)"
}

stop_agent() {  # stops the agent (it leaves its containers) and removes its containers
    local app=$1
    stop_pid "$AGENT_PID"
    AGENT_PID=""
    remove_app_containers "$app"
}

# -------------------------------------------------------------------- main
install_tools
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

if [[ -z $AGENT_BIN ]]; then
    log "building the agent: cargo build --release -p deployment-agent"
    command -v cargo >/dev/null || die "cargo not found (or set AGENT_BIN=/path/to/deployment-agent)"
    (cd "$REPO_ROOT" && cargo build --release -p deployment-agent) >&2 || die "cargo build --release -p deployment-agent failed"
    AGENT_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/deployment-agent
fi
[[ -x $AGENT_BIN ]] || die "agent binary not executable: $AGENT_BIN"
AGENT_BIN=$(cd "$(dirname "$AGENT_BIN")" && pwd)/$(basename "$AGENT_BIN")

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    [[ $IMAGE == rustybalancer/playground:latest ]] || die "image $IMAGE not found locally (no registry here)"
    log "image $IMAGE missing: jobs/build-images.sh playground"
    "$SCRIPT_DIR/build-images.sh" playground >&2 || die "jobs/build-images.sh playground failed"
fi

TMP=$(mktemp -d /tmp/bench-agent.XXXXXX)
log "run id $RUN_ID, temp dir $TMP"

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

proc_stat_cpu() {  # -> "busy total" ticks, all CPUs
    local _c u n s i w q sq st
    read -r _c u n s i w q sq st _ </proc/stat
    echo "$((u + n + s + st)) $((u + n + s + i + w + q + sq + st))"
}
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
OTHER_CONTAINERS=$(docker ps -q | wc -l)
MACHINE_BUSY_IDLE=""

n_up=0
((ROUNDS > 0)) && want scaleup && n_up=$ROUNDS
n_fast=0
want fast && n_fast=$FAST_ROUNDS
EST=0
want idle && EST=$((WINDOW + 40))
EST=$((EST + (n_up + n_fast) * 45))
log "plan: ${PHASES[*]} — idle window ${WINDOW}s, $n_up scale-up round(s) at SCALE_CHECK_PERIOD=$UP_CHECK, $n_fast at $FAST_CHECK_PERIOD; about ${EST}s"

# ---- 1. cold start + idle cost
if want idle; then
    app=$APP_PREFIX-$RUN_ID-idle
    log "idle: starting an agent with DEFAULT_CONTAINER=$IDLE_CONTAINERS (cold start of the pool)"
    start_agent "$app" DEFAULT_CONTAINER="$IDLE_CONTAINERS" MAX_CONTAINERS=$((IDLE_CONTAINERS + 2))
    helper "$TMP/cold.json" wait-pool --url "$AGENT_URL" --pid "$AGENT_PID" --n "$IDLE_CONTAINERS" \
        --t0-ms "$T_LAUNCH_MS" --timeout "$POOL_TIMEOUT" ||
        die "the pool did not come up (log: $TMP/agent-$app.log)"
    log "cold start: $(cat "$TMP/cold.json")"
    log "idle: sampling for ${WINDOW}s"
    read -r mb0 ma0 < <(proc_stat_cpu)
    helper "$TMP/idle.json" idle --url "$AGENT_URL" --pid "$AGENT_PID" --window "$WINDOW" \
        --sample-period "$(seconds_of "$SAMPLE_PERIOD")" ||
        die "idle sampling failed (log: $TMP/agent-$app.log)"
    read -r mb1 ma1 < <(proc_stat_cpu)
    MACHINE_BUSY_IDLE=$(( (ma1 - ma0) > 0 ? 100 * (mb1 - mb0) / (ma1 - ma0) : 0 ))
    log "idle: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("CPU %.2f %% of a core, %.1f ms/round, scoring median %s us, RSS %.1f MiB, %s queue versions/min, docker conns %s" % (d["cpu_pct_core"], d["cpu_ms_per_round"], d["scoring_us_median"], d["rss_kib_median"]/1024, d["queue_versions_per_min"], (d["docker_conns_end"] or {}).get("docker_unix_conns")))' "$TMP/idle.json")"
    stop_agent "$app"
fi

# ---- 2./3. scale-up rounds
# scaleup_round APP CHECK OUTFILE OFFSET
scaleup_round() {
    local app=$1 check=$2 out=$3 offset=$4
    # debug for the control loop: one "scaling: ..." line per scale check
    AGENT_LOG=info,deployment_agent::reconcile=debug
    start_agent "$app" DEFAULT_CONTAINER=$UP_DEFAULT MAX_CONTAINERS=$UP_MAX CONTAINER_CPUS=$UP_CPUS \
        SAMPLE_PERIOD=$SAMPLE_PERIOD SCALE_CHECK_PERIOD="$check" COOLDOWN_PERIOD=$UP_COOLDOWN \
        HIGH_LOAD_THRESHOLD=$HIGH CRITICAL_LOAD_THRESHOLD=$CRITICAL
    if ! helper "$out" scaleup --url "$AGENT_URL" --pid "$AGENT_PID" --initial $UP_DEFAULT \
        --conc "$LOAD_CONC" --cpu-ms "$LOAD_CPU_MS" --high $HIGH --critical $CRITICAL \
        --timeout "$ROUND_TIMEOUT" --check-period "$(seconds_of "$check")" \
        --offset "$offset" --t-launch-ms "$T_LAUNCH_MS"; then
        warn "scale-up round $app failed (log: $TMP/agent-$app.log)"
        rm -f "$out"
    elif [[ $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok"])' "$out") != True ]]; then
        warn "round $app incomplete: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d.pop("trace"); print(d)' "$out")"
    else
        log "  -> $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("load->cross %.2fs, cross->decision %.2fs, decision->queue %.2fs, load->queue %.2fs (started->ready %ss)" % (d["load_to_cross_s"], d["cross_to_decision_s"], d["decision_to_queue_s"], d["load_to_queue_s"], d["started_to_ready_s"]))' "$out")"
    fi
    stop_agent "$app"
    AGENT_LOG=info
    [[ -f $out ]] && { python3 "$HELPER" checks --log "$TMP/agent-$app.log" --json "$out" ||
        warn "could not read the scale checks from $TMP/agent-$app.log"; }
    return 0
}

# The agent's scale-check cycle starts with the agent, and every round restarts
# the agent, so without a shift every round would meet the cycle at the same
# phase. Round r of R waits CHECK * (r - 0.5) / R after the pool is scored.
phase_offset() {  # phase_offset CHECK R ROUNDS -> seconds
    awk -v c="$(seconds_of "$1")" -v r="$2" -v n="$3" 'BEGIN { printf "%.2f", c * (r - 0.5) / n }'
}

UP_FILES=()
FAST_FILES=()
if want scaleup; then
    for ((r = 1; r <= ROUNDS; r++)); do
        off=$(phase_offset "$UP_CHECK" "$r" "$ROUNDS")
        log "scale-up round $r/$ROUNDS (SCALE_CHECK_PERIOD=$UP_CHECK, load starts ${off}s after the pool is scored)"
        scaleup_round "$APP_PREFIX-$RUN_ID-up$r" "$UP_CHECK" "$TMP/up$r.json" "$off"
        UP_FILES+=("$TMP/up$r.json")
    done
fi
if want fast; then
    for ((r = 1; r <= FAST_ROUNDS; r++)); do
        off=$(phase_offset "$FAST_CHECK_PERIOD" "$r" "$FAST_ROUNDS")
        log "scale-up round $r/$FAST_ROUNDS with SCALE_CHECK_PERIOD=$FAST_CHECK_PERIOD (load starts ${off}s after the pool is scored)"
        scaleup_round "$APP_PREFIX-$RUN_ID-fast$r" "$FAST_CHECK_PERIOD" "$TMP/fast$r.json" "$off"
        FAST_FILES+=("$TMP/fast$r.json")
    done
fi
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ----------------------------------------------------------------- report
ver() { "$@" 2>&1 | head -n1 || true; }
META=$TMP/meta.txt
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host=$(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel=$(uname -srm)"
    echo "docker=$(docker version -f '{{.Server.Version}}' 2>/dev/null || echo unknown) (storage driver $(docker info -f '{{.Driver}}' 2>/dev/null || echo '?'), cgroup $(docker info -f '{{.CgroupVersion}}' 2>/dev/null || echo '?'))"
    echo "redis=$(ver redis-server --version)"
    echo "agent binary=$AGENT_BIN"
    echo "agent git=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "rustc=$(ver rustc -V)"
    echo "app image=$IMAGE ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-19))"
    echo "network=$NET ($SUBNET), the agent runs on the host with DOCKER_NETWORK=$NET; the host reaches the containers' bridge IPs directly"
    echo "IDLE_CONTAINERS=$IDLE_CONTAINERS"
    echo "IDLE_MAX=$((IDLE_CONTAINERS + 2))"
    echo "SAMPLE_PERIOD=$SAMPLE_PERIOD"
    echo "WINDOW=${WINDOW}s"
    echo "CHECK_PERIOD=$UP_CHECK"
    echo "FAST_CHECK_PERIOD=$FAST_CHECK_PERIOD"
    echo "scale-up settings=DEFAULT_CONTAINER=$UP_DEFAULT MAX_CONTAINERS=$UP_MAX CONTAINER_CPUS=$UP_CPUS SAMPLE_PERIOD=$SAMPLE_PERIOD COOLDOWN_PERIOD=$UP_COOLDOWN HIGH_LOAD_THRESHOLD=$HIGH CRITICAL_LOAD_THRESHOLD=$CRITICAL, everything else default"
    echo "load=$LOAD_CONC client loops (Python threads), each: GET /cpu?ms=$LOAD_CPU_MS on a new connection to the next non-SUNDOWN /queue address (round robin; the list is re-read every 250 ms, so new containers get load once published)"
    echo "rounds=$n_up at SCALE_CHECK_PERIOD=$UP_CHECK, $n_fast at $FAST_CHECK_PERIOD; each round uses a fresh agent and APP_IDENTIFIER"
    echo "MACHINE_BUSY_PCT=${MACHINE_BUSY_IDLE:-}"
    echo "machine load=loadavg $LOADAVG_START at start, $LOADAVG_END at end; ${MACHINE_BUSY_IDLE:-n/a}% of all CPUs busy during the idle window (everything, agent and containers included); $OTHER_CONTAINERS other container(s) running at start"
} >"$META"

NOTES=$TMP/notes.md
cat >"$NOTES" <<EOF
## Method

- **Agent**: the release binary runs on the host (not in a container), with a clean
  environment (\`env -i\`, only the variables listed per phase), \`RUST_LOG=info\` (plus
  \`deployment_agent::reconcile=debug\` in the scale-up rounds, for one log line per scale
  check), Redis = a throwaway \`redis-server\` on a free loopback port (no persistence), app
  containers on a dedicated bridge network (\`DOCKER_NETWORK\`). Every phase and round uses
  its own \`APP_IDENTIFIER\` and a fresh agent, so no state carries over; the containers are
  removed by label after each phase. No balancer is connected, so scores come from Docker
  stats and the agent's own probes only.
- **Cold start**: from launching the agent process to the first \`/stats\` poll (every
  250 ms) showing all containers with an overall score; "created" and "ready" are the
  agent's own \`created_ms\` / \`ready_ms\`.
- **Idle CPU**: utime+stime of the agent process (all threads) from \`/proc/PID/stat\` over
  the window, divided by the wall time (cross-checked with the per-thread \`schedstat\` run
  time, which has ns resolution where utime+stime has 10 ms ticks); "per round" multiplies
  by \`SAMPLE_PERIOD\`, so it is *all* the agent's work per period (Docker list, one stats
  frame per container per second decoded, probes, scoring, Redis writes, publishing, and
  our own 1 Hz \`GET /metrics\` + \`GET /queue\`), not only the scoring.
  \`agent_scoring_round_seconds\` is the agent's own measurement of the CPU part of scoring
  (probes excluded), read every second; median and max are over those reads (each round is
  seen about twice).
- **Docker connections**: unix-socket connections from the agent to \`docker.sock\`, counted
  with \`ss -xn\` (server-side rows whose peer inode is one of the agent's sockets). By
  design there is one long-lived stats stream per container; the count would also include
  connections pooled for list/inspect calls if any were open at that instant.
- **Queue versions**: changes of \`agent_queue_version\` in the 1 Hz \`/metrics\` reads (at
  most one publish per round); each change is diffed against the previous \`/queue\`.
- **Scale-up**: a fresh agent per round. When both containers are scored, the script waits
  an *offset* (round r of R: \`SCALE_CHECK_PERIOD × (r − ½) / R\`), because the agent's check
  cycle starts with the agent and every round restarts it: without the offset every round
  would meet the cycle at the same phase. Then (t0) $LOAD_CONC client loops start.
  \`/stats\` and \`/queue\` are polled every 250 ms. *Threshold crossed* = the round that
  first produced an average overall score of the scored containers below $HIGH or one below
  $CRITICAL (what \`scaler::decide\` tests), timed by the agent's \`scored_ms\` for that round
  (the poll time is in the CSV as \`load_to_cross_poll_s\`); *decision* = \`at_ms\` of the
  first \`scale_up\` event after t0 (from \`/events\`); *started* / *ready* = the
  \`container_started\` / \`container_ready\` events that follow; *in queue* = first \`/queue\`
  poll with a 3rd item (up to 250 ms late). Same host clock throughout.
- **Scale checks**: the times of the agent's \`scaling: …\` debug lines (one per check, 1-s
  timestamps) give the intervals between the checks actually performed.

## What drives the numbers

- **The control loop is periodic** (\`SAMPLE_PERIOD\` = 2 s): scores, decisions, container
  creation, readiness and publication happen only on a tick, so each hand-off costs up to a
  tick.
- **Load → threshold crossed** is the scoring's reaction time. With \`CONTAINER_CPUS=0.25\` the
  CPU sub-score of a saturated container drops to ~0 on the next stats sample (Docker sends
  one per second), but it weighs only 0.35 of the overall score; memory (0.25) and network
  (0.15) stay near 100. The overall score falls below 55 only once the availability
  sub-score (0.25; probe latency under CPU throttling, EMA-smoothed with \`EMA_ALPHA\` = 0.2,
  one probe per round) has dropped as well: 2–4 rounds.
- **Threshold crossed → decision** waits for the next scale check, which runs every
  \`SCALE_CHECK_PERIOD\`: 0 up to one check period depending on where in the cycle the load
  arrives. With \`SCALE_CHECK_PERIOD\` = \`SAMPLE_PERIOD\` the check should run on every tick
  and this term should vanish (decision in the same round as the crossing).
  \`COOLDOWN_PERIOD\` does not matter for a first scale-up.
- **Checks slip by one tick.** A check is due when \`last_check.elapsed() >=
  SCALE_CHECK_PERIOD\`, where \`last_check\` is \`Instant::now()\` taken in the middle of the
  previous checking tick (after the Docker list, readiness checks and probes, whose duration
  varies by milliseconds). When the current tick reaches \`scale()\` a hair sooner than the
  previous one did, \`elapsed\` is just under the period and the check waits one more tick.
  The intervals between checks measured above show it; it adds up to one \`SAMPLE_PERIOD\`
  to the decision latency and, when both periods are equal, skips about every other check.
- **Decision → in queue**: the decision only raises the desired count; \`lifecycle::plan\`
  (which runs in \`reconcile\`, before \`scale\` in a tick) creates the container on the
  *next* tick (~2 s), \`docker create\` + \`start\` + \`inspect\` takes a few hundred ms
  (sequential, inside the tick), then readiness is checked: in the same tick if the app is
  already listening (the playground binds within milliseconds), otherwise on the next tick.
- So the bound is roughly **scoring reaction (2–4 ticks) + 0..SCALE_CHECK_PERIOD (+1 tick
  of slip) + 1–2 ticks + container start**: with the defaults the check period is the
  largest and most variable term.
- **INIT is not guaranteed.** A new container is published as INIT only if it is not
  scored in the tick that finds it ready. \`score()\` runs right after \`readiness()\` in the
  same tick, probes every ready container and scores it as soon as its stats stream (opened
  at creation) has delivered a usable CPU sample. So a container that becomes ready in the
  tick after its creation, more than a second after its stream opened, is often scored at
  once and enters the queue directly as LU (score ≈ 100, full weight) without the INIT
  ramp-in. Only a container ready within its creation tick is reliably INIT. See the
  "category when first seen" column.
- **Idle cost** scales with the number of containers: one stats frame per container per
  second to decode, one \`GET /health\` probe per container per round, one Redis \`MULTI\`
  (DEL + HSET + SADD) per container per round, and a queue publish whenever any published
  score moves by 0.1 or more, which at idle happens in most rounds (probe-latency noise in
  the availability score).
EOF

python3 "$HELPER" report --meta "$META" --idle "$TMP/idle.json" --cold "$TMP/cold.json" \
    --rounds "${UP_FILES[@]}" --fast "${FAST_FILES[@]}" --notes "$NOTES" \
    --md "$OUT_DIR/bench-agent.md" --csv "$OUT_DIR/bench-agent.csv" || die "report writer failed"
log "done: $OUT_DIR/bench-agent.md, $OUT_DIR/bench-agent.csv"
RUN_OK=1
