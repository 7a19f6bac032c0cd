#!/usr/bin/env bash
# jobs/probe-client-faults.sh - client faults are never charged to backends (issue 14).
#
# Two nginx origins on loopback, the balancer in front (STATIC_BACKENDS, tasks off, default
# ejection threshold, short CLIENT_BODY_TIMEOUT / REQUEST_TIMEOUT / IDLE_TIMEOUT). Runs the
# client-fault scenarios of jobs/bench/client_faults.py one after the other, each while a
# canary client sends normal GETs, and reads the balancer's /metrics around each one:
#   bad_chunked         POSTs with a malformed chunked body (expect 400)
#   aborted_upload      uploads that announce 1 MB, send 100 KB and close
#   slow_body           slowhttptest -B, small body (buffered by the balancer)
#   slow_body_streamed  slowhttptest -B, body over BUFFER_BODY_BYTES (streamed to a backend)
#   stalled_reader      h1 clients that request 4 MiB and stop reading past IDLE_TIMEOUT
# Appends one row per scenario to <out>/probe-client-faults.csv and rewrites
# <out>/probe-client-faults.md. Exits 1 if any scenario caused an ejection, a backend
# failure or a failed canary request (the temp dir with the balancer's log is then kept).
#
# Usage: jobs/probe-client-faults.sh [-h] [--label NAME] [--out DIR] [--keep-tmp]
# Env: BALANCER_BIN (default: cargo build --release -p balancer; copied before use),
#      SCENARIOS=bad_chunked,aborted_upload,slow_body,slow_body_streamed,stalled_reader,
#      BAD_CHUNKED_CLIENTS=20, ABORTED_CLIENTS=12, SLOW_CLIENTS=200, SLOW_SECONDS=20,
#      STALLED_CLIENTS=20, TIMEOUT_S=5 (CLIENT_BODY_TIMEOUT, REQUEST_TIMEOUT, IDLE_TIMEOUT),
#      HOLD (stalled_reader hold, default TIMEOUT_S + 5), BIG_BYTES=4194304,
#      BALANCER_ENV="VAR=value ..." (extra balancer environment), START_TIMEOUT=30.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
PY=$SCRIPT_DIR/bench/client_faults.py
OUT_DIR=$REPO_ROOT/artefacts
LABEL=""
KEEP_TMP=0

BENCH_TAG=probe-client-faults
# shellcheck source=jobs/lib/bench.sh
. "$SCRIPT_DIR/lib/bench.sh"

