#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60).
#   jobs/fuzz.sh [SECONDS]   build all targets once, run each, print executions per target
#   jobs/fuzz.sh --list      list the targets
# Exits non-zero when a target crashes, naming the target and the crash file
# (fuzz/artifacts/<target>/crash-*). Corpora live in fuzz/corpus/<target>.
# Stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly flags (-Zsanitizer=address).
# FUZZ_SANITIZER=none turns AddressSanitizer off. The build goes to FUZZ_TARGET_DIR (default
# ~/.cache/rustybalancer/fuzz-target), outside the checkout, so fresh clones (CI) reuse the
# instrumented dependencies instead of rebuilding them (2½ minutes on 2 quiet cores).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
target_dir=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rustybalancer/fuzz-target}
mkdir -p "$target_dir"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked; a few minutes) =="
    cargo install cargo-fuzz --locked
fi

if [[ "${1:-}" == "--list" ]]; then
    cargo fuzz list
    exit 0
fi

seconds=${1:-60}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds == 0)); then
    echo "usage: jobs/fuzz.sh [SECONDS] | --list" >&2
    exit 2
fi

mapfile -t targets < <(cargo fuzz list)
echo "== building ${#targets[@]} targets (sanitizer: $sanitizer) =="
build_start=$SECONDS
cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir"
echo "== built in $((SECONDS - build_start))s =="

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
printf '%-16s %12s %8s %10s  %s\n' target executions seconds exec/s result
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$logs/$t.log"
    rc=0
    cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -n 1)
    if [[ -z "$runs" ]]; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\)/\1/p' "$log" | tail -n 1)
    fi
    runs=${runs:-?}
    secs=${secs:-$seconds}
    rate='?'
    if [[ "$runs" =~ ^[0-9]+$ ]] && ((secs > 0)); then
        rate=$((runs / secs))
    fi
    if ((rc == 0)); then
        printf '%-16s %12s %8s %10s  %s\n' "$t" "$runs" "$secs" "$rate" ok
    else
        crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        printf '%-16s %12s %8s %10s  %s\n' "$t" "$runs" "$secs" "$rate" "CRASH (exit $rc) ${crash:-no crash file}"
        { grep -m 1 -A 1 "panicked at" "$log" || grep -m 1 -E "ERROR: (AddressSanitizer|libFuzzer)" "$log" || true; } | sed 's/^/    /' 
        cp "$log" "artifacts/$t/last-run.log"
        echo "    full log: fuzz/artifacts/$t/last-run.log"
        failed+=("$t")
    fi
done

if ((${#failed[@]} > 0)); then
    echo "== crashes in: ${failed[*]} ==" >&2
    exit 1
fi
echo "== no crashes =="
