#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: Trellis
# (one worker) and nginx (one worker, upstream keep-alive) forwarding HTTP/1.1 keep-alive
# GETs to the same origin, h2c GETs (Trellis only; needs h2load), and the sidecar pair
# (each sidecar separately). Instruction counts do not depend on what else the machine is
# doing, so they show a change to the hot path when RPS on a noisy, shared VM cannot (they
# do not count the kernel, cache misses or waiting: the RPS benchmarks stay the measure of
# speed).
#
# Usage: benches/instructions.sh [--no-build] [--no-nginx] [--no-pair] [--tracing RATIO]
#                                [--warmup S] [BIN...]
#   BIN...           trellis binaries to compare (default: target/release/trellis)
#   --warmup S       seconds of load before counting (default 2). HTTP/2's HPACK tables take
#                    about a minute to fill with a new `date` each second: use ~70 for the
#                    steady state of a long-lived connection (the pair's mTLS h2 hop)
#   --tracing RATIO  also measure each binary with OTLP tracing on at this sample ratio
#                    (spans exported over OTLP/HTTP to the origin, which answers 200)
#   --keep DIR       keep each counted profile in DIR (h1-N, h2c-N, pair-out-N, pair-in-N
#                    for the Nth binary from 0, h1-Ntraced.yaml with --tracing; read them
#                    with callgrind_annotate)
# Needs valgrind and wrk (nginx for its column, h2load for the h2c lines). Listens on
# 127.0.0.1:2818x/2819x/2991x; every process started here is ended by PID.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release"
BUILD=1; NGINX=1; PAIR=1; TRACING=; TRELLIS=(); WARMUP=2; KEEP=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --no-nginx) NGINX=0 ;;
        --no-pair) PAIR=0 ;;
        --tracing) TRACING=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --keep) KEEP=$(mkdir -p "$2" && realpath "$2") || exit 2; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        -*) echo "unknown option: $1" >&2; exit 2 ;;
        *) TRELLIS+=("$(realpath "$1")") ;;
    esac
    shift
