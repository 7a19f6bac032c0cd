#!/usr/bin/env bash
# End-to-end test of RustyBalancer (issue #4): the slim stack, started with jobs/run.sh as a
# user would, checked from the host through its published ports only.
#
#   1. up        jobs/run.sh -e slim with an isolated project (own COMPOSE_PROJECT_NAME,
#                APP_IDENTIFIER, network and free host ports, from a temporary settings
#                file), the playground app, DEFAULT_CONTAINER=2, and the overlay
#                jobs/e2e/docker-compose.e2e.yaml (agent API published, fast scaling)
#   2. spread    /echo through the balancer: every request 200, answered by >= 2 containers
#   2b. tasks    a task submission through the balancer (Prefer: respond-async) is stored in
#                the stack's Redis and run on the pool: 202 + Location, the status reaches
#                succeeded, /result replays the app's answer (which saw X-Task-Id); and
#                `wait=10` answers with the result itself
#   3. scores    the agent's /stats lists >= 2 containers with numeric scores and LU/MU/HU
#   4. scale-up  sustained concurrent /cpu load through the balancer: the pool grows past 2
#   5. scale-down the load stops; a trickle of /work requests (one per ~100 ms) runs while
#                the pool shrinks back to 2 through SUNDOWN (events container_sundown and
#                container_removed); the trickle must see no error
#   6. heal      docker kill of one app container: replaced by a new ready one (a trickle
#                runs across the kill; its errors are reported, not failed on: requests in
#                flight on a killed container may fail)
#   7. teardown  jobs/run.sh --down, then jobs/reset.sh -y: no container, network or volume
#                of the test's project is left
# The test cleans up (stack, app containers, network, volume, background load) even when it
# fails, after printing the agent's and the balancer's logs and the last /stats and /events.
#
# Usage: jobs/e2e.sh [--no-build] [--keep] [-h]
#   --no-build  use the images already built (jobs/build-images.sh); default: run.sh builds
#   --keep      on failure, leave the stack running for inspection (prints how to remove it)
# Needs Docker, Compose (as jobs/run.sh), curl and python3; cargo unless --no-build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OVERLAY=$ROOT/jobs/e2e/docker-compose.e2e.yaml
INSPECT=$ROOT/jobs/e2e/inspect.py
BUILD_ARG=()
KEEP=0
T0=$SECONDS

# Deadlines (seconds).
UP_TIMEOUT=180
SPREAD_DEADLINE=30
SCORES_DEADLINE=40
SCALE_UP_DEADLINE=90
SCALE_DOWN_DEADLINE=120
HEAL_DEADLINE=60
LOAD_LOOPS=8

usage() {
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
}

log() {
    printf '[e2e +%3ss] %s\n' "$((SECONDS - T0))" "$*" >&2
}

fail() {
    printf '[e2e +%3ss] FAILED: %s\n' "$((SECONDS - T0))" "$*" >&2
    exit 1
}

while (($#)); do
    case $1 in
        --no-build) BUILD_ARG=(--no-build) ;;
        --keep) KEEP=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            fail "unknown argument '$1'"
            ;;
    esac
    shift
done

# --- prerequisites ---------------------------------------------------------------------

command -v docker >/dev/null 2>&1 || fail "docker not found: the end-to-end test needs Docker"
docker info >/dev/null 2>&1 || fail "the Docker engine is not reachable (docker info failed): the end-to-end test needs it"
command -v curl >/dev/null 2>&1 || fail "curl not found (apt-get install curl)"
command -v python3 >/dev/null 2>&1 || fail "python3 not found"

# Only the test's settings file counts: settings exported in the caller's environment
# would override it (as they override .env), so drop them (the Docker socket is kept).
DOCKER_SOCKET_SETTING=${DOCKER_SOCKET:-/var/run/docker.sock}
while read -r key _; do
    [[ $key =~ ^[A-Z_][A-Z0-9_]*$ ]] && unset "$key"
done < <("$ROOT/jobs/setup.sh" --list | tail -n +2)
unset COMPOSE_FILE COMPOSE_PROFILES

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rustybalancer-e2e.XXXXXX")
ENV_FILE=$WORK/e2e.env
SUFFIX=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
PROJECT=rbe2e-$SUFFIX
APP=rbe2e-$SUFFIX
NETWORK=rbe2e-$SUFFIX
STACK_TOUCHED=0
TORN_DOWN=0
declare -A BG_PIDS=()

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

