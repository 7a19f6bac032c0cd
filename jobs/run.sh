#!/usr/bin/env bash
# Runs RustyBalancer with Docker Compose: jobs/run.sh -e prod|dev|slim (see usage()).
#
# Up: checks Docker and Compose, creates .env with the defaults when it is missing and
# validates it (jobs/setup.sh), builds the images (jobs/build-images.sh; Redis: the
# official image, or a local stand-in when it cannot be pulled), starts the stack, waits
# until every service is healthy and the balancer serves, and prints the URLs.
# Down (--down): stops the stack and removes its containers, its network and the app's
# containers the agent started; keeps the Redis volume (jobs/reset.sh removes it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENV_FILE=$ROOT/.env
ENVIRONMENT=
ACTION=up
BUILD=1
TIMEOUT=180
BACKEND_WAIT=1
SERVICES=(redis deployment-agent balancer)
COMPOSE=()
COMPOSE_FILES=()
EXTRA_FILES=()
STARTED=$SECONDS

usage() {
    cat <<'USAGE'
Usage: jobs/run.sh -e prod|dev|slim [options]
       jobs/run.sh --down

Starts RustyBalancer (redis, deployment-agent, balancer) with Docker Compose and waits
until it is healthy and serving, then prints its URLs.

Environments:
  prod  docker-compose.yaml: only the balancer's public port is published
        (HOST_PORT_HTTP_BALANCER, 2548); Redis persists to a volume (append-only file)
  dev   prod + docker-compose.dev.yaml: debug logs; on 127.0.0.1 also the agent's
        dashboard/API (2550) and WebSocket (2547), the balancer's admin port (2549)
        and Redis (6379)
  slim  prod + docker-compose.slim.yaml: for a small machine (pool of 2..4, memory
        limits, one balancer thread, Redis snapshots instead of an append-only file)

Options:
  -e, --env ENV     prod, dev or slim (required to start)
  --down            stop the stack: remove its containers and network and the app's
                    containers (label application=<APP_IDENTIFIER>); the Redis volume
                    is kept (jobs/reset.sh removes it)
  --no-build        don't build images; use the ones already present
  --env-file FILE   read the settings from FILE instead of .env (created with the
                    defaults when missing; also given to Compose as --env-file)
  -f, --file FILE   an extra Compose file applied after the environment's (repeatable;
                    e.g. jobs/e2e/docker-compose.e2e.yaml); give it to --down too
  --no-backend-wait don't wait for the balancer to have a backend (only for health)
  --timeout SECS    how long to wait for the stack (default 180)
  -h, --help        show this help

Settings come from .env (created with the defaults when missing; change them with
jobs/setup.sh). Environment variables override .env, as with Compose.
Needs: Docker (daemon running), `docker compose` or `docker-compose` >= 1.27, and to
build images a Rust toolchain (cargo).
USAGE
}

