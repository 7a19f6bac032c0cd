#!/usr/bin/env bash
# Wipes RustyBalancer's runtime state so the next start begins from nothing: the app's
# containers and the agent's Redis state. Shows what it will remove and asks first.
#
# Stack running (redis up):  stops the deployment-agent, removes every container labelled
#   application=<APP_IDENTIFIER>, deletes the agent's Redis keys
#   rustybalancer:<APP_IDENTIFIER>:* (SCAN + UNLINK with redis-cli in the redis container),
#   then starts the agent again: it starts a fresh pool of DEFAULT_CONTAINER containers.
# Stack down:  removes the labelled containers, the Redis data volume of the project
#   (it holds only RustyBalancer's state) and a network left behind.
# After `jobs/run.sh --down` and `jobs/reset.sh -y` nothing of ours is left: no container,
# network or volume (images stay; docker image rm them if you want).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENV_FILE=$ROOT/.env
ASSUME_YES=0

usage() {
    cat <<'USAGE'
Usage: jobs/reset.sh [-y] [--env-file FILE] [-h]

Removes RustyBalancer's runtime state, after showing what it will remove:
  - every container labelled application=<APP_IDENTIFIER> (the app's pool);
  - the agent's Redis state, the keys rustybalancer:<APP_IDENTIFIER>:*
    (when the stack runs: SCAN + UNLINK in the redis container, the agent is stopped
    meanwhile and started again afterwards, with a fresh pool);
  - when the stack is down: the project's Redis volume and a leftover network.
Settings (COMPOSE_PROJECT_NAME, APP_IDENTIFIER, DOCKER_NETWORK, REDIS_PASSWORD) come
from the environment, else .env (or --env-file FILE), else the defaults.

Options:
  -y, --yes         don't ask for confirmation
  --env-file FILE   read the settings from FILE instead of .env (as jobs/run.sh --env-file)
  -h, --help        show this help
USAGE
}

log() {
    printf '[reset %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

die() {
    printf '[reset %s] error: %s\n' "$(date +%H:%M:%S)" "$*" >&2
    exit 1
}

usage_error() {
    usage >&2
    printf '[reset] error: %s\n' "$*" >&2
    exit 2
}

# setting KEY DEFAULT: the environment's value, else .env's, else DEFAULT.
setting() {
    local key=$1 default=$2 line
    if [[ -n ${!key:-} ]]; then
        echo "${!key}"
    elif [[ -f $ENV_FILE ]] && line=$(grep -E "^[[:space:]]*${key}=" "$ENV_FILE" | tail -n 1) && [[ -n ${line#*=} ]]; then
        echo "${line#*=}"
    else
        echo "$default"
    fi
}

# ID of SERVICE's running container in the project, if any.
running_service() {
    docker ps -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" | head -n 1
}

# redis-cli in the redis container, authenticated when REDIS_PASSWORD is set.
redis_cli() {
    local -a auth=()
    [[ -n $REDIS_PASSWORD ]] && auth=(-e "REDISCLI_AUTH=$REDIS_PASSWORD")
    docker exec "${auth[@]}" "$REDIS" redis-cli "$@"
}

names_of() {
    (($#)) || return 0
    docker inspect --format '{{.Name}}' "$@" | tr -d / | tr '\n' ' '
}

main() {
    while (($#)); do
        case $1 in
            -y | --yes) ASSUME_YES=1 ;;
            --env-file)
                (($# >= 2)) || usage_error "$1 needs a file"
                [[ -f $2 ]] || usage_error "settings file '$2' not found"
                ENV_FILE=$2
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

    command -v docker >/dev/null 2>&1 || die "docker not found"
    docker info >/dev/null 2>&1 || die "the Docker daemon is not running or not reachable"

    PROJECT=$(setting COMPOSE_PROJECT_NAME rustybalancer)
    APP_IDENTIFIER=$(setting APP_IDENTIFIER RUSTYBALANCER)
    NETWORK=$(setting DOCKER_NETWORK rustybalancer)
    REDIS_PASSWORD=$(setting REDIS_PASSWORD "")
    local prefix="rustybalancer:$APP_IDENTIFIER:"

    # What is there.
    local -a apps volumes keys=()
    mapfile -t apps < <(docker ps -aq --filter "label=application=$APP_IDENTIFIER")
    REDIS=$(running_service redis)
    local agent
    agent=$(running_service deployment-agent)
    if [[ -n $REDIS ]]; then
        local scan
        scan=$(redis_cli --scan --pattern "$prefix*") ||
            die "cannot list the Redis keys in $(names_of "$REDIS") (redis-cli --scan failed; is REDIS_PASSWORD right?)"
        mapfile -t keys < <(printf '%s\n' "$scan" | sed '/^$/d')
        volumes=()
    else
        mapfile -t volumes < <(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
    fi
    local network_left=0
    if [[ -z $REDIS ]] && docker network inspect "$NETWORK" >/dev/null 2>&1 &&
        [[ -z $(docker ps -q --filter "network=$NETWORK") ]]; then
        network_left=1
    fi

    echo "jobs/reset.sh will remove (project $PROJECT, APP_IDENTIFIER $APP_IDENTIFIER):"
    printf '  %-28s %s\n' "app containers:" "${#apps[@]} $(names_of "${apps[@]}")"
    if [[ -n $REDIS ]]; then
        printf '  %-28s %s\n' "Redis keys ${prefix}*:" "${#keys[@]} (in the running redis container)"
        [[ -n $agent ]] && printf '  %-28s %s\n' "deployment-agent:" "stopped during the reset, then started again"
    else
        printf '  %-28s %s\n' "Redis data volume(s):" "${volumes[*]:-none} (the stack is down)"
        ((network_left)) && printf '  %-28s %s\n' "network:" "$NETWORK (left behind)"
    fi
    if ((${#apps[@]} == 0 && ${#keys[@]} == 0 && ${#volumes[@]} == 0 && network_left == 0)); then
        log "nothing to remove"
        return 0
    fi

    if ((!ASSUME_YES)); then
        [[ -t 0 ]] || die "not a terminal: pass -y to remove without asking"
        local answer
        read -r -p "Remove all of this? [y/N] " answer
        [[ $answer =~ ^[Yy]([Ee][Ss])?$ ]] || die "nothing removed"
    fi

    if [[ -n $agent ]]; then
        log "stopping the deployment-agent (so that it doesn't replace what is removed)"
        docker stop -t 15 "$agent" >/dev/null
    fi
    if ((${#apps[@]})); then
        log "removing ${#apps[@]} app container(s)"
        docker rm -f "${apps[@]}" >/dev/null
    fi
    if [[ -n $REDIS ]] && ((${#keys[@]})); then
        log "deleting ${#keys[@]} Redis key(s) under $prefix"
        # The agent is stopped, but scan again: keys written before it stopped count too.
        local -a auth=()
        [[ -n $REDIS_PASSWORD ]] && auth=(-e "REDISCLI_AUTH=$REDIS_PASSWORD")
        redis_cli --scan --pattern "$prefix*" |
            xargs -r -d '\n' -n 100 docker exec "${auth[@]}" "$REDIS" redis-cli UNLINK >/dev/null
        local left
        left=$(redis_cli --scan --pattern "$prefix*" | wc -l)
        ((left == 0)) || die "$left key(s) under $prefix are still there"
    fi
    if ((${#volumes[@]})); then
        log "removing volume(s) ${volumes[*]}"
        docker volume rm "${volumes[@]}" >/dev/null
    fi
    if ((network_left)); then
        log "removing network $NETWORK"
        docker network rm "$NETWORK" >/dev/null
    fi
    if [[ -n $agent ]]; then
        log "starting the deployment-agent again (fresh state)"
        docker start "$agent" >/dev/null
    fi
    log "done"
}

main "$@"
