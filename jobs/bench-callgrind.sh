#!/usr/bin/env bash
# jobs/bench-callgrind.sh - count the CPU instructions RustyBalancer executes
# per proxied request (HTTP/1.1 and h2c), with valgrind's callgrind tool.
#
# Method (run `jobs/bench-callgrind.sh -h` for usage):
#   * Three origins (one nginx worker, jobs/bench/origins.nginx.conf.tmpl) and
#     the balancer (STATIC_BACKENDS, no deployment agent) run on loopback. The
#     balancer runs under `valgrind --tool=callgrind`, pinned with
#     `taskset -c $BALANCER_CPU`, so available_parallelism() is 1 and it picks
#     its current-thread runtime (the per-core configuration). Its cwd is the
#     temp dir and its dumps go to $TMP/callgrind.out.<pid>[.<n>]. It gets
#     REDIS_HOST= (tasks off, see BALANCER_REDIS_HOST): otherwise it retries
#     resolving the default Redis host "redis" every <=5 s in blocking-pool
#     threads, which adds a timing-dependent background to the count.
#   * Before the protocols: an idle sample (zero, sleep IDLE_SECONDS, dump)
#     gives the background instruction rate (timers etc.); it is reported as a
#     share of each measurement and NOT subtracted (it is normally ~0).
#   * Per protocol: WARMUP_REQUESTS un-measured requests with h2load, then
#     `callgrind_control -z <pid>` (zero all counters), exactly REQUESTS
#     requests with h2load (h1: --h1, CONNS connections, 1 request in flight
#     each; h2c: prior knowledge, H2C_CONNS connections x H2C_STREAMS
#     streams), a SETTLE_SECONDS pause so connection teardown is included,
#     then `callgrind_control -d <pid>`, which writes callgrind.out.<pid>.<n>.
#     instructions = the Ir "totals:" of that dump (whole process, all
#     threads, user space only); per request = instructions / REQUESTS.
#     Every h2load run must report all requests succeeded, or the script fails.
#   * callgrind_control talks to the valgrind gdbserver through vgdb (FIFOs in
#     /tmp plus ptrace to wake a process blocked in epoll_wait); this was
#     verified to work for a target started elsewhere with --callgrind-out-file
#     in another directory, so the fallback (two runs of different length,
#     stopped with SIGTERM, per request = dIr/dN) is not needed. If vgdb is
#     unavailable (no ptrace permission, e.g. some containers), zero/dump fail
#     and the script stops with an error.
#   * The count is exact and independent of machine load, but not perfectly
#     deterministic (likely event batching per epoll wake-up, hash seeds,
#     allocator state): in trials, identical runs of one binary differed by up
#     to ~0.7% (h1) and ~0.4% (h2c), also with CONNS=1. Treat differences
#     below ~1% as noise, or repeat runs and compare medians.
#
# Outputs (in --out, default <repo>/artefacts): bench-callgrind.csv (one row
# appended per protocol), bench-callgrind.md (regenerated from the CSV), and
# callgrind-top-<label>-<protocol>.txt (top functions by self Ir).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: jobs/bench-callgrind.sh [options]

Counts the CPU instructions (callgrind Ir) the balancer executes per proxied
request: the balancer runs under valgrind --tool=callgrind pinned to one CPU,
h2load sends a warm-up, counters are zeroed, exactly REQUESTS requests are
sent, and the counters are dumped. instructions/request = Ir / REQUESTS.

Options:
  -h, --help          show this help and exit
  --label NAME        label for the CSV rows and file names
                      (default: `git describe --always --dirty`)
  --out DIR           output directory (default: <repo>/artefacts)
  --protocols LIST    comma-separated subset of h1,h2c (default: h1,h2c)
  --keep-tmp          keep the temp dir (configs, logs, h2load output, dumps)
  --proxy NAME        what runs under callgrind: balancer (default), or one of
                      the references nginx (one process: master_process off)
                      and haproxy (nbthread 1), configured from the templates
                      jobs/bench-proxy.sh uses. A reference is started afresh
                      for each protocol (its listener is either h1 or h2c);
                      its rows are labelled with its name and version.