while (($#)); do
    case $1 in
        --label) [[ $# -ge 2 ]] || die "--label needs a value"; LABEL=$2; shift 2 ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a value"; OUT_DIR=$2; shift 2 ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see -h)" >&2; exit 2 ;;
    esac
done

SCENARIOS=${SCENARIOS:-bad_chunked,aborted_upload,slow_body,slow_body_streamed,stalled_reader}
BAD_CHUNKED_CLIENTS=${BAD_CHUNKED_CLIENTS:-20}
ABORTED_CLIENTS=${ABORTED_CLIENTS:-12}
SLOW_CLIENTS=${SLOW_CLIENTS:-200}
SLOW_SECONDS=${SLOW_SECONDS:-20}
STALLED_CLIENTS=${STALLED_CLIENTS:-20}
TIMEOUT_S=${TIMEOUT_S:-5}
BIG_BYTES=${BIG_BYTES:-4194304}
START_TIMEOUT=${START_TIMEOUT:-30}
BALANCER_ENV=${BALANCER_ENV:-}
export PATH="$PATH:/usr/sbin:/sbin"

posint BAD_CHUNKED_CLIENTS "$BAD_CHUNKED_CLIENTS"
posint ABORTED_CLIENTS "$ABORTED_CLIENTS"
posint SLOW_CLIENTS "$SLOW_CLIENTS"
posint SLOW_SECONDS "$SLOW_SECONDS"
posint STALLED_CLIENTS "$STALLED_CLIENTS"
posint TIMEOUT_S "$TIMEOUT_S"
posint BIG_BYTES "$BIG_BYTES"
posint START_TIMEOUT "$START_TIMEOUT"
HOLD=${HOLD:-$((TIMEOUT_S + 5))}
posint HOLD "$HOLD"
((HOLD > TIMEOUT_S)) || die "HOLD ($HOLD) must exceed IDLE_TIMEOUT (TIMEOUT_S=$TIMEOUT_S)"
select_ordered SCENARIO_LIST "$SCENARIOS" scenario \
    bad_chunked aborted_upload slow_body slow_body_streamed stalled_reader

for tool in nginx python3 curl slowhttptest; do
    command -v "$tool" >/dev/null ||
        die "$tool not found (apt-get install -y nginx python3 curl slowhttptest)"
done
ulimit -n 8192 2>/dev/null ||
    warn "cannot raise the open-file limit; $SLOW_CLIENTS slow clients may not fit"

TMP=$(mktemp -d /tmp/probe-client-faults.XXXXXX)
chmod 755 "$TMP"
PIDS=()
RUN_OK=0
cleanup() {
    local rc=$? p
    set +e
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    if ((RUN_OK)) && ((KEEP_TMP == 0)); then
        rm -rf "$TMP"
    else
        log "temp dir kept (configs, balancer.log, origins.error.log): $TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -------------------------------------------------------------------------- binary
if [[ -z ${BALANCER_BIN:-} ]]; then
    log "building: cargo build --release -p balancer"
    (cd "$REPO_ROOT" && cargo build --release -p balancer) >&2
    BALANCER_BIN=$REPO_ROOT/target/release/balancer
fi
[[ -x $BALANCER_BIN ]] || die "not executable: $BALANCER_BIN"
cp "$BALANCER_BIN" "$TMP/balancer"   # a rebuild during the run does not change what is probed
GIT=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
LABEL=${LABEL:-$GIT}

# ------------------------------------------------------------------------- origins
read -r P_O1 P_O2 P_BAL P_ADMIN < <(python3 "$SCRIPT_DIR/bench/results.py" free-ports 4)
mkdir -p "$TMP/www" "$TMP/nginx-tmp"
head -c "$BIG_BYTES" /dev/zero | tr '\0' 'x' >"$TMP/www/big"
origin_server() {  # origin_server PORT N: one origin; /upload reads the whole body first
    cat <<EOF
    server {
        listen 127.0.0.1:$1;
        root $TMP/www;
        client_max_body_size 16m;
        location = /big { default_type application/octet-stream; }
        location = /upload {
            proxy_pass http://127.0.0.1:$1/sink;
            proxy_http_version 1.1;
            proxy_request_buffering on;
        }
        location = /sink { return 200 "ok from origin $2 (after the body)\n"; }
        location / { return 200 "ok from origin $2\n"; }
    }
EOF
}
{
    cat <<EOF
worker_processes 1;
pid $TMP/origins.pid;
error_log $TMP/origins.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $TMP/nginx-tmp/body;
    proxy_temp_path $TMP/nginx-tmp/proxy;
    fastcgi_temp_path $TMP/nginx-tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx-tmp/uwsgi;
    scgi_temp_path $TMP/nginx-tmp/scgi;
    keepalive_requests 100000;
EOF
    origin_server "$P_O1" 1
    origin_server "$P_O2" 2
    echo "}"
} >"$TMP/origins.conf"
nginx -p "$TMP/" -e "$TMP/origins.error.log" -c "$TMP/origins.conf" -g 'daemon off;' \
    >"$TMP/origins.log" 2>&1 &
PIDS+=($!)

wait_ok() {  # wait_ok URL PID WHAT [CURL_ARGS...]: until URL answers 200 with "ok..."
    local url=$1 pid=$2 what=$3 body deadline=$((SECONDS + START_TIMEOUT))
    shift 3
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "$what exited (see $TMP)"
        if body=$(curl -fsS --max-time 2 "$@" "$url" 2>/dev/null) && [[ $body == ok* ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "$what did not answer $url within ${START_TIMEOUT}s"
}
for p in "$P_O1" "$P_O2"; do
    wait_ok "http://127.0.0.1:$p/canary" "${PIDS[0]}" "origin :$p"
    wait_ok "http://127.0.0.1:$p/upload" "${PIDS[0]}" "origin :$p (POST /upload)" --data-binary "x"
done

# ------------------------------------------------------------------------ balancer
T=${TIMEOUT_S}s
BAL_CONFIG="EJECT_CONSECUTIVE_FAILURES default (5), other settings default but"
BAL_CONFIG+=" CLIENT_BODY_TIMEOUT=$T, REQUEST_TIMEOUT=$T, IDLE_TIMEOUT=$T${BALANCER_ENV:+, $BALANCER_ENV}"
# shellcheck disable=SC2086 # BALANCER_ENV is a list of VAR=value words
env -u EJECT_CONSECUTIVE_FAILURES RUST_LOG=info DEPLOYMENT_AGENT_URL= REDIS_HOST= \
    STATIC_BACKENDS="127.0.0.1:$P_O1,127.0.0.1:$P_O2" BIND_ADDRESS=127.0.0.1 \
    HOST_PORT_HTTP_BALANCER="$P_BAL" HOST_PORT_ADMIN_BALANCER="$P_ADMIN" \
    CLIENT_BODY_TIMEOUT="$T" REQUEST_TIMEOUT="$T" IDLE_TIMEOUT="$T" \
    $BALANCER_ENV "$TMP/balancer" >"$TMP/balancer.log" 2>&1 &
BAL_PID=$!
PIDS+=("$BAL_PID")
wait_ok "http://127.0.0.1:$P_BAL/canary" "$BAL_PID" "balancer"
curl -fsS --max-time 2 "http://127.0.0.1:$P_ADMIN/metrics" | grep -q '^balancer_client_faults_total' ||
    die "the balancer's /metrics has no balancer_client_faults_total"
log "origins :$P_O1 :$P_O2, balancer :$P_BAL admin :$P_ADMIN (pid $BAL_PID); $BAL_CONFIG"

# ----------------------------------------------------------------------- scenarios
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
common=(--port "$P_BAL" --admin "$P_ADMIN" --tmp "$TMP")
for sc in "${SCENARIO_LIST[@]}"; do
    case $sc in
        bad_chunked) args=(--clients "$BAD_CHUNKED_CLIENTS") ;;
        aborted_upload) args=(--clients "$ABORTED_CLIENTS") ;;
        slow_body) args=(--clients "$SLOW_CLIENTS" --duration "$SLOW_SECONDS" --content-length 8192) ;;
        # over BUFFER_BODY_BYTES (64 KiB by default): the body streams to a backend
        slow_body_streamed)
            args=(--clients "$SLOW_CLIENTS" --duration "$SLOW_SECONDS" --content-length 200000) ;;
        stalled_reader) args=(--clients "$STALLED_CLIENTS" --hold "$HOLD") ;;
    esac
    log "scenario $sc"
    lines_before=$(wc -l <"$TMP/balancer.log")
    row=$(python3 "$PY" run --scenario "$sc" "${common[@]}" "${args[@]}")
    kill -0 "$BAL_PID" 2>/dev/null || die "the balancer died during $sc"
    echo "$row" >>"$RESULTS"
    log "$sc: $row"
    # What the balancer said about backends during the scenario.
    if tail -n "+$((lines_before + 1))" "$TMP/balancer.log" |
        grep -Ei 'eject|healthy again|backend.*(fail|error)' >"$TMP/$sc.backend-lines"; then
        warn "$sc: balancer log lines about backends:"
        head -n 20 "$TMP/$sc.backend-lines" >&2
    fi
done

# -------------------------------------------------------------------------- record
mkdir -p "$OUT_DIR"
python3 "$PY" record --out "$OUT_DIR" --label "$LABEL" --git "$GIT" --results "$RESULTS" \
    --config "$BAL_CONFIG"
log "written: $OUT_DIR/probe-client-faults.csv, $OUT_DIR/probe-client-faults.md"

failed=$(python3 - "$RESULTS" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["ejections"] or r["backend_failures"] or r["canary_ok"] != r["canary_total"]:
        print(f'{r["scenario"]}: ejections={r["ejections"]} backend_failures={r["backend_failures"]} '
              f'canary={r["canary_ok"]}/{r["canary_total"]} detail={json.dumps(r["detail"])}')
EOF
)
if [[ -n $failed ]]; then
    log "FAILED: client faults were charged to backends or the canary failed:"
    printf '%s\n' "$failed" >&2
    for f in "$TMP"/*.backend-lines; do
        [[ -s $f ]] || continue
        log "balancer log lines about backends during $(basename "$f" .backend-lines):"
        cat "$f" >&2
    done
    exit 1
fi
RUN_OK=1
log "passed: no ejection, no backend failure, canary 100 % in every scenario"