HTTP_PORT=$(free_port)
AGENT_PORT=$(free_port)
ADMIN_PORT=$(free_port)
while [[ $AGENT_PORT == "$HTTP_PORT" ]]; do AGENT_PORT=$(free_port); done
while [[ $ADMIN_PORT == "$HTTP_PORT" || $ADMIN_PORT == "$AGENT_PORT" ]]; do ADMIN_PORT=$(free_port); done
BALANCER=http://127.0.0.1:$HTTP_PORT
AGENT=http://127.0.0.1:$AGENT_PORT
ADMIN=http://127.0.0.1:$ADMIN_PORT

run_sh() { "$ROOT/jobs/run.sh" --env-file "$ENV_FILE" -f "$OVERLAY" "$@"; }
reset_sh() { "$ROOT/jobs/reset.sh" --env-file "$ENV_FILE" "$@"; }

# --- background loops ------------------------------------------------------------------

# CPU load: requests to /cpu one after the other until stop file NAME appears.
load_loop() {
    local name=$1
    while [[ ! -e $WORK/stop.$name ]]; do
        curl -s -o /dev/null -m 30 "$BALANCER/cpu?ms=200" || true
    done
}

# A trickle: one /work?ms=20 request about every 100 ms, "<epoch> <status>" per request in
# $WORK/NAME.log (status 000: curl failed), until stop file NAME appears.
trickle_loop() {
    local name=$1 code
    while [[ ! -e $WORK/stop.$name ]]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 "$BALANCER/work?ms=20" || true)
        echo "$(date +%s.%N | cut -c1-14) ${code:-000}" >>"$WORK/$name.log"
        sleep 0.1
    done
}

# start_bg NAME FUNCTION: runs FUNCTION NAME in the background.
start_bg() {
    local name=$1 fn=$2
    rm -f "$WORK/stop.$name"
    # stderr: no "Terminated" lines when stop_bg kills a loop's request.
    "$fn" "$name" 2>/dev/null &
    BG_PIDS[$name]=$!
}

# stop_bg NAME [kill]: lets NAME's loop finish its current request (or kills it) and waits.
stop_bg() {
    local name=$1 how=${2:-finish} pid
    pid=${BG_PIDS[$name]:-}
    [[ -n $pid ]] || return 0
    touch "$WORK/stop.$name"
    if [[ $how == kill ]]; then
        pkill -TERM -P "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset "BG_PIDS[$name]"
}

# Prints "<requests> <errors>" of trickle NAME and lists its errors (if any) on stderr.
trickle_result() {
    local file=$WORK/$1.log total errors
    [[ -f $file ]] || {
        echo "0 0"
        return
    }
    total=$(wc -l <"$file")
    errors=$(awk '$2 != "200"' "$file" | wc -l)
    if ((errors)); then
        awk '$2 != "200" { print "    error at " $1 ": HTTP " $2 }' "$file" | head -n 20 >&2
    fi
    echo "$total $errors"
}

# --- observation -------------------------------------------------------------------------

# get URL FILE: GET into FILE; fails (quietly) unless 200.
get() {
    local code
    code=$(curl -s -o "$2" -w '%{http_code}' -m 5 "$1" || true)
    [[ $code == 200 ]]
}

stats() { get "$AGENT/stats" "$WORK/stats.json"; }
events() { get "$AGENT/events?limit=500" "$WORK/events.json"; }
inspect() { python3 "$INSPECT" "$@"; }
now_ms() { date +%s%3N; }

# has_event KIND SINCE_MS ID: events.json has an event KIND about container ID since then.
has_event() {
    local ids
    ids=$(inspect events "$WORK/events.json" "$1" "$2")
    [[ $'\n'$ids$'\n' == *$'\n'"$3"$'\n'* ]]
}

# Reads the pool from /stats into ACTIVE READY SCORED SUNDOWN TOTAL (all 0 when unreachable).
read_pool() {
    if stats; then
        read -r ACTIVE READY SCORED SUNDOWN TOTAL <<<"$(inspect pool "$WORK/stats.json")"
    else
        ACTIVE=0 READY=0 SCORED=0 SUNDOWN=0 TOTAL=0
    fi
}

pool_line() {
    echo "containers=$TOTAL active=$ACTIVE ready=$READY scored=$SCORED sundown=$SUNDOWN avg_score=$(inspect avg "$WORK/stats.json" 2>/dev/null || echo -)"
}

# Progress line every 10 s while waiting.
LAST_PROGRESS=0
progress() {
    if ((SECONDS - LAST_PROGRESS >= 10)); then
        log "  ... $*"
        LAST_PROGRESS=$SECONDS
    fi
}

phase_done() {
    local name=$1 started=$2
    shift 2
    PHASES+=("$name $((SECONDS - started))s")
    log "ok: $name ($((SECONDS - started))s) $*"
}
PHASES=()

