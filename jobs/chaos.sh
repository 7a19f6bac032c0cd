#!/usr/bin/env bash
# Fault-injection suite of RustyBalancer: the slim stack, started with jobs/run.sh as in the
# end-to-end test (own project, app id, network and free ports; overlay
# jobs/chaos/docker-compose.chaos.yaml), with a steady trickle of requests through the
# balancer (GET /work?ms=20, then 100 ms of sleep). Each scenario injects one fault; it passes
# when no trickle request failed from 3 s before the fault until the pool has settled, and
# the pool settled within 90 s: the agent's /stats shows exactly 2 active ready containers
# and none SUNDOWN, /health shows docker and redis up, desired 2 and a balancer connected,
# `docker ps -a --filter label=application=<app>` lists exactly those 2 (no duplicate, no
# leftover), and no container was created or removed (except where the scenario scales).
#
#   restart        docker restart of the agent
#   stop30         agent stopped (docker stop) for 30 s, then started
#   kill9          docker kill -s KILL of the agent, then docker start
#   redis-down     Redis stopped; the agent restarted while it is down; Redis started 10 s later
#   redis-flush    FLUSHALL in Redis: the agent's saved state is lost while it runs
#   drain-restart  POST /scale 3, then 2 while 6 long requests (/work?ms=8000) run; the agent
#                  is restarted while a container is SUNDOWN: the long requests must succeed,
#                  the SUNDOWN container must be removed and the pool end at 2
#   docker-cut     Docker unreachable for the agent for 20 s: its socket proxy closes every
#                  connection (jobs/chaos/docker_proxy.py; DOCKER_SOCKET points at it)
#   docker-hang    Docker hung for the agent for 20 s: the proxy accepts and never answers
#   crash          kill -9 of the agent's process from the host (not through Docker): the
#                  restart policy (unless-stopped) must bring it back by itself
#
# Usage: jobs/chaos.sh [--only LIST] [--keep] [--results FILE] [-h]
#   --only LIST     run only these scenarios (comma-separated names or numbers 1-9)
#   --keep          leave the stack running at the end (prints how to remove it)
#   --results FILE  also write the results table (Markdown) to FILE
# Uses the images already built (jobs/run.sh --no-build; build them with jobs/build-images.sh).
# Needs Docker, Compose (as jobs/run.sh), curl and python3. Progress on stderr; exit 0 when
# every scenario run passed. Cleans up (stack, app containers, volume, proxy) even on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OVERLAY=$ROOT/jobs/chaos/docker-compose.chaos.yaml
QUERY=$ROOT/jobs/chaos/query.py
PROXY=$ROOT/jobs/chaos/docker_proxy.py
ALL=(restart stop30 kill9 redis-down redis-flush drain-restart docker-cut docker-hang crash)
T0=$SECONDS
KEEP=0 ONLY="" RESULTS_FILE=""
UP_TIMEOUT=180
SETTLE_DEADLINE=90 # fault over -> pool settled (s)
LEAD=3             # trickle before the fault (s)
STABLE=3           # a settled pool must still be settled this much later (s)
DESIRED=2

usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }
log() { printf '[chaos +%3ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }
fail() {
    printf '[chaos +%3ss] FAILED: %s\n' "$((SECONDS - T0))" "$*" >&2
    exit 1
}

while (($#)); do
    case $1 in
        --keep) KEEP=1 ;;
        --only | --results)
            (($# >= 2)) || fail "$1 needs a value"
            [[ $1 == --only ]] && ONLY=$2 || RESULTS_FILE=$(realpath -m "$2")
            shift
            ;;
        -h | --help) usage && exit 0 ;;
        *) usage >&2 && fail "unknown argument '$1'" ;;
    esac
    shift
done
SELECTED=("${ALL[@]}")
if [[ -n $ONLY ]]; then
    SELECTED=()
    IFS=, read -ra wanted <<<"$ONLY"
    for w in "${wanted[@]}"; do
        [[ $w =~ ^[1-9]$ ]] && ((w <= ${#ALL[@]})) && w=${ALL[w - 1]}
        [[ " ${ALL[*]} " == *" $w "* ]] || fail "unknown scenario '$w' (one of: ${ALL[*]})"
        SELECTED+=("$w")
    done
fi

# --- prerequisites and settings ----------------------------------------------------------

command -v docker >/dev/null 2>&1 || fail "docker not found"
docker info >/dev/null 2>&1 || fail "the Docker engine is not reachable (docker info failed)"
command -v curl >/dev/null 2>&1 || fail "curl not found (apt-get install curl)"
command -v python3 >/dev/null 2>&1 || fail "python3 not found"
REVISIONS=""
for image in balancer deployment-agent playground; do
    docker image inspect "rustybalancer/$image:latest" >/dev/null 2>&1 ||
        fail "image rustybalancer/$image:latest missing: build it with jobs/build-images.sh"
    REVISIONS+="$image $(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' "rustybalancer/$image:latest" | cut -c1-8), "
done
HEAD_REV=$(git -C "$ROOT" rev-parse --short=8 HEAD 2>/dev/null || echo unknown)

# As jobs/e2e.sh: only the suite's settings file counts (the engine's socket is kept: it is
# what the proxy forwards to).
UPSTREAM_SOCKET=${DOCKER_SOCKET:-/var/run/docker.sock}
while read -r key _; do
    [[ $key =~ ^[A-Z_][A-Z0-9_]*$ ]] && unset "$key"
done < <("$ROOT/jobs/setup.sh" --list | tail -n +2)
unset COMPOSE_FILE COMPOSE_PROFILES
[[ -S $UPSTREAM_SOCKET ]] || fail "no Docker socket at $UPSTREAM_SOCKET"
# No pull attempt: the official Redis image when present, else the local stand-in.
REDIS_IMAGE=redis:7
if ! docker image inspect "$REDIS_IMAGE" >/dev/null 2>&1 &&
    docker image inspect rustybalancer/redis-standin:latest >/dev/null 2>&1; then
    REDIS_IMAGE=rustybalancer/redis-standin:latest
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rustybalancer-chaos.XXXXXX")
ENV_FILE=$WORK/chaos.env
SUFFIX=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
PROJECT=rbchaos-$SUFFIX APP=rbchaos-$SUFFIX NETWORK=rbchaos-$SUFFIX
PROXY_SOCKET=$WORK/docker.sock PROXY_PID=""
STACK_TOUCHED=0
declare -A BG_PIDS=()
ROWS=() FAILED=()
# Three distinct free ports (bound together, so they differ).
read -r HTTP_PORT AGENT_PORT ADMIN_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
BALANCER=http://127.0.0.1:$HTTP_PORT AGENT=http://127.0.0.1:$AGENT_PORT ADMIN=http://127.0.0.1:$ADMIN_PORT

run_sh() { "$ROOT/jobs/run.sh" --env-file "$ENV_FILE" -f "$OVERLAY" "$@"; }
reset_sh() { "$ROOT/jobs/reset.sh" --env-file "$ENV_FILE" "$@"; }
query() { python3 "$QUERY" "$@"; }
now_ms() { date +%s%3N; }
now_s() { date +%s.%N | cut -c1-14; }
setting() { grep -E "^$1=" "$ENV_FILE" | tail -n 1 | cut -d= -f2- || true; }
svc_id() {
    docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" | head -n 1
}
# The app's containers as Docker lists them (any state), full ids, sorted.
app_ids() { docker ps -aq --no-trunc --filter "label=application=$APP" | sort; }
set_proxy() { echo "$1" >"$WORK/proxy.mode" && kill -HUP "$PROXY_PID" && sleep 0.2; }

# --- background requests -----------------------------------------------------------------

# A /work?ms=20 request then 100 ms of sleep, over and over; "<epoch s> <status>" per request
# in $WORK/NAME.log (000: curl failed), until the stop file for NAME appears.
trickle_loop() {
    local name=$1 code
    while [[ ! -e $WORK/stop.$name ]]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 "$BALANCER/work?ms=20" || true)
        echo "$(now_s) ${code:-000}" >>"$WORK/$name.log"
        sleep 0.1
    done
}
start_bg() {
    rm -f "$WORK/stop.$1"
    trickle_loop "$1" 2>/dev/null &
    BG_PIDS[$1]=$!
}
stop_bg() {
    local pid=${BG_PIDS[$1]:-}
    [[ -n $pid ]] || return 0
    touch "$WORK/stop.$1"
    if [[ ${2:-} == kill ]]; then pkill -TERM -P "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
    unset "BG_PIDS[$1]"
}

# --- observation -------------------------------------------------------------------------

get() {
    local code
    code=$(curl -s -o "$2" -w '%{http_code}' -m 5 "$1" || true)
    [[ $code == 200 ]]
}
scale_to() {
    local token
    token=$(setting AGENT_TOKEN)
    curl -s -m 10 -X POST -H 'Content-Type: application/json' ${token:+-H "Authorization: Bearer $token"} \
        --data "{\"desired\": $1}" "$AGENT/scale" || true
}

# Sets POOL (a description) and returns 0 when the pool is as it must be after a fault.
pool_ok() {
    local active=0 ready=0 sundown=0 total=0 docker_ok=0 redis_ok=0 desired=- balancers=0
    local stats_ids docker_ids running
    get "$AGENT/stats" "$WORK/stats.json" || { POOL="agent /stats unreachable" && return 1; }
    read -r active ready sundown total <<<"$(query pool "$WORK/stats.json")"
    stats_ids=$(query ids "$WORK/stats.json")
    if get "$AGENT/health" "$WORK/health.json"; then
        read -r docker_ok redis_ok desired _ balancers <<<"$(query health "$WORK/health.json")"
    fi
    docker_ids=$(app_ids)
    running=$(docker ps -q --filter "label=application=$APP" | wc -l)
    POOL="$ready ready, $active active, $sundown sundown; docker $(grep -c . <<<"$docker_ids" || true) ($running running); health docker=$docker_ok redis=$redis_ok desired=$desired balancers=$balancers"
    ((active == DESIRED && ready == DESIRED && sundown == 0 && total == DESIRED)) &&
        ((docker_ok == 1 && redis_ok == 1 && balancers >= 1)) && [[ $desired == "$DESIRED" ]] &&
        [[ $stats_ids == "$docker_ids" ]] && ((running == DESIRED))
}

# Waits (up to SECS) until pool_ok holds twice, STABLE seconds apart; SETTLED_AT: the first.
wait_settled() {
    local deadline=$((SECONDS + $1)) last=$SECONDS
    while ((SECONDS < deadline)); do
        if pool_ok; then
            SETTLED_AT=$SECONDS
            sleep "$STABLE"
            pool_ok && return 0
        fi
        if ((SECONDS - last >= 10)); then
            log "  ... $POOL"
            last=$SECONDS
        fi
        sleep 1
    done
    return 1
}

# Back to normal: proxy forwarding, Redis and agent running, pool settled.
ensure_normal() {
    set_proxy up
    docker start "$REDIS_C" "$AGENT_C" >/dev/null 2>&1 || true
    pool_ok || scale_to "$DESIRED" >/dev/null
    wait_settled "$SETTLE_DEADLINE"
}

# The agent's health during a fault, for the notes.
health_note() {
    get "$AGENT/health" "$WORK/health.json" || { echo "unreachable" && return; }
    query health "$WORK/health.json" | awk '{ print "docker=" $1 " redis=" $2 }'
}

redis_cli() {
    local pw
    pw=$(setting REDIS_PASSWORD)
    docker exec "$REDIS_C" redis-cli ${pw:+-a "$pw" --no-auth-warning} "$@"
}

# --- scenarios: each injects its fault and returns when the fault is over ------------------
# They may add to NOTES, and to PROBLEM (reasons to fail besides the common checks).

fault_restart() { docker restart "$AGENT_C" >/dev/null; }

fault_stop30() { docker stop "$AGENT_C" >/dev/null && sleep 30 && docker start "$AGENT_C" >/dev/null; }

fault_kill9() {
    docker kill -s KILL "$AGENT_C" >/dev/null
    sleep 1
    NOTES+="1 s after the kill the agent was $(docker inspect -f '{{.State.Status}}' "$AGENT_C"); "
    docker start "$AGENT_C" >/dev/null
}

fault_redis_down() {
    docker stop "$REDIS_C" >/dev/null
    sleep 3
    docker restart "$AGENT_C" >/dev/null
    sleep 10
    pool_ok || true
    NOTES+="agent restarted without Redis; 10 s later /stats: ${POOL%%;*}, /health $(health_note); "
    docker start "$REDIS_C" >/dev/null
}

fault_redis_flush() { redis_cli FLUSHALL >/dev/null && sleep 5; }
after_redis_flush() {
    local key=rustybalancer:$APP saved desired
    saved=$(redis_cli SMEMBERS "$key:containers" | sort)
    desired=$(redis_cli GET "$key:desired")
    NOTES+="Redis afterwards: $(grep -c . <<<"$saved" || true) container record(s), desired key '${desired:-missing}'; "
    [[ $saved == "$(app_ids)" ]] || PROBLEM+="the container records were not saved to Redis again; "
}

fault_drain_restart() {
    local reply deadline i in_flight
    reply=$(scale_to 3)
    [[ $reply == *'"desired":3'* ]] || { PROBLEM+="POST /scale 3 answered: ${reply:-nothing}; " && return; }
    deadline=$((SECONDS + 60))
    until get "$AGENT/stats" "$WORK/stats.json" && [[ $(query pool "$WORK/stats.json") == "3 3 0 3" ]]; do
        ((SECONDS < deadline)) || { PROBLEM+="the pool did not reach 3 ready within 60 s; " && return; }
        sleep 0.5
    done
    : >"$WORK/long.log"
    for i in 1 2 3 4 5 6; do
        { echo "$(now_s) $(curl -s -o /dev/null -w '%{http_code}' -m 30 "$BALANCER/work?ms=8000" || true)" >>"$WORK/long.log"; } &
        LONG_PIDS+=($!)
    done
    sleep 1
    reply=$(scale_to 2)
    [[ $reply == *'"desired":2'* ]] || PROBLEM+="POST /scale 2 answered: ${reply:-nothing}; "
    deadline=$((SECONDS + 15))
    while [[ -z $VICTIM ]] && ((SECONDS < deadline)); do
        get "$AGENT/stats" "$WORK/stats.json" && read -r VICTIM in_flight < <(query sundown "$WORK/stats.json")
        [[ -n $VICTIM ]] || sleep 0.1
    done
    [[ -n $VICTIM ]] || { PROBLEM+="no container went SUNDOWN within 15 s of POST /scale 2; " && return; }
    docker restart "$AGENT_C" >/dev/null
    NOTES+="agent restarted while ${VICTIM:0:12} was SUNDOWN with $in_flight request(s) in flight; "
}
after_drain_restart() {
    local pid long_total long_failed
    for pid in "${LONG_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ -s $WORK/long.log ]] || return 0
    read -r long_total long_failed < <(query trickle "$WORK/long.log" 2>/dev/null)
    NOTES+="long requests: $long_total, failed $long_failed; "
    ((long_total == 6 && long_failed == 0)) || PROBLEM+="$long_failed of $long_total long requests failed; "
    [[ -n $VICTIM ]] || return 0
    ! app_ids | grep -q "^$VICTIM" || PROBLEM+="the SUNDOWN container ${VICTIM:0:12} is still there; "
    get "$AGENT/events?limit=500" "$WORK/events.json" || return 0
    if query has "$WORK/events.json" "$SINCE_MS" "$VICTIM" drain_timeout; then
        NOTES+="the SUNDOWN container was stopped at DRAIN_TIMEOUT; "
    elif query has "$WORK/events.json" "$SINCE_MS" "$VICTIM" container_drained; then
        NOTES+="the SUNDOWN container drained; "
    fi
    query has "$WORK/events.json" "$SINCE_MS" "$VICTIM" container_removed ||
        PROBLEM+="no container_removed event for the SUNDOWN container; "
}

# docker_outage MODE: the proxy in MODE for 20 s; the agent's health noted after 14 s (a hung
# listing counts as an outage after 10 s).
docker_outage() {
    set_proxy "$1"
    sleep 14
    NOTES+="14 s into the outage /health $(health_note); "
    sleep 6
    set_proxy up
}
fault_docker_cut() { docker_outage closing; }
fault_docker_hang() { docker_outage hanging; }

fault_crash() {
    local pid restarts
    pid=$(docker inspect -f '{{.State.Pid}}' "$AGENT_C")
    restarts=$(docker inspect -f '{{.RestartCount}}' "$AGENT_C")
    [[ $pid =~ ^[1-9][0-9]*$ ]] || { PROBLEM+="the agent has no process to kill (pid '$pid'); " && return; }
    kill -9 "$pid"
    sleep 2
    NOTES+="Docker restarted the agent $(($(docker inspect -f '{{.RestartCount}}' "$AGENT_C") - restarts)) time(s) by itself; "
}

# --- running a scenario ------------------------------------------------------------------

# The evidence of a failed scenario: failed requests, events, logs since it started.
scenario_diagnostics() {
    local name=$1 svc
    echo "--- $name: failed requests ---" >&2
    query trickle "$WORK/$name.log" 2>&1 >/dev/null | head -n 20 >&2 || true
    echo "--- $name: agent events since the scenario started ---" >&2
    if get "$AGENT/events?limit=500" "$WORK/events.json"; then
        query event-lines "$WORK/events.json" "$SINCE_MS" | tail -n 40 | sed 's/^/    /' | grep . >&2 || echo "    (none)" >&2
    fi
    echo "--- $name: balancer /queue now ---" >&2
    get "$ADMIN/queue" "$WORK/queue.json" && sed 's/^/    /' "$WORK/queue.json" >&2 && echo >&2
    for svc in deployment-agent balancer; do
        echo "--- $name: $svc log since the scenario started (last 60 lines) ---" >&2
        docker logs --timestamps --since "${SINCE_S%.*}" "$(svc_id "$svc")" 2>&1 | tail -n 60 | sed 's/^/    /' >&2 || true
    done
}

run_scenario() {
    local name=$1 fn=${1//-/_} started=$SECONDS before after churn total failed result
    local settled=0 fault_end recovery=-
    log "scenario $2/${#SELECTED[@]} $name"
    NOTES="" PROBLEM="" VICTIM="" LONG_PIDS=()
    if ! ensure_normal; then
        log "  could not restore the normal state before $name: $POOL"
        ROWS+=("| $name | - | - | $POOL | - | - | - | NOT RUN | the stack did not return to normal |")
        FAILED+=("$name (not run)") && return
    fi
    before=$(app_ids)
    SINCE_MS=$(now_ms) SINCE_S=$(now_s)
    start_bg "$name"
    sleep "$LEAD"
    "fault_$fn" || PROBLEM+="a step of the fault failed; "
    fault_end=$SECONDS
    log "  fault over after $((SECONDS - started))s; waiting for the pool to settle"
    if wait_settled "$SETTLE_DEADLINE"; then
        settled=1 recovery="$((SETTLED_AT - fault_end)) s"
    fi
    if declare -F "after_$fn" >/dev/null; then "after_$fn" || PROBLEM+="a check after the fault failed; "; fi
    stop_bg "$name"
    read -r total failed < <(query trickle "$WORK/$name.log" 2>/dev/null)
    after=$(app_ids)
    churn="-"
    if get "$AGENT/events?limit=500" "$WORK/events.json"; then
        churn=$(query count "$WORK/events.json" "$SINCE_MS" container_started container_removed container_replaced container_vanished container_adopted)
    fi
    if [[ $name == drain-restart ]]; then
        [[ $churn == "container_started=1 container_removed=1 container_replaced=0 container_vanished=0"* ]] ||
            PROBLEM+="expected exactly 1 container started and 1 removed ($churn); "
    else
        [[ $before == "$after" ]] || PROBLEM+="the pool's containers changed (a replacement or duplicate); "
        [[ $churn == "container_started=0 container_removed=0 container_replaced=0 container_vanished=0"* ]] ||
            PROBLEM+="containers were created or removed ($churn); "
    fi
    ((settled)) || PROBLEM+="the pool did not settle within ${SETTLE_DEADLINE}s ($POOL); "
    ((total >= 20)) || PROBLEM+="only $total trickle requests; "
    ((failed == 0)) || PROBLEM="$failed of $total requests failed; $PROBLEM"
    if [[ -z $PROBLEM ]]; then
        result=PASS
        log "  PASS: $name: $total requests, 0 failed; recovered in $recovery; $POOL ($((SECONDS - started))s)"
    else
        result=FAIL
        FAILED+=("$name")
        log "  FAIL: $name: $PROBLEM"
        scenario_diagnostics "$name"
    fi
    churn=${churn//container_/} NOTES="$PROBLEM$NOTES"
    ROWS+=("| $name | $total | $failed | ${POOL%%;*} | ${churn// /, } | $recovery | $((SECONDS - started)) s | $result | ${NOTES%; } |")
}

# --- cleanup -----------------------------------------------------------------------------

force_remove() {
    local -a ids
    mapfile -t ids < <({
        docker ps -aq --filter "label=application=$APP"
        docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"
    } | sort -u)
    ((${#ids[@]} == 0)) || docker rm -f "${ids[@]}" >/dev/null 2>&1 || true
    docker network rm "$NETWORK" >/dev/null 2>&1 || true
    mapfile -t ids < <(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
    ((${#ids[@]} == 0)) || docker volume rm "${ids[@]}" >/dev/null 2>&1 || true
}

summary() {
    local table
    table=$(
        echo "| scenario | requests | failed | pool after | containers started, removed, replaced, vanished, adopted | recovery | duration | result | notes |"
        echo "|---|---:|---:|---|---|---:|---:|---|---|"
        printf '%s\n' "${ROWS[@]}"
    )
    echo "$table" >&2
    [[ -z $RESULTS_FILE ]] || printf '%s\n\n%s\n' \
        "$(date -u '+%Y-%m-%d %H:%M UTC'): jobs/chaos.sh${ONLY:+ --only $ONLY}, $((SECONDS - T0)) s up to the end of the last scenario; images ${REVISIONS%, } (HEAD $HEAD_REV)" \
        "$table" >"$RESULTS_FILE"
}

cleanup() {
    local rc=$? name
    trap - EXIT INT TERM
    for name in "${!BG_PIDS[@]}"; do stop_bg "$name" kill; done
    ((${#ROWS[@]} == 0)) || summary
    if ((rc != 0 && STACK_TOUCHED && ${#ROWS[@]} == 0)); then
        for name in deployment-agent balancer; do
            echo "--- last 60 log lines of $name ---" >&2
            docker logs --tail 60 "$(svc_id "$name")" 2>&1 | sed 's/^/    /' >&2 || true
        done
    fi
    [[ -z $PROXY_PID ]] || set_proxy up 2>/dev/null || true
    if ((STACK_TOUCHED && KEEP)); then
        log "--keep: the stack is left running (Docker socket proxy: pid $PROXY_PID); remove it with:"
        log "  jobs/run.sh --down --env-file $ENV_FILE && jobs/reset.sh -y --env-file $ENV_FILE; kill $PROXY_PID; rm -r $WORK"
        exit "$rc"
    fi
    if ((STACK_TOUCHED)); then
        log "cleaning up: jobs/run.sh --down, jobs/reset.sh -y"
        run_sh --down >"$WORK/down.log" 2>&1 || sed 's/^/    /' "$WORK/down.log" >&2
        reset_sh -y >"$WORK/reset.log" 2>&1 || sed 's/^/    /' "$WORK/reset.log" >&2
        force_remove
    fi
    if [[ -n $PROXY_PID ]]; then
        kill "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    if ((rc == 0)); then
        log "PASSED: ${#SELECTED[@]} scenario(s) in $((SECONDS - T0))s"
    else
        log "FAILED after $((SECONDS - T0))s: ${FAILED[*]:-(exit $rc)}"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- up ----------------------------------------------------------------------------------

echo up >"$WORK/proxy.mode"
python3 "$PROXY" "$PROXY_SOCKET" "$UPSTREAM_SOCKET" "$WORK/proxy.mode" 2>"$WORK/proxy.log" &
PROXY_PID=$!
for _ in $(seq 1 50); do [[ -S $PROXY_SOCKET ]] && break || sleep 0.1; done
[[ $(curl -s -m 5 --unix-socket "$PROXY_SOCKET" http://docker/_ping || true) == OK ]] ||
    fail "the Docker socket proxy does not forward to $UPSTREAM_SOCKET: $(cat "$WORK/proxy.log")"

"$ROOT/jobs/setup.sh" --defaults --output "$ENV_FILE" \
    --set "COMPOSE_PROJECT_NAME=$PROJECT" --app-id "$APP" --set "DOCKER_NETWORK=$NETWORK" \
    --image rustybalancer/playground:latest --port 5000 \
    --http-port "$HTTP_PORT" --agent-port "$AGENT_PORT" --admin-port "$ADMIN_PORT" \
    --min 2 --max 3 --set "DOCKER_SOCKET=$PROXY_SOCKET" --set "REDIS_IMAGE=$REDIS_IMAGE" \
    2>"$WORK/setup.log" || fail "jobs/setup.sh could not write the suite's settings: $(cat "$WORK/setup.log")"
log "project $PROJECT: balancer $BALANCER, agent $AGENT, admin $ADMIN; Docker via $PROXY_SOCKET"
log "images: ${REVISIONS%, } (HEAD $HEAD_REV)"
log "starting: jobs/run.sh -e slim --env-file <tmp> -f jobs/chaos/docker-compose.chaos.yaml --no-build"
STACK_TOUCHED=1
if ! run_sh -e slim --no-build --timeout "$UP_TIMEOUT" >"$WORK/up.log" 2>&1; then
    sed 's/^/    /' "$WORK/up.log" >&2
    fail "jobs/run.sh -e slim did not bring the stack up"
fi
AGENT_C=$(svc_id deployment-agent) REDIS_C=$(svc_id redis)
[[ -n $AGENT_C && -n $REDIS_C ]] || fail "cannot find the agent's and Redis's containers"
log "up in $((SECONDS - T0))s; scenarios: ${SELECTED[*]}"

# --- scenarios ---------------------------------------------------------------------------

i=0
for name in "${SELECTED[@]}"; do
    i=$((i + 1))
    run_scenario "$name" "$i"
done
((${#FAILED[@]} == 0)) || exit 1
