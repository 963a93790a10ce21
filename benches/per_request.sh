#!/usr/bin/env bash
# What one proxied request costs each proxy, counted rather than timed: system calls,
# context switches and CPU time (user + system) per request, for Trellis, nginx and HAProxy
# (each one worker on cpu1; h2load and the origin on cpu0) over a fixed number of requests.
# Counts hardly depend on what else the machine runs, so they show where Trellis spends
# more than a C proxy when RPS on a shared 2-core VM is too noisy to say (CPU time does
# move with cache and frequency noise: compare within one run).
#
# Usage: benches/per_request.sh [--no-build] [--requests N] [--bin TRELLIS] [--no-tls]
#                                [--threads N]
#   --requests N   requests per mode and proxy (default 200000)
#   --bin TRELLIS  the trellis binary (default target/release/trellis)
#   --threads N    workers per proxy (trellis --threads, nginx worker_processes, HAProxy
#                  nbthread; default 1). Above 1 nothing is pinned: on a 2-core machine the
#                  proxies then share the cores with h2load and the origin, so compare
#                  the per-request counts, not the RPS, with a --threads 1 run.
# Modes: h1 (h2load --h1, 64 connections), h1-c1 (one connection, one request at a time:
# a lightly loaded proxy, where per-request wake-ups show), h2c (8 connections x 8 streams),
# and, with the proxies terminating TLS with the same P-256 certificate, tls-h1 and tls-h2.
# Every proxy speaks HTTP/1.1 to the origin over kept-alive connections. Needs perf (for the
# syscall tracepoints), h2load, nginx and haproxy (a missing one is left out). Listens on
# 127.0.0.1:2830x; every process started here is ended by PID.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release"
TRELLIS="$BIN/trellis"
BUILD=1; N=200000; TLS=1; THREADS=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --requests) N=$2; shift ;;
        --bin) TRELLIS=$(realpath "$2"); shift ;;
        --no-tls) TLS=0 ;;
        --threads) THREADS=$2; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
need_tools perf h2load curl
((BUILD)) && { build_release -q || exit 1; }
SUT_CPUS=1; LOAD_CPUS=0
((THREADS > 1)) && { SUT_CPUS=0-$(($(nproc) - 1)); LOAD_CPUS=$SUT_CPUS; }

bench_workdir trellis-per-request

ORIGIN=28300
declare -A PORT=([trellis]=28301 [nginx]=28302 [haproxy]=28303)
declare -A TLS_PORT=([trellis]=28311 [nginx]=28312 [haproxy]=28313)
edge_pki "$TRELLIS" pki || exit 1

taskset -c "$LOAD_CPUS" "$BIN/trellis-origin" --listen "127.0.0.1:$ORIGIN" --threads 1 >origin.log 2>&1 &
PIDS+=($!)

cat >trellis.yaml <<EOF
admin: { address: 127.0.0.1:28309 }
listeners:
  - { name: plain, address: "127.0.0.1:${PORT[trellis]}", routes: [all] }
  - name: tls
    address: "127.0.0.1:${TLS_PORT[trellis]}"
    tls: { mode: terminate, certificates: [{ cert: $TMP/pki/edge.pem, key: $TMP/pki/edge.key }] }
    routes: [all]
$(forward_all_yaml "127.0.0.1:$ORIGIN")
EOF
mkdir -p ng/tmp
cat >ng/nginx.conf <<EOF
$([[ $EUID -eq 0 ]] && echo "user root;")
worker_processes $THREADS; daemon off; master_process $( ((THREADS > 1)) && echo on || echo off); pid $TMP/ng/nginx.pid; error_log $TMP/ng/error.log warn;
worker_rlimit_nofile 10000;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $TMP/ng/tmp/b; proxy_temp_path $TMP/ng/tmp/p; fastcgi_temp_path $TMP/ng/tmp/f; uwsgi_temp_path $TMP/ng/tmp/u; scgi_temp_path $TMP/ng/tmp/s;
 keepalive_requests 1000000; keepalive_timeout 300s;
 upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; keepalive_requests 1000000; }
 server {
  listen 127.0.0.1:${PORT[nginx]} http2;
  listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2;
  ssl_certificate $TMP/pki/edge.pem; ssl_certificate_key $TMP/pki/edge.key;
  location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
haproxy_config "$THREADS" 4000 "127.0.0.1:$ORIGIN" "127.0.0.1:${PORT[haproxy]}" \
    "127.0.0.1:${TLS_PORT[haproxy]} ssl crt $TMP/pki/edge.combined.pem alpn h2,http/1.1" >haproxy.cfg

# nginx 1.22: a port with `http2` and no TLS takes only h2c prior knowledge, so its h1
# mode uses a second, plain port.
echo "  server { listen 127.0.0.1:28304; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" >ng/h1.conf
sed -i "s|^ server {|include $TMP/ng/h1.conf;\n server {|" ng/nginx.conf
H1_NGINX=28304

declare -A SUT
start() { # start NAME: the proxy on cpu1; sets SUT[NAME]
    case "$1" in
        trellis) taskset -c "$SUT_CPUS" "$TRELLIS" proxy --config trellis.yaml --threads "$THREADS" >trellis.log 2>&1 & ;;
        nginx) command -v nginx >/dev/null || return 1
            taskset -c "$SUT_CPUS" nginx -p "$TMP/ng" -c "$TMP/ng/nginx.conf" >nginx.log 2>&1 & ;;
        haproxy) command -v haproxy >/dev/null || return 1
            taskset -c "$SUT_CPUS" haproxy -db -f haproxy.cfg >haproxy.log 2>&1 & ;;
    esac
    SUT[$1]=$!
    PIDS+=("${SUT[$1]}")
    wait_ready "http://127.0.0.1:$(h1_port "$1")/"
}
h1_port() { if [[ $1 == nginx ]]; then echo $H1_NGINX; else echo "${PORT[$1]}"; fi; }