done
((${#TRELLIS[@]})) || TRELLIS=("$BIN/trellis")
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
need_tools valgrind callgrind_control wrk curl
((BUILD)) && { build_release -q || exit 1; }

bench_workdir trellis-instr

wait_http() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.3; done; echo "error: $1 not up" >&2; return 1; }
# Total instructions in a callgrind dump of process $1 (written under prefix $2). An idle
# process sees the request only when it next runs: one more request ($3) wakes it. With
# --keep, the dump is copied to $KEEP/$4.
dump_ir() {
    callgrind_control -d "$1" >/dev/null 2>&1 &
    local c=$!
    sleep 0.5; curl -s -o /dev/null "$3"; wait "$c"; sleep 0.5
    local f; f=$(ls -t "$2".*.* | head -1)
    [[ -n $KEEP && -n ${4:-} ]] && cp "$f" "$KEEP/$4"
    awk '/^summary:/ {print $2}' "$f"
}
# measure URL PID... : warm up, zero the counters, run wrk -c16 for 5 s; prints the request count.
measure() {
    local url=$1 p; shift
    taskset -c 0 wrk -t1 -c16 -d"${WARMUP}s" "$url" >/dev/null
    for p in "$@"; do callgrind_control -z "$p" >/dev/null 2>&1; done
    taskset -c 0 wrk -t1 -c16 -d5s "$url" | awk '/requests in/ {print $1}'
}
# measure_h2c URL PID: the same with h2load over h2c (8 connections x 8 streams).
measure_h2c() {
    taskset -c 0 h2load -c8 -m8 -D "$WARMUP" "$1" >/dev/null 2>&1
    callgrind_control -z "$2" >/dev/null 2>&1
    taskset -c 0 h2load -c8 -m8 -D 5 "$1" 2>/dev/null | awk '/^requests:/ {print $8}'
}
stop() { local p; for p in "$@"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
cg() { exec valgrind --tool=callgrind --callgrind-out-file="$1.%p" "${@:2}"; }

taskset -c 0 "$BIN/trellis-origin" --listen 127.0.0.1:28181 --threads 1 >origin.log 2>&1 &
PIDS+=($!)
cat >proxy.yaml <<EOF
admin: { address: 127.0.0.1:29911 }
listeners:
  - { name: bench, address: 127.0.0.1:28180, routes: [all] }
$(forward_all_yaml 127.0.0.1:28181)
EOF

echo "## User-space instructions per request (callgrind; wrk -t1 -c16, 5 s after a 2 s warm-up)"
echo
if [[ -n $TRACING ]]; then
    { cat proxy.yaml; echo "tracing: { otlp: { endpoint: \"http://127.0.0.1:28181\", protocol: http }, sample_ratio: $TRACING }"; } >traced.yaml
fi
echo "HTTP/1.1 keep-alive GET, 2-byte body, one worker:"
for i in "${!TRELLIS[@]}"; do
    b=${TRELLIS[$i]}
    for cfg in proxy.yaml ${TRACING:+traced.yaml}; do
        cg "$TMP/t" "$b" proxy --config "$cfg" --threads 1 >trellis.log 2>&1 &
        p=$!; PIDS+=("$p")
        wait_http http://127.0.0.1:29911/ready || { tail -5 trellis.log; exit 1; }
        n=$(measure http://127.0.0.1:28180/ "$p")
        ir=$(dump_ir "$p" "$TMP/t" http://127.0.0.1:28180/ "h1-$i${cfg%proxy.yaml}")
        label="trellis $b"
        [[ $cfg == traced.yaml ]] && label="$label (tracing $TRACING)"
        printf '  %-40s %8d instructions/request (%d requests)\n' "$label" $((ir / n)) "$n"
        stop "$p"; rm -f "$TMP"/t.*
    done
done
if command -v h2load >/dev/null; then
    echo
    echo "h2c GET (prior knowledge), 2-byte body, h2load -c8 -m8, one worker:"
    for i in "${!TRELLIS[@]}"; do
        b=${TRELLIS[$i]}
        cg "$TMP/t" "$b" proxy --config proxy.yaml --threads 1 >trellis.log 2>&1 &
        p=$!; PIDS+=("$p")
        wait_http http://127.0.0.1:29911/ready || { tail -5 trellis.log; exit 1; }
        n=$(measure_h2c http://127.0.0.1:28180/ "$p")
        ir=$(dump_ir "$p" "$TMP/t" http://127.0.0.1:28180/ "h2c-$i")
        printf '  %-40s %8d instructions/request (%d requests)\n' "trellis $b" $((ir / n)) "$n"
        stop "$p"; rm -f "$TMP"/t.*
    done
fi
if ((NGINX)) && command -v nginx >/dev/null; then
    mkdir -p ng/tmp
    cat >ng/nginx.conf <<EOF
worker_processes 1; daemon off; master_process off; pid $TMP/ng/nginx.pid; error_log $TMP/ng/error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $TMP/ng/tmp/b; proxy_temp_path $TMP/ng/tmp/p; fastcgi_temp_path $TMP/ng/tmp/f; uwsgi_temp_path $TMP/ng/tmp/u; scgi_temp_path $TMP/ng/tmp/s;
 keepalive_requests 1000000; keepalive_timeout 300s;
 upstream origin { server 127.0.0.1:28181; keepalive 64; keepalive_requests 1000000; }
 server { listen 127.0.0.1:28182; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
    cg "$TMP/n" nginx -p "$TMP/ng" -c "$TMP/ng/nginx.conf" >nginx.log 2>&1 &
    p=$!; PIDS+=("$p")
    wait_http http://127.0.0.1:28182/ || exit 1
    n=$(measure http://127.0.0.1:28182/ "$p")
    ir=$(dump_ir "$p" "$TMP/n" http://127.0.0.1:28182/)
    echo
    echo "HTTP/1.1 keep-alive GET through nginx (one worker, upstream keep-alive), the same load:"
    printf '  %-40s %8d instructions/request (%d requests)\n' "nginx $(nginx -v 2>&1 | sed 's/.*\///')" $((ir / n)) "$n"
    stop "$p"
fi

((PAIR)) || exit 0
echo
echo "sidecar pair (app -> outbound -> mTLS h2 -> inbound -> origin), examples/sidecar-pair configs:"
T0=${TRELLIS[0]}
"$T0" certs init --dir pki >/dev/null
for sa in frontend checkout; do
    "$T0" certs issue --dir pki --id "spiffe://trellis.local/ns/default/sa/$sa" --out "pki/$sa" >/dev/null
done
sed 's/8080/28181/; s/9902/29912/; s/4143/28193/' "$ROOT/examples/sidecar-pair/checkout.yaml" >checkout.yaml
sed 's/9901/29913/; s/4140/28190/; s/4143/28193/' "$ROOT/examples/sidecar-pair/frontend.yaml" >frontend.yaml
for i in "${!TRELLIS[@]}"; do
    b=${TRELLIS[$i]}
    cg "$TMP/in" "$b" proxy --config checkout.yaml --threads 1 >inbound.log 2>&1 &
    pi=$!; PIDS+=("$pi")
    cg "$TMP/out" "$b" proxy --config frontend.yaml --threads 1 >outbound.log 2>&1 &
    po=$!; PIDS+=("$po")
    wait_http http://127.0.0.1:29912/ready || exit 1
    wait_http http://127.0.0.1:29913/ready || exit 1
    n=$(measure http://127.0.0.1:28190/api/x "$pi" "$po")
    ii=$(dump_ir "$pi" "$TMP/in" http://127.0.0.1:28190/api/x "pair-in-$i")
    io=$(dump_ir "$po" "$TMP/out" http://127.0.0.1:28190/api/x "pair-out-$i")
    printf '  %-40s outbound %d + inbound %d instructions/request (%d requests)\n' "trellis $b" $((io / n)) $((ii / n)) "$n"
    stop "$pi" "$po"; rm -f "$TMP"/in.* "$TMP"/out.*
done
