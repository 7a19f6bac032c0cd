#!/usr/bin/env bash
# jobs/bench-ab.sh - interleaved A/B of balancer builds (and nginx as a reference) under the
# same processes: every target is started once, then the rounds alternate between them, so
# the noise of a shared machine falls on all of them alike within a round.
#
# Setup as in jobs/bench-proxy.sh's h1 mode: three nginx origins (one worker) and wrk on
# CPU $LOAD_CPU, each proxy pinned to CPU $PROXY_CPU (the balancer then runs its
# current-thread runtime; nginx one worker, upstream keepalive 64). Per round and target:
# a 2 s warm-up, then a DURATION run of `wrk -t1 -c$CONNS --latency`; CPU per request is
# the proxy's utime+stime from /proc over the run divided by the requests (also split into
# user and system time).
#
# Usage: jobs/bench-ab.sh NAME=BINARY [NAME=BINARY ...]
#   e.g. jobs/bench-ab.sh old=/tmp/balancer-old new=target/release/balancer
# Env: CONNS="64 256", ROUNDS=3, DURATION=6 (seconds), NGINX_REF=1 (0: no nginx reference; not NGINX,
#      which nginx itself reads as inherited sockets),
#      PROXY_CPU=0, LOAD_CPU=1.
# Output: one line per round, target and connection count on stdout (also as CSV in
# $OUT, default /tmp/bench-ab.csv); progress on stderr.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_TAG=bench-ab
# shellcheck source=jobs/lib/bench.sh
. "$SCRIPT_DIR/lib/bench.sh"
export PATH="$PATH:/usr/sbin:/sbin"

CONNS=${CONNS:-64 256}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6}
NGINX_REF=${NGINX_REF:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-/tmp/bench-ab.csv}
posint ROUNDS "$ROUNDS"
posint DURATION "$DURATION"
(($#)) || die "usage: jobs/bench-ab.sh NAME=BINARY [NAME=BINARY ...]"
for tool in wrk nginx taskset; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install wrk nginx util-linux)"
done

TMP=$(mktemp -d /tmp/bench-ab.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -f $TMP/origins.pid ]] && kill "$(cat "$TMP/origins.pid")" 2>/dev/null || true
    [[ -f $TMP/proxy.pid ]] && kill "$(cat "$TMP/proxy.pid")" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() {  # wait_up URL: until it answers 200 (10 s)
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$1 did not answer within 10 s"
}

O1=$(free_port) O2=$(free_port) O3=$(free_port)
temp_paths="client_body_temp_path $TMP/b; proxy_temp_path $TMP/p; fastcgi_temp_path $TMP/f; uwsgi_temp_path $TMP/u; scgi_temp_path $TMP/s;"
cat >"$TMP/origins.conf" <<EOF
worker_processes 1;
pid $TMP/origins.pid;
error_log $TMP/origins.err warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off; keepalive_requests 100000; keepalive_timeout 60s; $temp_paths
    server { listen 127.0.0.1:$O1; location / { return 200 "hello from origin 1\n"; } }
    server { listen 127.0.0.1:$O2; location / { return 200 "hello from origin 2\n"; } }
    server { listen 127.0.0.1:$O3; location / { return 200 "hello from origin 3\n"; } }
}
EOF
taskset -c "$LOAD_CPU" nginx -c "$TMP/origins.conf" -p "$TMP"
wait_up "http://127.0.0.1:$O1/"

declare -A PORT PID
TARGETS=()
for spec in "$@"; do
    name=${spec%%=*} bin=${spec#*=}
    [[ $name != "$spec" && -x $bin ]] || die "not NAME=BINARY (executable): $spec"
    cp "$bin" "$TMP/$name"
    port=$(free_port) admin=$(free_port)
    taskset -c "$PROXY_CPU" env RUST_LOG=warn DEPLOYMENT_AGENT_URL= REDIS_HOST= \
        STATIC_BACKENDS="127.0.0.1:$O1,127.0.0.1:$O2,127.0.0.1:$O3" \
        HOST_PORT_HTTP_BALANCER="$port" HOST_PORT_ADMIN_BALANCER="$admin" \
        BIND_ADDRESS=127.0.0.1 MAX_CONNECTIONS=10000 "$TMP/$name" >"$TMP/$name.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("$!")
    PORT[$name]=$port
    TARGETS+=("$name")
    wait_up "http://127.0.0.1:$port/"
    log "$name: $bin on :$port (pid ${PID[$name]})"
done
if [[ $NGINX_REF == 1 ]]; then
    port=$(free_port)
    cat >"$TMP/proxy.conf" <<EOF
worker_processes 1;
pid $TMP/proxy.pid;
error_log $TMP/proxy.err warn;
events { worker_connections 4096; }
http {
    access_log off; $temp_paths
    upstream o { server 127.0.0.1:$O1; server 127.0.0.1:$O2; server 127.0.0.1:$O3; keepalive 64; }
    server { listen 127.0.0.1:$port; location / {
        proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
    taskset -c "$PROXY_CPU" nginx -c "$TMP/proxy.conf" -p "$TMP"
    wait_up "http://127.0.0.1:$port/"
    master=$(cat "$TMP/proxy.pid")
    PID[nginx]=$(ps -o pid= --ppid "$master" | head -1 | tr -d ' ')
    PORT[nginx]=$port
    TARGETS+=(nginx)
    log "nginx reference on :$port (worker pid ${PID[nginx]})"
fi

cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }  # utime stime
hz=$(getconf CLK_TCK)
echo "round,target,conns,req_per_s,p99,cpu_us_per_req,usr_us_per_req,sys_us_per_req,vmhwm_kib" >"$OUT"
for round in $(seq "$ROUNDS"); do
    for conns in $CONNS; do
        for t in "${TARGETS[@]}"; do
            url="http://127.0.0.1:${PORT[$t]}/"
            taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d2s "$url" >/dev/null
            read -r u0 s0 < <(cpu_ticks "${PID[$t]}")
            out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${DURATION}s" --latency "$url")
            read -r u1 s1 < <(cpu_ticks "${PID[$t]}")
            n=$(awk '/requests in/ {print $1}' <<<"$out")
            p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
            hwm=$(awk '/VmHWM/ {print $2}' "/proc/${PID[$t]}/status")
            read -r cpu usr sys < <(python3 -c "k = 1e6 / $hz / $n; print(f'{($u1 + $s1 - $u0 - $s0) * k:.2f} {($u1 - $u0) * k:.2f} {($s1 - $s0) * k:.2f}')")
            echo "$round,$t,$conns,$((n / DURATION)),$p99,$cpu,$usr,$sys,$hwm" >>"$OUT"
            printf 'round %s  c%-4s %-10s %7d req/s  p99 %-8s  %6s us CPU/req (usr %s sys %s)  VmHWM %s KiB\n' \
                "$round" "$conns" "$t" "$((n / DURATION))" "$p99" "$cpu" "$usr" "$sys" "$hwm"
        done
    done
done
log "CSV: $OUT"