# run NAME MODE: prints "syscalls/req ctxsw/req user_us/req sys_us/req rps"
run() {
    local name=$1 mode=$2 pid=${SUT[$1]} url args u0 s0 u1 s1 out
    case "$mode" in
        h1) url="http://127.0.0.1:$(h1_port "$name")/"; args=(--h1 -c64 -m1) ;;
        h1-c1) url="http://127.0.0.1:$(h1_port "$name")/"; args=(--h1 -c1 -m1) ;;
        h2c) url="http://127.0.0.1:${PORT[$name]}/"; args=(-c8 -m8) ;;
        tls-h1) url="https://127.0.0.1:${TLS_PORT[$name]}/"; args=(--h1 -c64 -m1) ;;
        tls-h2) url="https://127.0.0.1:${TLS_PORT[$name]}/"; args=(-c8 -m8) ;;
    esac
    taskset -c "$LOAD_CPUS" h2load -t1 "${args[@]}" -n $((N / 10)) "$url" >/dev/null 2>&1 # warm-up
    read -r u0 s0 <<<"$(tree_ticks "$pid")"
    out=$(perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$(pid_tree "$pid" | paste -sd,)" -- \
        taskset -c "$LOAD_CPUS" h2load -t1 "${args[@]}" -n "$N" "$url" 2>&1)
    read -r u1 s1 <<<"$(tree_ticks "$pid")"
    local sys cs rps ok
    sys=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' <<<"$out")
    cs=$(awk -F, '/context-switches/ {print $1}' <<<"$out")
    rps=$(awk '/^finished in/ {gsub(",", ""); printf "%.0f", $4}' <<<"$out")
    ok=$(awk '/^requests:/ {print $8}' <<<"$out")
    [[ "$ok" == "$N" ]] || echo "warning: $name $mode: $ok of $N requests succeeded" >&2
    awk -v s="$sys" -v c="$cs" -v u=$((u1 - u0)) -v k=$((s1 - s0)) -v hz="$(getconf CLK_TCK)" -v n="$N" -v r="$rps" \
        'BEGIN { printf "%.2f %.3f %.2f %.2f %s", s / n, c / n, u / hz * 1e6 / n, k / hz * 1e6 / n, r }'
}

MODES=(h1 h1-c1 h2c)
((TLS)) && MODES+=(tls-h1 tls-h2)
echo "## Per request: system calls, context switches, CPU time (user + system) of the proxy"
echo
echo "$N requests per mode (h2load on cpu$LOAD_CPUS, proxies on cpu$SUT_CPUS with $THREADS worker(s); h1: 64 connections, h2: 8 connections × 8 streams); trellis: $TRELLIS; $(uptime | sed 's/.*load/load/')."
echo
echo "| mode | proxy | syscalls/req | ctx switches/req | user µs/req | system µs/req | RPS (h2load) |"
echo "|---|---|---|---|---|---|---|"
for name in trellis nginx haproxy; do
    start "$name" || { echo "($name not installed: left out)" >&2; continue; }
    for mode in "${MODES[@]}"; do
        read -r s c u k r <<<"$(run "$name" "$mode")"
        echo "| $mode | $name | $s | $c | $u | $k | $r |"
    done
    kill "${SUT[$name]}"; wait "${SUT[$name]}" 2>/dev/null
done
