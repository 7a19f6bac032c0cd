#!/usr/bin/env bash
# jobs/bench-tasks.sh - task submissions (`Prefer: respond-async`) against a
# fast origin: submissions/s, completions/s, submit->finish latency and Redis
# memory per task, next to the plain proxied GET/s of the same run.
#
# Run `jobs/bench-tasks.sh -h` for usage. Helpers live in jobs/bench/tasks*
# (report + plot: tasks.py; origin config; burst wrk script).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: jobs/bench-tasks.sh [-h] [--out DIR] [--no-install] [--keep-tmp]

Task submissions (`Prefer: respond-async`) against a fast origin, on 127.0.0.1:
one redis-server (no persistence), one nginx worker answering `return 200 "ok"`,
the release balancer in static mode (CPU BAL_CPU; everything else on LOAD_CPU).
Each of ROUNDS rounds runs, on a balancer with a fresh APP_IDENTIFIER:
  A  plain proxied GET/s       wrk -t1 -cCONNS -dDURATION /
  B  task submissions/s        the same with `Prefer: respond-async` (workers run
                               the tasks meanwhile); 202s answered vs tasks stored
  D  submit->finish latency    LAT_TASKS tasks one at a time on an idle system
  C  completions/s             a burst of BURST tasks until all are terminal, and
                               Redis memory per 10k stored tasks
The report has medians over rounds and per-round ratios to plain GET/s against
the targets: >= 5,000 submissions/s (>= 0.4x plain), >= 2,000 completions/s
(>= 0.15x plain). Method details are in the report.

Options:
  -h, --help      show this help and exit
  --out DIR       output directory (default: <repo>/artefacts)
  --no-install    never call apt-get / pip; fail if a tool is missing
  --keep-tmp      keep the temp dir (configs, logs, raw outputs)

Environment (defaults in brackets):
  DURATION=10s    phases A and B (wrk syntax)   WARMUP=2s   plain run before A
  CONNS=64        wrk connections (A, B, C)     ROUNDS=3
  BURST=20000     tasks in the phase C burst    TASK_WORKERS=32
  LAT_TASKS=300   phase D tasks (twice: plain async, then `Prefer: wait`) ...
  LAT_GAP_MS=20   ... and the pause after each
  DRAIN_TIMEOUT=180  seconds the burst may take    START_TIMEOUT=30  per server
  QUIET_PCT=20, QUIET_WAIT=45  before each round wait up to QUIET_WAIT s until
                  other processes use <= QUIET_PCT % of all CPUs
  BAL_CPU=0, LOAD_CPU=1        CPU pinning (taskset)
  REDIS_ARGS=     extra redis-server arguments, e.g. "--hash-max-listpack-value 1024"
  BALANCER_BIN=PATH  use this binary; else `cargo build --release -p balancer`

Outputs: <out>/bench-tasks.md, bench-tasks.csv (one row per round per metric),
bench-tasks.png (needs matplotlib).
Example: DURATION=3s ROUNDS=1 BURST=3000 LAT_TASKS=50 jobs/bench-tasks.sh --out /tmp/bt
EOF
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
BENCH_DIR=$SCRIPT_DIR/bench
HELPER=$BENCH_DIR/tasks.py
export PATH="$PATH:/usr/sbin:/sbin"

