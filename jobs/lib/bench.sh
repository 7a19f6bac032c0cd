# jobs/lib/bench.sh - shell helpers shared by the benchmark scripts (sourced, not run).
#
# Set BENCH_TAG before sourcing (the prefix of every log line). Provides:
#   log / warn / die      timestamped lines on stderr; die exits 1
#   posint / nonneg NAME VALUE   validate a number or die naming NAME
#   select_ordered OUT CSV WHAT VALID...   the CSV's items as array OUT, in VALID's order;
#                         dies on an unknown item or an empty selection
# shellcheck shell=bash

BENCH_TAG=${BENCH_TAG:-bench}

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$BENCH_TAG" -1 "$*" >&2; }
warn() { log "WARNING: $*"; }
die() {
    log "ERROR: $*"
    exit 1
}

posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }
nonneg() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a non-negative integer, got '$2'"; }

select_ordered() {
    local -n _selected=$1
    local csv=$2 what=$3 item valid
    shift 3
    local requested=()
    IFS=',' read -r -a requested <<<"$csv"
    for item in "${requested[@]}"; do
        [[ " $* " == *" $item "* ]] || die "unknown $what '$item' (valid: $*)"
    done
    _selected=()
    for valid in "$@"; do
        [[ " ${requested[*]} " == *" $valid "* ]] && _selected+=("$valid")
    done
    ((${#_selected[@]})) || die "no $what selected"
}

# nginx_at_least 1.25.1: whether the installed nginx is at least that version
# (h2c is `http2 on;` from 1.25.1, the `http2` listen parameter before).
nginx_at_least() {
    local v
    v=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
    [[ -n $v ]] || die "cannot read the nginx version"
    [[ $(printf '%s\n%s\n' "$1" "$v" | sort -V | head -n1) == "$1" ]]
}

# nginx_h2c_listener: sets the proxy template's R_KA_REQ, R_LISTEN and R_SERVER_EXTRA
# (jobs/bench/proxy.nginx.conf.tmpl) for a listener that takes HTTP/2 with prior
# knowledge only. nginx closes an HTTP/2 connection with GOAWAY after
# keepalive_requests requests, and h2load does not reconnect: that client is then
# idle for the rest of the run. 1e8 requests per connection is never reached.
nginx_h2c_listener() {
    R_KA_REQ=100000000
    if nginx_at_least 1.25.1; then
        R_LISTEN="" R_SERVER_EXTRA="http2 on;"
    else
        R_LISTEN=" http2" R_SERVER_EXTRA="# h2c (prior knowledge) via the listen parameter"
    fi
}
