#!/usr/bin/env bash
# Writes RustyBalancer's .env (the settings Docker Compose and jobs/run.sh read) from the
# documented defaults, validating every value before writing anything.
#
# Interactive when run with no options on a terminal; non-interactive with --defaults or
# any value option. An existing .env is the starting point (only what you change changes;
# --defaults starts over) and is backed up to .env.bak before it is replaced.
# See usage() and artefacts/deployment.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTPUT=$ROOT/.env

# The settings, in the order they are written. Fields: KEY|DEFAULT|KIND|LEVEL|HELP.
# KIND selects the validator (see valid()). LEVEL: main (always written) or advanced
# (written commented out unless set). An empty DEFAULT means the value may be empty
# ("use the service's built-in default"). Lines starting with '#' start a section.
SPEC=$(
    cat <<'SPEC'
# Project and images
COMPOSE_PROJECT_NAME|rustybalancer|project|main|Compose project name: prefix of container and volume names
IMAGE_PREFIX|rustybalancer|repo|main|our images are IMAGE_PREFIX/{balancer,deployment-agent,playground}:IMAGE_TAG
IMAGE_TAG|latest|tag|main|tag of our images
REDIS_IMAGE|redis:7|image|main|Redis image; jobs/run.sh builds a local stand-in when this cannot be pulled
# The app the agent runs
DOCKER_IMAGE|rustybalancer/playground:latest|image|main|the app image the agent runs as a pool of containers
TARGET_PORT|5000|port|main|the port the app listens on inside its containers
APP_IDENTIFIER|RUSTYBALANCER|ident|main|label value (application=...) marking the app's containers; Redis keys live under rustybalancer:<APP_IDENTIFIER>:
DOCKER_NETWORK|rustybalancer|netname|main|Docker network of the stack; the app's containers join it
CONTAINER_CPUS||cpus|advanced|CPU limit per app container, e.g. 0.5 (empty: none)
CONTAINER_MEMORY||size|advanced|memory limit per app container, e.g. 256MiB (empty: none)
CONTAINER_ENV||envlist|advanced|extra environment for app containers: KEY=VALUE;KEY=VALUE
CONTAINER_NAME_PREFIX||ident|advanced|app containers are named PREFIX-N (empty: lowercase(APP_IDENTIFIER)-app)
# Ports (in the containers; the same numbers are published on the host)
HOST_PORT_HTTP_BALANCER|2548|port|main|balancer: public proxy port (published in every environment)
HOST_PORT_ADMIN_BALANCER|2549|port|main|balancer: admin port, /health /metrics /queue (published on 127.0.0.1 in dev)
HOST_PORT_WS_DEPLOYMENT_AGENT|2547|port|main|agent: WebSocket queue feed, path /ws (published on 127.0.0.1 in dev)
HOST_PORT_HTTP_DEPLOYMENT_AGENT|2550|port|main|agent: /stats /queue /events /health /metrics and the dashboard (published on 127.0.0.1 in dev)
DEPLOYMENT_AGENT_URL|ws://deployment-agent:2547/ws|wsurl|main|where the balancer subscribes to the queue
REDIS_HOST_PORT|6379|port|main|dev only: Redis published on 127.0.0.1:REDIS_HOST_PORT
# Secrets (empty: none)
AGENT_TOKEN||token|main|shared secret between agent and balancers (Bearer token on /ws and mutating admin calls)
REDIS_PASSWORD||token|main|Redis password (requirepass)
# Redis connection (the stack's own redis service unless changed)
REDIS_HOST|redis|host|advanced|Redis host name as the services see it
REDIS_PORT|6379|port|advanced|Redis port as the services see it
REDIS_DB|0|count0|advanced|Redis database number
# Pool size and scaling (scores: 100 = idle)
DEFAULT_CONTAINER|5|count|main|minimum pool size (prod and dev; slim uses 2)
MAX_CONTAINERS|15|count|main|maximum pool size (prod and dev; slim uses 4)
HIGH_LOAD_THRESHOLD|55|percent|main|scale up when the average score is below this
LOW_LOAD_THRESHOLD|80|percent|main|scale down when the average score is above this
CRITICAL_LOAD_THRESHOLD|20|percent|main|scale up when any score is below this
COOLDOWN_PERIOD|5s|duration|main|minimum time between two scaling steps
SCALE_STEP|1|count|main|containers added per scale-up step
SCALE_CHECK_PERIOD|10s|duration|main|how often scaling is decided
SCALE_DOWN_STABILIZATION|60s|duration|main|a scale-down goes to the largest proposal of this window
TARGET_CONCURRENCY||cpus|main|requests in flight per container to aim at, observed by the balancers (empty: signal off)
TARGET_QUEUE_PER_CONTAINER||cpus|main|queued tasks per container to aim at (empty: signal off)
STABLE_WINDOW|60s|duration|advanced|window of the stable scaling proposals; panic lasts this long
PANIC_WINDOW|6s|duration|advanced|short window for spikes (<= STABLE_WINDOW)
PANIC_THRESHOLD|2|cpus|advanced|panic when the panic window proposes this many times the current size (>= 1)
SCALE_TOLERANCE|0.1|number|advanced|dead band of the proportional signals (0..0.99)
SCALE_UP_RATE|4|cpus|advanced|one decision multiplies the pool by at most this (>= 1)
SCALE_DOWN_RATE|2|cpus|advanced|one decision divides the pool by at most this (>= 1)
HOST_SATURATION|0.95|number|advanced|host CPU busy fraction at which scale-ups are held (1: never)
# Scoring and container lifecycle (agent)
CPU_WEIGHT|0.35|number|advanced|weight of the CPU score
MEMORY_WEIGHT|0.25|number|advanced|weight of the memory score
NETWORK_WEIGHT|0.15|number|advanced|weight of the network score
AVAILABILITY_WEIGHT|0.25|number|advanced|weight of the availability (response time) score
HISTORY_SIZE|20|count|advanced|response times kept per container
BEST_TIME_WINDOW|10|count|advanced|window of the best response time (<= HISTORY_SIZE)
EMA_ALPHA|0.2|number|advanced|smoothing of the availability score (0 < alpha <= 1)
SCORE_POWER|4|cpus|advanced|exponent of the power mean of the sub-scores' loads (1: weighted mean)
LU_THRESHOLD|70|percent|advanced|score from which a container is LU (lightly used)
MU_THRESHOLD|40|percent|advanced|score from which a container is MU (< LU_THRESHOLD)
NETWORK_CAPACITY|125MB|size|advanced|bytes per second that count as 100 % network use
SAMPLE_PERIOD|2s|duration|advanced|period of one observe-decide-act round (stats sampling)
PROBE_PATH|/health|path|advanced|path the agent probes on each app container
PROBE_TIMEOUT|2s|duration|advanced|timeout of one probe
READY_TIMEOUT|60s|duration|advanced|a container not accepting connections by then is replaced
DRAIN_TIMEOUT|30s|duration|advanced|longest wait for a SUNDOWN container's requests to finish
STOP_TIMEOUT|10s|duration|advanced|grace period of a container stop before it is killed
QUEUE_KEEPALIVE|2s|duration|advanced|the queue is re-sent at least this often (at most 5s)
EVENTS_MAX|1000|count|advanced|events kept in Redis
IMAGE_PULL_RETRIES|3|count0|advanced|retries of a failed image pull
# Balancer
REQUEST_TIMEOUT|30s|duration|main|upstream response timeout (then 504)
CACHE_CAPACITY|10000|count0|main|maximum cached entries (0: no cache)
BALANCER_STRATEGY|weighted|strategy|advanced|weighted, round_robin or p2c
BALANCER_ID||ident|advanced|name of the balancer in report frames (empty: its host name)
STATIC_BACKENDS||backends|advanced|host:port,host:port used until the agent sends a queue
CONNECT_TIMEOUT|3s|duration|advanced|TCP connect timeout to a backend
RETRY_BUDGET|0.2|number|advanced|connect retries as a fraction of requests (0..1)
EJECT_CONSECUTIVE_FAILURES|5|count|advanced|failures in a row that eject a backend
EJECT_BASE|10s|duration|advanced|first ejection period (doubles per ejection in a row)
EJECT_MAX|300s|duration|advanced|longest ejection period
CACHE_MAX_BYTES|64MiB|size|advanced|maximum bytes held by the cache
CACHE_MAX_OBJECT_BYTES|1MiB|size|advanced|larger responses are never cached
CACHE_DEFAULT_TTL|60s|duration|advanced|TTL when the response has no max-age
CACHE_MAX_TTL|86400s|duration|advanced|upper bound of any TTL
CACHE_CREDENTIALED|explicit|credpolicy|advanced|answers to requests with Cookie/Authorization are stored only when public or s-maxage (explicit) or always
CACHE_EXTENSIONS|css,js,mjs,map,png,jpg,jpeg,gif,svg,ico,webp,avif,woff,woff2,ttf,otf,eot,txt,wasm|extlist|advanced|path extensions of static resources
MAX_BODY_BYTES|10MiB|size|advanced|request body limit (then 413)
MAX_HEADER_BYTES|32KiB|size|advanced|request head limit (then 431), at least 8KiB; also each client connection's write buffer
MAX_HEADERS|100|count|advanced|header fields per request, HTTP/1.1 and HTTP/2 (then 431)
H2_MAX_CONCURRENT_STREAMS|256|count|advanced|HTTP/2 streams open at once per client connection
H2_MAX_PENDING_RESET_STREAMS|20|count|advanced|HTTP/2 streams a client may open and reset before they are served (rapid reset, then GOAWAY)
H2_MAX_LOCAL_ERROR_RESET_STREAMS|1024|count|advanced|HTTP/2 streams reset for client errors per connection (then GOAWAY)
H2_MAX_SEND_BUF_BYTES|64KiB|size|advanced|response bytes buffered per HTTP/2 stream for a client whose window is closed
BUFFER_BODY_BYTES|64KiB|size|advanced|request bodies up to this size are read before a backend connection is taken
CLIENT_BODY_TIMEOUT|30s|duration|advanced|time to receive a buffered body, longest pause in a streamed one (then 408)
UPSTREAM_BUFFER_BYTES|16KiB|size|advanced|read buffer per backend connection: bounds a response head and the memory a slow reader pins, at least 8KiB
HEADER_READ_TIMEOUT|10s|duration|advanced|time allowed to send a request head
IDLE_TIMEOUT|60s|duration|advanced|idle connections are closed after this
MAX_CONNECTIONS|10000|count|advanced|concurrent client connections
SHUTDOWN_GRACE|30s|duration|advanced|time given to in-flight requests on SIGTERM
REPORT_INTERVAL|1s|duration|advanced|period of report frames to the agent
AGENT_STALE_AFTER|15s|duration|advanced|no frame from the agent for this long: reconnect
RECONNECT_MAX|30s|duration|advanced|cap of the reconnect back-off
WORKER_THREADS||count|advanced|balancer worker threads (empty: one per available CPU)
# Task submissions (balancer; artefacts/tasks.md)
TASK_PATH_PREFIX|/_tasks|path|advanced|reserved path prefix of the task API
TASK_WORKERS|32|count|advanced|concurrent task executions per balancer
TASK_MAX_ATTEMPTS|5|count|advanced|attempts per task before it is dead
TASK_RETRY_BASE|1s|duration|advanced|first retry back-off (exponential, full jitter)
TASK_RETRY_MAX|5m|duration|advanced|longest retry back-off
TASK_LEASE|30s|duration|advanced|a running task's lease; lapsed leases are taken over by another balancer
TASK_TIMEOUT|60s|duration|advanced|per-attempt limit (request sent to response read)
TASK_RESULT_TTL|24h|duration|advanced|finished tasks and their results are kept this long
TASK_MAX_BODY_BYTES|8MiB|size|advanced|largest task request body (then 413)
TASK_MAX_RESULT_BYTES|8MiB|size|advanced|larger results are stored truncated and flagged
TASK_IDEMPOTENCY_TTL|24h|duration|advanced|how long an Idempotency-Key is remembered
TASK_CALLBACK_ALLOW||hostlist|advanced|hosts (or host:port) X-Callback-Url may name (empty: callbacks refused)
TASK_MAX_WAIT|30s|duration|advanced|cap of Prefer: wait=N
# Logging and host
RUST_LOG|info|logfilter|main|log filter of both services (env_logger syntax)
RUST_LOG_DEV|info,balancer=debug,deployment_agent=debug,protocol=debug|logfilter|advanced|log filter in the dev environment
DOCKER_SOCKET|/var/run/docker.sock|abspath|advanced|the Docker engine's socket on the host (rootless Docker: $XDG_RUNTIME_DIR/docker.sock)
SPEC
)