Environment (defaults in brackets):
  BALANCER_BIN=PATH   measure this binary and skip `cargo build --release -p balancer`
  REQUESTS=20000      measured requests per protocol
  WARMUP_REQUESTS=2000  un-measured requests before each measurement (0 = none)
  CONNS=16            HTTP/1.1 connections (one request in flight each)
  H2C_CONNS=10        h2c connections ...
  H2C_STREAMS=10      ... and concurrent streams per connection
  IDLE_SECONDS=5      idle sample for the background rate (0 = skip)
  TOP_N=40            functions listed in callgrind-top-*.txt
  BALANCER_REDIS_HOST=""  REDIS_HOST for the balancer; empty = tasks off, so no
                      Redis reconnect loop (DNS lookups in blocking threads)
                      runs in the background and pollutes the count
  SETTLE_SECONDS=1    pause between the end of h2load and the dump
  VALGRIND_ARGS=""    more callgrind options, e.g. "--cache-sim=yes" (simulated L1
                      and last-level cache misses; the Ir count is unchanged, and
                      the per-request misses of every event are logged)
  START_TIMEOUT=60    seconds to wait for the balancer (valgrind starts slowly)
  BALANCER_CPU=0      CPU the balancer is pinned to
  LOAD_CPU=1          CPU for h2load and the origins (unpinned if it does not exist)

Outputs: <out>/bench-callgrind.csv (one row per protocol appended:
date_utc,label,git,protocol,requests,conns,streams,instructions,
instructions_per_request), <out>/bench-callgrind.md (method + table of all
rows, regenerated), <out>/callgrind-top-<label>-<protocol>.txt (top functions
by self instructions, `callgrind_annotate --inclusive=no`). The per-request
figures are printed on stdout; progress goes to stderr.

Examples:
  jobs/bench-callgrind.sh --label baseline
  BALANCER_BIN=target/release/balancer REQUESTS=5000 jobs/bench-callgrind.sh --protocols h1 --out /tmp/cg
EOF
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
BENCH_DIR=$SCRIPT_DIR/bench
RESULTS_PY=$BENCH_DIR/results.py
CG_PY=$BENCH_DIR/callgrind.py
export PATH="$PATH:/usr/sbin:/sbin"

BALANCER_BIN=${BALANCER_BIN:-}
REQUESTS=${REQUESTS:-20000}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-2000}
CONNS=${CONNS:-16}
H2C_CONNS=${H2C_CONNS:-10}
H2C_STREAMS=${H2C_STREAMS:-10}
IDLE_SECONDS=${IDLE_SECONDS:-5}
TOP_N=${TOP_N:-40}
BALANCER_REDIS_HOST=${BALANCER_REDIS_HOST-}
SETTLE_SECONDS=${SETTLE_SECONDS:-1}
START_TIMEOUT=${START_TIMEOUT:-60}
BALANCER_CPU=${BALANCER_CPU:-0}
read -r -a VALGRIND_EXTRA <<<"${VALGRIND_ARGS:-}"
LOAD_CPU=${LOAD_CPU:-1}
OUT_DIR=$REPO_ROOT/artefacts
LABEL=""
PROTOCOLS=h1,h2c
KEEP_TMP=0
PROXY=balancer
ALL_PROTOCOLS=(h1 h2c)

BENCH_TAG=bench-callgrind
# shellcheck source=jobs/lib/bench.sh
. "$SCRIPT_DIR/lib/bench.sh"

