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

Benchmarks reverse proxies on 127.0.0.1 with wrk:
  direct    wrk straight to one origin (baseline, no proxy)
  nginx     nginx, 1 worker, upstream keepalive 64
  haproxy   HAProxy, nbthread 1, http-reuse always
  balancer  RustyBalancer (STATIC_BACKENDS, no deployment agent)
Each proxy is pinned to CPU $PROXY_CPU (default 0) and round-robins over three
origins served by one nginx worker; wrk and the origins share CPU $LOAD_CPU
(default 1). For every round and connection count each target is run once,
in rotating order; the report gives the median over rounds.

Options:
  -h, --help          show this help and exit
  --only LIST         comma-separated subset of direct,nginx,haproxy,balancer
  --out DIR           output directory (default: <repo>/artefacts)
  --no-install        never call apt-get / pip; fail if a tool is missing
  --keep-tmp          keep the temp dir (configs, logs, raw wrk output)

Environment (defaults in brackets):
  CONNS="64 256"      wrk connection counts
  DURATION=10s        length of each measured wrk run (wrk syntax: 10s, 1m)
  ROUNDS=3            rounds; the report uses the median over rounds
  WARMUP=2s           un-measured wrk run before every measured run (0 = none)
  WRK_THREADS=1       wrk -t
  BALANCER_BIN=PATH   use this balancer binary and skip `cargo build`
  START_TIMEOUT=30    seconds to wait for each server to answer
  PROXY_CPU=0         CPU for the proxies under test
  LOAD_CPU=1          CPU for wrk and the origins
  ONLY=...            same as --only
  NOISE_MAX_PCT=10    a measured run during which processes that are not ours
                      used more than this % of all CPUs is repeated ...
  NOISE_RETRIES=2     ... at most this many times (the last attempt is kept)
  NGINX_UPSTREAM_KEEPALIVE=64  nginx `keepalive` (idle upstream conns cached)

Outputs: <out>/bench-proxy.md (table + environment), <out>/bench-proxy.csv
(one row per measured run), <out>/bench-proxy.png (plot; needs matplotlib).

Examples:
  jobs/bench-proxy.sh
  DURATION=3s ROUNDS=1 jobs/bench-proxy.sh --only direct,nginx,haproxy
  BALANCER_BIN=target/release/balancer CONNS=64 jobs/bench-proxy.sh
EOF
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
BENCH_DIR=$SCRIPT_DIR/bench
RESULTS_PY=$BENCH_DIR/results.py
export PATH="$PATH:/usr/sbin:/sbin"

CONNS=${CONNS:-"64 256"}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
WRK_THREADS=${WRK_THREADS:-1}
BALANCER_BIN=${BALANCER_BIN:-}
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

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
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
        --keep-tmp) KEEP_TMP=1; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# ---------------------------------------------------------------- validation
TARGETS=()
IFS=',' read -r -a _only <<<"$ONLY"
for t in "${ALL_TARGETS[@]}"; do          # keep canonical order
    for o in "${_only[@]}"; do
        [[ $o == "$t" ]] && TARGETS+=("$t") && break
    done
