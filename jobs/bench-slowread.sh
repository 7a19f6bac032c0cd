#!/usr/bin/env bash
# jobs/bench-slowread.sh - memory of the balancer under slow readers, and memory given back.
#
# One nginx origin serves /big (1 MiB) and / (a few bytes). The balancer proxies to it.
# jobs/bench/slowread.py opens CLIENTS connections that each pipeline PIPELINED requests
# for /big and read slowly, holds them HOLD seconds, closes them all and follows the
# balancer's RSS for AFTER seconds, while a normal client loops on / and counts successes.
# Appends one row to <out>/bench-slowread.csv and rewrites <out>/bench-slowread.md.
#
# Usage: jobs/bench-slowread.sh [--label NAME] [--out DIR]
# Env: BALANCER_BIN (default: cargo build --release), CLIENTS=1000, PIPELINED=3, HOLD=20,
#      AFTER=30, BALANCER_ENV="VAR=value ..." (extra environment for the balancer, e.g.
#      MALLOC_ARENA_MAX=2).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
OUT_DIR=$REPO_ROOT/artefacts
LABEL=""
while (($#)); do
    case $1 in
        --label) LABEL=$2; shift 2 ;;
        --out) OUT_DIR=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
CLIENTS=${CLIENTS:-1000}
PIPELINED=${PIPELINED:-3}
HOLD=${HOLD:-20}
AFTER=${AFTER:-30}
BALANCER_ENV=${BALANCER_ENV:-}
export PATH="$PATH:/usr/sbin:/sbin"

BENCH_TAG=bench-slowread
# shellcheck source=jobs/lib/bench.sh
. "$SCRIPT_DIR/lib/bench.sh"
posint CLIENTS "$CLIENTS"
posint PIPELINED "$PIPELINED"

command -v nginx >/dev/null || die "nginx not found (apt-get install nginx)"
command -v python3 >/dev/null || die "python3 not found"
if [[ -z ${BALANCER_BIN:-} ]]; then
    log "building: cargo build --release -p balancer"
    (cd "$REPO_ROOT" && cargo build --release -p balancer) >&2
    BALANCER_BIN=$REPO_ROOT/target/release/balancer
fi
[[ -x $BALANCER_BIN ]] || die "not executable: $BALANCER_BIN"
LABEL=${LABEL:-$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)}
ulimit -n 65536 2>/dev/null || ulimit -n 8192 || die "cannot raise the open-file limit for $CLIENTS clients"

TMP=$(mktemp -d /tmp/bench-slowread.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r P_ORIGIN P_BAL P_ADMIN < <(python3 "$SCRIPT_DIR/bench/results.py" free-ports 3)
mkdir -p "$TMP/www" "$TMP/nginx-tmp"
head -c $((1 << 20)) /dev/zero | tr '\0' 'x' >"$TMP/www/big"
echo ok >"$TMP/www/index.html"
cat >"$TMP/origin.conf" <<EOF
worker_processes 1;
pid $TMP/origin.pid;
error_log $TMP/origin.error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx-tmp/body;
    proxy_temp_path $TMP/nginx-tmp/proxy;
    fastcgi_temp_path $TMP/nginx-tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx-tmp/uwsgi;
    scgi_temp_path $TMP/nginx-tmp/scgi;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$P_ORIGIN;
        root $TMP/www;
        location = /big { default_type application/octet-stream; }
    }
}
EOF
nginx -p "$TMP/" -e "$TMP/origin.error.log" -c "$TMP/origin.conf" -g 'daemon off;' >"$TMP/origin.log" 2>&1 &
PIDS+=($!)

# shellcheck disable=SC2086 # BALANCER_ENV is a list of VAR=value words
env RUST_LOG=warn DEPLOYMENT_AGENT_URL= REDIS_HOST= STATIC_BACKENDS="127.0.0.1:$P_ORIGIN" \
    HOST_PORT_HTTP_BALANCER="$P_BAL" HOST_PORT_ADMIN_BALANCER="$P_ADMIN" BIND_ADDRESS=127.0.0.1 \
    MAX_CONNECTIONS=20000 $BALANCER_ENV "$BALANCER_BIN" >"$TMP/balancer.log" 2>&1 &
BAL_PID=$!
PIDS+=("$BAL_PID")
for _ in $(seq 100); do
    if [[ $(curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:$P_BAL/big" 2>/dev/null) == $((1 << 20)) ]]; then
        break
    fi
    kill -0 "$BAL_PID" 2>/dev/null || die "balancer exited (log: $(cat "$TMP/balancer.log"))"
    sleep 0.2
done
log "origin :$P_ORIGIN, balancer :$P_BAL (pid $BAL_PID, $BALANCER_ENV); $CLIENTS slow clients x $PIPELINED x 1 MiB, hold ${HOLD}s, then ${AFTER}s"

RESULT=$(python3 "$SCRIPT_DIR/bench/slowread.py" run --port "$P_BAL" --pid "$BAL_PID" \
    --clients "$CLIENTS" --pipelined "$PIPELINED" --hold "$HOLD" --after "$AFTER" \
    --timeline "$TMP/timeline.csv")
kill -0 "$BAL_PID" 2>/dev/null || die "the balancer died during the run"
log "result: $RESULT"

mkdir -p "$OUT_DIR"
python3 "$SCRIPT_DIR/bench/slowread.py" record --out "$OUT_DIR" --label "$LABEL" \
    --env "$BALANCER_ENV" --clients "$CLIENTS" --pipelined "$PIPELINED" --result "$RESULT"
log "written: $OUT_DIR/bench-slowread.md"
