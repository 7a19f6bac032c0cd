#!/usr/bin/env bash
# jobs/bench-proxy.sh - compare RustyBalancer with nginx and HAProxy as a
# reverse proxy in front of three identical fast origins, all on loopback.
#
# Run `jobs/bench-proxy.sh -h` for usage. Config templates and the results
# writer live in jobs/bench/.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: jobs/bench-proxy.sh [options]

Benchmarks reverse proxies on 127.0.0.1 in up to three modes (one after the
other; every mode starts its own origins and proxies):
  h1      HTTP/1.1 driven by wrk. Each proxy has one worker/thread pinned to
          CPU $PROXY_CPU (default 0); wrk and the origins share CPU $LOAD_CPU
          (default 1). This is the original comparison.
  h2c     HTTP/2 cleartext with prior knowledge, driven by
          `h2load -c $H2_CONNS -m $H2_STREAMS -D <duration>` (10 connections x
          10 concurrent streams); same pinning and workers as h1. nginx listens
          with `http2`, HAProxy binds with `proto h2`, the balancer detects the
          h2 preface on its normal port. Upstream stays HTTP/1.1 keep-alive.
          p50/p99 are exact, from h2load's per-request --log-file.
  cores2  HTTP/1.1 driven by wrk, but each proxy gets two cores and shares
          them with wrk and the origins (no pinning split): nginx
          worker_processes 2, HAProxy nbthread 2, the balancer unpinned so it
          starts one worker thread per available CPU (2): with its default
          RUNTIME_LAYOUT=per-core a current-thread runtime each, with its own
          SO_REUSEPORT socket (RUNTIME_LAYOUT=shared in the environment: one
          work-stealing runtime; the variable is passed through).
Targets:
  direct    load generator straight to one origin (baseline, no proxy;
            h1 and cores2 only - the origins speak HTTP/1.1)
  nginx     nginx, upstream keepalive 64
  haproxy   HAProxy, http-reuse always
  balancer  RustyBalancer (STATIC_BACKENDS, no deployment agent)
The proxies round-robin over three origins served by nginx (one worker; in
cores2 CORES2_ORIGIN_WORKERS). For every round and connection count each
target is run once, in rotating order; the report gives the median over rounds.

Options:
  -h, --help          show this help and exit
  --modes LIST        comma/space-separated subset of h1,h2c,cores2 (= MODES)
  --only LIST         comma-separated subset of direct,nginx,haproxy,balancer
  --out DIR           output directory (default: <repo>/artefacts)
  --no-install        never call apt-get / pip; fail if a tool is missing
  --keep-tmp          keep the temp dir (configs, logs, raw wrk/h2load output)

Environment (defaults in brackets):
  MODES="h1 h2c cores2"  modes to run (same as --modes)
  CONNS="64 256"      wrk connection counts (h1 and cores2)
  H2_CONNS=10         h2load -c (h2c mode)
  H2_STREAMS=10       h2load -m, concurrent streams per connection (h2c mode)
  DURATION=10s        length of each measured run (10s, 1m)
  ROUNDS=3            rounds; the report uses the median over rounds
  WARMUP=2s           un-measured run (same tool and connections) before
                      every measured run (0 = none)
  WRK_THREADS=1       wrk -t in the h1 mode
  CORES2_WRK_THREADS=2     wrk -t in the cores2 mode
  CORES2_ORIGIN_WORKERS=2  origin nginx worker_processes in the cores2 mode
  CORES2_CPUS=auto    CPUs of the cores2 mode: auto = no pinning at all when
                      this machine has exactly 2 CPUs, otherwise every process
                      is confined to "$PROXY_CPU,$LOAD_CPU"; all = no pinning;
                      or an explicit taskset list such as 2,3
  BALANCER_BIN=PATH   use this balancer binary and skip `cargo build` (the
                      binary is copied once at start, so a rebuild during the
                      run does not change what is measured)
  BALANCER_GIT=REV    what that binary was built from, for the report (default:
                      `git describe` when the script builds it; "not given" else)
  START_TIMEOUT=30    seconds to wait for each server to answer
  PROXY_CPU=0         CPU for the proxies under test (h1, h2c)
  LOAD_CPU=1          CPU for the load generator and the origins (h1, h2c)
  ONLY=...            same as --only
  NOISE_MAX_PCT=10    a measured run during which processes that are not ours
                      used more than this % of all CPUs is repeated ...
  NOISE_RETRIES=2     ... at most this many times (the last attempt is kept)
  NGINX_UPSTREAM_KEEPALIVE=64  nginx `keepalive` (idle upstream conns cached)

Outputs: <out>/bench-proxy.md (one section per mode + environment),
<out>/bench-proxy.csv (one row per measured run, with a mode column),
<out>/bench-proxy.png (one row of panels per mode; needs matplotlib).

Examples:
  jobs/bench-proxy.sh
  DURATION=3s ROUNDS=1 jobs/bench-proxy.sh --only direct,nginx,haproxy
  BALANCER_BIN=target/release/balancer CONNS=64 jobs/bench-proxy.sh --modes h1,cores2
  BALANCER_BIN=target/release/balancer jobs/bench-proxy.sh --modes h2c
EOF
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
BENCH_DIR=$SCRIPT_DIR/bench
RESULTS_PY=$BENCH_DIR/results.py
export PATH="$PATH:/usr/sbin:/sbin"

MODES=${MODES:-"h1 h2c cores2"}
CONNS=${CONNS:-"64 256"}
H2_CONNS=${H2_CONNS:-10}
H2_STREAMS=${H2_STREAMS:-10}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
WRK_THREADS=${WRK_THREADS:-1}
CORES2_WRK_THREADS=${CORES2_WRK_THREADS:-2}
CORES2_ORIGIN_WORKERS=${CORES2_ORIGIN_WORKERS:-2}
CORES2_CPUS=${CORES2_CPUS:-auto}
BALANCER_BIN=${BALANCER_BIN:-}
BALANCER_GIT=${BALANCER_GIT:-}
START_TIMEOUT=${START_TIMEOUT:-30}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ONLY=${ONLY:-direct,nginx,haproxy,balancer}
OUT_DIR=${OUT_DIR:-$REPO_ROOT/artefacts}
KEEP_TMP=${KEEP_TMP:-0}
NOISE_MAX_PCT=${NOISE_MAX_PCT:-10}
NOISE_RETRIES=${NOISE_RETRIES:-2}
NGINX_UPSTREAM_KEEPALIVE=${NGINX_UPSTREAM_KEEPALIVE:-64}
NO_INSTALL=${NO_INSTALL:-0}
ALL_TARGETS=(direct nginx haproxy balancer)
ALL_MODES=(h1 h2c cores2)
BENCH_TAG=bench
# shellcheck source=jobs/lib/bench.sh
. "$SCRIPT_DIR/lib/bench.sh"

