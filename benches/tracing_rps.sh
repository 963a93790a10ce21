#!/usr/bin/env bash
# What tracing costs in requests per second (issue 20's aim: <= 5% at sample_ratio 0.01):
# the same binary as two proxies, one without `tracing` and one exporting spans over
# OTLP/HTTP (to the origin, which answers 200) at RATIO, measured alternately (A B A B ...)
# with wrk, HTTP/1.1 keep-alive GET, one proxy worker on cpu1, origin and wrk on cpu0.
# Only one proxy carries load at a time; the ratio of the medians is the figure.
#
# Usage: benches/tracing_rps.sh [--bin DIR] [--ratio R] [--reps N] [--duration S]
# Listens on 127.0.0.1:2828x; every process started here is ended by PID.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release"; RATIO=0.01; REPS=5; DUR=6
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) BIN=$(realpath "$2"); shift ;;
        --ratio) RATIO=$2; shift ;;
        --reps) REPS=$2; shift ;;
        --duration) DUR=$2; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_workdir trellis-tracing-rps

taskset -c 0 "$BIN/trellis-origin" --listen 127.0.0.1:28281 --threads 1 >origin.log 2>&1 &
PIDS+=($!)
for side in off on; do
    port=$([[ $side == off ]] && echo 28282 || echo 28283)
    admin=$([[ $side == off ]] && echo 28284 || echo 28285)
    {
        echo "admin: { address: 127.0.0.1:$admin }"
        echo "listeners: [{ name: bench, address: 127.0.0.1:$port, routes: [all] }]"
        echo "routes: [{ name: all, match: { path_prefix: / }, backends: [{ cluster: origin }] }]"
        echo "clusters: [{ name: origin, protocol: http1, endpoints: [{ address: 127.0.0.1:28281 }] }]"
        [[ $side == on ]] && echo "tracing: { otlp: { endpoint: \"http://127.0.0.1:28281\", protocol: http }, sample_ratio: $RATIO }"
    } >"$side.yaml"
    taskset -c 1 "$BIN/trellis" proxy --config "$side.yaml" --threads 1 >"$side.log" 2>&1 &
    PIDS+=($!)
    wait_ready "http://127.0.0.1:$admin/ready"
done

rps() { taskset -c 0 wrk -t1 -c64 -d"$2"s "http://127.0.0.1:$1/" | awk '/Requests\/sec/ {print $2}'; }
rps 28282 2 >/dev/null; rps 28283 2 >/dev/null
OFF=(); ON=()
for ((i = 1; i <= REPS; i++)); do
    if ((i % 2)); then a=$(rps 28282 "$DUR"); b=$(rps 28283 "$DUR"); else b=$(rps 28283 "$DUR"); a=$(rps 28282 "$DUR"); fi
    OFF+=("$a"); ON+=("$b")
    printf 'rep %d: tracing off %.0f rps, on (%s) %.0f rps (%.3fx)\n' "$i" "$a" "$RATIO" "$b" "$(echo "$b / $a" | bc -l)"
done
mo=$(median "${OFF[@]}"); mn=$(median "${ON[@]}")
printf 'median: off %.0f rps, on %.0f rps: %.3fx (cost %.1f%%)\n' "$mo" "$mn" "$(echo "$mn / $mo" | bc -l)" "$(echo "(1 - $mn / $mo) * 100" | bc -l)"
exported=$(curl -s http://127.0.0.1:28285/metrics | awk '/^trellis_trace_spans_exported_total/ {print $2}')
echo "spans exported by the traced proxy: ${exported:-0}"