# Asked for, in this order, in interactive mode.
PROMPTED=(DOCKER_IMAGE TARGET_PORT HOST_PORT_HTTP_BALANCER DEFAULT_CONTAINER MAX_CONTAINERS AGENT_TOKEN)

declare -A DEFAULT=() KIND=() LEVEL=() HELP=() VALUE=() EXPLICIT=() EXTRA=()
KEYS=()
EXTRA_KEYS=()

log() {
    printf '[setup] %s\n' "$*" >&2
}

die() {
    printf '[setup] error: %s\n' "$*" >&2
    exit 1
}

# Bad command line: usage on stderr, exit 2.
usage_error() {
    usage >&2
    printf '[setup] error: %s\n' "$*" >&2
    exit 2
}

usage() {
    cat <<USAGE
Usage: jobs/setup.sh [options]

Writes .env for RustyBalancer from the documented defaults. With no options on a
terminal it asks for the main settings; with --defaults or any value option it asks
nothing. An existing .env is the starting point (only what you change changes) and is
kept as .env.bak. Every value is validated before anything is written.

Options:
  --defaults              write the documented defaults (ignores an existing .env)
  --image IMAGE           the app image the agent runs (DOCKER_IMAGE)
  --port N                the port the app listens on (TARGET_PORT)
  --min N, --max N        pool size bounds (DEFAULT_CONTAINER, MAX_CONTAINERS)
  --http-port N           the balancer's public port (HOST_PORT_HTTP_BALANCER)
  --admin-port N          the balancer's admin port (HOST_PORT_ADMIN_BALANCER)
  --agent-port N          the agent's HTTP/dashboard port (HOST_PORT_HTTP_DEPLOYMENT_AGENT)
  --ws-port N             the agent's WebSocket port (HOST_PORT_WS_DEPLOYMENT_AGENT);
                          also updates DEPLOYMENT_AGENT_URL unless that is given
  --app-id ID             APP_IDENTIFIER (label and Redis key prefix of the pool)
  --token TOKEN           AGENT_TOKEN;  --generate-token  makes a random one
  --redis-password PW     REDIS_PASSWORD
  --set KEY=VALUE         any setting listed by --list (repeatable)
  -o, --output FILE       write FILE instead of .env
  --print                 print the result instead of writing it
  --check                 validate the existing file (or -o FILE) and write nothing
  --list                  list every setting with its default and meaning
  -i, --interactive       ask even when value options are given
  -h, --help              show this help

Examples:
  jobs/setup.sh                                   # asks, shows defaults in [brackets]
  jobs/setup.sh --defaults
  jobs/setup.sh --image myorg/shop:1.4 --port 8080 --min 2 --max 8
  jobs/setup.sh --set SCALE_STEP=2 --set RUST_LOG=debug
USAGE
}