while (($#)); do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --modes) [[ $# -ge 2 ]] || die "--modes needs a value"; MODES=$2; shift 2 ;;
        --modes=*) MODES=${1#*=}; shift ;;
        --only) [[ $# -ge 2 ]] || die "--only needs a value"; ONLY=$2; shift 2 ;;
        --only=*) ONLY=${1#*=}; shift ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a value"; OUT_DIR=$2; shift 2 ;;
        --out=*) OUT_DIR=${1#*=}; shift ;;
        --no-install) NO_INSTALL=1; shift ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# ---------------------------------------------------------------- validation
select_ordered TARGETS "$ONLY" "target in --only" "${ALL_TARGETS[@]}"
select_ordered MODE_LIST "${MODES// /,}" "mode in MODES/--modes" "${ALL_MODES[@]}"

dur_seconds() {  # wrk duration syntax -> whole seconds
    local d=$1
    case $d in
        *s) echo "${d%s}" ;;
        *m) echo $(( ${d%m} * 60 )) ;;
        *h) echo $(( ${d%h} * 3600 )) ;;
        *) echo "$d" ;;
    esac
}
[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || die "DURATION must look like 10s / 1m, got '$DURATION'"
[[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must look like 2s or 0, got '$WARMUP'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $WRK_THREADS =~ ^[1-9][0-9]*$ ]] || die "WRK_THREADS must be a positive integer"
[[ $CORES2_WRK_THREADS =~ ^[1-9][0-9]*$ ]] || die "CORES2_WRK_THREADS must be a positive integer"
[[ $CORES2_ORIGIN_WORKERS =~ ^[1-9][0-9]*$ ]] || die "CORES2_ORIGIN_WORKERS must be a positive integer"
[[ $H2_CONNS =~ ^[1-9][0-9]*$ ]] || die "H2_CONNS must be a positive integer, got '$H2_CONNS'"
[[ $H2_STREAMS =~ ^[1-9][0-9]*$ ]] || die "H2_STREAMS must be a positive integer, got '$H2_STREAMS'"
[[ $START_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "START_TIMEOUT must be a positive integer"
[[ $NOISE_MAX_PCT =~ ^[0-9]+$ ]] || die "NOISE_MAX_PCT must be an integer percentage"
[[ $NOISE_RETRIES =~ ^[0-9]+$ ]] || die "NOISE_RETRIES must be a non-negative integer"
[[ $NGINX_UPSTREAM_KEEPALIVE =~ ^[1-9][0-9]*$ ]] || die "NGINX_UPSTREAM_KEEPALIVE must be a positive integer"
read -r -a CONN_LIST <<<"$CONNS"
((${#CONN_LIST[@]})) || die "CONNS is empty"
for c in "${CONN_LIST[@]}"; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || die "CONNS entries must be positive integers, got '$c'"
done
DUR_S=$(dur_seconds "$DURATION")
WARM_S=$(dur_seconds "$WARMUP")

want() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }
want_mode() { [[ " ${MODE_LIST[*]} " == *" $1 "* ]]; }

targets_of_mode() {  # targets_of_mode MODE -> prints the targets run in MODE
    local t sel=()
    for t in "${TARGETS[@]}"; do
        [[ $1 == h2c && $t == direct ]] && continue   # origins are HTTP/1.1 only
        sel+=("$t")
    done
    echo "${sel[*]}"
}

for m in "${MODE_LIST[@]}"; do
    case $m in
        h1) _thr=$WRK_THREADS ;;
        cores2) _thr=$CORES2_WRK_THREADS ;;
        *) continue ;;
    esac
    for c in "${CONN_LIST[@]}"; do
        ((c >= _thr)) || die "each CONNS entry must be >= the wrk threads of mode $m ($_thr)"
    done
done
_any=0
for m in "${MODE_LIST[@]}"; do
    if [[ -n $(targets_of_mode "$m") ]]; then _any=1; else warn "mode $m has no target to run with --only $ONLY; skipping it"; fi
done
((_any)) || die "no mode has a target to run (h2c cannot run 'direct')"

# ------------------------------------------------------------------ tooling
REPORT_PY=python3   # interpreter for the report (and plot); see install_tools
install_tools() {
    local missing=() pkgs=() need=(nginx haproxy curl taskset)
    command -v python3 >/dev/null || die "python3 is required (ports, parsing, report)"
    if want_mode h1 || want_mode cores2; then need+=(wrk); fi
    if want_mode h2c; then need+=(h2load); fi
    for b in "${need[@]}"; do
        command -v "$b" >/dev/null || missing+=("$b")
    done
    if ((${#missing[@]})); then
        ((NO_INSTALL == 0)) || die "missing tools: ${missing[*]} (and --no-install given)"
        [[ $EUID -eq 0 ]] || die "missing tools: ${missing[*]}; run as root or: sudo apt-get install -y wrk nginx haproxy curl nghttp2-client"
        for b in "${missing[@]}"; do
            case $b in
                taskset) pkgs+=(util-linux) ;;
                h2load) pkgs+=(nghttp2-client) ;;
                *) pkgs+=("$b") ;;
            esac
        done
        log "installing: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y "${pkgs[@]}" >&2; then
            log "apt-get install failed; running apt-get update and retrying"
            apt-get update >&2 || die "apt-get update failed"
            apt-get install -y "${pkgs[@]}" >&2 || die "apt-get install ${pkgs[*]} failed"
        fi
        # The Debian packages may start system services; we run our own.
        local s
        for s in nginx haproxy; do
            if service "$s" status >/dev/null 2>&1; then
                log "stopping system service $s started by the package"
                service "$s" stop >&2 || warn "could not stop system $s"
            fi
        done
    fi
    for b in "${need[@]}"; do
        command -v "$b" >/dev/null || die "$b still missing after install"
    done
    # The report writer needs only the standard library; the plot needs
    # matplotlib, which may live in the system python3 only (e.g. when a pyenv
    # shim comes first on PATH): use the first python3 that has it.
    local py
    for py in python3 /usr/bin/python3 /usr/local/bin/python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import matplotlib' 2>/dev/null; then
            REPORT_PY=$py
            [[ $py == python3 ]] || log "using $py for the report (python3 on PATH has no matplotlib)"
            return 0
        fi
    done
    if ! python3 -c 'import matplotlib' 2>/dev/null; then
        if ((NO_INSTALL == 0)); then
            log "installing matplotlib with pip (for the plot)"
            python3 -m pip install --quiet matplotlib >&2 ||
                warn "pip install matplotlib failed; the PNG plot will be skipped"
        else
            warn "matplotlib missing; the PNG plot will be skipped"
        fi
    fi
}

CORES2_SET=""     # taskset list for every process of the cores2 mode ("" = unpinned)
CORES2_NCPU=0
check_cpus() {
    local cpus
    cpus=$(nproc --all)
    if want_mode h1 || want_mode h2c; then
        taskset -c "$PROXY_CPU" true 2>/dev/null || die "cannot pin to CPU $PROXY_CPU (PROXY_CPU); this machine has $cpus CPU(s)"
        taskset -c "$LOAD_CPU" true 2>/dev/null || die "cannot pin to CPU $LOAD_CPU (LOAD_CPU); this machine has $cpus CPU(s)"
        [[ $PROXY_CPU != "$LOAD_CPU" ]] || warn "PROXY_CPU == LOAD_CPU: proxy and load generator share a core"
    fi
    if want_mode cores2; then
        case $CORES2_CPUS in
            auto) if (($(nproc) == 2)); then CORES2_SET=""; else CORES2_SET="$PROXY_CPU,$LOAD_CPU"; fi ;;
            all) CORES2_SET="" ;;
            *) CORES2_SET=$CORES2_CPUS ;;
        esac
        if [[ -n $CORES2_SET ]]; then
            taskset -c "$CORES2_SET" true 2>/dev/null || die "cannot pin to CPUs $CORES2_SET (cores2 mode); this machine has $cpus CPU(s)"
            CORES2_NCPU=$(taskset -c "$CORES2_SET" nproc)
        else
            CORES2_NCPU=$(nproc)
        fi
        ((CORES2_NCPU == 2)) ||
            warn "cores2 mode will use $CORES2_NCPU CPU(s), not 2 (set CORES2_CPUS to a list of two CPUs)"
    fi
}

