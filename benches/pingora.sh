#!/usr/bin/env bash
# Trellis against Pingora 0.9 in one run (issue 22 asks for >= 2.5x Pingora's RPS on HTTP/1.1
# and h2c), with the origin alone ("direct") as the ceiling: HTTP/1.1 keep-alive GETs (wrk
# -c64) and h2c GETs (h2load -c8 -m8), interleaved repetitions (direct, then Trellis and
# Pingora in alternating order). Each proxy alone on cpu1 with one worker; load generator and
# origin on cpu0. Every run also reports how busy each core was: with a proxy in the path, a
# core at ~100% is the bound. And both proxies' idle RSS after one request.
#
# Pingora is the minimal proxy in benches/pingora/ (its own lock file, built into
# target/pingora on first use: the first build fetches and compiles Pingora, several minutes).
#
#   benches/pingora.sh [--reps N] [--duration S] [--no-build]
#
# Env: TRELLIS_BIN (default target/release/trellis). Listens on 127.0.0.1:2842x; every
# process started here is ended by PID.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"

REPS=5
DUR=6
BUILD=1
while (($#)); do
    case $1 in
        --reps) REPS=$2; shift 2 ;;
        --duration) DUR=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h | --help) sed -n 2,15p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
TRELLIS_BIN=$(realpath "${TRELLIS_BIN:-$ROOT/target/release/trellis}")
BIN=$ROOT/target/release
PINGORA=$ROOT/target/pingora/release/pingora-ref
if ((BUILD)); then
    build_release -q || exit 1
fi
if ((BUILD)) || [[ ! -x $PINGORA ]]; then
    CARGO_TARGET_DIR=$ROOT/target/pingora cargo build --release -q --manifest-path "$ROOT/benches/pingora/Cargo.toml" || exit 1
fi
need_tools wrk h2load curl

bench_workdir trellis-pingora
ORIGIN=127.0.0.1:28420
taskset -c 0 "$BIN/trellis-origin" --listen "$ORIGIN" --threads 1 >origin.log 2>&1 &
PIDS+=($!)
{
    echo 'admin: { address: "127.0.0.1:28423" }'
    echo 'listeners:'
    echo '  - { name: bench, address: "127.0.0.1:28421", routes: [all] }'
    forward_all_yaml "$ORIGIN"
} >trellis.yaml
taskset -c 1 "$TRELLIS_BIN" proxy --config trellis.yaml --threads 1 >trellis.log 2>&1 &
TP=$!; PIDS+=("$TP")
taskset -c 1 "$PINGORA" 127.0.0.1:28422 "$ORIGIN" 1 >pingora.log 2>&1 &
PP=$!; PIDS+=("$PP")
wait_ready http://127.0.0.1:28423/ready
wait_ready http://127.0.0.1:28422/
declare -A PORT=([direct]=28420 [trellis]=28421 [pingora]=28422)

rss_kb() { awk '/^VmRSS/ {print $2}' /proc/"$1"/status; }
echo "## Trellis against Pingora ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "Idle RSS after one request: trellis $(rss_kb "$TP") kB, pingora $(rss_kb "$PP") kB."

# busy CPU: "busy_ticks all_ticks" of one core.
busy() { awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
# run LOAD TARGET: "rps cpu0% cpu1%" of one run.
run() {
    local url=http://127.0.0.1:${PORT[$2]}/ a0 t0 a1 t1 b0 s0 b1 s1 rps
    read -r a0 t0 < <(busy 0); read -r a1 t1 < <(busy 1)
    case $1 in
        h1) rps=$(taskset -c 0 wrk -t1 -c64 -d"${DUR}s" "$url" | awk '/Requests\/sec/ {print $2}') ;;
        h2c) rps=$(taskset -c 0 h2load -t1 -c8 -m8 -D "$DUR" "$url" 2>/dev/null | awk '/^finished in/ {print $4}') ;;
    esac
    read -r b0 s0 < <(busy 0); read -r b1 s1 < <(busy 1)
    echo "${rps:-0} $(((b0 - a0) * 100 / (s0 - t0 + 1))) $(((b1 - a1) * 100 / (s1 - t1 + 1)))"
}

for load in h1 h2c; do
    echo
    echo "### $load ($([[ $load == h1 ]] && echo "wrk -t1 -c64" || echo "h2load -t1 -c8 -m8"), ${DUR}s per run)"
    echo
    echo "| rep | direct RPS (cpu0/cpu1 busy) | trellis RPS (cpu0/cpu1) | pingora RPS (cpu0/cpu1) | trellis ÷ pingora | 2.5 × pingora ÷ direct |"
    echo "|---|---|---|---|---|---|"
    for t in direct trellis pingora; do run "$load" "$t" >/dev/null; done # warm-up
    RATIOS="" CEIL=""
    for rep in $(seq "$REPS"); do
        order=(trellis pingora)
        ((rep % 2)) || order=(pingora trellis)
        declare -A R=() C=()
        for t in direct "${order[@]}"; do
            read -r rps c0 c1 < <(run "$load" "$t")
            R[$t]=$rps; C[$t]="$c0/$c1%"
        done
        ratio=$(awk -v a="${R[trellis]}" -v b="${R[pingora]}" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')
        ceil=$(awk -v p="${R[pingora]}" -v d="${R[direct]}" 'BEGIN {printf "%.2f", (d > 0 ? 2.5 * p / d : 0)}')
        RATIOS+=" $ratio"; CEIL+=" $ceil"
        printf '| %d | %.0f (%s) | %.0f (%s) | %.0f (%s) | %s× | %s× |\n' "$rep" "${R[direct]}" "${C[direct]}" \
            "${R[trellis]}" "${C[trellis]}" "${R[pingora]}" "${C[pingora]}" "$ratio" "$ceil"
    done
    echo
    echo "Median trellis ÷ pingora: **$(median $RATIOS)×**; 2.5 × pingora is $(median $CEIL)× the direct connection (above 1: more than the origin and load generator do with no proxy at all)."
done
echo
echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