log() {
    printf '[run %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

die() {
    printf '[run %s] error: %s\n' "$(date +%H:%M:%S)" "$*" >&2
    exit 1
}

usage_error() {
    usage >&2
    printf '[run] error: %s\n' "$*" >&2
    exit 2
}

# FILE as an absolute path (Compose runs from the repository root).
absolute_path() {
    if [[ $1 == /* ]]; then
        echo "$1"
    else
        echo "$PWD/$1"
    fi
}

parse_args() {
    while (($#)); do
        case $1 in
            -e | --env)
                (($# >= 2)) || usage_error "$1 needs prod, dev or slim"
                ENVIRONMENT=$2
                shift
                ;;
            --env=*) ENVIRONMENT=${1#--env=} ;;
            --down) ACTION=down ;;
            --no-build) BUILD=0 ;;
            --env-file)
                (($# >= 2)) || usage_error "$1 needs a file"
                ENV_FILE=$(absolute_path "$2")
                shift
                ;;
            --env-file=*) ENV_FILE=$(absolute_path "${1#--env-file=}") ;;
            -f | --file)
                (($# >= 2)) || usage_error "$1 needs a Compose file"
                [[ -f $2 ]] || usage_error "Compose file '$2' not found"
                EXTRA_FILES+=("$(absolute_path "$2")")
                shift
                ;;
            --no-backend-wait) BACKEND_WAIT=0 ;;
            --timeout)
                (($# >= 2)) || usage_error "$1 needs a number of seconds"
                if [[ ! $2 =~ ^[0-9]+$ ]] || (($2 == 0)); then
                    usage_error "--timeout needs a number of seconds > 0, got '$2'"
                fi
                TIMEOUT=$2
                shift
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) usage_error "unknown argument '$1'" ;;
        esac
        shift
    done
    case $ENVIRONMENT in
        prod | dev | slim) ;;
        "") [[ $ACTION == down ]] || usage_error "say which environment: -e prod, -e dev or -e slim" ;;
        *) usage_error "unknown environment '$ENVIRONMENT' (prod, dev or slim)" ;;
    esac
}

# --- prerequisites -------------------------------------------------------------------

check_docker() {
    command -v docker >/dev/null 2>&1 ||
        die "docker not found: install Docker Engine (https://docs.docker.com/engine/install/)"
    local out
    if ! out=$(docker info --format '{{.ServerVersion}}' 2>&1); then
        if [[ $out == *"permission denied"* ]]; then
            die "cannot use the Docker daemon (permission denied): add yourself to the docker group (sudo usermod -aG docker \$USER, then log in again) or run as root"
        fi
        die "the Docker daemon is not running or not reachable (${out##*$'\n'}): start it (sudo systemctl start docker) and try again"
    fi
    log "docker engine $out"
}

# Picks `docker compose` (v2 plugin) or the standalone `docker-compose` (>= 1.27: the
# Compose specification with health-gated depends_on).
detect_compose() {
    local version
    if version=$(docker compose version --short 2>/dev/null) && [[ -n $version ]]; then
        COMPOSE=(docker compose)
        log "compose: docker compose $version"
        return
    fi
    if command -v docker-compose >/dev/null 2>&1; then
        version=$(docker-compose version --short 2>/dev/null || true)
        local major minor
        IFS=. read -r major minor _ <<<"${version#v}"
        if [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] && ((major > 1 || (major == 1 && minor >= 27))); then
            COMPOSE=(docker-compose)
            log "compose: docker-compose $version"
            return
        fi
        die "docker-compose $version is too old: need >= 1.27 (Compose specification), or the docker compose plugin"
    fi
    die "Docker Compose not found: install the docker compose plugin (package docker-compose-plugin) or docker-compose >= 1.27"
}

# --- settings --------------------------------------------------------------------------

# setting KEY DEFAULT: the environment's value, else .env's, else DEFAULT (Compose's order).
setting() {
    local key=$1 default=$2 line
    if [[ -n ${!key:-} ]]; then
        echo "${!key}"
        return
    fi
    if [[ -f $ENV_FILE ]] && line=$(grep -E "^[[:space:]]*${key}=" "$ENV_FILE" | tail -n 1) && [[ -n ${line#*=} ]]; then
        echo "${line#*=}"
        return
    fi
    echo "$default"
}

ensure_env_file() {
    if [[ ! -f $ENV_FILE ]]; then
        # Secure by default: outside dev, the agent's WebSocket and POST /scale need a token
        # (a random one, in .env; the balancer reads the same file).
        local token_arg=(--generate-token)
        [[ $ENVIRONMENT == dev ]] && token_arg=()
        log "${ENV_FILE#"$ROOT/"} not found: writing the defaults${token_arg:+ with a random AGENT_TOKEN} (change them with jobs/setup.sh)"
        "$ROOT/jobs/setup.sh" --defaults "${token_arg[@]}" --output "$ENV_FILE" >/dev/null
    fi
    "$ROOT/jobs/setup.sh" --check --output "$ENV_FILE" 2>&1 | sed 's/^/    /' >&2 || die "${ENV_FILE#"$ROOT/"} is not valid (see above)"
    if [[ $ENVIRONMENT != dev && -z $(setting AGENT_TOKEN "") ]]; then
        log "WARNING: AGENT_TOKEN is empty: anyone who reaches the agent's ports can subscribe to the queue and call POST /scale (set one: jobs/setup.sh --generate-token)"
    fi
    PROJECT=$(setting COMPOSE_PROJECT_NAME rustybalancer)
    APP_IDENTIFIER=$(setting APP_IDENTIFIER RUSTYBALANCER)
    IMAGE_PREFIX=$(setting IMAGE_PREFIX rustybalancer)
    IMAGE_TAG=$(setting IMAGE_TAG latest)
    DOCKER_IMAGE=$(setting DOCKER_IMAGE rustybalancer/playground:latest)
    HTTP_PORT=$(setting HOST_PORT_HTTP_BALANCER 2548)
    ADMIN_PORT=$(setting HOST_PORT_ADMIN_BALANCER 2549)
    AGENT_PORT=$(setting HOST_PORT_HTTP_DEPLOYMENT_AGENT 2550)
    WS_PORT=$(setting HOST_PORT_WS_DEPLOYMENT_AGENT 2547)
    REDIS_HOST_PORT=$(setting REDIS_HOST_PORT 6379)
    DOCKER_SOCKET=$(setting DOCKER_SOCKET /var/run/docker.sock)
    STOP_TIMEOUT=$(setting STOP_TIMEOUT 10s)
}

# Compose's file arguments, in COMPOSE_FILES: the base file, the environment's overlay,
# then the extra files (-f), and --env-file when one was given.
compose_files() {
    COMPOSE_FILES=(-f docker-compose.yaml)
    case $ENVIRONMENT in
        dev) COMPOSE_FILES+=(-f docker-compose.dev.yaml) ;;
        slim) COMPOSE_FILES+=(-f docker-compose.slim.yaml) ;;
    esac
    local extra
    for extra in "${EXTRA_FILES[@]}"; do
        COMPOSE_FILES+=(-f "$extra")
    done
    [[ $ENV_FILE == "$ROOT/.env" ]] || COMPOSE_FILES+=(--env-file "$ENV_FILE")
}

# Runs Compose on this project with the environment's files, from the repository root.
compose() {
    compose_files
    (cd "$ROOT" && "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@")
}

# --- images ----------------------------------------------------------------------------

build_images() {
    local -a names=(balancer deployment-agent)
    # The demo app is ours to build only when it is the app the agent runs.
    if [[ $DOCKER_IMAGE == "$IMAGE_PREFIX/playground:$IMAGE_TAG" ]]; then
        names+=(playground)
    fi
    if ((!BUILD)); then
        local name missing=()
        for name in "${names[@]}"; do
            docker image inspect "$IMAGE_PREFIX/$name:$IMAGE_TAG" >/dev/null 2>&1 || missing+=("$IMAGE_PREFIX/$name:$IMAGE_TAG")
        done
        ((${#missing[@]} == 0)) || die "--no-build, but these images are missing: ${missing[*]}"
        log "using the existing images (--no-build)"
    else
        command -v cargo >/dev/null 2>&1 ||
            die "cargo not found: building the images needs a Rust toolchain (https://rustup.rs), or use --no-build with images built elsewhere"
        log "building images: ${names[*]} (jobs/build-images.sh; the first build compiles everything and takes minutes)"
        local build_log=$ROOT/target/run-build-images.log
        mkdir -p "$ROOT/target"
        # Progress (cargo, build steps) on the terminal; docker's step-by-step output in the log.
        if ! "$ROOT/jobs/build-images.sh" -p "$IMAGE_PREFIX" -t "$IMAGE_TAG" "${names[@]}" >"$build_log"; then
            tail -n 30 "$build_log" >&2 || true
            die "building the images failed (full log: $build_log)"
        fi
    fi
    if [[ $DOCKER_IMAGE != "$IMAGE_PREFIX/playground:$IMAGE_TAG" ]] &&
        ! docker image inspect "$DOCKER_IMAGE" >/dev/null 2>&1; then
        log "note: the app image $DOCKER_IMAGE is not present locally; the agent will try to pull it"
    fi
}

# Uses REDIS_IMAGE (default redis:7) when it is present or can be pulled; otherwise builds
# the local stand-in (jobs/build-redis-standin.sh) and exports REDIS_IMAGE for Compose.
resolve_redis_image() {
    local image
    image=$(setting REDIS_IMAGE redis:7)
    if docker image inspect "$image" >/dev/null 2>&1; then
        log "redis: using $image (present locally)"
        export REDIS_IMAGE=$image
        return
    fi
    log "redis: pulling $image"
    local pull_out
    if pull_out=$(docker pull "$image" 2>&1); then
        log "redis: pulled $image"
        export REDIS_IMAGE=$image
        return
    fi
    log "redis: cannot pull $image (${pull_out##*$'\n'})"
    local standin=${REDIS_STANDIN_IMAGE:-rustybalancer/redis-standin:latest}
    if docker image inspect "$standin" >/dev/null 2>&1; then
        log "redis: using the local stand-in $standin (built from Debian's redis-server by jobs/build-redis-standin.sh)"
    else
        log "redis: building the local stand-in $standin from Debian's redis-server (jobs/build-redis-standin.sh)"
        "$ROOT/jobs/build-redis-standin.sh" -t "$standin" >/dev/null ||
            die "no Redis image: $image cannot be pulled and the stand-in could not be built"
    fi
    export REDIS_IMAGE=$standin
}

# --- waiting ---------------------------------------------------------------------------

# Prints the id of SERVICE's container in this project, if any.
container_of() {
    docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" | head -n 1
}

# Prints "status health restarts exitcode" of a container (health "-" when it has none).
container_state() {
    docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} {{.RestartCount}} {{.State.ExitCode}}' "$1" 2>/dev/null ||
        echo "gone - 0 0"
}

show_logs() {
    local service=$1 id
    id=$(container_of "$service")
    [[ -n $id ]] || return 0
    log "last log lines of $service:"
    docker logs --tail 25 "$id" 2>&1 | sed 's/^/    /' >&2 || true
    docker inspect --format '{{if .State.Health}}{{range .State.Health.Log}}    health check: exit {{.ExitCode}} {{.Output}}{{end}}{{end}}' "$id" 2>/dev/null |
        tail -n 3 >&2 || true
}

# Starts `compose up` in the background and reports the services' states every 2 s until
# all are healthy; fails early on a crash loop, a failed `up`, or at the timeout.
start_and_wait() {
    local up_log
    up_log=$(mktemp "${TMPDIR:-/tmp}/rustybalancer-up.XXXXXX")
    log "starting the $ENVIRONMENT stack (project $PROJECT)"
    compose up -d --remove-orphans >"$up_log" 2>&1 &
    local up_pid=$! up_done=0 up_rc=0
    local deadline=$((SECONDS + TIMEOUT)) last_line="" last_print=0
    while true; do
        if ((!up_done)) && ! kill -0 "$up_pid" 2>/dev/null; then
            up_done=1
            wait "$up_pid" || up_rc=$?
            if ((up_rc != 0)); then
                sed 's/^/    /' "$up_log" >&2
                local s
                for s in "${SERVICES[@]}"; do
                    [[ $(container_state "$(container_of "$s")") == *" healthy "* ]] || show_logs "$s"
                done
                rm -f "$up_log"
                die "docker compose up failed (exit $up_rc)"
            fi
        fi
        local service id status health restarts code line="" all_healthy=1
        for service in "${SERVICES[@]}"; do
            id=$(container_of "$service")
            if [[ -z $id ]]; then
                line+=" $service=pending"
                all_healthy=0
                continue
            fi
            read -r status health restarts code <<<"$(container_state "$id")"
            if [[ $status == running && $health == healthy ]] || [[ $status == running && $health == - ]]; then
                line+=" $service=healthy"
            else
                all_healthy=0
                if [[ $status == running ]]; then
                    line+=" $service=$health"
                else
                    line+=" $service=$status"
                fi
                # While `up` runs, containers may still be replaced (an old one exits or is
                # the crash-looping one being fixed): judge them once it is done. A failure
                # during `up` makes `up` itself fail (a dependency never gets healthy).
                local failing=0
                if ((up_done)); then
                    ((restarts >= 2)) && failing=1
                    [[ ($status == exited || $status == dead) && $code != 0 ]] && failing=1
                fi
                if ((failing)); then
                    show_logs "$service"
                    rm -f "$up_log"
                    local how="$restarts restarts"
                    [[ $status == running || $status == restarting ]] || how="$status with exit code $code, $how"
                    die "$service keeps failing ($how): see its log above; fix .env (jobs/setup.sh) and run again"
                fi
            fi
        done
        if ((all_healthy && up_done)); then
            break
        fi
        if [[ $line != "$last_line" ]] || ((SECONDS - last_print >= 10)); then
            log "waiting ($((SECONDS - STARTED))s):$line"
            last_line=$line
            last_print=$SECONDS
        fi
        if ((SECONDS >= deadline)); then
            for service in "${SERVICES[@]}"; do show_logs "$service"; done
            rm -f "$up_log"
            die "the stack is not healthy after ${TIMEOUT}s (--timeout to wait longer)"
        fi
        sleep 1
    done
    rm -f "$up_log"
    log "all services healthy ($((SECONDS - STARTED))s):$line"
}

# HTTP status of URL ("000" when nothing answers).
http_status() {
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" 2>/dev/null || true
    else
        # bash's /dev/tcp when curl is missing: enough for a status line.
        local rest=${1#http://} hostport path status
        hostport=${rest%%/*}
        path=/${rest#*/}
        [[ $rest == */* ]] || path=/
        if exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" 2>/dev/null; then
            printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&3
            read -r -t 5 _ status _ <&3 || true
            exec 3<&-
            echo "${status:-000}"
        else
            echo 000
        fi
    fi
}

# Waits until the balancer proxies a request to a backend: anything but 503 (no backend
# yet) and 000 (nothing answers) on its public port.
wait_for_backend() {
    local url="http://localhost:$HTTP_PORT/" deadline=$((SECONDS + TIMEOUT)) code last_print=0
    while true; do
        code=$(http_status "$url")
        if [[ $code != 000 && $code != 503 ]]; then
            log "the balancer serves: GET $url -> $code ($((SECONDS - STARTED))s)"
            return
        fi
        if ((SECONDS >= deadline)); then
            show_logs deployment-agent
            die "the balancer is healthy but has no backend after ${TIMEOUT}s (GET $url -> $code): see the agent's log above"
        fi
        if ((SECONDS - last_print >= 5)); then
            log "waiting for the first backend ($((SECONDS - STARTED))s): GET $url -> $code"
            last_print=$SECONDS
        fi
        sleep 1
    done
}

# Address of SERVICE's container on the stack's network (reachable from a Linux host).
container_ip() {
    local id
    id=$(container_of "$1")
    [[ -n $id ]] || return 0
    docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$id" 2>/dev/null | awk '{print $1}'
}

print_urls() {
    compose_files
    echo
    echo "RustyBalancer ($ENVIRONMENT) is up in $((SECONDS - STARTED))s."
    echo "  balancer   http://localhost:$HTTP_PORT/"
    if [[ $ENVIRONMENT == dev ]]; then
        echo "  dashboard  http://localhost:$AGENT_PORT/"
        echo "  stats      http://localhost:$AGENT_PORT/stats"
        echo "  queue      http://localhost:$ADMIN_PORT/queue   (balancer admin: /health /metrics /queue)"
        echo "  agent feed ws://localhost:$WS_PORT/ws"
        echo "  redis      redis-cli -p $REDIS_HOST_PORT"
    else
        local ip
        ip=$(container_ip deployment-agent)
        echo "  (only the balancer's port is published in $ENVIRONMENT; from this host on Linux the"
        echo "   agent answers on its container address, or use -e dev to publish it on localhost)"
        echo "  dashboard  http://${ip:-<agent address>}:$AGENT_PORT/"
        echo "  stats      http://${ip:-<agent address>}:$AGENT_PORT/stats"
    fi
    echo "  logs       ${COMPOSE[*]} -p $PROJECT ${COMPOSE_FILES[*]} logs -f"
    local own=""
    [[ $ENV_FILE == "$ROOT/.env" ]] || own=" --env-file $ENV_FILE"
    echo "  stop       jobs/run.sh --down$own        (wipe state too: jobs/reset.sh$own)"
}

# --- down ------------------------------------------------------------------------------

# IDs of the app's containers (started by the agent, not by Compose).
app_containers() {
    docker ps -aq --filter "label=application=$APP_IDENTIFIER"
}

down() {
    local had_stack
    had_stack=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
    # The agent first, so that it doesn't replace the app containers removed next.
    if [[ -n $(container_of deployment-agent) ]]; then
        log "stopping the deployment-agent"
        compose stop deployment-agent >/dev/null 2>&1 || true
    fi
    local -a apps
    mapfile -t apps < <(app_containers)
    if ((${#apps[@]})); then
        local seconds=${STOP_TIMEOUT%s}
        [[ $seconds =~ ^[0-9]+$ ]] || seconds=10
        log "stopping and removing ${#apps[@]} app container(s) labelled application=$APP_IDENTIFIER: $(docker inspect --format '{{.Name}}' "${apps[@]}" | tr -d / | tr '\n' ' ')"
        docker stop -t "$seconds" "${apps[@]}" >/dev/null
        docker rm -f "${apps[@]}" >/dev/null
    fi
    log "stopping the stack (project $PROJECT): containers and network; the Redis volume is kept"
    compose down --remove-orphans 2>&1 | sed 's/^/    /' >&2 || die "docker compose down failed (see above)"
    local left network
    network=$(setting DOCKER_NETWORK rustybalancer)
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
    ((left == 0)) || die "$left container(s) of project $PROJECT are still there (docker ps -a)"
    if docker network inspect "$network" >/dev/null 2>&1; then
        die "the network $network is still there (attached: $(docker network inspect --format '{{range .Containers}}{{.Name}} {{end}}' "$network"))"
    fi
    if ((had_stack == 0 && ${#apps[@]} == 0)); then
        log "nothing was running"
    fi
    log "stopped in $((SECONDS - STARTED))s (Redis data kept in volume(s): $(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | tr '\n' ' '))"
}

main() {
    parse_args "$@"
    cd "$ROOT"
    check_docker
    detect_compose
    ensure_env_file
    if [[ $ACTION == down ]]; then
        down
        return
    fi
    [[ -S $DOCKER_SOCKET ]] ||
        die "no Docker socket at $DOCKER_SOCKET: the agent needs it; set DOCKER_SOCKET in .env (rootless Docker: \$XDG_RUNTIME_DIR/docker.sock)"
    build_images
    resolve_redis_image
    start_and_wait
    ((BACKEND_WAIT)) && wait_for_backend
    print_urls
}

main "$@"