# ------------------------------------------------------- process management
PIDS=()          # every process we started (plus nginx workers), for cleanup
TMP=""
RUN_OK=0

stop_all() {  # terminate every process in PIDS (newest first) and forget them
    local pid i alive
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null
    done
    for _ in $(seq 30); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true   # reaps our direct children; others are not ours to wait for
    done
    PIDS=()
    return 0
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_all
    wait 2>/dev/null
    if [[ -n $TMP && -d $TMP ]]; then
        if ((RUN_OK == 0)); then
            log "FAILED (exit $rc); configs and logs kept in $TMP"
            local f
            for f in "$TMP"/*.log; do
                [[ -s $f ]] || continue
                printf -- '--- tail %s\n' "$f" >&2
                tail -n 15 "$f" >&2
            done
        elif ((KEEP_TMP)); then
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

STARTED_PID=""
start_bg() {  # start_bg LOGFILE CMD... ; sets STARTED_PID
    local logf=$1
    shift
    "$@" >"$logf" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

add_children() {  # track children of PID (nginx workers) for cleanup
    local c
    for c in $(pgrep -P "$1" || true); do PIDS+=("$c"); done
}

# Per-mode settings (set by mode_setup).
M_PIN_PROXY=()   # command prefix pinning a proxy (empty = unpinned)
M_PIN_LOAD=()    # command prefix pinning the origins and the load generator
CURL_OPTS=()     # extra curl options to talk to the proxies (h2c: prior knowledge)

# wait_http URL PID LOGFILE [BODY_SUBSTRING]: wait until URL answers 2xx.
wait_http() {
    local url=$1 pid=$2 logf=$3 want_body=${4:-} body deadline
    deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "process $pid exited while waiting for $url (log: $logf)"
        if body=$(curl -fsS --max-time 1 "${CURL_OPTS[@]}" "$url" 2>/dev/null); then
            [[ -z $want_body || $body == *"$want_body"* ]] && return 0
        fi
        sleep 0.1
    done
    return 1
}

# check_h2 NAME URL: the proxy must answer HTTP/2 with prior knowledge.
check_h2() {
    local v
    v=$(curl -sS --max-time 2 --http2-prior-knowledge -o /dev/null -w '%{http_version}' "$2" 2>&1) ||
        die "$1: curl --http2-prior-knowledge $2 failed: $v"
    [[ $v == 2 ]] || die "$1: answered HTTP/$v, not HTTP/2, to prior-knowledge h2c on $2"
}

R_WORKERS=1 R_ORIGIN_WORKERS=1 R_LISTEN="" R_SERVER_EXTRA="" R_BIND="" R_KA_REQ=100000
render() {  # render TEMPLATE OUTFILE PROXY_PORT
    sed -e "s|@DIR@|$TMP|g" \
        -e "s|@ORIGIN1_PORT@|$P_O1|g" -e "s|@ORIGIN2_PORT@|$P_O2|g" -e "s|@ORIGIN3_PORT@|$P_O3|g" \
        -e "s|@UPSTREAM_KEEPALIVE@|$NGINX_UPSTREAM_KEEPALIVE|g" \
        -e "s|@WORKERS@|$R_WORKERS|g" -e "s|@ORIGIN_WORKERS@|$R_ORIGIN_WORKERS|g" \
        -e "s|@LISTEN_PARAMS@|$R_LISTEN|g" -e "s|@SERVER_EXTRA@|$R_SERVER_EXTRA|g" \
        -e "s|@BIND_PARAMS@|$R_BIND|g" -e "s|@CLIENT_KEEPALIVE_REQUESTS@|$R_KA_REQ|g" \
        -e "s|@PROXY_PORT@|$3|g" "$1" >"$2"
    if grep -qE '@[A-Z0-9_]+@' "$2"; then
        die "unrendered placeholder in $2"
    fi
}

# check_distribution NAME URL: a few fresh connections should reach >1 origin.
check_distribution() {
    local name=$1 url=$2 i body seen=() summary
    for i in $(seq 9); do
        body=$(curl -fsS --max-time 2 "${CURL_OPTS[@]}" "$url") || die "$name: request $i to $url failed"
        [[ $body == "hello from origin "* ]] || die "$name: unexpected body from $url: '$body'"
        seen+=("${body//[!0-9]/}")
    done
    summary=$(printf '%s\n' "${seen[@]}" | sort | uniq -c | awk '{printf "origin%s=%s ", $2, $1}')
    log "$name: 9 fresh connections -> ${summary% }"
    if (($(printf '%s\n' "${seen[@]}" | sort -u | wc -l) < 2)); then
        warn "$name sent every request to one origin; load balancing not working?"
    fi
}

# -------------------------------------------------------- /proc accounting
CLK_TCK=$(getconf CLK_TCK)

cpu_ticks() {  # sum of utime+stime over the given PIDs (whole thread groups)
    local total=0 pid stat rest f
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        rest=${stat##*) }            # comm may contain spaces/parens
        read -r -a f <<<"$rest"      # f[0] = field 3 (state)
        total=$((total + f[11] + f[12]))   # fields 14 utime, 15 stime
    done
    echo "$total"
}

status_kib() {  # status_kib PID FIELD -> value in kB ("" if gone)
    awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true
}

status_kib_sum() {  # status_kib_sum FIELD PID... -> sum in kB ("" if all gone)
    local field=$1 pid v sum=""
    shift
    for pid in "$@"; do
        v=$(status_kib "$pid" "$field")
        [[ -n $v ]] && sum=$((${sum:-0} + v))
    done
    echo "$sum"
}

# Machine-wide CPU accounting, to see how much of a run was eaten by processes
# that are not ours (a cargo build, another test...). "ours" = proxies +
# origins + load generator; interrupt/softirq time is attributed to our traffic.
proc_stat_cpu() {  # -> "busy_incl_steal total" in ticks, all CPUs
    local _c u n s i w q sq st
    read -r _c u n s i w q sq st _ </proc/stat
    echo "$((u + n + s + st)) $((u + n + s + i + w + q + sq + st))"
}
self_child_ticks() {  # cutime+cstime of this shell (waited-for children: wrk, h2load)
    local stat rest f
    stat=$(</proc/$$/stat)
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    echo $((f[13] + f[14]))
}

# -------------------------------------------------------------------- main
install_tools
check_cpus
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

TMP=$(mktemp -d /tmp/bench-proxy.XXXXXX)
chmod 755 "$TMP"   # nginx workers run as an unprivileged user when we are root
mkdir -p "$TMP/wrk"

BALANCER_SRC=""
BALANCER_SHA=""
if want balancer; then
    if [[ -z $BALANCER_BIN ]]; then
        log "building balancer: cargo build --release -p balancer"
        command -v cargo >/dev/null || die "cargo not found (or set BALANCER_BIN=/path/to/balancer)"
        (cd "$REPO_ROOT" && cargo build --release -p balancer) >&2 || die "cargo build --release -p balancer failed"
        BALANCER_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/balancer
        [[ -n $BALANCER_GIT ]] || BALANCER_GIT=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
    fi
    [[ -x $BALANCER_BIN ]] || die "balancer binary not executable: $BALANCER_BIN"
    BALANCER_SRC=$(cd "$(dirname "$BALANCER_BIN")" && pwd)/$(basename "$BALANCER_BIN")
    # Every mode restarts the balancer: run one snapshot so that a rebuild of
    # target/release/balancer during the benchmark cannot mix two builds.
    cp "$BALANCER_SRC" "$TMP/balancer"
    BALANCER_BIN=$TMP/balancer
    BALANCER_SHA=$(sha256sum "$BALANCER_BIN" | cut -c1-16)
    log "balancer: $BALANCER_SRC (sha256 $BALANCER_SHA...), copied to $BALANCER_BIN"
fi

RAW_CSV=$TMP/raw.csv
echo "mode,round,conns,streams,target,order_pos,attempt,duration_s,requests,rps,p50_ms,p99_ms,socket_errors,non2xx,cpu_ticks,cpu_us_per_req,peak_rss_kib,other_cpu_pct,status" >"$RAW_CSV"
MODE_META=$TMP/meta-modes.txt
: >"$MODE_META"

declare -A URL CPU_PIDS RSS_PIDS IDLE_RSS DEAD
MODE="" MODE_TARGETS=() M_CONNS=() M_STREAMS=1 M_TOOL=wrk M_WRK_THREADS=1
M_PIN_DESC="" BALANCER_CMD=""

mode_setup() {  # mode_setup MODE: per-mode globals
    MODE=$1
    read -r -a MODE_TARGETS <<<"$(targets_of_mode "$MODE")"
    R_KA_REQ=100000 R_LISTEN="" R_BIND="" R_SERVER_EXTRA="# HTTP/1.1 listener"
    R_WORKERS=1 R_ORIGIN_WORKERS=1
    M_PIN_PROXY=(taskset -c "$PROXY_CPU")
    M_PIN_LOAD=(taskset -c "$LOAD_CPU")
    M_PIN_DESC="proxies on CPU $PROXY_CPU (taskset -c $PROXY_CPU); load generator and the origins share CPU $LOAD_CPU"
    CURL_OPTS=()
    M_CONNS=("${CONN_LIST[@]}") M_STREAMS=1 M_TOOL=wrk M_WRK_THREADS=$WRK_THREADS
    case $MODE in
        h2c)
            M_TOOL=h2load M_CONNS=("$H2_CONNS") M_STREAMS=$H2_STREAMS
            CURL_OPTS=(--http2-prior-knowledge)
            R_BIND=" proto h2"
            nginx_h2c_listener
            ;;
        cores2)
            R_WORKERS=2 R_ORIGIN_WORKERS=$CORES2_ORIGIN_WORKERS M_WRK_THREADS=$CORES2_WRK_THREADS
            if [[ -n $CORES2_SET ]]; then
                M_PIN_PROXY=(taskset -c "$CORES2_SET")
                M_PIN_LOAD=(taskset -c "$CORES2_SET")
                M_PIN_DESC="no split: proxies, origins and load generator all on CPUs $CORES2_SET (taskset -c $CORES2_SET; $CORES2_NCPU CPUs)"
            else
                M_PIN_PROXY=() M_PIN_LOAD=()
                M_PIN_DESC="no pinning: proxies, origins and load generator share all $CORES2_NCPU CPUs"
            fi
            ;;
    esac
    URL=() CPU_PIDS=() RSS_PIDS=() IDLE_RSS=() DEAD=()
}

start_origins() {
    mkdir -p "$TMP"/origins-tmp
    render "$BENCH_DIR/origins.nginx.conf.tmpl" "$TMP/origins.conf" 0
    nginx -t -q -p "$TMP/" -e "$TMP/origins.error.log" -c "$TMP/origins.conf" >&2 ||
        die "origins nginx config invalid ($TMP/origins.conf)"
    start_bg "$TMP/origins.log" "${M_PIN_LOAD[@]}" \
        nginx -p "$TMP/" -e "$TMP/origins.error.log" -c "$TMP/origins.conf" -g 'daemon off;'
    ORIGINS_PID=$STARTED_PID
    local n port_var saved=("${CURL_OPTS[@]}")
    CURL_OPTS=()    # origins speak HTTP/1.1 in every mode
    for n in 1 2 3; do
        port_var=P_O$n
        wait_http "http://127.0.0.1:${!port_var}/" "$ORIGINS_PID" "$TMP/origins.error.log" "hello from origin $n" ||
            die "origin $n on port ${!port_var} did not answer within ${START_TIMEOUT}s"
    done
    CURL_OPTS=("${saved[@]}")
    add_children "$ORIGINS_PID"
    URL[direct]="http://127.0.0.1:$P_O1/"
    log "[$MODE] origins up on 127.0.0.1:$P_O1,$P_O2,$P_O3 (nginx pid $ORIGINS_PID, $R_ORIGIN_WORKERS worker(s), ${M_PIN_LOAD[*]:-unpinned})"
}

start_nginx_proxy() {
    local pid workers
    mkdir -p "$TMP"/nginx-proxy-tmp
    render "$BENCH_DIR/proxy.nginx.conf.tmpl" "$TMP/nginx-proxy.conf" "$P_NGINX"
    nginx -t -q -p "$TMP/" -e "$TMP/nginx-proxy.error.log" -c "$TMP/nginx-proxy.conf" >&2 ||
        die "nginx proxy config invalid ($TMP/nginx-proxy.conf)"
    start_bg "$TMP/nginx-proxy.log" "${M_PIN_PROXY[@]}" \
        nginx -p "$TMP/" -e "$TMP/nginx-proxy.error.log" -c "$TMP/nginx-proxy.conf" -g 'daemon off;'
    pid=$STARTED_PID
    wait_http "http://127.0.0.1:$P_NGINX/" "$pid" "$TMP/nginx-proxy.error.log" "hello from origin" ||
        die "nginx proxy on port $P_NGINX did not answer within ${START_TIMEOUT}s"
    add_children "$pid"
    workers=$(pgrep -P "$pid" | tr '\n' ' ')
    workers=${workers% }
    [[ -n $workers ]] || die "nginx proxy has no worker process"
    URL[nginx]="http://127.0.0.1:$P_NGINX/"
    CPU_PIDS[nginx]="$pid $workers"
    RSS_PIDS[nginx]=$workers
    log "[$MODE] nginx proxy up on :$P_NGINX (master $pid, worker(s) $workers, ${M_PIN_PROXY[*]:-unpinned})"
}

start_haproxy() {
    local pid
    render "$BENCH_DIR/proxy.haproxy.cfg.tmpl" "$TMP/haproxy.cfg" "$P_HAPROXY"
    haproxy -c -q -f "$TMP/haproxy.cfg" >&2 || die "haproxy config invalid ($TMP/haproxy.cfg)"
    start_bg "$TMP/haproxy.log" "${M_PIN_PROXY[@]}" haproxy -db -f "$TMP/haproxy.cfg"
    pid=$STARTED_PID
    wait_http "http://127.0.0.1:$P_HAPROXY/" "$pid" "$TMP/haproxy.log" "hello from origin" ||
        die "haproxy on port $P_HAPROXY did not answer within ${START_TIMEOUT}s"
    [[ -z $(pgrep -P "$pid" || true) ]] || warn "haproxy forked children; only pid $pid is measured"
    URL[haproxy]="http://127.0.0.1:$P_HAPROXY/"
    CPU_PIDS[haproxy]=$pid
    RSS_PIDS[haproxy]=$pid
    log "[$MODE] haproxy up on :$P_HAPROXY (pid $pid, $(status_kib "$pid" Threads) threads, ${M_PIN_PROXY[*]:-unpinned})"
}

start_balancer() {
    local pid deadline ready="" unset_env=()
    # cores2: the balancer sizes its runtime from the CPUs it may run on;
    # an inherited WORKER_THREADS would override that.
    [[ $MODE == cores2 ]] && unset_env=(-u WORKER_THREADS)
    # REDIS_HOST= turns task submissions off: the proxies compared keep no job queue, and
    # without a Redis the balancer would keep retrying its connection in the background.
    local cmd=("${M_PIN_PROXY[@]}" env "${unset_env[@]}" RUST_LOG=warn DEPLOYMENT_AGENT_URL= REDIS_HOST=
        STATIC_BACKENDS="127.0.0.1:$P_O1,127.0.0.1:$P_O2,127.0.0.1:$P_O3"
        HOST_PORT_HTTP_BALANCER="$P_BAL" HOST_PORT_ADMIN_BALANCER="$P_ADMIN"
        BIND_ADDRESS=127.0.0.1 MAX_CONNECTIONS=10000 "$BALANCER_BIN")
    BALANCER_CMD="${cmd[*]}"
    start_bg "$TMP/balancer.log" "${cmd[@]}"
    pid=$STARTED_PID
    deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "balancer exited during startup (log: $TMP/balancer.log)"
        if curl -fsS --max-time 1 "http://127.0.0.1:$P_ADMIN/health" >/dev/null 2>&1; then
            ready="admin /health"; break
        fi
        if curl -fsS --max-time 1 "${CURL_OPTS[@]}" "http://127.0.0.1:$P_BAL/" 2>/dev/null | grep -q "hello from origin"; then
            ready="proxy port"; break
        fi
        sleep 0.2
    done
    [[ -n $ready ]] || die "balancer answered neither GET :$P_ADMIN/health nor :$P_BAL/ within ${START_TIMEOUT}s (log: $TMP/balancer.log)"
    # /health may come up before the proxy routes; give it the same budget.
    wait_http "http://127.0.0.1:$P_BAL/" "$pid" "$TMP/balancer.log" "hello from origin" ||
        die "balancer proxy port $P_BAL did not proxy to the origins within ${START_TIMEOUT}s"
    URL[balancer]="http://127.0.0.1:$P_BAL/"
    CPU_PIDS[balancer]=$pid
    RSS_PIDS[balancer]=$pid
    log "[$MODE] balancer up on :$P_BAL, admin :$P_ADMIN (pid $pid, ready via $ready, $(status_kib "$pid" Threads) threads, ${M_PIN_PROXY[*]:-unpinned})"
}

load_cmd_desc() {  # human-readable load generator command of the current mode
    if [[ $M_TOOL == h2load ]]; then
        echo "timeout $((DUR_S + 30)) ${M_PIN_LOAD[*]:+${M_PIN_LOAD[*]} }h2load -c $H2_CONNS -m $H2_STREAMS -D $DUR_S --log-file=<per-request log> http://127.0.0.1:<port>/"
    else
        echo "timeout $((DUR_S + 30)) ${M_PIN_LOAD[*]:+${M_PIN_LOAD[*]} }wrk -t$M_WRK_THREADS -c<conns> -d$DURATION --latency http://127.0.0.1:<port>/"
    fi
}

# run_load CONNS SECONDS URL OUTFILE [LOGFILE]: one wrk / h2load run.
run_load() {
    local c=$1 secs=$2 url=$3 out=$4 logf=${5:-}
    if [[ $M_TOOL == h2load ]]; then
        local extra=()
        [[ -z $logf ]] || extra=(--log-file="$logf")
        timeout --kill-after=5 $((secs + 30)) "${M_PIN_LOAD[@]}" \
            h2load -c "$c" -m "$M_STREAMS" -D "$secs" "${extra[@]}" "$url" >"$out" 2>&1
    else
        timeout --kill-after=5 $((secs + 30)) "${M_PIN_LOAD[@]}" \
            wrk -t"$M_WRK_THREADS" -c"$c" -d"${secs}s" --latency "$url" >"$out" 2>&1
    fi
}

# measure_once ROUND CONNS TARGET POS ATTEMPT -> appends one CSV row; sets
# LAST_OTHER_PCT and LAST_STATUS.
measure_once() {
    local r=$1 c=$2 t=$3 pos=$4 attempt=$5
    local out=$TMP/wrk/${MODE}-r${r}-c${c}-${t}-a${attempt}.txt
    local reqlog=$TMP/wrk/${MODE}-r${r}-c${c}-${t}-a${attempt}.requests.tsv
    local t0=0 t1 ticks="" us_req="" rss="" status=ok parsed p
    local rps p50 p99 nreq sockerr non2xx msg
    local mb0 ma0 mb1 ma1 our0 our1 w0 w1 other
    local pre="$MODE,$r,$c,$M_STREAMS,$t,$pos,$attempt,$DUR_S"
    # shellcheck disable=SC2086  # CPU_PIDS holds a space-separated pid list
    [[ $t == direct ]] || t0=$(cpu_ticks ${CPU_PIDS[$t]})
    read -r mb0 ma0 < <(proc_stat_cpu)
    our0=$(cpu_ticks "${OUR_PIDS[@]}")
    w0=$(self_child_ticks)
    if [[ $M_TOOL == h2load ]]; then
        run_load "$c" "$DUR_S" "${URL[$t]}" "$out" "$reqlog" || status=h2load_failed
    else
        run_load "$c" "$DUR_S" "${URL[$t]}" "$out" || status=wrk_failed
    fi
    w1=$(self_child_ticks)
    our1=$(cpu_ticks "${OUR_PIDS[@]}")
    read -r mb1 ma1 < <(proc_stat_cpu)
    other=$(( (ma1 - ma0) > 0 ? 100 * ((mb1 - mb0) - (our1 - our0) - (w1 - w0)) / (ma1 - ma0) : 0 ))
    ((other >= 0)) || other=0
    LAST_OTHER_PCT=$other
    if [[ $t != direct ]]; then
        # shellcheck disable=SC2086
        t1=$(cpu_ticks ${CPU_PIDS[$t]})
        ticks=$((t1 - t0))
        # shellcheck disable=SC2086
        rss=$(status_kib_sum VmHWM ${RSS_PIDS[$t]})
        for p in ${CPU_PIDS[$t]}; do
            if ! kill -0 "$p" 2>/dev/null; then
                warn "$t process $p died during the run; skipping $t from now on in mode $MODE"
                DEAD[$t]=1
                status=died
            fi
        done
    fi
    if [[ $status == ok ]]; then
        if [[ $M_TOOL == h2load ]]; then
            parsed=$(python3 "$RESULTS_PY" parse-h2load "$out" "$reqlog") || status=parse_failed
            ((KEEP_TMP)) || rm -f "$reqlog"   # can be tens of MB per run
        else
            parsed=$(python3 "$RESULTS_PY" parse-wrk "$out") || status=parse_failed
        fi
    fi
    if [[ $status == ok ]]; then
        read -r rps p50 p99 nreq sockerr non2xx <<<"$parsed"
        if [[ $t != direct ]] && ((nreq > 0)); then
            us_req=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$nreq" 'BEGIN { printf "%.3f", t * 1e6 / hz / n }')
        fi
        echo "$pre,$nreq,$rps,$p50,$p99,$sockerr,$non2xx,$ticks,$us_req,$rss,$other,ok" >>"$RAW_CSV"
        msg=$(printf '%s: %.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d' "$t" "$rps" "$p50" "$p99" $((sockerr + non2xx)))
        [[ -z $us_req ]] || msg+="  cpu ${us_req} us/req  VmHWM $((rss / 1024)) MiB"
        log "  -> $msg  (other load ${other}%)"
        ((sockerr + non2xx == 0)) || warn "$t: $((sockerr + non2xx)) errors in this run (output: $out)"
    else
        warn "$t run failed ($status); $M_TOOL output: $out"
        sed 's/^/    /' "$out" >&2 || true
        echo "$pre,0,,,,0,0,$ticks,,$rss,$other,$status" >>"$RAW_CSV"
    fi
    LAST_STATUS=$status
}

mode_meta() {  # mode_meta KEY VALUE: a per-mode line for the report
    printf '%s %s=%s\n' "$MODE" "$1" "$2" >>"$MODE_META"
}

RETRIES_USED=0
run_no=0
TOTAL_RUNS=0
for m in "${MODE_LIST[@]}"; do
    read -r -a _tg <<<"$(targets_of_mode "$m")"
    if [[ $m == h2c ]]; then _nc=1; else _nc=${#CONN_LIST[@]}; fi
    TOTAL_RUNS=$((TOTAL_RUNS + ROUNDS * _nc * ${#_tg[@]}))
done

run_mode() {
    local r k j c t off attempt NT NC b1 a1 b2 a2 o1 o2 idle_busy
    mode_setup "$1"
    NT=${#MODE_TARGETS[@]}
    NC=${#M_CONNS[@]}
    ((NT)) || return 0
    read -r P_O1 P_O2 P_O3 P_NGINX P_HAPROXY P_BAL P_ADMIN < <(python3 "$RESULTS_PY" free-ports 7)
    [[ -n $P_ADMIN ]] || die "could not allocate free ports"
    log "=== mode $MODE: ${MODE_TARGETS[*]}; $M_PIN_DESC"

    start_origins
    for t in "${MODE_TARGETS[@]}"; do
        case $t in
            nginx) start_nginx_proxy ;;
            haproxy) start_haproxy ;;
            balancer) start_balancer ;;
        esac
    done
    for t in "${MODE_TARGETS[@]}"; do
        [[ $t == direct ]] && continue
        [[ $MODE != h2c ]] || check_h2 "$t" "${URL[$t]}"
        check_distribution "$t" "${URL[$t]}"
        # shellcheck disable=SC2086
        IDLE_RSS[$t]=$(status_kib_sum VmRSS ${RSS_PIDS[$t]})
    done
    local bal_threads=""
    [[ -z ${CPU_PIDS[balancer]:-} ]] || bal_threads=$(status_kib "${CPU_PIDS[balancer]}" Threads)

    OUR_PIDS=("${PIDS[@]}")   # every long-lived process of this mode
    # How busy is the machine before we start (all targets idle)?
    read -r b1 a1 < <(proc_stat_cpu)
    o1=$(cpu_ticks "${OUR_PIDS[@]}")
    sleep 2
    read -r b2 a2 < <(proc_stat_cpu)
    o2=$(cpu_ticks "${OUR_PIDS[@]}")
    idle_busy=$(( (a2 - a1) > 0 ? 100 * ((b2 - b1) - (o2 - o1)) / (a2 - a1) : 0 ))
    if ((idle_busy > NOISE_MAX_PCT)); then
        warn "machine is ${idle_busy}% busy (of all CPUs) with our servers idle; results will be noisy. Top processes:"
        ps -eo pid=,pcpu=,etime=,comm= --sort=-pcpu | head -n 5 >&2
    fi

    local est=$((ROUNDS * NC * NT * (DUR_S + WARM_S)))
    log "[$MODE] plan: ${MODE_TARGETS[*]} x conns {${M_CONNS[*]}}$([[ $M_STREAMS == 1 ]] || echo " x $M_STREAMS streams") x $ROUNDS round(s) = $((ROUNDS * NC * NT)) runs of $DURATION (+$WARMUP warm-up), ~${est}s (+ retries of disturbed runs)"

    for ((r = 1; r <= ROUNDS; r++)); do
        for ((k = 0; k < NC; k++)); do
            c=${M_CONNS[k]}
            off=$(( ((r - 1) * NC + k) % NT ))
            for ((j = 0; j < NT; j++)); do
                t=${MODE_TARGETS[(off + j) % NT]}
                run_no=$((run_no + 1))
                if [[ -n ${DEAD[$t]:-} ]]; then
                    log "[$MODE] round $r/$ROUNDS c=$c $t: skipped (process died earlier)"
                    echo "$MODE,$r,$c,$M_STREAMS,$t,$((j + 1)),1,$DUR_S,0,,,,0,0,,,,,died" >>"$RAW_CSV"
                    continue
                fi
                log "[$MODE] round $r/$ROUNDS c=$c $t (run $run_no/$TOTAL_RUNS, position $((j + 1))/$NT) ..."
                if ((WARM_S > 0)); then
                    run_load "$c" "$WARM_S" "${URL[$t]}" "$TMP/wrk/warmup-${MODE}-r${r}-c${c}-${t}.txt" ||
                        warn "warm-up $M_TOOL for $t exited non-zero"
                fi
                for ((attempt = 1; ; attempt++)); do
                    measure_once "$r" "$c" "$t" $((j + 1)) "$attempt"
                    [[ $LAST_STATUS == ok ]] || break
                    ((LAST_OTHER_PCT > NOISE_MAX_PCT)) || break
                    if ((attempt > NOISE_RETRIES)); then
                        warn "run still disturbed by other load (${LAST_OTHER_PCT}% > ${NOISE_MAX_PCT}%) after $NOISE_RETRIES retries; keeping it"
                        break
                    fi
                    RETRIES_USED=$((RETRIES_USED + 1))
                    warn "run disturbed by other processes (${LAST_OTHER_PCT}% of all CPUs > ${NOISE_MAX_PCT}%); retry $attempt/$NOISE_RETRIES"
                    ps -eo pcpu=,comm= --sort=-pcpu | head -n 3 | tr -s ' ' | paste -sd';' >&2
                done
            done
        done
    done

    # ---- per-mode parameters for the report
    case $MODE in
        h1) mode_meta "description" "HTTP/1.1 (wrk), each proxy on one pinned core: nginx 1 worker, HAProxy nbthread 1, balancer current-thread runtime (1 CPU available)" ;;
        h2c) mode_meta "description" "HTTP/2 cleartext with prior knowledge (h2load, $H2_CONNS connections x $H2_STREAMS concurrent streams), each proxy on one pinned core; upstream still HTTP/1.1 keep-alive" ;;
        cores2) mode_meta "description" "HTTP/1.1 (wrk -t$M_WRK_THREADS), each proxy with two workers on two cores shared with wrk and the origins: nginx worker_processes 2, HAProxy nbthread 2, balancer $CORES2_NCPU worker threads, RUNTIME_LAYOUT=${RUNTIME_LAYOUT:-per-core}" ;;
    esac
    mode_meta "load command" "$(load_cmd_desc)"
    mode_meta "pinning" "$M_PIN_DESC"
    mode_meta "origins" "nginx worker_processes $R_ORIGIN_WORKERS${M_PIN_LOAD[*]:+ (${M_PIN_LOAD[*]})}, 3 server blocks, HTTP/1.1"
    want nginx && mode_meta "nginx proxy" "worker_processes $R_WORKERS, listen 127.0.0.1:<port>${R_LISTEN}$([[ $R_SERVER_EXTRA == http2* ]] && echo " + $R_SERVER_EXTRA"), keepalive_requests $R_KA_REQ, upstream keepalive $NGINX_UPSTREAM_KEEPALIVE over HTTP/1.1"
    want haproxy && mode_meta "haproxy" "nbthread $R_WORKERS, bind 127.0.0.1:<port>${R_BIND}, http-reuse always, servers over HTTP/1.1"
    want balancer && mode_meta "balancer command" "$BALANCER_CMD"
    if [[ $MODE == cores2 && -n $bal_threads ]]; then
        mode_meta "balancer threads" "$bal_threads OS threads after start (worker threads = available parallelism = $CORES2_NCPU; WORKER_THREADS unset; RUNTIME_LAYOUT=${RUNTIME_LAYOUT:-per-core})"
    fi
    for t in "${MODE_TARGETS[@]}"; do
        [[ $t == direct ]] && continue
        mode_meta "idle RSS $t" "$(( ${IDLE_RSS[$t]:-0} / 1024 )) MiB (VmRSS right after start$([[ $t == nginx && $R_WORKERS -gt 1 ]] && echo ", sum of the $R_WORKERS workers"))"
    done
    mode_meta "other load before start" "${idle_busy}% of all CPUs over 2 s with our servers idle"
    stop_all
    log "[$MODE] done; its servers are stopped"
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
EST=0
for m in "${MODE_LIST[@]}"; do
    read -r -a _tg <<<"$(targets_of_mode "$m")"
    if [[ $m == h2c ]]; then _nc=1; else _nc=${#CONN_LIST[@]}; fi
    EST=$((EST + ROUNDS * _nc * ${#_tg[@]} * (DUR_S + WARM_S) + 5))
done
log "plan: modes ${MODE_LIST[*]}, $TOTAL_RUNS measured runs of $DURATION (+$WARMUP warm-up each), ~${EST}s (+ start-up and retries)"
for m in "${MODE_LIST[@]}"; do
    run_mode "$m"
done
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ----------------------------------------------------------------- report
ver() { "$@" 2>&1 | head -n1 || true; }
META=$TMP/meta.txt
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host nproc=$(nproc) (all: $(nproc --all))"
    echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "kernel=$(uname -srm)"
    echo "memory=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "nginx=$(ver nginx -v)"
    echo "haproxy=$(ver haproxy -v)"
    if want_mode h1 || want_mode cores2; then
        echo "wrk=$({ wrk -v 2>&1 || true; } | head -n1)"
    fi
    want_mode h2c && echo "h2load=$(ver h2load --version)"
    if want balancer; then
        echo "balancer binary=$BALANCER_SRC (sha256 $BALANCER_SHA..., run from a copy taken at start)"
        # A given binary may come from any commit: say so rather than name the scripts' one.
        echo "balancer git=${BALANCER_GIT:-not given (set BALANCER_GIT with BALANCER_BIN); the scripts ran from $(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)}"
        echo "rustc=$(ver rustc -V)"
    fi
    echo "modes=${MODE_LIST[*]}"
    echo "targets=${TARGETS[*]}"
    echo "CONNS=${CONN_LIST[*]} (wrk modes; h2c: H2_CONNS=$H2_CONNS x H2_STREAMS=$H2_STREAMS)"
    echo "DURATION=$DURATION"
    echo "ROUNDS=$ROUNDS"
    echo "WARMUP=$WARMUP (un-measured run of the same tool right before every measured run)"
    echo "order=rotating within a mode: round r, conns index k starts at target (r*len(CONNS)+k) mod len(targets); modes run one after the other, each with freshly started origins and proxies"
    echo "origins=body 'hello from origin N' + newline (20 bytes), keepalive_requests 100000 (jobs/bench/origins.nginx.conf.tmpl)"
    echo "nginx proxy=worker_connections 4096, upstream keepalive $NGINX_UPSTREAM_KEEPALIVE, proxy_http_version 1.1, access_log off (jobs/bench/proxy.nginx.conf.tmpl)"
    echo "haproxy=mode http, balance roundrobin, http-reuse always, option http-keep-alive, maxconn 4096, no log (jobs/bench/proxy.haproxy.cfg.tmpl)"
    echo "direct=load generator straight to origin 1 (no proxy; RSS/CPU columns n/a; not run in h2c)"
    echo "CPU us/req=(utime+stime delta of the proxy process(es) over the measured run, from /proc/PID/stat; nginx = master+workers; threads included) / requests completed"
    echo "peak RSS=VmHWM (lifetime peak) of the proxy process after all its runs in that mode (nginx: the worker; with 2 workers the sum of both, shared pages counted twice)"
    echo "h2load figures=req/s as printed by h2load (2xx/3xx responses / duration); requests = streams done; p50/p99 = exact nearest-rank percentiles of the per-request times in h2load --log-file (responses with a status; failed streams excluded); socket errors = h2load 'errored' (stream/connection failures), non-2xx = 'failed' minus 'errored'"
    echo "CPU accounting caveat=utime+stime does not include softirq time (loopback TCP processing is accounted as si on this kernel), for every proxy alike"
    cat "$MODE_META"
    echo "other load per run=CPU used by processes that are not ours (machine busy+steal minus proxies, origins, load generator; irq/softirq counted as ours) as % of all CPUs; runs above NOISE_MAX_PCT=$NOISE_MAX_PCT% were repeated up to NOISE_RETRIES=$NOISE_RETRIES times ($RETRIES_USED repeats used); only the last attempt counts"
    echo "loadavg=$LOADAVG_START at start; $LOADAVG_END at end"
} >"$META"

cp "$RAW_CSV" "$OUT_DIR/bench-proxy.csv"
rm -f "$OUT_DIR/bench-proxy.png"
log "writing $OUT_DIR/bench-proxy.md"
"$REPORT_PY" "$RESULTS_PY" report --csv "$RAW_CSV" --meta "$META" \
    --md "$OUT_DIR/bench-proxy.md" --png "$OUT_DIR/bench-proxy.png" ||
    die "report writer failed"
[[ -f $OUT_DIR/bench-proxy.png ]] || warn "no plot written (matplotlib missing?)"
log "done: $OUT_DIR/bench-proxy.md, bench-proxy.csv$([[ -f $OUT_DIR/bench-proxy.png ]] && echo ', bench-proxy.png')"
RUN_OK=1