done
for o in "${_only[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $o "* ]] || die "unknown target '$o' in --only (valid: ${ALL_TARGETS[*]})"
done
((${#TARGETS[@]})) || die "--only selected no target"

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
[[ $START_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "START_TIMEOUT must be a positive integer"
[[ $NOISE_MAX_PCT =~ ^[0-9]+$ ]] || die "NOISE_MAX_PCT must be an integer percentage"
[[ $NOISE_RETRIES =~ ^[0-9]+$ ]] || die "NOISE_RETRIES must be a non-negative integer"
[[ $NGINX_UPSTREAM_KEEPALIVE =~ ^[1-9][0-9]*$ ]] || die "NGINX_UPSTREAM_KEEPALIVE must be a positive integer"
read -r -a CONN_LIST <<<"$CONNS"
((${#CONN_LIST[@]})) || die "CONNS is empty"
for c in "${CONN_LIST[@]}"; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || die "CONNS entries must be positive integers, got '$c'"
    ((c >= WRK_THREADS)) || die "each CONNS entry must be >= WRK_THREADS ($WRK_THREADS)"
done
DUR_S=$(dur_seconds "$DURATION")
WARM_S=$(dur_seconds "$WARMUP")

want() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }

# ------------------------------------------------------------------ tooling
install_tools() {
    local missing=() pkgs=()
    command -v python3 >/dev/null || die "python3 is required (ports, parsing, report)"
    for b in wrk nginx haproxy curl taskset; do
        command -v "$b" >/dev/null || missing+=("$b")
    done
    if ((${#missing[@]})); then
        ((NO_INSTALL == 0)) || die "missing tools: ${missing[*]} (and --no-install given)"
        [[ $EUID -eq 0 ]] || die "missing tools: ${missing[*]}; run as root or: sudo apt-get install -y wrk nginx haproxy curl"
        for b in "${missing[@]}"; do
            case $b in taskset) pkgs+=(util-linux) ;; *) pkgs+=("$b") ;; esac
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
    for b in wrk nginx haproxy curl taskset; do
        command -v "$b" >/dev/null || die "$b still missing after install"
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

check_cpus() {
    local cpus
    cpus=$(nproc --all)
    taskset -c "$PROXY_CPU" true 2>/dev/null || die "cannot pin to CPU $PROXY_CPU (PROXY_CPU); this machine has $cpus CPU(s)"
    taskset -c "$LOAD_CPU" true 2>/dev/null || die "cannot pin to CPU $LOAD_CPU (LOAD_CPU); this machine has $cpus CPU(s)"
    [[ $PROXY_CPU != "$LOAD_CPU" ]] || warn "PROXY_CPU == LOAD_CPU: proxy and load generator share a core"
}

# ------------------------------------------------------- process management
PIDS=()          # every process we started (plus nginx workers), for cleanup
TMP=""
RUN_OK=0

cleanup() {
    local rc=$? pid i
    set +e
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null
    done
    for _ in $(seq 30); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    done
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

# wait_http URL PID LOGFILE [BODY_SUBSTRING]: wait until URL answers 2xx.
wait_http() {
    local url=$1 pid=$2 logf=$3 want_body=${4:-} body deadline
    deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "process $pid exited while waiting for $url (log: $logf)"
        if body=$(curl -fsS --max-time 1 "$url" 2>/dev/null); then
            [[ -z $want_body || $body == *"$want_body"* ]] && return 0
        fi
        sleep 0.1
    done
    return 1
}

render() {  # render TEMPLATE OUTFILE PROXY_PORT
    sed -e "s|@DIR@|$TMP|g" \
        -e "s|@ORIGIN1_PORT@|$P_O1|g" -e "s|@ORIGIN2_PORT@|$P_O2|g" -e "s|@ORIGIN3_PORT@|$P_O3|g" \
        -e "s|@UPSTREAM_KEEPALIVE@|$NGINX_UPSTREAM_KEEPALIVE|g" \
        -e "s|@PROXY_PORT@|$3|g" "$1" >"$2"
    if grep -qE '@[A-Z0-9_]+@' "$2"; then
        die "unrendered placeholder in $2"
    fi
}

# check_distribution NAME URL: a few fresh connections should reach >1 origin.
check_distribution() {
    local name=$1 url=$2 i body seen=() summary
    for i in $(seq 9); do
        body=$(curl -fsS --max-time 2 "$url") || die "$name: request $i to $url failed"
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

# -------------------------------------------------------------------- main
install_tools
check_cpus
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

if want balancer; then
    if [[ -z $BALANCER_BIN ]]; then
        log "building balancer: cargo build --release -p balancer"
        command -v cargo >/dev/null || die "cargo not found (or set BALANCER_BIN=/path/to/balancer)"
        (cd "$REPO_ROOT" && cargo build --release -p balancer) >&2 || die "cargo build --release -p balancer failed"
        BALANCER_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/balancer
    fi
    [[ -x $BALANCER_BIN ]] || die "balancer binary not executable: $BALANCER_BIN"
    BALANCER_BIN=$(cd "$(dirname "$BALANCER_BIN")" && pwd)/$(basename "$BALANCER_BIN")
fi

TMP=$(mktemp -d /tmp/bench-proxy.XXXXXX)
chmod 755 "$TMP"   # nginx workers run as an unprivileged user when we are root
mkdir -p "$TMP/wrk"
read -r P_O1 P_O2 P_O3 P_NGINX P_HAPROXY P_BAL P_ADMIN < <(python3 "$RESULTS_PY" free-ports 7)
[[ -n $P_ADMIN ]] || die "could not allocate free ports"

# ---- origins: one nginx worker, three server blocks, on the load CPU
mkdir -p "$TMP"/origins-tmp
render "$BENCH_DIR/origins.nginx.conf.tmpl" "$TMP/origins.conf" 0
nginx -t -q -p "$TMP/" -e "$TMP/origins.error.log" -c "$TMP/origins.conf" >&2 ||
    die "origins nginx config invalid ($TMP/origins.conf)"
start_bg "$TMP/origins.log" taskset -c "$LOAD_CPU" \
    nginx -p "$TMP/" -e "$TMP/origins.error.log" -c "$TMP/origins.conf" -g 'daemon off;'
ORIGINS_PID=$STARTED_PID
for n in 1 2 3; do
    port_var=P_O$n
    wait_http "http://127.0.0.1:${!port_var}/" "$ORIGINS_PID" "$TMP/origins.error.log" "hello from origin $n" ||
        die "origin $n on port ${!port_var} did not answer within ${START_TIMEOUT}s"
done
add_children "$ORIGINS_PID"
log "origins up on 127.0.0.1:$P_O1,$P_O2,$P_O3 (nginx pid $ORIGINS_PID, CPU $LOAD_CPU)"

declare -A URL CPU_PIDS RSS_PID IDLE_RSS DEAD
URL[direct]="http://127.0.0.1:$P_O1/"

if want nginx; then
    mkdir -p "$TMP"/nginx-proxy-tmp
    render "$BENCH_DIR/proxy.nginx.conf.tmpl" "$TMP/nginx-proxy.conf" "$P_NGINX"
    nginx -t -q -p "$TMP/" -e "$TMP/nginx-proxy.error.log" -c "$TMP/nginx-proxy.conf" >&2 ||
        die "nginx proxy config invalid ($TMP/nginx-proxy.conf)"
    start_bg "$TMP/nginx-proxy.log" taskset -c "$PROXY_CPU" \
        nginx -p "$TMP/" -e "$TMP/nginx-proxy.error.log" -c "$TMP/nginx-proxy.conf" -g 'daemon off;'
    pid=$STARTED_PID
    wait_http "http://127.0.0.1:$P_NGINX/" "$pid" "$TMP/nginx-proxy.error.log" "hello from origin" ||
        die "nginx proxy on port $P_NGINX did not answer within ${START_TIMEOUT}s"
    add_children "$pid"
    workers=$(pgrep -P "$pid" | tr '\n' ' ')
    [[ -n $workers ]] || die "nginx proxy has no worker process"
    URL[nginx]="http://127.0.0.1:$P_NGINX/"
    CPU_PIDS[nginx]="$pid $workers"
    RSS_PID[nginx]=${workers%% *}
    log "nginx proxy up on :$P_NGINX (master $pid, worker ${RSS_PID[nginx]}, CPU $PROXY_CPU)"
fi

if want haproxy; then
    render "$BENCH_DIR/proxy.haproxy.cfg.tmpl" "$TMP/haproxy.cfg" "$P_HAPROXY"
    haproxy -c -q -f "$TMP/haproxy.cfg" >&2 || die "haproxy config invalid ($TMP/haproxy.cfg)"
    start_bg "$TMP/haproxy.log" taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy.cfg"
    pid=$STARTED_PID
    wait_http "http://127.0.0.1:$P_HAPROXY/" "$pid" "$TMP/haproxy.log" "hello from origin" ||
        die "haproxy on port $P_HAPROXY did not answer within ${START_TIMEOUT}s"
    [[ -z $(pgrep -P "$pid" || true) ]] || warn "haproxy forked children; only pid $pid is measured"
    URL[haproxy]="http://127.0.0.1:$P_HAPROXY/"
    CPU_PIDS[haproxy]=$pid
    RSS_PID[haproxy]=$pid
    log "haproxy up on :$P_HAPROXY (pid $pid, CPU $PROXY_CPU)"
fi

BALANCER_CMD="taskset -c $PROXY_CPU env RUST_LOG=warn DEPLOYMENT_AGENT_URL= STATIC_BACKENDS=127.0.0.1:$P_O1,127.0.0.1:$P_O2,127.0.0.1:$P_O3 HOST_PORT_HTTP_BALANCER=$P_BAL HOST_PORT_ADMIN_BALANCER=$P_ADMIN BIND_ADDRESS=127.0.0.1 MAX_CONNECTIONS=10000 ${BALANCER_BIN:-<balancer>}"
if want balancer; then
    start_bg "$TMP/balancer.log" taskset -c "$PROXY_CPU" env RUST_LOG=warn DEPLOYMENT_AGENT_URL= \
        STATIC_BACKENDS="127.0.0.1:$P_O1,127.0.0.1:$P_O2,127.0.0.1:$P_O3" \
        HOST_PORT_HTTP_BALANCER="$P_BAL" HOST_PORT_ADMIN_BALANCER="$P_ADMIN" \
        BIND_ADDRESS=127.0.0.1 MAX_CONNECTIONS=10000 "$BALANCER_BIN"
    pid=$STARTED_PID
    deadline=$((SECONDS + START_TIMEOUT))
    ready=""
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "balancer exited during startup (log: $TMP/balancer.log)"
        if curl -fsS --max-time 1 "http://127.0.0.1:$P_ADMIN/health" >/dev/null 2>&1; then
            ready="admin /health"; break
        fi
        if curl -fsS --max-time 1 "http://127.0.0.1:$P_BAL/" 2>/dev/null | grep -q "hello from origin"; then
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
    RSS_PID[balancer]=$pid
    log "balancer up on :$P_BAL, admin :$P_ADMIN (pid $pid, ready via $ready, $(status_kib "$pid" Threads) threads, CPU $PROXY_CPU)"
fi

for t in "${TARGETS[@]}"; do
    [[ $t == direct ]] && continue
    check_distribution "$t" "${URL[$t]}"
    IDLE_RSS[$t]=$(status_kib "${RSS_PID[$t]}" VmRSS)
done

# ------------------------------------------------------------- measurement
RAW_CSV=$TMP/raw.csv
echo "round,conns,target,order_pos,attempt,duration_s,requests,rps,p50_ms,p99_ms,socket_errors,non2xx,cpu_ticks,cpu_us_per_req,peak_rss_kib,other_cpu_pct,status" >"$RAW_CSV"

# Machine-wide CPU accounting, to see how much of a run was eaten by processes
# that are not ours (a cargo build, another test...). "ours" = proxies +
# origins + wrk; interrupt/softirq time is attributed to our traffic.
proc_stat_cpu() {  # -> "busy_incl_steal total" in ticks, all CPUs
    local _c u n s i w q sq st
    read -r _c u n s i w q sq st _ </proc/stat
    echo "$((u + n + s + st)) $((u + n + s + i + w + q + sq + st))"
}
self_child_ticks() {  # cutime+cstime of this shell (waited-for children: wrk)
    local stat rest f
    stat=$(</proc/$$/stat)
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    echo $((f[13] + f[14]))
}
OUR_PIDS=()      # every long-lived process of ours (filled below)
for p in "${PIDS[@]}"; do OUR_PIDS+=("$p"); done

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
# How busy is the machine before we start (all targets idle)?
read -r b1 a1 < <(proc_stat_cpu)
o1=$(cpu_ticks "${OUR_PIDS[@]}")
sleep 2
read -r b2 a2 < <(proc_stat_cpu)
o2=$(cpu_ticks "${OUR_PIDS[@]}")
IDLE_BUSY_PCT=$(( (a2 - a1) > 0 ? 100 * ((b2 - b1) - (o2 - o1)) / (a2 - a1) : 0 ))
if ((IDLE_BUSY_PCT > NOISE_MAX_PCT)); then
    warn "machine is ${IDLE_BUSY_PCT}% busy (of all CPUs) with our servers idle; results will be noisy. Top processes:"
    ps -eo pid=,pcpu=,etime=,comm= --sort=-pcpu | head -n 5 >&2
fi

NT=${#TARGETS[@]}
NC=${#CONN_LIST[@]}
TOTAL_RUNS=$((ROUNDS * NC * NT))
EST=$((TOTAL_RUNS * (DUR_S + WARM_S)))
log "plan: ${TARGETS[*]} x conns {${CONN_LIST[*]}} x $ROUNDS round(s) = $TOTAL_RUNS runs of $DURATION (+$WARMUP warm-up), ~${EST}s (+ retries of disturbed runs)"

run_wrk() {  # run_wrk CONNS DURATION URL OUTFILE
    timeout --kill-after=5 $(($(dur_seconds "$2") + 30)) \
        taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$1" -d"$2" --latency "$3" >"$4" 2>&1
}

# measure_once ROUND CONNS TARGET POS ATTEMPT -> appends one CSV row; sets
# LAST_OTHER_PCT and LAST_STATUS.
measure_once() {
    local r=$1 c=$2 t=$3 pos=$4 attempt=$5
    local out=$TMP/wrk/r${r}-c${c}-${t}-a${attempt}.txt
    local t0=0 t1 ticks="" us_req="" rss="" status=ok parsed p
    local rps p50 p99 nreq sockerr non2xx msg
    local mb0 ma0 mb1 ma1 our0 our1 w0 w1 other
    # shellcheck disable=SC2086  # CPU_PIDS holds a space-separated pid list
    [[ $t == direct ]] || t0=$(cpu_ticks ${CPU_PIDS[$t]})
    read -r mb0 ma0 < <(proc_stat_cpu)
    our0=$(cpu_ticks "${OUR_PIDS[@]}")
    w0=$(self_child_ticks)
    run_wrk "$c" "$DURATION" "${URL[$t]}" "$out" || status=wrk_failed
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
        rss=$(status_kib "${RSS_PID[$t]}" VmHWM)
        for p in ${CPU_PIDS[$t]}; do
            if ! kill -0 "$p" 2>/dev/null; then
                warn "$t process $p died during the run; skipping $t from now on"
                DEAD[$t]=1
                status=died
            fi
        done
    fi
    if [[ $status == ok ]] && parsed=$(python3 "$RESULTS_PY" parse-wrk "$out"); then
        read -r rps p50 p99 nreq sockerr non2xx <<<"$parsed"
        if [[ $t != direct ]] && ((nreq > 0)); then
            us_req=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$nreq" 'BEGIN { printf "%.3f", t * 1e6 / hz / n }')
        fi
        echo "$r,$c,$t,$pos,$attempt,$DUR_S,$nreq,$rps,$p50,$p99,$sockerr,$non2xx,$ticks,$us_req,$rss,$other,ok" >>"$RAW_CSV"
        msg=$(printf '%s: %.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d' "$t" "$rps" "$p50" "$p99" $((sockerr + non2xx)))
        [[ -z $us_req ]] || msg+="  cpu ${us_req} us/req  VmHWM $((rss / 1024)) MiB"
        log "  -> $msg  (other load ${other}%)"
    else
        [[ $status != ok ]] || status=parse_failed
        warn "$t run failed ($status); wrk output: $out"
        sed 's/^/    /' "$out" >&2 || true
        echo "$r,$c,$t,$pos,$attempt,$DUR_S,0,,,,0,0,$ticks,,$rss,$other,$status" >>"$RAW_CSV"
    fi
    LAST_STATUS=$status
}

run_no=0
RETRIES_USED=0
for ((r = 1; r <= ROUNDS; r++)); do
    for ((k = 0; k < NC; k++)); do
        c=${CONN_LIST[k]}
        off=$(( ((r - 1) * NC + k) % NT ))
        for ((j = 0; j < NT; j++)); do
            t=${TARGETS[(off + j) % NT]}
            run_no=$((run_no + 1))
            if [[ -n ${DEAD[$t]:-} ]]; then
                log "round $r/$ROUNDS c=$c $t: skipped (process died earlier)"
                echo "$r,$c,$t,$((j + 1)),1,$DUR_S,0,,,,0,0,,,,,died" >>"$RAW_CSV"
                continue
            fi
            log "round $r/$ROUNDS c=$c $t (run $run_no/$TOTAL_RUNS, position $((j + 1))/$NT) ..."
            if ((WARM_S > 0)); then
                run_wrk "$c" "$WARMUP" "${URL[$t]}" "$TMP/wrk/warmup-r${r}-c${c}-${t}.txt" ||
                    warn "warm-up wrk for $t exited non-zero"
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
    echo "wrk=$({ wrk -v 2>&1 || true; } | head -n1)"
    if want balancer; then
        echo "balancer binary=$BALANCER_BIN"
        echo "balancer git=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
        echo "rustc=$(ver rustc -V)"
    fi
    echo "targets=${TARGETS[*]}"
    echo "CONNS=${CONN_LIST[*]}"
    echo "DURATION=$DURATION"
    echo "ROUNDS=$ROUNDS"
    echo "WARMUP=$WARMUP (un-measured wrk run right before every measured run)"
    echo "order=rotating: round r, conns index k starts at target (r*len(CONNS)+k) mod len(targets)"
    echo "wrk command=timeout $((DUR_S + 30)) taskset -c $LOAD_CPU wrk -t$WRK_THREADS -c<conns> -d$DURATION --latency http://127.0.0.1:<port>/"
    echo "pinning=proxies on CPU $PROXY_CPU (taskset -c $PROXY_CPU); wrk and the origins share CPU $LOAD_CPU"
    echo "origins=one nginx worker (taskset -c $LOAD_CPU), 3 server blocks, body 'hello from origin N' + newline (20 bytes), keepalive_requests 100000"
    echo "nginx proxy=worker_processes 1, worker_connections 4096, upstream keepalive $NGINX_UPSTREAM_KEEPALIVE, proxy_http_version 1.1, keepalive_requests 100000, access_log off (jobs/bench/proxy.nginx.conf.tmpl)"
    echo "haproxy=nbthread 1, mode http, balance roundrobin, http-reuse always, option http-keep-alive, maxconn 4096, no log (jobs/bench/proxy.haproxy.cfg.tmpl)"
    want balancer && echo "balancer command=$BALANCER_CMD"
    echo "direct=wrk straight to origin 1 (no proxy; RSS/CPU columns n/a)"
    echo "CPU us/req=(utime+stime delta of the proxy process(es) over the measured run, from /proc/PID/stat; nginx = master+worker) / requests completed"
    echo "peak RSS=VmHWM (lifetime peak) of the proxy process after all its runs (nginx: the worker)"
    echo "CPU accounting caveat=utime+stime does not include softirq time (loopback TCP processing is accounted as si on this kernel), for every proxy alike"
    for t in "${TARGETS[@]}"; do
        [[ $t == direct ]] && continue
        echo "idle RSS $t=$(( ${IDLE_RSS[$t]:-0} / 1024 )) MiB (VmRSS right after start)"
    done
    echo "other load before start=${IDLE_BUSY_PCT}% of all CPUs over 2 s with our servers idle (loadavg $LOADAVG_START; at end $LOADAVG_END)"
    echo "other load per run=CPU used by processes that are not ours (machine busy+steal minus proxies, origins, wrk; irq/softirq counted as ours) as % of all CPUs; runs above NOISE_MAX_PCT=$NOISE_MAX_PCT% were repeated up to NOISE_RETRIES=$NOISE_RETRIES times ($RETRIES_USED repeats used); only the last attempt counts"
} >"$META"

cp "$RAW_CSV" "$OUT_DIR/bench-proxy.csv"
rm -f "$OUT_DIR/bench-proxy.png"
log "writing $OUT_DIR/bench-proxy.md"
python3 "$RESULTS_PY" report --csv "$RAW_CSV" --meta "$META" \
    --md "$OUT_DIR/bench-proxy.md" --png "$OUT_DIR/bench-proxy.png" ||
    die "report writer failed"
[[ -f $OUT_DIR/bench-proxy.png ]] || warn "no plot written (matplotlib missing?)"
log "done: $OUT_DIR/bench-proxy.md, bench-proxy.csv$([[ -f $OUT_DIR/bench-proxy.png ]] && echo ', bench-proxy.png')"
RUN_OK=1
