#!/usr/bin/env bash
# Sidecar-pair benchmark (issue "Identity"): app -> outbound sidecar (plaintext HTTP/1.1)
# -> one multiplexed mTLS HTTP/2 connection -> inbound sidecar -> origin, against the
# origin direct, in one run. Load driver and origin on cpu0, both sidecars (--threads 1)
# on cpu1. Measures: closed-loop RPS at 64 connections (interleaved reps), open-loop
# latency at half of the pair's measured maximum (direct and pair at the same rate), new
# mTLS handshakes per second on the inbound (mesh) listener alone, and each sidecar's RSS.
#
# Usage: benches/pair.sh [--reps N] [--duration S] [--no-build]
# Env: TRELLIS_BIN, the trellis binary measured (default target/release/trellis; e.g.
# target/pgo/trellis after benches/pgo.sh).
# Everything listens on 127.0.0.1:2814x/2809x/2990x; processes started here are killed by PID.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release"
TRELLIS_BIN="${TRELLIS_BIN:-$BIN/trellis}"   # e.g. target/pgo/trellis after benches/pgo.sh
REPS=3; DUR=6; BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) REPS="$2"; shift ;;
        --duration) DUR="$2"; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
((BUILD)) && (cd "$ROOT" && cargo build --release -q -p trellis -p trellis-bench) || ((BUILD == 0)) || exit 1

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_workdir trellis-pair

"$BIN/trellis" certs init --dir pki >/dev/null
"$BIN/trellis" certs issue --dir pki --id spiffe://trellis.local/ns/default/sa/frontend --out pki/frontend >/dev/null
"$BIN/trellis" certs issue --dir pki --id spiffe://trellis.local/ns/default/sa/checkout --out pki/checkout >/dev/null
sed 's/8080/28090/; s/9902/29902/; s/4143/28143/' "$ROOT/examples/sidecar-pair/checkout.yaml" >checkout.yaml
sed 's/9901/29901/; s/4140/28140/; s/4143/28143/' "$ROOT/examples/sidecar-pair/frontend.yaml" >frontend.yaml

cpu_ns() { local t=0 f a; for f in /proc/"$1"/task/*/schedstat; do read -r a _ <"$f"; t=$((t + a)); done; echo "$t"; }
rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' /proc/"$1"/status; }
# load URL ARGS...: one trellis-load line ("... N rps | latency p50 ... p99 ...").
load() { local url=$1; shift; taskset -c 0 "$BIN/trellis-load" --url "$url" -c 64 --warmup 1s "$@" | head -1; }
rps_of() { sed -n 's/.* \([0-9.]*\) rps .*/\1/p'; }

taskset -c 0 "$BIN/trellis-origin" --listen 127.0.0.1:28090 --threads 1 >origin.log 2>&1 &
PIDS+=($!)
taskset -c 1 "$TRELLIS_BIN" proxy --config checkout.yaml --threads 1 >inbound.log 2>&1 &
IN=$!; PIDS+=("$IN")
taskset -c 1 "$TRELLIS_BIN" proxy --config frontend.yaml --threads 1 >outbound.log 2>&1 &
OUT=$!; PIDS+=("$OUT")
wait_ready http://127.0.0.1:29902/ready
wait_ready http://127.0.0.1:29901/ready
DIRECT=http://127.0.0.1:28090/api/x
PAIR=http://127.0.0.1:28140/api/x

echo "## Sidecar pair ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "closed loop, HTTP/1.1, 64 connections, ${DUR}s per run:"
d_all=(); p_all=()
for rep in $(seq "$REPS"); do
    d=$(load "$DIRECT" -d "${DUR}s"); p=$(load "$PAIR" -d "${DUR}s")
    echo "  rep $rep direct: ${d#* c=64 m=1 }"
    echo "  rep $rep pair:   ${p#* c=64 m=1 }"
    d_all+=("$(rps_of <<<"$d")"); p_all+=("$(rps_of <<<"$p")")
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
DMED=$(med "${d_all[@]}"); PMED=$(med "${p_all[@]}")
echo "  median: direct $DMED rps, pair $PMED rps = $(awk -v a="$PMED" -v b="$DMED" 'BEGIN{printf "%.2f", a/b}')x of direct"
echo "  RSS after load: inbound $(rss_mb "$IN") MB, outbound $(rss_mb "$OUT") MB;" \
    "mTLS connections between the sidecars: $(ss -Htn state established '( dport = :28143 )' | wc -l)"
HALF=$(awk -v p="$PMED" 'BEGIN{printf "%d", p / 2}')
echo
echo "open loop at half of the pair's maximum ($HALF req/s), ${DUR}s per run:"
for rep in $(seq "$REPS"); do
    echo "  rep $rep direct: $(load "$DIRECT" --rate "$HALF" -d "${DUR}s" | sed 's/.*| //')"
    echo "  rep $rep pair:   $(load "$PAIR" --rate "$HALF" -d "${DUR}s" | sed 's/.*| //')"
done
kill "$OUT"
echo
echo "new mTLS handshakes on the inbound (mesh) listener alone, full TLS 1.3 handshakes, no resumption:"
for c in 8 32; do
    a=$(cpu_ns "$IN"); t0=$(date +%s%N)
    out=$(taskset -c 0 "$BIN/tls-handshakes" --addr 127.0.0.1:28143 --cert pki/frontend.pem --key pki/frontend.key \
        --bundle pki/ca.pem --server-id spiffe://trellis.local/ns/default/sa/checkout -c "$c" -d "${DUR}s")
    b=$(cpu_ns "$IN"); t1=$(date +%s%N)
    n=$(awk '{print $2; exit}' <<<"$out")
    echo "  c=$c: $(head -1 <<<"$out") | listener at $(awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$t1" 'BEGIN{printf "%.0f%%", (b-a)*100/(t1-t0)}') of its core, $(awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN{printf "%.0f", (b-a)/1000/n}') us of CPU per handshake"
done
echo "  handshake errors counted by the listener: $(curl -s http://127.0.0.1:29902/metrics | awk '/^trellis_tls_handshake_errors_total/ {s += $NF} END {print s + 0}')"
