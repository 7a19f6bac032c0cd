#!/usr/bin/env bash
# jobs/bench-ab.sh - interleaved A/B of balancer builds (and nginx as a reference) under the
# same processes: every target is started once, then the rounds alternate between them, so
# the noise of a shared machine falls on all of them alike within a round.
#
# Setup as in jobs/bench-proxy.sh's h1 mode: three nginx origins (one worker) and wrk on
# CPU $LOAD_CPU, each proxy pinned to CPU $PROXY_CPU (the balancer then runs its
# current-thread runtime; nginx one worker, upstream keepalive 64; HAProxy one thread,
# http-reuse always). Per round and target:
# a 2 s warm-up, then a DURATION run of `wrk -t1 -c$CONNS --latency`; CPU per request is
# the proxy's utime+stime from /proc over the run divided by the requests (also split into
# user and system time), and the TCP segments the host sent per request (Tcp OutSegs of
# /proc/net/snmp over the run: 4 when every message is one segment and no ACK goes alone;
# anything else running on the host counts too).
#
# Usage: jobs/bench-ab.sh NAME=BINARY [NAME=BINARY ...]
#   e.g. jobs/bench-ab.sh old=/tmp/balancer-old new=target/release/balancer
# Env: CONNS="64 256", ROUNDS=3, DURATION=6 (seconds), NGINX_REF=1 (0: no nginx reference; not NGINX,
#      which nginx itself reads as inherited sockets), HAPROXY_REF=0 (1: HAProxy as a second reference),
#      PROXY_CPU=0, LOAD_CPU=1, REF_WORKERS=1 (nginx worker_processes, HAProxy nbthread), WRK_THREADS=1.
#      The two-core setup of jobs/bench-proxy.sh's cores2 mode, everything sharing both CPUs:
#      PROXY_CPU=0,1 LOAD_CPU=0,1 REF_WORKERS=2 WRK_THREADS=2 (origins keep one worker).
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
HAPROXY_REF=${HAPROXY_REF:-0}
REF_WORKERS=${REF_WORKERS:-1}
WRK_THREADS=${WRK_THREADS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-/tmp/bench-ab.csv}
posint ROUNDS "$ROUNDS"
posint DURATION "$DURATION"
posint REF_WORKERS "$REF_WORKERS"
posint WRK_THREADS "$WRK_THREADS"
(($#)) || die "usage: jobs/bench-ab.sh NAME=BINARY [NAME=BINARY ...]"
TOOLS=(wrk nginx taskset)
[[ $HAPROXY_REF == 1 ]] && TOOLS+=(haproxy)
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install wrk nginx haproxy util-linux)"
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
    # In a directory of their own: nginx's temp paths are $TMP/b, $TMP/p, ...
    mkdir -p "$TMP/bin"
    cp "$bin" "$TMP/bin/$name"
    port=$(free_port) admin=$(free_port)
    taskset -c "$PROXY_CPU" env RUST_LOG=warn DEPLOYMENT_AGENT_URL= REDIS_HOST= \
        STATIC_BACKENDS="127.0.0.1:$O1,127.0.0.1:$O2,127.0.0.1:$O3" \
        HOST_PORT_HTTP_BALANCER="$port" HOST_PORT_ADMIN_BALANCER="$admin" \
        BIND_ADDRESS=127.0.0.1 MAX_CONNECTIONS=10000 "$TMP/bin/$name" >"$TMP/$name.log" 2>&1 &
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
worker_processes $REF_WORKERS;
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
    # The master's CPU time is nil; the workers' is summed (cpu_ticks takes a list).
    PID[nginx]=$(ps -o pid= --ppid "$master" | tr -d ' ' | paste -sd' ')
    PORT[nginx]=$port
    TARGETS+=(nginx)
    log "nginx reference on :$port (worker pid ${PID[nginx]})"
fi
if [[ $HAPROXY_REF == 1 ]]; then
    port=$(free_port)
    # jobs/bench-proxy.sh's HAProxy, rendered as that script renders it for h1.
    sed -e "s|@DIR@|$TMP|g" -e "s|@WORKERS@|$REF_WORKERS|g" -e "s|@PROXY_PORT@|$port|g" \
        -e "s|@BIND_PARAMS@||g" -e "s|@ORIGIN1_PORT@|$O1|g" -e "s|@ORIGIN2_PORT@|$O2|g" \
        -e "s|@ORIGIN3_PORT@|$O3|g" "$SCRIPT_DIR/bench/proxy.haproxy.cfg.tmpl" >"$TMP/haproxy.cfg"
    ! grep -qE '@[A-Z0-9_]+@' "$TMP/haproxy.cfg" || die "unrendered placeholder in $TMP/haproxy.cfg"
    taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
    PID[haproxy]=$!
    PIDS+=("$!")
    PORT[haproxy]=$port
    TARGETS+=(haproxy)
    wait_up "http://127.0.0.1:$port/"
    log "HAProxy reference on :$port (pid ${PID[haproxy]})"
fi

cpu_ticks() {  # cpu_ticks "PID..." -> utime stime, summed
    local p u=0 s=0 a b
    for p in $1; do
        read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat")
        u=$((u + a)) s=$((s + b))
    done
    echo "$u $s"
}
hz=$(getconf CLK_TCK)
out_segs() { awk '$1 == "Tcp:" && $2 ~ /^[0-9]+$/ {print $12}' /proc/net/snmp; }
[[ $(awk '$1 == "Tcp:" && $2 !~ /^[0-9]+$/ {print $12}' /proc/net/snmp) == OutSegs ]] ||
    die "/proc/net/snmp: the 11th Tcp field is not OutSegs"
echo "round,target,conns,req_per_s,p99,cpu_us_per_req,usr_us_per_req,sys_us_per_req,vmhwm_kib,tcp_segs_per_req" >"$OUT"
for round in $(seq "$ROUNDS"); do
    for conns in $CONNS; do
        for t in "${TARGETS[@]}"; do
            url="http://127.0.0.1:${PORT[$t]}/"
            taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$conns" -d2s "$url" >/dev/null
            read -r u0 s0 < <(cpu_ticks "${PID[$t]}")
            g0=$(out_segs)
            out=$(taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$conns" -d"${DURATION}s" --latency "$url")
            read -r u1 s1 < <(cpu_ticks "${PID[$t]}")
            g1=$(out_segs)
            n=$(awk '/requests in/ {print $1}' <<<"$out")
            p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
            hwm=$(awk '/VmHWM/ {s += $2} END {print s}' $(printf '/proc/%s/status ' ${PID[$t]}))
            read -r cpu usr sys segs < <(python3 -c "k = 1e6 / $hz / $n; print(f'{($u1 + $s1 - $u0 - $s0) * k:.2f} {($u1 - $u0) * k:.2f} {($s1 - $s0) * k:.2f} {($g1 - $g0) / $n:.3f}')")
            echo "$round,$t,$conns,$((n / DURATION)),$p99,$cpu,$usr,$sys,$hwm,$segs" >>"$OUT"
            printf 'round %s  c%-4s %-10s %7d req/s  p99 %-8s  %6s us CPU/req (usr %s sys %s)  VmHWM %s KiB  %s TCP segs/req\n' \
                "$round" "$conns" "$t" "$((n / DURATION))" "$p99" "$cpu" "$usr" "$sys" "$hwm" "$segs"
        done
    done
done
log "CSV: $OUT"