DURATION=${DURATION:-10s} WARMUP=${WARMUP:-2s} CONNS=${CONNS:-64} ROUNDS=${ROUNDS:-3}
BURST=${BURST:-20000} LAT_TASKS=${LAT_TASKS:-300} LAT_GAP_MS=${LAT_GAP_MS:-20}
TASK_WORKERS=${TASK_WORKERS:-32} DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-180}
START_TIMEOUT=${START_TIMEOUT:-30} QUIET_PCT=${QUIET_PCT:-20} QUIET_WAIT=${QUIET_WAIT:-45} BAL_CPU=${BAL_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
REDIS_ARGS=${REDIS_ARGS:-} BALANCER_BIN=${BALANCER_BIN:-} OUT_DIR=${OUT_DIR:-$REPO_ROOT/artefacts}
NO_INSTALL=${NO_INSTALL:-0} KEEP_TMP=${KEEP_TMP:-0}

log() { printf '[bench-tasks %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

while (($#)); do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a value"; OUT_DIR=$2; shift 2 ;;
        --out=*) OUT_DIR=${1#*=}; shift ;;
        --no-install) NO_INSTALL=1; shift ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

secs() { case $1 in *s) echo "${1%s}" ;; *m) echo $((${1%m} * 60)) ;; *h) echo $((${1%h} * 3600)) ;; *) echo "$1" ;; esac; }
[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || die "DURATION must look like 10s or 1m, got '$DURATION'"
[[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must look like 2s or 0, got '$WARMUP'"
for v in CONNS ROUNDS BURST LAT_TASKS TASK_WORKERS DRAIN_TIMEOUT START_TIMEOUT QUIET_WAIT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ $LAT_GAP_MS =~ ^[0-9]+$ ]] || die "LAT_GAP_MS must be a whole number of ms"
[[ $QUIET_PCT =~ ^[0-9]+$ ]] || die "QUIET_PCT must be a whole percentage"

# ------------------------------------------------------------------ tooling
missing=()
for b in wrk nginx redis-server redis-cli curl taskset python3; do command -v "$b" >/dev/null || missing+=("$b"); done
if ((${#missing[@]})); then
    ((NO_INSTALL == 0 && EUID == 0)) || die "missing: ${missing[*]} (as root: apt-get install wrk nginx redis-server curl util-linux)"
    pkgs=$(printf '%s\n' "${missing[@]}" | sed -e 's/^taskset$/util-linux/' -e 's/^redis-cli$/redis-tools/' | sort -u)
    log "installing: $(echo $pkgs)"
    # shellcheck disable=SC2086
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $pkgs; } >&2 || die "apt-get install failed"
    for s in nginx redis-server; do  # the packages may start services; we run our own
        service "$s" status >/dev/null 2>&1 && { log "stopping system service $s"; service "$s" stop >&2 || true; }
    done
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    if ((NO_INSTALL)) || ! { log "pip install matplotlib (for the plot)"; python3 -m pip install --quiet matplotlib >&2; }; then
        log "matplotlib unavailable: no plot"
    fi
fi
for c in "$BAL_CPU" "$LOAD_CPU"; do
    taskset -c "$c" true 2>/dev/null || die "cannot pin to CPU $c; this machine has $(nproc --all) CPU(s)"
done
[[ $BAL_CPU != "$LOAD_CPU" ]] || log "WARNING: BAL_CPU == LOAD_CPU: balancer and load share a core"

if [[ -z $BALANCER_BIN ]]; then
    command -v cargo >/dev/null || die "cargo not found (or set BALANCER_BIN=/path/to/balancer)"
    log "building: cargo build --release -p balancer"
    (cd "$REPO_ROOT" && cargo build --release -p balancer) >&2 || die "cargo build --release -p balancer failed"
    BALANCER_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/balancer
fi
[[ -x $BALANCER_BIN ]] || die "balancer binary not executable: $BALANCER_BIN"
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

# ------------------------------------------------------- process management
TMP=$(mktemp -d /tmp/bench-tasks.XXXXXX)
chmod 755 "$TMP"   # nginx workers run unprivileged when we are root
PIDS=() BAL_PID="" RUN_OK=0
cleanup() {
    local rc=$? p f
    set +e
    trap - EXIT
    for p in $BAL_PID "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for _ in $(seq 50); do
        f=0; for p in $BAL_PID "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && f=1; done
        ((f)) && sleep 0.1 || break
    done
    for p in $BAL_PID "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    if ((RUN_OK == 0)); then
        log "FAILED (exit $rc); logs kept in $TMP"
        for f in "$TMP"/*.log; do [[ -s $f ]] && { printf -- '--- tail %s\n' "$f"; tail -n 12 "$f"; } >&2; done
    elif ((KEEP_TMP)); then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
BALANCER_SRC=$(cd "$(dirname "$BALANCER_BIN")" && pwd)/$(basename "$BALANCER_BIN")
cp "$BALANCER_SRC" "$TMP/balancer"   # a concurrent rebuild must not swap it mid-run
BALANCER_BIN=$TMP/balancer

start_bg() { local logf=$1; shift; "$@" >"$logf" 2>&1 & STARTED_PID=$!; }
wait_for() {  # wait_for WHAT PID CMD...: retry CMD every 0.1 s while PID lives
    local what=$1 pid=$2 deadline=$((SECONDS + START_TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || die "$what exited during startup (logs in $TMP)"
        ((SECONDS < deadline)) || die "$what did not answer within ${START_TIMEOUT}s (logs in $TMP)"
        sleep 0.1
    done
}
rcli() { redis-cli -h 127.0.0.1 -p "$P_REDIS" "$@"; }
redis_up() { [[ $(rcli PING 2>/dev/null) == PONG ]]; }
body_is() { [[ $(curl -fsS --max-time 1 "$1" 2>/dev/null) == "$2" ]]; }

read -r P_ORIGIN P_REDIS P_BAL P_ADMIN < <(python3 "$BENCH_DIR/results.py" free-ports 4)
[[ -n ${P_ADMIN:-} ]] || die "could not allocate free ports"
BASE=http://127.0.0.1:$P_BAL

# shellcheck disable=SC2086  # REDIS_ARGS is a list of words
start_bg "$TMP/redis.log" taskset -c "$LOAD_CPU" redis-server --port "$P_REDIS" --bind 127.0.0.1 \
    --save '' --appendonly no --dir "$TMP" $REDIS_ARGS
REDIS_PID=$STARTED_PID PIDS+=("$REDIS_PID")
wait_for "redis-server on :$P_REDIS" "$REDIS_PID" redis_up
mkdir -p "$TMP/origin-tmp"
sed -e "s|@DIR@|$TMP|g" -e "s|@ORIGIN_PORT@|$P_ORIGIN|g" "$BENCH_DIR/tasks-origin.nginx.conf.tmpl" >"$TMP/origin.conf"
nginx -t -q -p "$TMP/" -e "$TMP/origin.error.log" -c "$TMP/origin.conf" >&2 || die "origin nginx config invalid"
start_bg "$TMP/origin.log" taskset -c "$LOAD_CPU" nginx -p "$TMP/" -e "$TMP/origin.error.log" \
    -c "$TMP/origin.conf" -g 'daemon off;'
PIDS+=("$STARTED_PID")
wait_for "nginx origin on :$P_ORIGIN" "$STARTED_PID" body_is "http://127.0.0.1:$P_ORIGIN/" ok
ORIGIN_PIDS=("$STARTED_PID" $(pgrep -P "$STARTED_PID"))
log "redis :$P_REDIS (pid $REDIS_PID) and nginx origin :$P_ORIGIN (pids ${ORIGIN_PIDS[*]}) on CPU $LOAD_CPU"

BAL_ENV=(RUST_LOG=warn DEPLOYMENT_AGENT_URL= "STATIC_BACKENDS=127.0.0.1:$P_ORIGIN"
    "HOST_PORT_HTTP_BALANCER=$P_BAL" "HOST_PORT_ADMIN_BALANCER=$P_ADMIN" BIND_ADDRESS=127.0.0.1
    MAX_CONNECTIONS=10000 REDIS_HOST=127.0.0.1 "REDIS_PORT=$P_REDIS" "TASK_WORKERS=$TASK_WORKERS")
start_balancer() {  # start_balancer APP_IDENTIFIER; sets BAL_PID, PREFIX; checks one task end to end
    local app=$1 id="" view=""
    PREFIX="rustybalancer:$app:tasks:"
    start_bg "$TMP/balancer-$app.log" taskset -c "$BAL_CPU" env "${BAL_ENV[@]}" "APP_IDENTIFIER=$app" "$BALANCER_BIN"
    BAL_PID=$STARTED_PID
    wait_for "balancer ($app)" "$BAL_PID" body_is "$BASE/" ok
    id=$(curl -fsS --max-time 5 -H 'Prefer: respond-async' "$BASE/" | grep -o '"id":"[^"]*"' | cut -d'"' -f4) ||
        die "balancer did not accept a task (Prefer: respond-async -> no 202 with an id)"
    for _ in $(seq $((START_TIMEOUT * 10))); do
        view=$(curl -fsS --max-time 2 "$BASE/_tasks/$id" || true)
        [[ $view == *'"status":"succeeded"'* ]] && return 0
        sleep 0.1
    done
    die "probe task $id did not succeed within ${START_TIMEOUT}s: $view"
}
stop_balancer() {  # stop it, then drop everything it stored
    kill -TERM "$BAL_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$BAL_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$BAL_PID" 2>/dev/null || true
    wait "$BAL_PID" 2>/dev/null || true
    BAL_PID=""
    rcli FLUSHALL >/dev/null
}
alive() { kill -0 "$BAL_PID" 2>/dev/null || die "balancer died during phase $1 (log: $TMP/balancer-*.log)"; }

# ---------------------------------------------------- measurement helpers
CLK_TCK=$(getconf CLK_TCK)
ticks() { local t=0 p s f; for p in "$@"; do s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    read -r -a f <<<"${s##*) }"; t=$((t + f[11] + f[12])); done; echo "$t"; }
core() {  # core N: "busy total" ticks of CPU N (busy includes irq and softirq)
    local _c u n s i w q sq st
    read -r _c u n s i w q sq st _ < <(grep "^cpu$1 " /proc/stat)
    echo "$((u + n + s + q + sq + st)) $((u + n + s + i + w + q + sq + st))"
}
snap() {  # "ms machine_busy machine_total balancer redis origin children bal_core(2) load_core(2)" (ticks)
    local _c u n s i w q sq st f
    read -r _c u n s i w q sq st _ </proc/stat
    read -r -a f <<<"$(sed 's/.*) //' "/proc/$$/stat")"
    echo "$(date +%s%3N) $((u + n + s + st)) $((u + n + s + i + w + q + sq + st)) $(ticks "$BAL_PID")" \
        "$(ticks "$REDIS_PID") $(ticks "${ORIGIN_PIDS[@]}") $((f[13] + f[14])) $(core "$BAL_CPU") $(core "$LOAD_CPU")"
}
delta() {  # delta SNAP0 SNAP1: sets EL (ms), D_BAL D_REDIS D_ORIGIN D_LOAD (ticks), OTHER (% of all
    # CPUs), CORE_BAL CORE_LOAD (% busy of the two cores, everything incl. softirq)
    local t0 b0 a0 x0 r0 o0 c0 p0 q0 l0 m0 t1 b1 a1 x1 r1 o1 c1 p1 q1 l1 m1
    read -r t0 b0 a0 x0 r0 o0 c0 p0 q0 l0 m0 <<<"$1"
    read -r t1 b1 a1 x1 r1 o1 c1 p1 q1 l1 m1 <<<"$2"
    EL=$((t1 - t0)) D_BAL=$((x1 - x0)) D_REDIS=$((r1 - r0)) D_ORIGIN=$((o1 - o0)) D_LOAD=$((c1 - c0))
    OTHER=$(( (a1 - a0) > 0 ? 100 * ((b1 - b0) - D_BAL - D_REDIS - D_ORIGIN - D_LOAD) / (a1 - a0) : 0 ))
    ((OTHER > 0)) || OTHER=0
    CORE_BAL=$(( (q1 - q0) > 0 ? 100 * (p1 - p0) / (q1 - q0) : 0 )) CORE_LOAD=$(( (m1 - m0) > 0 ? 100 * (l1 - l0) / (m1 - m0) : 0 ))
}
calc() { awk "BEGIN { printf \"%.${1}f\", $2 }"; }   # calc DECIMALS EXPR
pct1() { calc 1 "$1 * 100000 / $CLK_TCK / ($EL > 0 ? $EL : 1)"; }   # ticks -> % of one CPU over EL
RAW=$TMP/raw.csv
echo "round,phase,metric,value,unit" >"$RAW"
row() { echo "$ROUND,$1,$2,$3,$4" >>"$RAW"; }   # row PHASE METRIC VALUE UNIT
cpu_rows() {  # cpu_rows PHASE SNAP0 SNAP1 OPS: CPU shares over the phase, CPU time per operation
    delta "$2" "$3"
    row "$1" cpu_balancer_pct "$(pct1 $D_BAL)" "% of 1 CPU"; row "$1" cpu_redis_pct "$(pct1 $D_REDIS)" "% of 1 CPU"
    row "$1" cpu_origin_pct "$(pct1 $D_ORIGIN)" "% of 1 CPU"; row "$1" cpu_loadgen_pct "$(pct1 $D_LOAD)" "% of 1 CPU"
    row "$1" other_load_pct "$OTHER" "% of all CPUs"
    row "$1" core_bal_busy_pct "$CORE_BAL" "% of CPU $BAL_CPU"; row "$1" core_load_busy_pct "$CORE_LOAD" "% of CPU $LOAD_CPU"
    row "$1" balancer_us_per_op "$(calc 1 "$D_BAL * 1e6 / $CLK_TCK / $4")" us
    row "$1" redis_us_per_op "$(calc 1 "$D_REDIS * 1e6 / $CLK_TCK / $4")" us
    LAST_CPU="balancer $(pct1 $D_BAL)%, redis $(pct1 $D_REDIS)%; cores busy $CORE_BAL%/$CORE_LOAD%; other load $OTHER%"
}
wait_quiet() {  # wait up to QUIET_WAIT s for other processes to use <= QUIET_PCT % of all CPUs
    local s0 start=$SECONDS
    while :; do
        s0=$(snap); sleep 1; delta "$s0" "$(snap)"
        ((OTHER <= QUIET_PCT || SECONDS - start >= QUIET_WAIT)) && break
        ((SECONDS - start > 1)) || log "machine busy: other processes use $OTHER% of all CPUs; waiting up to ${QUIET_WAIT}s for <= $QUIET_PCT%"
    done
    row A quiet_wait_s $((SECONDS - start)) s; row A other_load_at_start_pct "$OTHER" "% of all CPUs"
    ((OTHER <= QUIET_PCT)) || log "still busy ($OTHER% other load); measuring anyway (see other_load_pct)"
}
run_wrk() {  # run_wrk OUT DURATION WRK_ARGS...
    local out=$1 d=$2
    shift 2
    timeout --kill-after=5 $(($(secs "$d") + 30)) taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$CONNS" -d"$d" --latency "$@" >"$out" 2>&1 || die "wrk failed: $(tail -n 5 "$out")"
}
WRK=()  # rps p50 p99 requests socket_errors non2xx
parse_wrk() { local p; p=$(python3 "$BENCH_DIR/results.py" parse-wrk "$1") || die "cannot parse $1"; read -r -a WRK <<<"$p"; }
zcard() { rcli ZCARD "${PREFIX}idx:$1"; }
used_memory() { rcli INFO memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }'; }
unit_of() { case $1 in *_ms) echo ms ;; *_rps) echo 1/s ;; *_s) echo s ;; *) echo count ;; esac; }
kv_rows() { local k v; while IFS='=' read -r k v; do [[ -n $k ]] && row "$1" "$k" "$v" "$(unit_of "$k")"; done <<<"$2"; }

# -------------------------------------------------------------------- phases
phase_a() {  # plain proxied GET/s
    (($(secs "$WARMUP") == 0)) || run_wrk "$TMP/r$ROUND-warmup.txt" "$WARMUP" "$BASE/"
    s0=$(snap); run_wrk "$TMP/r$ROUND-A.txt" "$DURATION" "$BASE/"; s1=$(snap); alive A
    parse_wrk "$TMP/r$ROUND-A.txt"
    row A plain_rps "${WRK[0]}" 1/s; row A plain_p50_ms "${WRK[1]}" ms; row A plain_p99_ms "${WRK[2]}" ms
    row A plain_errors $((WRK[4] + WRK[5])) count
    cpu_rows A "$s0" "$s1" "${WRK[3]}"
    log "  A plain GET: ${WRK[0]} req/s (p99 ${WRK[2]} ms; $LAST_CPU)"
}
phase_b() {  # submissions/s; every 202 must be a stored task
    local before during accepted stored
    before=$(zcard all)
    s0=$(snap); run_wrk "$TMP/r$ROUND-B.txt" "$DURATION" -H 'Prefer: respond-async' "$BASE/"; s1=$(snap); alive B
    during=$(($(zcard succeeded) + $(zcard failed) + $(zcard dead) - 1))   # minus the probe
    sleep 0.5   # submissions in flight when wrk stopped
    parse_wrk "$TMP/r$ROUND-B.txt"
    accepted=$((WRK[3] - WRK[5])) stored=$(($(zcard all) - before))
    row B submit_rps "${WRK[0]}" 1/s; row B submit_p50_ms "${WRK[1]}" ms; row B submit_p99_ms "${WRK[2]}" ms
    row B submit_accepted "$accepted" count; row B submit_stored "$stored" count
    row B submit_lost $((accepted > stored ? accepted - stored : 0)) count
    row B submit_errors $((WRK[4] + WRK[5])) count; row B submit_completed_during "$during" count
    cpu_rows B "$s0" "$s1" "$stored"
    log "  B submissions: ${WRK[0]}/s; 202s $accepted, stored $stored, finished meanwhile $during ($LAST_CPU)"
}
phase_d() {  # latency on an idle system
    local out
    out=$(taskset -c "$LOAD_CPU" python3 "$HELPER" latency --base "$BASE" --n "$LAT_TASKS" \
        --gap-ms "$LAT_GAP_MS" --samples "$TMP/latency-r$ROUND.txt") || die "phase D failed"
    kv_rows D "$out"; alive D
    log "  D latency: $(grep -E '^latency_(p50|p99|wait_p50)_ms' <<<"$out" | tr '\n' ' ')"
}
phase_c() {  # burst until all terminal; Redis memory per task
    local before mem0 mem1 n since wrk_pid deadline out s_mid marker=$TMP/burst-r$ROUND.done
    before=$(zcard all) mem0=$(used_memory) since=$(date +%s%3N) s0=$(snap)
    BURST=$BURST BURST_MARKER=$marker taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DRAIN_TIMEOUT}s" \
        --latency -s "$BENCH_DIR/tasks-burst.lua" "$BASE/" >"$TMP/r$ROUND-C.txt" 2>&1 &
    wrk_pid=$! deadline=$((SECONDS + DRAIN_TIMEOUT))
    until [[ -e $marker ]] || ! kill -0 "$wrk_pid" 2>/dev/null || ((SECONDS > deadline)); do sleep 0.01; done
    kill -INT "$wrk_pid" 2>/dev/null || true   # wrk would idle until -d ends
    wait "$wrk_pid" || true
    [[ -e $marker ]] || die "burst: wrk stopped before $BURST answers: $(tail -n 5 "$TMP/r$ROUND-C.txt")"
    s_mid=$(snap)
    sleep 0.05   # submissions still in flight when wrk stopped
    until (($(zcard queued) + $(zcard running) == 0)); do
        ((SECONDS < deadline)) || die "burst: tasks still queued or running after ${DRAIN_TIMEOUT}s"
        sleep 0.05
    done
    s1=$(snap); alive C
    mem1=$(used_memory) n=$(($(zcard all) - before))
    out=$(python3 "$HELPER" burst --base "$BASE" --since-ms "$since") || die "phase C analysis failed"
    kv_rows C "$out"
    row C burst_stored "$n" count
    row C redis_bytes_per_task $(((mem1 - mem0) / n)) bytes
    row C redis_mib_per_10k "$(calc 2 "($mem1 - $mem0) / $n * 10000 / 1048576")" MiB
    row C task_hash_bytes "$(rcli MEMORY USAGE "${PREFIX}task:$(rcli ZRANGE "${PREFIX}idx:succeeded" -1 -1)" SAMPLES 0)" bytes
    row C stream_len_after "$(rcli XLEN "${PREFIX}stream")" count
    parse_wrk "$TMP/r$ROUND-C.txt"
    row C burst_errors $((WRK[4] + WRK[5])) count
    cpu_rows C "$s0" "$s1" "$n"
    delta "$s_mid" "$s1"   # the drain alone: from the last answer to all terminal
    row C drain_cpu_balancer_pct "$(pct1 $D_BAL)" "% of 1 CPU"; row C drain_cpu_redis_pct "$(pct1 $D_REDIS)" "% of 1 CPU"
    row C drain_core_bal_busy_pct "$CORE_BAL" "% of CPU $BAL_CPU"; row C drain_core_load_busy_pct "$CORE_LOAD" "% of CPU $LOAD_CPU"
    log "  C burst: $(grep -E '^(burst_n|completion_rps|burst_submit_rps|drain_rps)=' <<<"$out" | tr '\n' ' ')"
    log "  C memory: $(((mem1 - mem0) / n)) bytes/task over $n tasks; stream length $(rcli XLEN "${PREFIX}stream") ($LAST_CPU; drain: cores busy $CORE_BAL%/$CORE_LOAD%)"
}

# -------------------------------------------------------------------- rounds
log "plan: $ROUNDS round(s) of A ($DURATION plain), B ($DURATION submissions), D (2x$LAT_TASKS tasks), C (burst of $BURST)"
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    wait_quiet
    start_balancer "benchtasks-r$ROUND-ab"
    log "round $ROUND/$ROUNDS: balancer pid $BAL_PID (A, B)"
    phase_a; phase_b; stop_balancer
    start_balancer "benchtasks-r$ROUND-dc"
    log "round $ROUND/$ROUNDS: balancer pid $BAL_PID (D, C)"
    phase_d; phase_c; stop_balancer
done

# -------------------------------------------------------------------- report
ver() { "$@" 2>&1 | head -n1 || true; }
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc --all) CPUs, $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -srm)"
    echo "versions=$(ver redis-server --version | cut -d' ' -f1-3); $(ver nginx -v); $(ver wrk -v | cut -d' ' -f1-2); $(ver rustc -V)"
    echo "balancer=\`$BALANCER_SRC\` (git $(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)), env \`${BAL_ENV[*]} APP_IDENTIFIER=benchtasks-r<N>-{ab,dc}\`"
    echo "load average=$LOADAVG_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end"
    for v in ROUNDS DURATION WARMUP CONNS BURST LAT_TASKS LAT_GAP_MS TASK_WORKERS BAL_CPU LOAD_CPU QUIET_PCT QUIET_WAIT REDIS_ARGS; do
        echo "p.$v=${!v}"
    done
} >"$TMP/meta.txt"
log "writing $OUT_DIR/bench-tasks.{md,csv,png}"
python3 "$HELPER" report --csv "$RAW" --meta "$TMP/meta.txt" --samples-dir "$TMP" --md "$OUT_DIR/bench-tasks.md" \
    --csv-out "$OUT_DIR/bench-tasks.csv" --png "$OUT_DIR/bench-tasks.png" || die "report failed"
log "done: $OUT_DIR/bench-tasks.md"
RUN_OK=1