while (($#)); do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --label) [[ $# -ge 2 ]] || die "--label needs a value"; LABEL=$2; shift 2 ;;
        --label=*) LABEL=${1#*=}; shift ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a value"; OUT_DIR=$2; shift 2 ;;
        --out=*) OUT_DIR=${1#*=}; shift ;;
        --protocols) [[ $# -ge 2 ]] || die "--protocols needs a value"; PROTOCOLS=$2; shift 2 ;;
        --protocols=*) PROTOCOLS=${1#*=}; shift ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        --proxy) [[ $# -ge 2 ]] || die "--proxy needs a value"; PROXY=$2; shift 2 ;;
        --proxy=*) PROXY=${1#*=}; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# ---------------------------------------------------------------- validation
select_ordered PROTOS "$PROTOCOLS" "protocol in --protocols" "${ALL_PROTOCOLS[@]}"
case $PROXY in
    balancer|nginx|haproxy) ;;
    *) die "--proxy must be balancer, nginx or haproxy (got '$PROXY')" ;;
esac

posint REQUESTS "$REQUESTS"
nonneg WARMUP_REQUESTS "$WARMUP_REQUESTS"
posint CONNS "$CONNS"
posint H2C_CONNS "$H2C_CONNS"
posint H2C_STREAMS "$H2C_STREAMS"
nonneg IDLE_SECONDS "$IDLE_SECONDS"
posint TOP_N "$TOP_N"
nonneg SETTLE_SECONDS "$SETTLE_SECONDS"
posint START_TIMEOUT "$START_TIMEOUT"
nonneg BALANCER_CPU "$BALANCER_CPU"
nonneg LOAD_CPU "$LOAD_CPU"
for c in "$CONNS" "$H2C_CONNS"; do
    ((REQUESTS >= c)) || die "REQUESTS ($REQUESTS) must be >= the connection count ($c)"
    ((WARMUP_REQUESTS == 0 || WARMUP_REQUESTS >= c)) ||
        die "WARMUP_REQUESTS ($WARMUP_REQUESTS) must be 0 or >= the connection count ($c)"
done

GIT_DESC=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
PROXY_VERSION=""
case $PROXY in
    nginx) PROXY_VERSION=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([^ ]*\).*|nginx \1|p') ;;
    haproxy) PROXY_VERSION=$(haproxy -v 2>&1 | sed -n '1s|^HAProxy version \([^ ]*\).*|HAProxy \1|p') ;;
esac
if [[ -z $LABEL ]]; then
    if [[ $PROXY == balancer ]]; then LABEL=$GIT_DESC; else LABEL="reference: ${PROXY_VERSION:-$PROXY}"; fi
fi
[[ $LABEL != *,* && $LABEL != *$'\n'* ]] || die "--label must not contain commas or newlines"
SAFE_LABEL=${LABEL//[^A-Za-z0-9._-]/_}

# ------------------------------------------------------------------ tooling
TOOLS=(python3 valgrind callgrind_control callgrind_annotate vgdb h2load nginx curl taskset)
[[ $PROXY == haproxy ]] && TOOLS+=(haproxy)
for b in "${TOOLS[@]}"; do
    if ! command -v "$b" >/dev/null; then
        case $b in
            valgrind|callgrind_control|callgrind_annotate|vgdb) pkg=valgrind ;;
            h2load) pkg=nghttp2-client ;;
            taskset) pkg=util-linux ;;
            *) pkg=$b ;;
        esac
        die "$b not found; install it with: apt-get install -y $pkg"
    fi
done
[[ $PROXY == balancer || -n $PROXY_VERSION ]] || die "cannot read the version of $PROXY"
taskset -c "$BALANCER_CPU" true 2>/dev/null || die "cannot pin to CPU $BALANCER_CPU (BALANCER_CPU)"
LOAD_PIN=()
if taskset -c "$LOAD_CPU" true 2>/dev/null; then
    [[ $LOAD_CPU != "$BALANCER_CPU" ]] || warn "LOAD_CPU == BALANCER_CPU; h2load and the origins share the balancer's core"
    LOAD_PIN=(taskset -c "$LOAD_CPU")
else
    warn "cannot pin to CPU $LOAD_CPU (LOAD_CPU); h2load and the origins run unpinned"