# --- cleanup -----------------------------------------------------------------------------

diagnostics() {
    log "--- diagnostics (project $PROJECT, app $APP) ---"
    local service id
    for service in deployment-agent balancer; do
        id=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
            --filter "label=com.docker.compose.service=$service" | head -n 1)
        [[ -n $id ]] || continue
        echo "--- last 80 log lines of $service ---" >&2
        docker logs --tail 80 "$id" 2>&1 | sed 's/^/    /' >&2 || true
    done
    if stats; then
        echo "--- /stats ---" >&2
        inspect table "$WORK/stats.json" | sed 's/^/    /' >&2 || true
    fi
    if events; then
        echo "--- /events (newest 30) ---" >&2
        inspect event-lines "$WORK/events.json" 30 | sed 's/^/    /' >&2 || true
    fi
    if get "$ADMIN/queue" "$WORK/queue.json"; then
        echo "--- balancer /queue ---" >&2
        sed 's/^/    /' "$WORK/queue.json" >&2
        echo >&2
    fi
    echo "--- containers ---" >&2
    docker ps -a --filter "label=application=$APP" --format '    {{.ID}} {{.Names}} {{.Status}}' >&2 || true
}

# Removes whatever run.sh/reset.sh left (they should leave nothing).
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

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local name
    for name in "${!BG_PIDS[@]}"; do stop_bg "$name" kill; done
    if ((rc != 0)) && ((STACK_TOUCHED)); then
        diagnostics
    fi
    if ((STACK_TOUCHED && !TORN_DOWN)); then
        if ((KEEP && rc != 0)); then
            log "--keep: the stack is left running; remove it with:"
            log "  jobs/run.sh --down --env-file $ENV_FILE && jobs/reset.sh -y --env-file $ENV_FILE && rm -r $WORK"
            exit "$rc"
        fi
        log "cleaning up: jobs/run.sh --down, jobs/reset.sh -y"
        run_sh --down >"$WORK/down.log" 2>&1 || sed 's/^/    /' "$WORK/down.log" >&2
        reset_sh -y >"$WORK/reset.log" 2>&1 || sed 's/^/    /' "$WORK/reset.log" >&2
        force_remove
    fi
    rm -rf "$WORK"
    if ((rc == 0)); then
        local IFS=,
        log "PASSED in $((SECONDS - T0))s (${PHASES[*]})"
    else
        log "FAILED after $((SECONDS - T0))s (exit $rc)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. up -------------------------------------------------------------------------------

started=$SECONDS
"$ROOT/jobs/setup.sh" --defaults --output "$ENV_FILE" \
    --set "COMPOSE_PROJECT_NAME=$PROJECT" --app-id "$APP" --set "DOCKER_NETWORK=$NETWORK" \
    --image rustybalancer/playground:latest --port 5000 \
    --http-port "$HTTP_PORT" --agent-port "$AGENT_PORT" --admin-port "$ADMIN_PORT" \
    --min 2 --max 3 --set "DOCKER_SOCKET=$DOCKER_SOCKET_SETTING" 2>"$WORK/setup.log" || {
    cat "$WORK/setup.log" >&2
    fail "jobs/setup.sh could not write the test's settings"
}
log "project $PROJECT: balancer $BALANCER, agent $AGENT, balancer admin $ADMIN"
log "starting: jobs/run.sh -e slim --env-file <tmp> -f jobs/e2e/docker-compose.e2e.yaml ${BUILD_ARG[*]}"
STACK_TOUCHED=1
if ! run_sh -e slim "${BUILD_ARG[@]}" --timeout "$UP_TIMEOUT" >"$WORK/up.log" 2>&1; then
    sed 's/^/    /' "$WORK/up.log" >&2
    fail "jobs/run.sh -e slim did not bring the stack up"
fi
phase_done up "$started" "(jobs/run.sh returned: healthy and serving)"

# --- 2. spread ---------------------------------------------------------------------------