load_spec() {
    local line key default kind level help
    while IFS= read -r line; do
        [[ -z $line || $line == \#* ]] && continue
        IFS='|' read -r key default kind level help <<<"$line"
        KEYS+=("$key")
        DEFAULT[$key]=$default
        KIND[$key]=$kind
        LEVEL[$key]=$level
        HELP[$key]=$help
    done <<<"$SPEC"
}

is_known() {
    [[ -n ${KIND[$1]+x} ]]
}

# Prints nothing and succeeds when VALUE is valid for KIND; else prints what was expected.
expected() {
    local kind=$1 v=$2
    local number='^[0-9]+(\.[0-9]+)?$'
    case $kind in
        port)
            [[ $v =~ ^[0-9]{1,5}$ ]] && ((10#$v >= 1 && 10#$v <= 65535)) && return 0
            echo "a TCP port 1-65535" ;;
        count)
            [[ $v =~ ^[0-9]{1,6}$ ]] && ((10#$v >= 1)) && return 0
            echo "a whole number >= 1" ;;
        count0)
            [[ $v =~ ^[0-9]{1,9}$ ]] && return 0
            echo "a whole number >= 0" ;;
        percent)
            [[ $v =~ $number ]] && awk -v x="$v" 'BEGIN { exit !(x >= 0 && x <= 100) }' && return 0
            echo "a number from 0 to 100" ;;
        number)
            [[ $v =~ $number ]] && return 0
            echo "a number >= 0, e.g. 0.25" ;;
        cpus)
            [[ $v =~ $number ]] && awk -v x="$v" 'BEGIN { exit !(x > 0) }' && return 0
            echo "a number of CPUs > 0, e.g. 0.5" ;;
        duration)
            [[ $v =~ ^[0-9]+(\.[0-9]+)?(ms|s|m|h)?$ ]] && return 0
            echo "a duration such as 30s, 500ms, 2m, 1h (a bare number is seconds)" ;;
        size)
            [[ $v =~ ^[0-9]+([KkMmGg]i?[Bb]?|[Bb])?$ ]] && return 0
            echo "a size such as 1048576, 512KiB, 64MiB, 1GiB" ;;
        image)
            # [registry[:port]/]name[/name...][:tag][@sha256:digest], lower-case names.
            [[ $v =~ ^([a-zA-Z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$ ]] && return 0
            echo "an image reference such as myorg/app:1.0 or registry.example.com:5000/app:latest" ;;
        repo)
            [[ $v =~ ^([a-zA-Z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$ ]] && return 0
            echo "an image name prefix such as rustybalancer or registry.example.com/team" ;;
        tag)
            [[ $v =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] && return 0
            echo "an image tag such as latest or 1.2.3" ;;
        project)
            [[ $v =~ ^[a-z0-9][a-z0-9_-]*$ ]] && return 0
            echo "lower-case letters, digits, '_' or '-', starting with a letter or digit" ;;
        ident)
            [[ $v =~ ^[A-Za-z0-9_.-]+$ ]] && return 0
            echo "letters, digits, '_', '.' or '-'" ;;
        netname)
            [[ $v =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] && return 0
            echo "a Docker network name: letters, digits, '_', '.' or '-'" ;;
        token)
            [[ $v =~ ^[A-Za-z0-9._~+/=-]+$ ]] && return 0
            echo "letters, digits and ._~+/=- only (no spaces, quotes, \$ or #)" ;;
        wsurl)
            [[ $v =~ ^wss?://[A-Za-z0-9._-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$ ]] && return 0
            echo "a WebSocket URL such as ws://deployment-agent:2547/ws" ;;
        path)
            [[ $v =~ ^/[A-Za-z0-9._~/%?=\&-]*$ ]] && return 0
            echo "an HTTP path starting with '/'" ;;
        strategy)
            [[ $v =~ ^(weighted|round_robin|p2c)$ ]] && return 0
            echo "weighted, round_robin or p2c" ;;
        credpolicy)
            [[ $v =~ ^(explicit|always)$ ]] && return 0
            echo "explicit or always" ;;
        logfilter)
            [[ $v =~ ^[A-Za-z0-9_,=:.-]+$ ]] && return 0
            echo "an env_logger filter such as info or info,balancer=debug" ;;
        host)
            [[ $v =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] && return 0
            echo "a host name or IPv4 address" ;;
        backends)
            [[ $v =~ ^[A-Za-z0-9.-]+:[0-9]{1,5}(,[A-Za-z0-9.-]+:[0-9]{1,5})*$ ]] && return 0
            echo "a comma-separated host:port list" ;;
        hostlist)
            [[ $v =~ ^[A-Za-z0-9.:-]+(,[A-Za-z0-9.:-]+)*$ ]] && return 0
            echo "a comma-separated list of host or host:port" ;;
        extlist)
            [[ $v =~ ^[A-Za-z0-9]+(,[A-Za-z0-9]+)*$ ]] && return 0
            echo "a comma-separated list of extensions without dots, e.g. css,js,png" ;;
        abspath)
            [[ $v =~ ^/[A-Za-z0-9._/-]*$ ]] && return 0
            echo "an absolute path" ;;
        envlist)
            [[ $v =~ ^[A-Za-z_][A-Za-z0-9_]*=[^[:space:]\;\"\'\$#]*(\;[A-Za-z_][A-Za-z0-9_]*=[^[:space:]\;\"\'\$#]*)*$ ]] && return 0
            echo "KEY=VALUE pairs separated by ';' (no spaces, quotes, \$ or #)" ;;
        *)
            echo "(unknown kind $kind)" ;;
    esac
    return 1
}

# Validates one value; prints an error line and fails when it is bad.
check_value() {
    local key=$1 v=$2 want
    if [[ -z $v ]]; then
        [[ -z ${DEFAULT[$key]} || ${LEVEL[$key]} == advanced ]] && return 0
        printf '%s: must not be empty (default: %s)\n' "$key" "${DEFAULT[$key]}"
        return 1
    fi
    if ! want=$(expected "${KIND[$key]}" "$v"); then
        if [[ $v =~ ^[\"\'].*[\"\']$ ]]; then
            printf '%s: remove the quotes around %s (values are written bare)\n' "$key" "$v"
        else
            printf '%s: expected %s, got "%s"\n' "$key" "$want" "$v"
        fi
        return 1
    fi
}

# The effective value: the explicit/loaded one, else the default.
value_of() {
    local key=$1
    if [[ -n ${VALUE[$key]+x} ]]; then
        echo "${VALUE[$key]}"
    else
        echo "${DEFAULT[$key]}"
    fi
}

# Validates every value and the rules between them; prints one line per problem (all of
# them, so one run names every bad setting). A rule is checked only when its inputs are valid.
validate_all() {
    local key bad=0 v
    local -A ok=()
    for key in "${KEYS[@]}"; do
        v=$(value_of "$key")
        if check_value "$key" "$v"; then ok[$key]=1; else bad=1; fi
    done
    valid() {
        local k
        for k in "$@"; do [[ -n ${ok[$k]+x} && -n $(value_of "$k") ]] || return 1; done
    }

    local -A seen=()
    for key in HOST_PORT_HTTP_BALANCER HOST_PORT_ADMIN_BALANCER HOST_PORT_WS_DEPLOYMENT_AGENT \
        HOST_PORT_HTTP_DEPLOYMENT_AGENT REDIS_HOST_PORT; do
        valid "$key" || continue
        v=$((10#$(value_of "$key")))
        if [[ -n ${seen[$v]+x} ]]; then
            printf '%s: port %s is already used by %s (all published ports must differ)\n' "$key" "$v" "${seen[$v]}"
            bad=1
        fi
        seen[$v]=$key
    done
    if valid DEFAULT_CONTAINER MAX_CONTAINERS &&
        (($(value_of DEFAULT_CONTAINER) > $(value_of MAX_CONTAINERS))); then
        printf 'MAX_CONTAINERS: must be at least DEFAULT_CONTAINER (%s), got %s\n' \
            "$(value_of DEFAULT_CONTAINER)" "$(value_of MAX_CONTAINERS)"
        bad=1
    fi
    if valid CRITICAL_LOAD_THRESHOLD HIGH_LOAD_THRESHOLD &&
        ! awk -v c="$(value_of CRITICAL_LOAD_THRESHOLD)" -v h="$(value_of HIGH_LOAD_THRESHOLD)" 'BEGIN { exit !(c <= h) }'; then
        echo "CRITICAL_LOAD_THRESHOLD: must not exceed HIGH_LOAD_THRESHOLD ($(value_of HIGH_LOAD_THRESHOLD))"
        bad=1
    fi
    if valid HIGH_LOAD_THRESHOLD LOW_LOAD_THRESHOLD &&
        ! awk -v h="$(value_of HIGH_LOAD_THRESHOLD)" -v l="$(value_of LOW_LOAD_THRESHOLD)" 'BEGIN { exit !(h < l) }'; then
        echo "LOW_LOAD_THRESHOLD: must be greater than HIGH_LOAD_THRESHOLD ($(value_of HIGH_LOAD_THRESHOLD)); scores are 100 = idle"
        bad=1
    fi
    if valid MU_THRESHOLD LU_THRESHOLD &&
        ! awk -v m="$(value_of MU_THRESHOLD)" -v l="$(value_of LU_THRESHOLD)" 'BEGIN { exit !(m < l) }'; then
        echo "MU_THRESHOLD: must be less than LU_THRESHOLD ($(value_of LU_THRESHOLD))"
        bad=1
    fi
    if valid BEST_TIME_WINDOW HISTORY_SIZE && (($(value_of BEST_TIME_WINDOW) > $(value_of HISTORY_SIZE))); then
        echo "BEST_TIME_WINDOW: must not exceed HISTORY_SIZE ($(value_of HISTORY_SIZE))"
        bad=1
    fi
    if valid EMA_ALPHA && ! awk -v a="$(value_of EMA_ALPHA)" 'BEGIN { exit !(a > 0 && a <= 1) }'; then
        echo "EMA_ALPHA: expected 0 < alpha <= 1, got $(value_of EMA_ALPHA)"
        bad=1
    fi
    if valid RETRY_BUDGET && ! awk -v b="$(value_of RETRY_BUDGET)" 'BEGIN { exit !(b <= 1) }'; then
        echo "RETRY_BUDGET: expected a fraction from 0 to 1, got $(value_of RETRY_BUDGET)"
        bad=1
    fi
    if valid CPU_WEIGHT MEMORY_WEIGHT NETWORK_WEIGHT AVAILABILITY_WEIGHT &&
        ! awk -v a="$(value_of CPU_WEIGHT)" -v b="$(value_of MEMORY_WEIGHT)" -v c="$(value_of NETWORK_WEIGHT)" \
            -v d="$(value_of AVAILABILITY_WEIGHT)" 'BEGIN { exit !(a + b + c + d > 0) }'; then
        echo "CPU_WEIGHT: CPU_WEIGHT, MEMORY_WEIGHT, NETWORK_WEIGHT and AVAILABILITY_WEIGHT must not all be 0"
        bad=1
    fi
    local url ws
    url=$(value_of DEPLOYMENT_AGENT_URL)
    ws=$(value_of HOST_PORT_WS_DEPLOYMENT_AGENT)
    if valid DEPLOYMENT_AGENT_URL HOST_PORT_WS_DEPLOYMENT_AGENT &&
        [[ $url =~ ^wss?://deployment-agent(:([0-9]+))?/ ]] && [[ ${BASH_REMATCH[2]:-80} != "$ws" ]]; then
        printf 'DEPLOYMENT_AGENT_URL: points at port %s of the deployment-agent service, but HOST_PORT_WS_DEPLOYMENT_AGENT is %s\n' \
            "${BASH_REMATCH[2]:-80}" "$ws"
        bad=1
    fi
    ((bad == 0))
}

# Loads KEY=VALUE lines of FILE into VALUE (known keys) and EXTRA (others, kept verbatim).
load_file() {
    local file=$1 line key v n=0
    while IFS= read -r line || [[ -n $line ]]; do
        n=$((n + 1))
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        if [[ ! $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
            die "$file:$n: not a KEY=VALUE line: $line"
        fi
        key=${BASH_REMATCH[2]}
        v=${BASH_REMATCH[3]}
        if is_known "$key"; then
            VALUE[$key]=$v
        else
            [[ -z ${EXTRA[$key]+x} ]] && EXTRA_KEYS+=("$key")
            EXTRA[$key]=$v
        fi
    done <"$file"
}

set_value() {
    local key=$1 v=$2
    is_known "$key" || die "unknown setting $key (see --list)"
    VALUE[$key]=$v
    EXPLICIT[$key]=1
}

random_token() {
    head -c 24 /dev/urandom | base64 | tr '+/' '-_'
}

# Asks for KEY on the terminal until the answer is valid. Empty answer keeps the shown value.
prompt() {
    local key=$1 current answer problem
    current=$(value_of "$key")
    while true; do
        if [[ $key == AGENT_TOKEN ]]; then
            printf '%s — %s\n  ("random" generates one, "-" clears it) [%s]: ' "$key" "${HELP[$key]}" "${current:-none}" >&2
        else
            printf '%s — %s\n  [%s]: ' "$key" "${HELP[$key]}" "$current" >&2
        fi
        IFS= read -r answer || die "no answer (end of input)"
        answer=${answer#"${answer%%[![:space:]]*}"}
        answer=${answer%"${answer##*[![:space:]]}"}
        if [[ -z $answer ]]; then
            answer=$current
        elif [[ $key == AGENT_TOKEN && $answer == random ]]; then
            answer=$(random_token)
        elif [[ $answer == - ]]; then
            answer=
        fi
        if problem=$(check_value "$key" "$answer"); then
            VALUE[$key]=$answer
            return
        fi
        printf '  %s\n' "$problem" >&2
    done
}

# Prints the .env text.
render() {
    local line key v section_started=0
    printf '# RustyBalancer settings: read by Docker Compose (docker-compose*.yaml) and jobs/run.sh.\n'
    printf '# Written by jobs/setup.sh on %s. Edit by hand or re-run jobs/setup.sh;\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '# jobs/setup.sh --check validates this file. Meanings and defaults:\n'
    printf '# artefacts/configuration.md and artefacts/deployment.md. An empty value (or a\n'
    printf '# commented-out line) means the built-in default. No quotes around values.\n'
    while IFS= read -r line; do
        [[ -z $line ]] && continue
        if [[ $line == \#* ]]; then
            printf '\n%s\n' "$line"
            section_started=1
            continue
        fi
        key=${line%%|*}
        v=$(value_of "$key")
        if [[ ${LEVEL[$key]} == advanced && -z ${VALUE[$key]+x} ]]; then
            printf '# %s=%s    # %s\n' "$key" "${DEFAULT[$key]}" "${HELP[$key]}"
        else
            printf '# %s\n%s=%s\n' "${HELP[$key]}" "$key" "$v"
        fi
    done <<<"$SPEC"
    ((section_started)) || true
    if ((${#EXTRA_KEYS[@]})); then
        printf '\n# Other settings (kept from the previous file)\n'
        for key in "${EXTRA_KEYS[@]}"; do
            printf '%s=%s\n' "$key" "${EXTRA[$key]}"
        done
    fi
}

list_settings() {
    local key
    printf '%-32s %-40s %s\n' SETTING DEFAULT MEANING
    for key in "${KEYS[@]}"; do
        printf '%-32s %-40s %s\n' "$key" "${DEFAULT[$key]:-(empty)}" "${HELP[$key]}"
    done
}

main() {
    load_spec
    local defaults=0 interactive=0 noninteractive=0 print=0 check=0 generate_token=0
    local ws_port_given=0
    while (($#)); do
        case $1 in
            --defaults) defaults=1; noninteractive=1 ;;
            --image) (($# >= 2)) || usage_error "$1 needs a value"; set_value DOCKER_IMAGE "$2"; shift; noninteractive=1 ;;
            --port) (($# >= 2)) || usage_error "$1 needs a value"; set_value TARGET_PORT "$2"; shift; noninteractive=1 ;;
            --min) (($# >= 2)) || usage_error "$1 needs a value"; set_value DEFAULT_CONTAINER "$2"; shift; noninteractive=1 ;;
            --max) (($# >= 2)) || usage_error "$1 needs a value"; set_value MAX_CONTAINERS "$2"; shift; noninteractive=1 ;;
            --http-port) (($# >= 2)) || usage_error "$1 needs a value"; set_value HOST_PORT_HTTP_BALANCER "$2"; shift; noninteractive=1 ;;
            --admin-port) (($# >= 2)) || usage_error "$1 needs a value"; set_value HOST_PORT_ADMIN_BALANCER "$2"; shift; noninteractive=1 ;;
            --agent-port) (($# >= 2)) || usage_error "$1 needs a value"; set_value HOST_PORT_HTTP_DEPLOYMENT_AGENT "$2"; shift; noninteractive=1 ;;
            --ws-port) (($# >= 2)) || usage_error "$1 needs a value"; set_value HOST_PORT_WS_DEPLOYMENT_AGENT "$2"; shift; noninteractive=1; ws_port_given=1 ;;
            --app-id) (($# >= 2)) || usage_error "$1 needs a value"; set_value APP_IDENTIFIER "$2"; shift; noninteractive=1 ;;
            --token) (($# >= 2)) || usage_error "$1 needs a value"; set_value AGENT_TOKEN "$2"; shift; noninteractive=1 ;;
            --generate-token) generate_token=1; noninteractive=1 ;;
            --redis-password) (($# >= 2)) || usage_error "$1 needs a value"; set_value REDIS_PASSWORD "$2"; shift; noninteractive=1 ;;
            --set)
                (($# >= 2)) || usage_error "$1 needs KEY=VALUE"
                [[ $2 == *=* ]] || usage_error "--set needs KEY=VALUE, got '$2'"
                set_value "${2%%=*}" "${2#*=}"
                shift
                noninteractive=1
                ;;
            -o | --output) (($# >= 2)) || usage_error "$1 needs a file"; OUTPUT=$2; shift ;;
            --print) print=1 ;;
            --check) check=1 ;;
            --list) list_settings; exit 0 ;;
            -i | --interactive) interactive=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage_error "unknown option '$1'" ;;
        esac
        shift
    done

    if ((check)); then
        [[ -f $OUTPUT ]] || die "$OUTPUT does not exist (create it with jobs/setup.sh)"
        load_file "$OUTPUT"
        local problems
        if ! problems=$(validate_all); then
            printf '%s\n' "$problems" | sed 's/^/[setup] invalid: /' >&2
            die "$OUTPUT has invalid settings (fix them by hand or with jobs/setup.sh --set KEY=VALUE)"
        fi
        log "$OUTPUT is valid"
        exit 0
    fi

    # Start from the existing file unless --defaults; explicit options win over it.
    if ((!defaults)) && [[ -f $OUTPUT ]]; then
        local -A given=()
        local key
        for key in "${!EXPLICIT[@]}"; do given[$key]=${VALUE[$key]}; done
        load_file "$OUTPUT"
        for key in "${!given[@]}"; do VALUE[$key]=${given[$key]}; done
        log "starting from the existing $OUTPUT"
    fi
    ((generate_token)) && set_value AGENT_TOKEN "$(random_token)"
    if ((ws_port_given)) && [[ -z ${EXPLICIT[DEPLOYMENT_AGENT_URL]+x} ]]; then
        VALUE[DEPLOYMENT_AGENT_URL]="ws://deployment-agent:${VALUE[HOST_PORT_WS_DEPLOYMENT_AGENT]}/ws"
    fi

    if ((interactive || !noninteractive)); then
        [[ -t 0 ]] || die "stdin is not a terminal: use --defaults or value options (see -h)"
        log "press Enter to keep the value in [brackets]; every other setting keeps its default (see --list, --set)"
        local key
        for key in "${PROMPTED[@]}"; do
            prompt "$key"
        done
    fi

    local problems
    if ! problems=$(validate_all); then
        printf '%s\n' "$problems" | sed 's/^/[setup] invalid: /' >&2
        die "nothing written"
    fi

    if ((print)); then
        render
        return
    fi
    local dir tmp
    dir=$(dirname "$OUTPUT")
    [[ -d $dir ]] || die "directory $dir does not exist"
    tmp=$(mktemp "$dir/.env.XXXXXX")
    # The file may hold secrets (AGENT_TOKEN, REDIS_PASSWORD): readable by its owner only.
    chmod 600 "$tmp"
    render >"$tmp"
    if [[ -f $OUTPUT ]]; then
        cp -p "$OUTPUT" "$OUTPUT.bak"
        log "previous settings kept in $OUTPUT.bak"
    fi
    mv "$tmp" "$OUTPUT"
    log "wrote $OUTPUT (app: $(value_of DOCKER_IMAGE) on port $(value_of TARGET_PORT); balancer on port $(value_of HOST_PORT_HTTP_BALANCER); pool $(value_of DEFAULT_CONTAINER)..$(value_of MAX_CONTAINERS))"
}

main "$@"