fi

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

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
    for _ in $(seq 100); do    # valgrind may need a few seconds to write its dump
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
            log "FAILED (exit $rc); configs, logs and dumps kept in $TMP"
            local f
            for f in "$TMP"/*.log "$TMP"/h2load/*.txt; do
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
start_bg() {  # start_bg DIR LOGFILE CMD... ; runs CMD with cwd DIR; sets STARTED_PID
    local dir=$1 logf=$2
    shift 2
    (cd "$dir" && exec "$@") >"$logf" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

add_children() {  # track children of PID (nginx workers) for cleanup
    local c
    for c in $(pgrep -P "$1" || true); do PIDS+=("$c"); done
}

# wait_http URL PID LOGFILE [BODY_SUBSTRING]: wait until URL answers 2xx
# (with the curl options in CURL_OPTS).
CURL_OPTS=()
wait_http() {
    local url=$1 pid=$2 logf=$3 want_body=${4:-} body deadline
    deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "process $pid exited while waiting for $url (log: $logf)"
        if body=$(curl -fsS --max-time 2 "${CURL_OPTS[@]}" "$url" 2>/dev/null); then
            [[ -z $want_body || $body == *"$want_body"* ]] && return 0
        fi
        sleep 0.2
    done
    return 1
}

# The origins template is shared with jobs/bench-proxy.sh, which may grow new
# placeholders; @ORIGIN_WORKERS@ (nginx worker_processes) is pinned to 1 here.
# The reference proxies' templates are jobs/bench-proxy.sh's; they are rendered
# as that script renders them for its one-core h1 and h2c modes (R_* below).
R_LISTEN="" R_SERVER_EXTRA="" R_BIND="" R_KA_REQ=100000
render() {  # render TEMPLATE OUTFILE
    sed -e "s|@DIR@|$TMP|g" \
        -e "s|@ORIGIN1_PORT@|$P_O1|g" -e "s|@ORIGIN2_PORT@|$P_O2|g" -e "s|@ORIGIN3_PORT@|$P_O3|g" \
        -e "s|@ORIGIN_WORKERS@|1|g" -e "s|@WORKERS@|1|g" -e "s|@UPSTREAM_KEEPALIVE@|64|g" \
        -e "s|@LISTEN_PARAMS@|$R_LISTEN|g" -e "s|@SERVER_EXTRA@|$R_SERVER_EXTRA|g" \
        -e "s|@BIND_PARAMS@|$R_BIND|g" -e "s|@CLIENT_KEEPALIVE_REQUESTS@|$R_KA_REQ|g" \
        -e "s|@PROXY_PORT@|$P_BAL|g" \
        "$1" >"$2"
    if grep -qE '@[A-Z0-9_]+@' "$2"; then
        die "unrendered placeholder(s) $(grep -oE '@[A-Z0-9_]+@' "$2" | sort -u | paste -sd' ') in $2"
    fi
}

now_ms() { date +%s%3N; }

# ---------------------------------------------------------------- callgrind
# cg_cmd zero|dump: one callgrind_control request to the balancer.
cg_cmd() {
    local flag out
    case $1 in zero) flag=-z ;; dump) flag=-d ;; *) die "cg_cmd: bad command $1" ;; esac
    kill -0 "$TGT_PID" 2>/dev/null || die "$PROXY (pid $TGT_PID) is gone (log: $TGT_LOG)"
    out=$(timeout 60 callgrind_control "$flag" "$TGT_PID" 2>&1) ||
        die "callgrind_control $flag $TGT_PID failed: $out"
    [[ $out == *OK* ]] || die "callgrind_control $flag $TGT_PID did not confirm: $out"
}

DUMP_SEQ=0
# cg_dump -> sets DUMP_FILE (the new callgrind.out.<pid>.<n>) and DUMP_IR.
cg_dump() {
    local f deadline
    cg_cmd dump
    DUMP_SEQ=$((DUMP_SEQ + 1))
    deadline=$((SECONDS + 10))
    while :; do
        f=$(python3 "$CG_PY" latest-dump "$TMP" "$TGT_PID" 2>/dev/null || true)
        [[ $f == *".$DUMP_SEQ" ]] && break
        ((SECONDS < deadline)) || die "callgrind_control -d wrote no callgrind.out.$TGT_PID.$DUMP_SEQ in $TMP (newest: ${f:-none})"
        sleep 0.2
    done
    DUMP_FILE=$f
    DUMP_IR=$(python3 "$CG_PY" ir "$DUMP_FILE") || die "cannot read Ir from $DUMP_FILE"
}

# run_h2load PROTO NREQ OUTFILE -> runs h2load against the balancer, checks
# that all NREQ requests succeeded.
run_h2load() {
    local proto=$1 n=$2 outf=$3 args
    case $proto in
        h1) args=(--h1 -c "$CONNS" -m 1) ;;
        h2c) args=(-c "$H2C_CONNS" -m "$H2C_STREAMS") ;;
    esac
    # Under callgrind the balancer manages roughly 0.5-1.5k requests/s. Run in
    # the background and `wait`, so SIGINT/SIGTERM reach the cleanup trap at once.
    local pid rc=0
    timeout --kill-after=5 $((120 + n / 20)) \
        "${LOAD_PIN[@]}" h2load -n "$n" "${args[@]}" "http://127.0.0.1:$P_BAL/" >"$outf" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    unset 'PIDS[${#PIDS[@]}-1]'
    if ((rc != 0)); then
        sed 's/^/    /' "$outf" >&2 || true
        die "h2load ($proto, $n requests) failed or timed out (exit $rc); output: $outf"
    fi
    python3 "$CG_PY" parse-h2load "$outf" "$n" >/dev/null || {
        sed 's/^/    /' "$outf" >&2 || true
        die "h2load ($proto) did not complete all $n requests successfully"
    }
}

# -------------------------------------------------------------------- main
T_START=$SECONDS
if [[ $PROXY != balancer ]]; then
    BALANCER_BIN=""
elif [[ -z $BALANCER_BIN ]]; then
    log "building balancer: cargo build --release -p balancer"
    command -v cargo >/dev/null || die "cargo not found (or set BALANCER_BIN=/path/to/balancer)"
    (cd "$REPO_ROOT" && cargo build --release -p balancer) >&2 ||
        die "cargo build --release -p balancer failed (or set BALANCER_BIN=/path/to/balancer)"
    BALANCER_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/balancer
fi
if [[ $PROXY == balancer ]]; then
    [[ -x $BALANCER_BIN ]] || die "balancer binary not executable: $BALANCER_BIN"
    BALANCER_BIN=$(cd "$(dirname "$BALANCER_BIN")" && pwd)/$(basename "$BALANCER_BIN")
fi

TMP=$(mktemp -d /tmp/bench-callgrind.XXXXXX)
chmod 755 "$TMP"   # nginx workers run as an unprivileged user when we are root
mkdir -p "$TMP/h2load" "$TMP/origins-tmp"
if [[ $PROXY == balancer ]]; then
    # Snapshot the binary: a concurrent `cargo build` may replace it mid-run.
    cp "$BALANCER_BIN" "$TMP/balancer"
    BIN_SHA=$(sha256sum "$TMP/balancer" | cut -c1-12)
    log "balancer binary: $BALANCER_BIN (sha256 $BIN_SHA..., modified $(date -r "$BALANCER_BIN" '+%Y-%m-%d %H:%M:%S')); git $GIT_DESC; label '$LABEL'"
else
    log "measuring the reference $PROXY_VERSION ($(command -v "$PROXY")); label '$LABEL'"
fi

read -r P_O1 P_O2 P_O3 P_BAL P_ADMIN < <(python3 "$RESULTS_PY" free-ports 5)
[[ -n ${P_ADMIN:-} ]] || die "could not allocate free ports"

# ---- origins: one nginx worker, three server blocks
render "$BENCH_DIR/origins.nginx.conf.tmpl" "$TMP/origins.conf"
nginx -t -q -p "$TMP/" -e "$TMP/origins.error.log" -c "$TMP/origins.conf" >&2 ||
    die "origins nginx config invalid ($TMP/origins.conf)"
start_bg "$TMP" "$TMP/origins.log" "${LOAD_PIN[@]}" \
    nginx -p "$TMP/" -e "$TMP/origins.error.log" -c "$TMP/origins.conf" -g 'daemon off;'
ORIGINS_PID=$STARTED_PID
for n in 1 2 3; do
    port_var=P_O$n
    wait_http "http://127.0.0.1:${!port_var}/" "$ORIGINS_PID" "$TMP/origins.error.log" "hello from origin $n" ||
        die "origin $n on port ${!port_var} did not answer within ${START_TIMEOUT}s"
done
add_children "$ORIGINS_PID"
log "origins up on 127.0.0.1:$P_O1,$P_O2,$P_O3 (nginx pid $ORIGINS_PID)"

# ---- the proxy under callgrind, cwd = $TMP
TGT_PID="" TGT_LOG=""
# start_target PROTO: starts $PROXY under callgrind, ready for PROTO.
start_target() {
    local proto=$1 t0=$SECONDS threads conf
    CURL_OPTS=()
    [[ $proto == h2c ]] && CURL_OPTS=(--http2-prior-knowledge)
    DUMP_SEQ=0   # callgrind numbers its dumps per process
    case $PROXY in
        balancer)
            TGT_LOG=$TMP/balancer.log
            start_bg "$TMP" "$TGT_LOG" taskset -c "$BALANCER_CPU" env RUST_LOG=warn DEPLOYMENT_AGENT_URL= \
                STATIC_BACKENDS="127.0.0.1:$P_O1,127.0.0.1:$P_O2,127.0.0.1:$P_O3" \
                HOST_PORT_HTTP_BALANCER="$P_BAL" HOST_PORT_ADMIN_BALANCER="$P_ADMIN" \
                BIND_ADDRESS=127.0.0.1 MAX_CONNECTIONS=10000 REDIS_HOST="$BALANCER_REDIS_HOST" \
                valgrind --tool=callgrind "${VALGRIND_EXTRA[@]}" --callgrind-out-file="$TMP/callgrind.out.%p" "$TMP/balancer"
            ;;
        nginx)
            # h2c: the listener takes prior-knowledge HTTP/2 only (as in jobs/bench-proxy.sh).
            R_KA_REQ=100000 R_LISTEN="" R_SERVER_EXTRA="# HTTP/1.1 listener"
            if [[ $proto == h2c ]]; then nginx_h2c_listener; fi
            conf=$TMP/nginx-proxy-$proto.conf
            mkdir -p "$TMP/nginx-proxy-tmp"
            render "$BENCH_DIR/proxy.nginx.conf.tmpl" "$conf"
            nginx -t -q -p "$TMP/" -e "$TMP/nginx-proxy.error.log" -c "$conf" >&2 ||
                die "nginx proxy config invalid ($conf)"
            TGT_LOG=$TMP/nginx-proxy-$proto.log
            # master_process off: one process serves (the worker's event loop), so
            # callgrind sees all of nginx's work in the process it was started as.
            start_bg "$TMP" "$TGT_LOG" taskset -c "$BALANCER_CPU" \
                valgrind --tool=callgrind "${VALGRIND_EXTRA[@]}" --callgrind-out-file="$TMP/callgrind.out.%p" \
                nginx -p "$TMP/" -e "$TMP/nginx-proxy.error.log" -c "$conf" -g 'daemon off; master_process off;'
            ;;
        haproxy)
            R_BIND=""
            [[ $proto == h2c ]] && R_BIND=" proto h2"
            conf=$TMP/haproxy-$proto.cfg
            render "$BENCH_DIR/proxy.haproxy.cfg.tmpl" "$conf"
            haproxy -c -q -f "$conf" >&2 || die "haproxy config invalid ($conf)"
            TGT_LOG=$TMP/haproxy-$proto.log
            start_bg "$TMP" "$TGT_LOG" taskset -c "$BALANCER_CPU" \
                valgrind --tool=callgrind "${VALGRIND_EXTRA[@]}" --callgrind-out-file="$TMP/callgrind.out.%p" \
                haproxy -db -f "$conf"
            ;;
    esac
    TGT_PID=$STARTED_PID
    wait_http "http://127.0.0.1:$P_BAL/" "$TGT_PID" "$TGT_LOG" "hello from origin" ||
        die "$PROXY under callgrind did not proxy on :$P_BAL within ${START_TIMEOUT}s (log: $TGT_LOG)"
    threads=$(awk '$1 == "Threads:" { print $2 }' "/proc/$TGT_PID/status" 2>/dev/null || echo '?')
    log "$PROXY up under callgrind for $proto in $((SECONDS - t0))s on :$P_BAL (pid $TGT_PID, CPU $BALANCER_CPU, $threads thread(s))"
    [[ $PROXY != balancer || $threads == 1 ]] ||
        warn "balancer has $threads threads; expected the single-thread runtime (is CPU pinning effective?)"
    [[ -z $(pgrep -P "$TGT_PID" || true) ]] || warn "$PROXY forked children; only pid $TGT_PID is measured"
}

# stop_target: stops it gracefully (callgrind writes its final dump on exit).
stop_target() {
    local rc sig=TERM
    # HAProxy's graceful stop is SIGUSR1 (SIGTERM stops it at once, exit 143).
    [[ $PROXY == haproxy ]] && sig=USR1
    kill -"$sig" "$TGT_PID" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$TGT_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$TGT_PID" 2>/dev/null; then
        warn "$PROXY did not exit within 30s of SIG$sig; cleanup will kill it"
    else
        wait "$TGT_PID" 2>/dev/null && rc=0 || rc=$?
        ((rc == 0)) || warn "$PROXY exited with status $rc after SIG$sig (log: $TGT_LOG)"
    fi
    TGT_PID=""
}

# ---- idle background rate (measured once, right after the first start)
IDLE_RATE=""
idle_sample() {
    local ms0 ms1
    cg_cmd zero
    ms0=$(now_ms)
    sleep "$IDLE_SECONDS"
    cg_dump
    ms1=$(now_ms)
    IDLE_RATE=$((DUMP_IR * 1000 / (ms1 - ms0)))
    log "idle: $DUMP_IR instructions in $((ms1 - ms0)) ms -> $IDLE_RATE instructions/s"
}

# ---- measurements
CSV=$OUT_DIR/bench-callgrind.csv
MD=$OUT_DIR/bench-callgrind.md
DATE_UTC=$(date -u '+%Y-%m-%d %H:%M:%S')
SUMMARY=()
for proto in "${PROTOS[@]}"; do
    case $proto in
        h1) conns=$CONNS; streams=1 ;;
        h2c) conns=$H2C_CONNS; streams=$H2C_STREAMS ;;
    esac
    # The balancer serves both protocols on one listener; a reference is
    # restarted with the protocol's listener.
    if [[ -z $TGT_PID || $PROXY != balancer ]]; then
        [[ -z $TGT_PID ]] || stop_target
        start_target "$proto"
        if ((IDLE_SECONDS > 0)) && [[ -z $IDLE_RATE ]]; then idle_sample; fi
    fi
    if ((WARMUP_REQUESTS > 0)); then
        log "$proto: warm-up, $WARMUP_REQUESTS requests ($conns conns x $streams streams)"
        run_h2load "$proto" "$WARMUP_REQUESTS" "$TMP/h2load/$proto-warmup.txt"
        sleep "$SETTLE_SECONDS"
    fi
    log "$proto: measuring $REQUESTS requests ($conns conns x $streams streams)"
    cg_cmd zero
    ms0=$(now_ms)
    run_h2load "$proto" "$REQUESTS" "$TMP/h2load/$proto.txt"
    ms_load=$(($(now_ms) - ms0))
    sleep "$SETTLE_SECONDS"
    cg_dump
    ms1=$(now_ms)
    ir=$DUMP_IR
    ((ir > 0)) || die "$proto: dump $DUMP_FILE has 0 instructions"
    per_req=$(awk -v i="$ir" -v n="$REQUESTS" 'BEGIN { printf "%.1f", i / n }')
    msg="$proto: $ir instructions / $REQUESTS requests = $per_req per request (h2load $((ms_load / 1000)).$(printf '%03d' $((ms_load % 1000)))s, $((REQUESTS * 1000 / (ms_load > 0 ? ms_load : 1))) req/s under callgrind)"
    if [[ -n $IDLE_RATE ]]; then
        idle_share=$(awk -v r="$IDLE_RATE" -v ms="$((ms1 - ms0))" -v i="$ir" 'BEGIN { printf "%.3f", 100 * r * ms / 1000 / i }')
        msg+="; idle background would be ~${idle_share}% of it"
    fi
    log "$msg"
    if ((${#VALGRIND_EXTRA[@]})); then
        log "$proto: every event per request: $(python3 "$CG_PY" per-request "$DUMP_FILE" "$REQUESTS")"
    fi
    cp "$DUMP_FILE" "$TMP/measured-$proto.callgrind.out"

    top=$OUT_DIR/callgrind-top-$SAFE_LABEL-$proto.txt
    python3 "$CG_PY" fix-calls "$DUMP_FILE" "$TMP/annotate-$proto.callgrind.out" ||
        die "cannot prepare $DUMP_FILE for callgrind_annotate"
    {
        echo "# $proto, label '$LABEL', git $GIT_DESC, $REQUESTS requests, $conns conns x $streams streams"
        echo "# $ir instructions, $per_req per request. Top $TOP_N functions by self Ir:"
        echo "# callgrind_annotate --inclusive=no --auto=no --threshold=100 <dump with calls=0 -> calls=1>"
        echo "# (callgrind_annotate would otherwise book the cost under calls=0 lines, i.e. calls"
        echo "# that began before the counters were zeroed, as self cost of __libc_start_main)"
        callgrind_annotate --inclusive=no --auto=no --threshold=100 "$TMP/annotate-$proto.callgrind.out" 2>&1 |
            awk -v n="$TOP_N" '   # reads everything (no SIGPIPE under pipefail)
                done { next }
                { print }
                /file:function/ { table = 1; skip = 1; next }
                table && skip { skip = 0; next }      # the dashes under the heading
                table && NF && ++shown >= n { done = 1 }
                table && !NF { done = 1 }'
    } >"$top" || die "callgrind_annotate failed on $TMP/annotate-$proto.callgrind.out"
    log "$proto: top functions by self instructions ($top):"
    sed 's/^/    /' "$top" >&2

    python3 "$CG_PY" append --csv "$CSV" --date "$DATE_UTC" --label "$LABEL" --git "$GIT_DESC" \
        --protocol "$proto" --requests "$REQUESTS" --conns "$conns" --streams "$streams" \
        --instructions "$ir" || die "could not append to $CSV"
    SUMMARY+=("$(printf '%-4s %12s instructions/request  (%s instructions, %s requests, %s conns x %s streams)' \
        "$proto" "$per_req" "$ir" "$REQUESTS" "$conns" "$streams")")
done

stop_target

python3 "$CG_PY" report --csv "$CSV" --md "$MD" || die "report writer failed"
log "done in $((SECONDS - T_START))s: $CSV, $MD"
if [[ $PROXY == balancer ]]; then
    printf '%s\n' "label=$LABEL git=$GIT_DESC binary=$BALANCER_BIN (sha256 $BIN_SHA...)"
else
    printf '%s\n' "label=$LABEL ($PROXY_VERSION)"
fi
printf '%s\n' "${SUMMARY[@]}"
RUN_OK=1
