#!/usr/bin/env bash
# Sourced by the benchmark scripts (pair.sh, instructions.sh, pgo.sh): a working directory
# that is removed on exit, processes recorded in PIDS that are ended by PID on exit, and a
# readiness wait.

# bench_workdir NAME: makes /tmp/NAME.XXXXXX, sets TMP, arms the exit cleanup, cd's there.
bench_workdir() {
    TMP=$(mktemp -d "/tmp/$1.XXXXXX") || { echo "error: cannot make a temp dir" >&2; exit 1; }
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    cd "$TMP" || exit 1
}

bench_cleanup() {
    local p
    # `|| true`: under `set -e` a gone process, or `wait`'s non-zero status of a killed
    # one, would end the cleanup before the temp dir is removed.
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}

# wait_ready URL: waits up to 10 s for URL to answer 2xx, else exits with an error.
wait_ready() {
    for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done
    echo "error: $1 not ready" >&2
    exit 1
}