started=$SECONDS
deadline=$((SECONDS + SPREAD_DEADLINE))
: >"$WORK/echo.jsonl"
requests=0
while true; do
    for _ in $(seq 1 20); do
        code=$(curl -s -o "$WORK/echo.json" -w '%{http_code}' -m 5 "$BALANCER/echo" || true)
        requests=$((requests + 1))
        [[ $code == 200 ]] || fail "GET /echo through the balancer answered ${code/#000/no response (curl failed)}"
        cat "$WORK/echo.json" >>"$WORK/echo.jsonl"
        echo >>"$WORK/echo.jsonl"
    done
    mapfile -t hosts < <(inspect hostnames "$WORK/echo.jsonl")
    ((${#hosts[@]} >= 2)) && break
    ((SECONDS < deadline)) || fail "after $requests requests to /echo, only ${#hosts[@]} container(s) answered: ${hosts[*]}"
    progress "$requests requests answered by ${hosts[*]}; waiting for the second container"
    sleep 1
done
phase_done spread "$started" "$requests requests, all 200, answered by ${#hosts[@]} containers: ${hosts[*]}"

# --- 2b. tasks ---------------------------------------------------------------------------

started=$SECONDS
code=$(curl -s -D "$WORK/task.head" -o "$WORK/task.json" -w '%{http_code}' -m 10 \
    -X POST -H 'Prefer: respond-async' --data 'e2e' "$BALANCER/echo?from=e2e" || true)
[[ $code == 202 ]] || fail "a task submission answered ${code/#000/no response} instead of 202: $(cat "$WORK/task.json" 2>/dev/null)"
task_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/task.json") ||
    fail "the 202 carries no task id: $(cat "$WORK/task.json")"
grep -qi "^location: /_tasks/$task_id" "$WORK/task.head" || fail "the 202 has no Location for task $task_id"
deadline=$((SECONDS + 30))
while true; do
    status=$(curl -s -m 5 "$BALANCER/_tasks/$task_id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' 2>/dev/null || true)
    [[ $status == succeeded ]] && break
    [[ $status == queued || $status == running ]] || fail "task $task_id is '${status:-unreadable}', expected it to succeed"
    ((SECONDS < deadline)) || fail "task $task_id still $status after 30s"
    sleep 0.5
done
code=$(curl -s -o "$WORK/result.json" -w '%{http_code}' -m 5 "$BALANCER/_tasks/$task_id/result" || true)
[[ $code == 200 ]] || fail "GET /_tasks/$task_id/result answered $code"
grep -q "$task_id" "$WORK/result.json" || fail "the replayed result does not show the X-Task-Id the app received"
code=$(curl -s -D "$WORK/wait.head" -o /dev/null -w '%{http_code}' -m 15 \
    -H 'Prefer: respond-async, wait=10' "$BALANCER/work?ms=50" || true)
[[ $code == 200 ]] && grep -qi '^x-task-id:' "$WORK/wait.head" ||
    fail "Prefer: respond-async, wait=10 answered $code without the task's result"
phase_done tasks "$started" "(task ${task_id:0:12}… stored in Redis, run on the pool, result replayed; wait=10 answered with the result)"

# --- 3. scores ---------------------------------------------------------------------------

started=$SECONDS
deadline=$((SECONDS + SCORES_DEADLINE))
while true; do
    read_pool
    ((SCORED >= 2)) && break
    ((SECONDS < deadline)) || fail "/stats does not list 2 scored containers after ${SCORES_DEADLINE}s ($(pool_line))"
    progress "$(pool_line)"
    sleep 1
done
inspect table "$WORK/stats.json" | sed 's/^/    /' >&2
phase_done scores "$started" "($(pool_line))"

# --- 4. scale-up -------------------------------------------------------------------------

started=$SECONDS
since=$(now_ms)
for i in $(seq 1 "$LOAD_LOOPS"); do start_bg "load$i" load_loop; done
log "scale-up: $LOAD_LOOPS concurrent /cpu?ms=200 loops through the balancer"
deadline=$((SECONDS + SCALE_UP_DEADLINE))
LAST_PROGRESS=$SECONDS
while true; do
    read_pool
    ((READY > 2)) && break
    ((SECONDS < deadline)) || fail "the pool did not grow past 2 ready containers within ${SCALE_UP_DEADLINE}s of CPU load ($(pool_line))"
    progress "$(pool_line)"
    sleep 1
done
inspect table "$WORK/stats.json" | sed 's/^/    /' >&2
events || fail "GET /events failed"
[[ -n $(inspect events "$WORK/events.json" scale_up "$since") ]] || fail "the pool grew without a scale_up event"
phase_done scale-up "$started" "($(pool_line))"

# --- 5. scale-down -----------------------------------------------------------------------

started=$SECONDS
since=$(now_ms)
for i in $(seq 1 "$LOAD_LOOPS"); do stop_bg "load$i" kill; done
start_bg trickle1 trickle_loop
log "scale-down: load stopped; trickle of /work?ms=20 every ~100 ms"
deadline=$((SECONDS + SCALE_DOWN_DEADLINE))
LAST_PROGRESS=$SECONDS
removed=""
while true; do
    read_pool
    if ((ACTIVE == 2 && READY == 2 && SUNDOWN == 0)) && events; then
        # A container that went SUNDOWN after the load stopped and was removed since.
        for id in $(inspect events "$WORK/events.json" container_sundown "$since"); do
            if has_event container_removed "$since" "$id"; then
                removed=$id
                break
            fi
        done
        [[ -n $removed ]] && break
    fi
    ((SECONDS < deadline)) || fail "the pool did not shrink back to 2 through SUNDOWN within ${SCALE_DOWN_DEADLINE}s ($(pool_line))"
    progress "$(pool_line)"
    sleep 1
done
stop_bg trickle1
read -r trickle_total trickle_errors <<<"$(trickle_result trickle1)"
((trickle_total >= 20)) || fail "the trickle sent only $trickle_total requests"
((trickle_errors == 0)) || fail "$trickle_errors of $trickle_total trickle requests failed during the scale-down (listed above)"
if [[ -n $(inspect events "$WORK/events.json" drain_timeout "$since") ]]; then
    log "note: a SUNDOWN container was stopped at DRAIN_TIMEOUT (not drained)"
fi
phase_done scale-down "$started" "(${removed:0:12} SUNDOWN then removed; pool back to 2; trickle: $trickle_total requests, 0 errors)"

# --- 6. heal -----------------------------------------------------------------------------

started=$SECONDS
mapfile -t before < <(inspect ready-ids "$WORK/stats.json")
victim=${before[0]}
[[ $(docker inspect --format '{{index .Config.Labels "application"}}' "$victim") == "$APP" ]] ||
    fail "container ${victim:0:12} from /stats is not labelled application=$APP"
start_bg trickle2 trickle_loop
sleep 1
since=$(now_ms)
docker kill "$victim" >/dev/null
log "heal: killed app container ${victim:0:12} (docker kill)"
deadline=$((SECONDS + HEAL_DEADLINE))
LAST_PROGRESS=$SECONDS
while true; do
    read_pool
    if ((ACTIVE == 2 && READY == 2)); then
        mapfile -t now_ids < <(inspect ready-ids "$WORK/stats.json")
        fresh=""
        gone=1
        for id in "${now_ids[@]}"; do
            [[ $id == "$victim" ]] && gone=0
            [[ " ${before[*]} " == *" $id "* ]] || fresh=$id
        done
        ((gone)) && [[ -n $fresh ]] && break
    fi
    ((SECONDS < deadline)) || fail "the killed container was not replaced by a ready one within ${HEAL_DEADLINE}s ($(pool_line))"
    progress "$(pool_line)"
    sleep 1
done
heal_ms=$(($(now_ms) - since))
sleep 2
stop_bg trickle2
read -r heal_total heal_errors <<<"$(trickle_result trickle2)"
events || fail "GET /events failed"
has_event container_replaced "$since" "$victim" || has_event container_vanished "$since" "$victim" ||
    fail "no container_replaced/container_vanished event for the killed container ${victim:0:12}"
for _ in $(seq 1 10); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -m 5 "$BALANCER/echo" || true)
    [[ $code == 200 ]] || fail "GET /echo after the heal answered $code"
done
phase_done heal "$started" "(replaced by ${fresh:0:12} in $((heal_ms / 1000)).$((heal_ms % 1000 / 100))s; trickle across the kill: $heal_total requests, $heal_errors errors (tolerated))"

# --- 7. teardown -------------------------------------------------------------------------

started=$SECONDS
run_sh --down >"$WORK/down.log" 2>&1 || {
    sed 's/^/    /' "$WORK/down.log" >&2
    fail "jobs/run.sh --down failed"
}
reset_sh -y >"$WORK/reset.log" 2>&1 || {
    sed 's/^/    /' "$WORK/reset.log" >&2
    fail "jobs/reset.sh -y failed"
}
TORN_DOWN=1
left=$({
    docker ps -a --filter "label=application=$APP" --format 'container {{.Names}}'
    docker ps -a --filter "label=com.docker.compose.project=$PROJECT" --format 'container {{.Names}}'
    docker network ls --filter "name=^${NETWORK}\$" --format 'network {{.Name}}'
    docker network ls --filter "label=com.docker.compose.project=$PROJECT" --format 'network {{.Name}}'
    docker volume ls --filter "label=com.docker.compose.project=$PROJECT" --format 'volume {{.Name}}'
} | sort -u)
if [[ -n $left ]]; then
    TORN_DOWN=0
    fail "left behind after jobs/run.sh --down and jobs/reset.sh -y: $(echo "$left" | tr '\n' ' ')"
fi
phase_done teardown "$started" "(no container, network or volume of $PROJECT left)"
