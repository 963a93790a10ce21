#!/usr/bin/env bash
# Same-run A/B of two trellis builds in requests per second: both run at once as two
# proxies on cpu1 (one worker each, the same config on other ports), origin and load on
# cpu0; only one carries load at a time, in the order A B, B A, A B ... Loads: HTTP/1.1
# keep-alive GET (wrk -c64) and h2c GET (h2load -c8 -m8); with --loads also the same two over
# TLS (`tls-h1`, `tls-h2`: each proxy terminates TLS 1.3 on a second listener). The figure is the median of the
# per-repetition ratios B ÷ A: on a shared VM, RPS drifts from one minute to the next, so
# only the ratio within a repetition compares the builds. Beside it, each proxy's CPU time
# per request over the same runs (its threads' run time ÷ the requests served), which moves
# less with the machine's noise than RPS does.
#
# Usage: benches/ab.sh [--reps N] [--duration S] [--loads "h1 h2c tls-h1 tls-h2"] A/trellis B/trellis
# Needs wrk and h2load. Listens on 127.0.0.1:2832x; every process started here is ended by PID.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release"; REPS=5; DUR=6; AB=(); LOADS="h1 h2c"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) REPS=$2; shift ;;
        --duration) DUR=$2; shift ;;
        --loads) LOADS=$2; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        -*) echo "unknown option: $1" >&2; exit 2 ;;
        *) AB+=("$(realpath "$1")") ;;
    esac
    shift
done
((${#AB[@]} == 2)) || { echo "usage: benches/ab.sh [--reps N] [--duration S] [--loads LOADS] A B" >&2; exit 2; }
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
need_tools wrk h2load curl
bench_workdir trellis-ab

taskset -c 0 "$BIN/trellis-origin" --listen 127.0.0.1:28320 --threads 1 >origin.log 2>&1 &
PIDS+=($!)
declare -A PORT=([A]=28321 [B]=28322) TLS_PORT=([A]=28325 [B]=28326) ADMIN=([A]=28323 [B]=28324)
declare -A EXE=([A]=${AB[0]} [B]=${AB[1]}) PROC=()
edge_pki "${EXE[A]}" pki || exit 1
for side in A B; do
    cat >"$side.yaml" <<EOF
admin: { address: "127.0.0.1:${ADMIN[$side]}" }
listeners:
  - { name: bench, address: "127.0.0.1:${PORT[$side]}", routes: [all] }
  - name: tls
    address: "127.0.0.1:${TLS_PORT[$side]}"
    tls: { mode: terminate, certificates: [{ cert: pki/edge.pem, key: pki/edge.key }] }
    routes: [all]
$(forward_all_yaml 127.0.0.1:28320)
EOF
    taskset -c 1 "${EXE[$side]}" proxy --config "$side.yaml" --threads 1 >"$side.log" 2>&1 &
    PIDS+=($!); PROC[$side]=$!
    wait_ready "http://127.0.0.1:${ADMIN[$side]}/ready"
done

# rps LOAD SIDE SECONDS
rps() {
    local url="http://127.0.0.1:${PORT[$2]}/" tls="https://localhost:${TLS_PORT[$2]}/"
    case "$1" in
        h1) taskset -c 0 wrk -t1 -c64 -d"$3"s "$url" | awk '/Requests\/sec/ {print $2}' ;;
        h2c) taskset -c 0 h2load -t1 -c8 -m8 -D "$3" "$url" 2>/dev/null | awk '/^finished in/ {print $4}' ;;
        tls-h1) taskset -c 0 wrk -t1 -c64 -d"$3"s "$tls" | awk '/Requests\/sec/ {print $2}' ;;
        tls-h2) taskset -c 0 h2load -t1 -c8 -m8 -D "$3" "$tls" 2>/dev/null | awk '/^finished in/ {print $4}' ;;
        *) echo "unknown load $1 (h1, h2c, tls-h1, tls-h2)" >&2; exit 2 ;;
    esac
}
# cpu_ns PID: the run time of the process's threads so far, in ns.
cpu_ns() {
    local t=0 a f
    for f in /proc/"$1"/task/*/schedstat; do read -r a _ <"$f" && t=$((t + a)); done
    echo "$t"
}
# run LOAD SIDE SECONDS: "rps cpu_us_per_request" of one run.
run() {
    local c0 c1 r
    c0=$(cpu_ns "${PROC[$2]}"); r=$(rps "$@"); c1=$(cpu_ns "${PROC[$2]}")
    echo "${r:-0} $(awk -v a="$c0" -v b="$c1" -v r="${r:-0}" -v s="$3" 'BEGIN {printf "%.3f", (r > 0 ? (b - a) / 1000 / (r * s) : 0)}')"
}

echo "A: ${EXE[A]}"
echo "B: ${EXE[B]}"
echo "$REPS repetitions × ${DUR} s per build and load; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| load | A median RPS | B median RPS | B ÷ A (median of per-rep ratios) | per rep | A CPU µs/req | B CPU µs/req | B ÷ A CPU/req (median of per-rep ratios) |"
echo "|---|---|---|---|---|---|---|---|"
for load in $LOADS; do
    rps "$load" A 2 >/dev/null; rps "$load" B 2 >/dev/null
    RA=(); RB=(); RATIO=(); CA=(); CB=(); CRATIO=()
    for ((i = 1; i <= REPS; i++)); do
        if ((i % 2)); then
            read -r a ca < <(run "$load" A "$DUR"); read -r b cb < <(run "$load" B "$DUR")
        else
            read -r b cb < <(run "$load" B "$DUR"); read -r a ca < <(run "$load" A "$DUR")
        fi
        RA+=("$a"); RB+=("$b"); RATIO+=("$(echo "$b / $a" | bc -l)")
        CA+=("$ca"); CB+=("$cb"); CRATIO+=("$(echo "$cb / $ca" | bc -l)")
    done
    printf '| %s | %.0f | %.0f | %.3f× | %s | %.2f | %.2f | %.3f× |\n' "$load" "$(median "${RA[@]}")" "$(median "${RB[@]}")" \
        "$(median "${RATIO[@]}")" "$(printf '%.2f ' "${RATIO[@]}")" "$(median "${CA[@]}")" "$(median "${CB[@]}")" \
        "$(median "${CRATIO[@]}")"
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
