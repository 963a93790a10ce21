#!/usr/bin/env bash
# Trellis comparison benchmark: direct origin vs Trellis vs nginx (vs HAProxy if installed).
#
# Follows the method of benches/README.md ("Method"): load generator and origin pinned on cpu0, the system
# under test (SUT) alone on cpu1, scenarios interleaved within each repetition, medians of
# >= 3 repetitions with min-max, SUT CPU% from /proc, the run in its own session with a
# raised autogroup priority. See benches/README.md for what every column means.
#
# Usage: benches/run.sh [--quick] [--reps N] [--duration S] [--no-build] [--no-memory]
#                       [--memory-only] [--idle-conns N] [--sse-streams N]
#                       [--sse-client auto|h1|h2c] [--sse-h2-upstream N] [--no-nginx] [--no-haproxy]
#                       [--no-tls]
#        --no-tls: skip the TLS loads (HTTP/1.1 over TLS with wrk, h2 over TLS with h2load;
#                  each proxy terminates TLS with a P-256 certificate from `trellis certs`)
#        --sse-h2-upstream N: N SSE streams from HTTP/1.1 clients through an h2c upstream
#                             cluster, Trellis only (default 10000; 0 skips it)
# Env:   TRELLIS_CLUSTER_PROTOCOL     protocol Trellis speaks to the origin (default http1)
#        TRELLIS_H2_CLUSTER_PROTOCOL  the same for the h2c scenario (default: as above; if it
#                                     differs, a second Trellis listener is used for h2c)
#        TRELLIS_BENCH_BIN            directory of the binaries (default target/release)
#        TRELLIS_BIN                  the trellis binary measured (default: in the directory
#                                     above; target/pgo/trellis after benches/pgo.sh)
#
# Everything listens on 127.0.0.1; every process started here is killed by PID on exit.
set -uo pipefail

# ---------------------------------------------------------------------------------------
# Own session (so that its autogroup can be prioritised), signals forwarded to it.
# ---------------------------------------------------------------------------------------
if [[ -z "${TRELLIS_BENCH_IN_SESSION:-}" ]] && command -v setsid >/dev/null; then
    export TRELLIS_BENCH_IN_SESSION=1
    setsid bash "$0" "$@" </dev/null &
    child=$!
    trap 'kill -TERM "$child" 2>/dev/null' INT TERM HUP
    rc=0
    wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do
        rc=0
        wait "$child" || rc=$?
    done
    exit "$rc"
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="${TRELLIS_BENCH_BIN:-$ROOT/target/release}"
TRELLIS_BIN="${TRELLIS_BIN:-$BIN/trellis}"
RESULTS="$ROOT/benches/results"

# Ports (all on 127.0.0.1).
ORIGIN_PORT=18081
TRELLIS_PORT=18080
TRELLIS_H2_PORT=18084   # only used when the h2c scenario has its own cluster protocol
TRELLIS_ADMIN=19901
NGINX_PORT=18082
NGINX_H2_PORT=18083     # nginx 1.22: a plain `listen ... http2` accepts only h2c prior knowledge
HAPROXY_PORT=18085
TRELLIS_TLS_PORT=18443
NGINX_TLS_PORT=18444
HAPROXY_TLS_PORT=18445

REPS=3
DURATION=8
WARMUP=2
BUILD=1
MEMORY=1
MEMORY_ONLY=0           # skip the throughput and open-loop loads
USE_NGINX=1
USE_HAPROXY=1
USE_TLS=1
IDLE_CONNS=1000
SSE_STREAMS=10000
HOLD_SECS=10
SSE_CLIENT=auto         # h1: one connection per stream; h2c: SSE_H2_STREAMS streams per connection
SSE_H2_STREAMS=100
SSE_H2UP_STREAMS=10000  # SSE streams from HTTP/1.1 clients through an h2c upstream cluster (Trellis only; 0: skip)
CLUSTER_PROTOCOL="${TRELLIS_CLUSTER_PROTOCOL:-http1}"
H2_CLUSTER_PROTOCOL="${TRELLIS_H2_CLUSTER_PROTOCOL:-$CLUSTER_PROTOCOL}"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) REPS=1; DURATION=3; WARMUP=1; HOLD_SECS=4 ;;
        --reps) REPS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --no-memory) MEMORY=0 ;;
        --memory-only) MEMORY_ONLY=1 ;;
        --no-nginx) USE_NGINX=0 ;;
        --no-haproxy) USE_HAPROXY=0 ;;
        --no-tls) USE_TLS=0 ;;
        --idle-conns) IDLE_CONNS="$2"; shift ;;
        --sse-streams) SSE_STREAMS="$2"; shift ;;
        --sse-client) SSE_CLIENT="$2"; shift ;;
        --sse-h2-upstream) SSE_H2UP_STREAMS="$2"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
if ((MEMORY_ONLY && !MEMORY)); then
    echo "--memory-only and --no-memory exclude each other" >&2
    exit 2
fi

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { log "WARNING: $*"; }

TMP=$(mktemp -d /tmp/trellis-bench.XXXXXX)
RAW="$TMP/raw.tsv"          # rep target load rps p50 p90 p99 p999 max errors cpu%
: >"$RAW"

# ---------------------------------------------------------------------------------------
# Process bookkeeping: every background process is recorded and killed by PID on exit.
# ---------------------------------------------------------------------------------------
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    PIDS=()
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

forget_pid() {
    local p=$1 i
    for i in "${!PIDS[@]}"; do
        [[ "${PIDS[$i]}" == "$p" ]] && unset 'PIDS[i]'
    done
    PIDS=("${PIDS[@]}")
}

# stop PID: TERM, wait up to 5 s, KILL.
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    forget_pid "$pid"
}

# run_fg OUTFILE CMD...: runs CMD in the background (so signals are handled at once),
# waits for it, returns its status. Output goes to OUTFILE.
run_fg() {
    local out=$1 pid rc=0
    shift
    "$@" >"$out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"   # pid_tree, tree_ticks, haproxy_config

# utime+stime ticks summed over the process tree.
cpu_ticks() {
    local u s
    read -r u s <<<"$(tree_ticks "$1")"
    echo $((u + s))
}

# VmRSS (or another /proc/PID/status field) in kB, summed over the tree.
mem_kb() {
    local pid=$1 field=${2:-VmRSS} total=0 p v
    for p in $(pid_tree "$pid"); do
        v=$(awk -v f="$field:" '$1==f {print $2}' /proc/"$p"/status 2>/dev/null)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

CLK_TCK=$(getconf CLK_TCK)

# wait_http URL [CODE] [SECONDS]
wait_http() {
    local url=$1 want=${2:-200} secs=${3:-20} code
    for _ in $(seq $((secs * 10))); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null)
        [[ "$code" == "$want" ]] && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------------------------------
# Priority, limits, tools, build.
# ---------------------------------------------------------------------------------------
if [[ $EUID -eq 0 ]]; then
    if echo -10 >/proc/self/autogroup 2>/dev/null; then
        log "session $(ps -o sid= -p $$ | tr -d ' '): autogroup $(cat /proc/self/autogroup)"
    else
        warn "could not write /proc/self/autogroup (autogroup scheduling off?)"
    fi
    ulimit -Hn 200000 2>/dev/null || true
else
    warn "not root: cannot raise the autogroup priority; results are more exposed to noise"
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ "$NOFILE" == unlimited ]] && NOFILE=1048576
# With HTTP/1.1 clients, N streams through a proxy cost it 2N descriptors (client side +
# upstream side); with h2c clients, N + N/SSE_H2_STREAMS. Choose what fits the limit.
if [[ "$SSE_CLIENT" == auto ]]; then
    SSE_CLIENT=h1
    if ((NOFILE < 2 * SSE_STREAMS + 500)); then
        SSE_CLIENT=h2c
        warn "open-file limit $NOFILE (hard limit; raising it needs CAP_SYS_RESOURCE) is too low for $SSE_STREAMS HTTP/1.1 SSE streams through a proxy: using h2c clients with $SSE_H2_STREAMS streams per connection (upstream stays HTTP/1.1)"
    fi
fi
if [[ "$SSE_CLIENT" == h2c ]]; then
    max_streams=$(((NOFILE - 500) * SSE_H2_STREAMS / (SSE_H2_STREAMS + 1)))
else
    max_streams=$(((NOFILE - 500) / 2))
fi
if ((SSE_STREAMS > max_streams)); then
    warn "open-file limit $NOFILE: SSE streams reduced from $SSE_STREAMS to $max_streams"
    SSE_STREAMS=$max_streams
fi
# HTTP/1.1 clients through an h2c upstream cluster: the proxy holds N client connections
# and one upstream connection per 100 streams (the cluster's max_streams_per_connection).
max_streams=$(((NOFILE - 500) * 100 / 101))
if ((SSE_H2UP_STREAMS > max_streams)); then
    warn "open-file limit $NOFILE: SSE streams through an h2c upstream reduced from $SSE_H2UP_STREAMS to $max_streams"
    SSE_H2UP_STREAMS=$max_streams
fi

HAVE_WRK=0; command -v wrk >/dev/null && HAVE_WRK=1
WRK_VERSION=none
((HAVE_WRK)) && WRK_VERSION=$(wrk -v 2>&1 | awk 'NR == 1 {print $2}')
HAVE_H2LOAD=0; command -v h2load >/dev/null && HAVE_H2LOAD=1
HAVE_NGINX=0; ((USE_NGINX)) && command -v nginx >/dev/null && HAVE_NGINX=1
HAVE_HAPROXY=0; ((USE_HAPROXY)) && command -v haproxy >/dev/null && HAVE_HAPROXY=1
((HAVE_WRK)) || warn "wrk not installed: HTTP/1.1 figures come from trellis-load only"
((HAVE_H2LOAD)) || warn "h2load not installed: h2c figures come from trellis-load only"
((HAVE_NGINX)) || ((!USE_NGINX)) || warn "nginx not installed: no nginx column"

TRELLIS_OK=1
if ((BUILD)); then
    log "building (cargo build --release -p trellis, then -p trellis-bench)"
    if ! build_release >"$TMP/build.log" 2>&1; then
        warn "building trellis failed (tail of the log below); benchmarking without Trellis"
        tail -n 15 "$TMP/build.log" >&2
        TRELLIS_OK=0
        if ! (cd "$ROOT" && cargo build --release -p trellis-bench) >"$TMP/build.log" 2>&1; then
            tail -n 30 "$TMP/build.log" >&2
            echo "error: cannot build trellis-bench" >&2
            exit 1
        fi
    fi
fi
for b in trellis-origin trellis-load; do
    [[ -x "$BIN/$b" ]] || { echo "error: $BIN/$b missing (build trellis-bench)" >&2; exit 1; }
done
if [[ ! -x "$TRELLIS_BIN" ]]; then
    warn "$TRELLIS_BIN not found: skipping the Trellis column"
    TRELLIS_OK=0
fi

# One server certificate for every proxy's TLS listener (P-256, from our own `certs`).
HAVE_TLS=0
PKI="$TMP/pki"
if ((USE_TLS && TRELLIS_OK)); then
    if edge_pki "$TRELLIS_BIN" "$PKI" 2>"$TMP/certs.log"; then
        HAVE_TLS=1
    else
        warn "making a certificate failed ($(tail -n 1 "$TMP/certs.log")): no TLS loads"
    fi
fi

# ---------------------------------------------------------------------------------------
# Origin (cpu0, with the load generator).
# ---------------------------------------------------------------------------------------
taskset -c 0 "$BIN/trellis-origin" --listen "127.0.0.1:$ORIGIN_PORT" --threads 1 \
    >"$TMP/origin.log" 2>&1 &
ORIGIN_PID=$!
PIDS+=("$ORIGIN_PID")
for _ in $(seq 100); do
    grep -q '^listening on' "$TMP/origin.log" && break
    sleep 0.1
done
grep -q '^listening on' "$TMP/origin.log" || { cat "$TMP/origin.log" >&2; echo "error: origin did not start" >&2; exit 1; }
log "origin pid $ORIGIN_PID on 127.0.0.1:$ORIGIN_PORT (cpu0)"

# ---------------------------------------------------------------------------------------
# Systems under test (cpu1).
# ---------------------------------------------------------------------------------------
TRELLIS_PID=""
TRELLIS_H2_URL_PORT=$TRELLIS_PORT
start_trellis() {
    local cfg="$TMP/trellis.yaml"
    {
        echo "admin: { address: 127.0.0.1:$TRELLIS_ADMIN }"
        echo "listeners:"
        echo "  - name: bench"
        echo "    address: 127.0.0.1:$TRELLIS_PORT"
        echo "    protocol: auto"
        echo "    routes: [all]"
        if ((HAVE_TLS)); then
            echo "  - name: bench-tls"
            echo "    address: 127.0.0.1:$TRELLIS_TLS_PORT"
            echo "    tls: { mode: terminate, certificates: [{ cert: $PKI/edge.pem, key: $PKI/edge.key }] }"
            echo "    routes: [all]"
        fi
        if [[ "$H2_CLUSTER_PROTOCOL" != "$CLUSTER_PROTOCOL" ]]; then
            echo "  - name: bench-h2"
            echo "    address: 127.0.0.1:$TRELLIS_H2_PORT"
            echo "    protocol: auto"
            echo "    routes: [all-h2]"
        fi
        echo "routes:"
        echo "  - name: all"
        echo "    match: { path_prefix: / }"
        echo "    backends: [{ cluster: origin }]"
        if [[ "$H2_CLUSTER_PROTOCOL" != "$CLUSTER_PROTOCOL" ]]; then
            echo "  - name: all-h2"
            echo "    match: { path_prefix: / }"
            echo "    backends: [{ cluster: origin-h2 }]"
        fi
        echo "clusters:"
        echo "  - name: origin"
        echo "    protocol: $CLUSTER_PROTOCOL"
        echo "    endpoints: [{ address: 127.0.0.1:$ORIGIN_PORT }]"
        if [[ "$H2_CLUSTER_PROTOCOL" != "$CLUSTER_PROTOCOL" ]]; then
            echo "  - name: origin-h2"
            echo "    protocol: $H2_CLUSTER_PROTOCOL"
            echo "    endpoints: [{ address: 127.0.0.1:$ORIGIN_PORT }]"
        fi
    } >"$cfg"
    [[ "$H2_CLUSTER_PROTOCOL" != "$CLUSTER_PROTOCOL" ]] && TRELLIS_H2_URL_PORT=$TRELLIS_H2_PORT
    taskset -c 1 "$TRELLIS_BIN" proxy --config "$cfg" --threads 1 >"$TMP/trellis.log" 2>&1 &
    TRELLIS_PID=$!
    PIDS+=("$TRELLIS_PID")
    if ! wait_http "http://127.0.0.1:$TRELLIS_ADMIN/ready" 200 20 ||
        ! wait_http "http://127.0.0.1:$TRELLIS_PORT/" 200 5; then
        warn "trellis did not become ready (log tail below); skipping the Trellis column"
        tail -n 20 "$TMP/trellis.log" >&2
        stop_pid "$TRELLIS_PID"
        TRELLIS_PID=""
        return 1
    fi
    log "trellis pid $TRELLIS_PID on 127.0.0.1:$TRELLIS_PORT (cpu1), h1 cluster $CLUSTER_PROTOCOL, h2c cluster $H2_CLUSTER_PROTOCOL"
}

NGINX_PID=""
start_nginx() {
    local dir="$TMP/nginx"
    mkdir -p "$dir/tmp"
    {
        [[ $EUID -eq 0 ]] && echo "user root;"
        cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 200000;
events { worker_connections 65536; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        listen 127.0.0.1:$NGINX_H2_PORT http2;
$( ((HAVE_TLS)) && echo "        listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;
        ssl_certificate $PKI/edge.pem;
        ssl_certificate_key $PKI/edge.key;")
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location /sse {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1h;
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    taskset -c 1 nginx -p "$dir" -c "$dir/nginx.conf" >"$TMP/nginx.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    if ! wait_http "http://127.0.0.1:$NGINX_PORT/" 200 10; then
        warn "nginx did not start (log below); skipping the nginx column"
        cat "$TMP/nginx.log" "$dir/error.log" >&2 2>/dev/null
        stop_pid "$NGINX_PID"
        NGINX_PID=""
        return 1
    fi
    log "nginx pid $NGINX_PID on 127.0.0.1:$NGINX_PORT (h1) and :$NGINX_H2_PORT (h2c) (cpu1)"
}

HAPROXY_PID=""
start_haproxy() {
    local cfg="$TMP/haproxy.cfg"
    # HAProxy refuses to start if it cannot get ~2 descriptors per maxconn.
    local binds=("127.0.0.1:$HAPROXY_PORT")
    ((HAVE_TLS)) && binds+=("127.0.0.1:$HAPROXY_TLS_PORT ssl crt $PKI/edge.combined.pem alpn h2,http/1.1")
    haproxy_config 1 $(((NOFILE - 500) / 2)) "127.0.0.1:$ORIGIN_PORT" "${binds[@]}" >"$cfg"
    taskset -c 1 haproxy -db -f "$cfg" >"$TMP/haproxy.log" 2>&1 &
    HAPROXY_PID=$!
    PIDS+=("$HAPROXY_PID")
    if ! wait_http "http://127.0.0.1:$HAPROXY_PORT/" 200 10; then
        warn "haproxy did not start (log below); skipping the HAProxy column"
        cat "$TMP/haproxy.log" >&2
        stop_pid "$HAPROXY_PID"
        HAPROXY_PID=""
        return 1
    fi
    log "haproxy pid $HAPROXY_PID on 127.0.0.1:$HAPROXY_PORT (cpu1)"
}

TARGETS=(direct)
declare -A SUT_PID H1_URL H2_URL TLS_URL IDLE_RSS
SUT_PID[direct]=$ORIGIN_PID
H1_URL[direct]="http://127.0.0.1:$ORIGIN_PORT/"
H2_URL[direct]="http://127.0.0.1:$ORIGIN_PORT/"
if ((TRELLIS_OK)) && start_trellis; then
    TARGETS+=(trellis)
    SUT_PID[trellis]=$TRELLIS_PID
    H1_URL[trellis]="http://127.0.0.1:$TRELLIS_PORT/"
    H2_URL[trellis]="http://127.0.0.1:$TRELLIS_H2_URL_PORT/"
    TLS_URL[trellis]="https://127.0.0.1:$TRELLIS_TLS_PORT/"
fi
if ((HAVE_NGINX)) && start_nginx; then
    TARGETS+=(nginx)
    SUT_PID[nginx]=$NGINX_PID
    H1_URL[nginx]="http://127.0.0.1:$NGINX_PORT/"
    H2_URL[nginx]="http://127.0.0.1:$NGINX_H2_PORT/"
    TLS_URL[nginx]="https://127.0.0.1:$NGINX_TLS_PORT/"
fi
if ((HAVE_HAPROXY)) && start_haproxy; then
    TARGETS+=(haproxy)
    SUT_PID[haproxy]=$HAPROXY_PID
    H1_URL[haproxy]="http://127.0.0.1:$HAPROXY_PORT/"
    H2_URL[haproxy]="http://127.0.0.1:$HAPROXY_PORT/"
    TLS_URL[haproxy]="https://127.0.0.1:$HAPROXY_TLS_PORT/"
fi
sleep 1
for t in "${TARGETS[@]}"; do
    IDLE_RSS[$t]=$(mem_kb "${SUT_PID[$t]}")
done

# ---------------------------------------------------------------------------------------
# Load runners. Each appends one row to $RAW.
# ---------------------------------------------------------------------------------------
# to_us VALUE UNIT
to_us() { awk -v v="$1" -v u="$2" 'BEGIN { m = (u=="us") ? 1 : (u=="ms") ? 1000 : (u=="s") ? 1000000 : 1; printf "%d", v*m + 0.5 }'; }

# json_get FIELD LINE
json_get() { sed -E "s/.*\"$1\":(\"[^\"]*\"|[^,}]*).*/\1/" <<<"$2" | tr -d '"'; }

# measure REP TARGET LOAD CMD...: runs the load with CPU accounting of the SUT.
# The command's output is left in $TMP/out for the parser.
measure() {
    local rep=$1 target=$2 load=$3
    shift 3
    local pid=${SUT_PID[$target]} t0 t1 c0 c1
    c0=$(cpu_ticks "$pid")
    t0=$(date +%s.%N)
    run_fg "$TMP/out" timeout -k 5 $((DURATION + WARMUP + 60)) "$@" || warn "$target/$load: load exited with an error"
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$pid")
    CPU=$(awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f", (b - a) / hz / (t1 - t0) * 100 }')
}

record() { # rep target load rps p50 p90 p99 p999 max errors cpu
    local IFS=$'\t'
    echo "$*" >>"$RAW"
    log "  $2 $3: rps=$4 p50=$5us p99=$7us errors=${10} sut_cpu=${11}%"
}

# run_wrk REP TARGET [LOAD URL]: HTTP/1.1 keep-alive, 64 connections (default h1-wrk, H1_URL).
run_wrk() {
    local rep=$1 target=$2 load=${3:-h1-wrk} url=${4:-${H1_URL[$2]}} o rps p50 p90 p99 max errs
    run_fg "$TMP/warm" taskset -c 0 timeout -k 5 $((WARMUP + 30)) wrk -t1 -c64 -d"${WARMUP}s" "$url" || true
    measure "$rep" "$target" "$load" taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" --latency "$url"
    o="$TMP/out"
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$o")
    lat() { local l; l=$(awk -v p="$1%" '$1==p {print $2}' "$o" | sed -E 's/([0-9.]+)([a-z]+)/\1 \2/'); [[ -n "$l" ]] && to_us $l || echo NA; }
    p50=$(lat 50); p90=$(lat 90); p99=$(lat 99)
    max=$(awk '$1=="Latency" && NF>=4 {print $4; exit}' "$o" | sed -E 's/([0-9.]+)([a-z]+)/\1 \2/')
    [[ -n "$max" ]] && max=$(to_us $max) || max=NA
    errs=$(awk '/Non-2xx/ {n+=$NF} /Socket errors/ {gsub(",",""); n+=$4+$6+$8+$10} END {print n+0}' "$o")
    record "$rep" "$target" "$load" "${rps:-0}" "$p50" "$p90" "$p99" NA "$max" "$errs" "$CPU"
}

# run_h2load REP TARGET [LOAD URL]: 8 connections x 8 streams (default h2c-h2load, H2_URL;
# an https:// URL negotiates h2 by ALPN).
run_h2load() {
    local rep=$1 target=$2 load=${3:-h2c-h2load} url=${4:-${H2_URL[$2]}} o rps pcts errs max
    rm -f "$TMP/h2load.log"
    measure "$rep" "$target" "$load" taskset -c 0 h2load -t1 -c8 -m8 -D "$DURATION" \
        --warm-up-time "$WARMUP" --log-file "$TMP/h2load.log" "$url"
    o="$TMP/out"
    rps=$(awk '/^finished in/ {gsub(",",""); printf "%.0f", $4}' "$o")
    # "failed" includes non-2xx responses, "errored" and "timeout" (both subsets of it).
    errs=$(awk '/^requests:/ {print $10}' "$o")
    # h2load prints no percentiles: take them from its per-request log (3rd column, us).
    pcts=$(cut -f3 "$TMP/h2load.log" 2>/dev/null | sort -n | awk '{a[NR]=$1}
        END { if (NR == 0) { print "NA NA NA NA NA"; exit }
              n = split("0.5 0.9 0.99 0.999", q, " ");
              for (i = 1; i <= n; i++) { r = int(q[i] * NR + 0.999999); if (r < 1) r = 1; printf "%s ", a[r] }
              print a[NR] }')
    read -r p50 p90 p99 p999 max <<<"$pcts"
    record "$rep" "$target" "$load" "${rps:-0}" "$p50" "$p90" "$p99" "$p999" "$max" "${errs:-NA}" "$CPU"
}

# run_driver REP TARGET LOAD ARGS...: our driver, JSON result.
run_driver() {
    local rep=$1 target=$2 load=$3 j
    shift 3
    measure "$rep" "$target" "$load" taskset -c 0 "$BIN/trellis-load" --json -d "${DURATION}s" --warmup "${WARMUP}s" "$@"
    j=$(grep '^{' "$TMP/out" | tail -n 1)
    if [[ -z "$j" ]]; then
        warn "$target/$load: no result ($(tail -n 1 "$TMP/out"))"
        record "$rep" "$target" "$load" 0 NA NA NA NA NA NA "$CPU"
        return
    fi
    record "$rep" "$target" "$load" "$(json_get rps "$j" | awk '{printf "%.0f", $1}')" \
        "$(json_get p50_us "$j")" "$(json_get p90_us "$j")" "$(json_get p99_us "$j")" \
        "$(json_get p999_us "$j")" "$(json_get max_us "$j")" "$(json_get errors "$j")" "$CPU"
}

# Rotate the order of the targets with the repetition, so none is always measured first.
rotated_targets() {
    local rep=$1 n=${#TARGETS[@]} i
    for ((i = 0; i < n; i++)); do
        echo "${TARGETS[$(((i + rep - 1) % n))]}"
    done
}

# ---------------------------------------------------------------------------------------
# Closed loop: interleaved repetitions.
# ---------------------------------------------------------------------------------------
LOADS=()
if ((!MEMORY_ONLY)); then
    ((HAVE_WRK)) && LOADS+=(h1-wrk)
    LOADS+=(h1-driver)
    ((HAVE_H2LOAD)) && LOADS+=(h2c-h2load)
    LOADS+=(h2c-driver)
    if ((HAVE_TLS)); then
        ((HAVE_WRK)) && LOADS+=(tls-h1-wrk)
        ((HAVE_H2LOAD)) && LOADS+=(tls-h2-h2load)
    fi
fi
log "targets: ${TARGETS[*]}; loads: ${LOADS[*]}; $REPS x ${DURATION}s (+${WARMUP}s warm-up)"
START_LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)

((MEMORY_ONLY)) && REPS=0
for rep in $(seq "$REPS"); do
    log "repetition $rep/$REPS"
    for load in "${LOADS[@]}"; do
        for target in $(rotated_targets "$rep"); do
            case "$load" in
                h1-wrk) run_wrk "$rep" "$target" ;;
                h1-driver) run_driver "$rep" "$target" h1-driver --url "${H1_URL[$target]}" -c 64 ;;
                h2c-h2load) run_h2load "$rep" "$target" ;;
                h2c-driver) run_driver "$rep" "$target" h2c-driver --url "${H2_URL[$target]}" --h2 -c 8 -m 8 ;;
                tls-h1-wrk) [[ -n "${TLS_URL[$target]:-}" ]] && run_wrk "$rep" "$target" tls-h1-wrk "${TLS_URL[$target]}" ;;
                tls-h2-h2load) [[ -n "${TLS_URL[$target]:-}" ]] && run_h2load "$rep" "$target" tls-h2-h2load "${TLS_URL[$target]}" ;;
            esac
        done
    done
done

# agg TARGET LOAD COLUMN -> "median min max" (NA when nothing)
agg() {
    awk -F'\t' -v t="$1" -v l="$2" -v c="$3" '$2==t && $3==l && $c!="NA" && $c!="" {print $c}' "$RAW" |
        sort -g | awk '{a[NR]=$1} END { if (NR == 0) { print "NA NA NA"; exit }
            m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; print m, a[1], a[NR] }'
}
fmt_rps() { awk -v v="$1" 'BEGIN { if (v == "NA") print "–"; else if (v >= 1000) printf "%.1fk", v / 1000; else printf "%.0f", v }'; }
fmt_ms() { awk -v v="$1" 'BEGIN { if (v == "NA") print "–"; else printf "%.2f ms", v / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || b == 0) print "–"; else printf "%.2f×", a / b }'; }

# ---------------------------------------------------------------------------------------
# Open loop at half of Trellis' max load: added latency vs direct.
# ---------------------------------------------------------------------------------------
OPEN_BASE=trellis
[[ " ${TARGETS[*]} " == *" trellis "* ]] || OPEN_BASE=nginx
[[ " ${TARGETS[*]} " == *" $OPEN_BASE "* ]] || OPEN_BASE=""
((MEMORY_ONLY)) && OPEN_BASE=""
declare -A OPEN_RATE
if [[ -n "$OPEN_BASE" ]]; then
    read -r m _ _ <<<"$(agg "$OPEN_BASE" h1-driver 4)"
    [[ "$m" != NA ]] && OPEN_RATE[h1]=$(awk -v m="$m" 'BEGIN { printf "%d", m / 2 }')
    read -r m _ _ <<<"$(agg "$OPEN_BASE" h2c-driver 4)"
    [[ "$m" != NA ]] && OPEN_RATE[h2c]=$(awk -v m="$m" 'BEGIN { printf "%d", m / 2 }')
    log "open loop at half of $OPEN_BASE's closed-loop driver RPS: h1 ${OPEN_RATE[h1]:-?}/s, h2c ${OPEN_RATE[h2c]:-?}/s"
    for rep in $(seq "$REPS"); do
        log "open-loop repetition $rep/$REPS"
        for target in $(rotated_targets "$rep"); do
            [[ -n "${OPEN_RATE[h1]:-}" && "${OPEN_RATE[h1]}" -gt 0 ]] &&
                run_driver "$rep" "$target" open-h1 --url "${H1_URL[$target]}" -c 64 --rate "${OPEN_RATE[h1]}"
            [[ -n "${OPEN_RATE[h2c]:-}" && "${OPEN_RATE[h2c]}" -gt 0 ]] &&
                run_driver "$rep" "$target" open-h2c --url "${H2_URL[$target]}" --h2 -c 8 -m 8 --rate "${OPEN_RATE[h2c]}"
        done
    done
fi

# Peak RSS under load (VmHWM), before the memory phase.
declare -A LOAD_RSS
for t in "${TARGETS[@]}"; do
    LOAD_RSS[$t]=$(mem_kb "${SUT_PID[$t]}" VmHWM)
done

# ---------------------------------------------------------------------------------------
# Memory: idle, N idle client connections, M concurrent SSE streams (fresh processes).
# ---------------------------------------------------------------------------------------
declare -A MEM_IDLE MEM_CONNS MEM_SSE SSE_INFO CONN_INFO

# hold_rss PID OUTKEY ARGS...: runs a hold in the background, samples the RSS of PID
# once everything is established, returns "rss_kb|summary".
hold_rss() {
    local pid=$1 name=$2 hpid best=0 r j
    shift 2
    taskset -c 0 timeout -k 5 $((HOLD_SECS + 120)) "$BIN/trellis-load" --json -d "${HOLD_SECS}s" "$@" \
        >"$TMP/hold.out" 2>"$TMP/hold.err" &
    hpid=$!
    PIDS+=("$hpid")
    for _ in $(seq 1200); do
        grep -q '^hold: established' "$TMP/hold.err" && break
        kill -0 "$hpid" 2>/dev/null || break
        sleep 0.1
    done
    sleep 2
    for _ in 1 2 3; do
        r=$(mem_kb "$pid")
        ((r > best)) && best=$r
        sleep 0.5
    done
    wait "$hpid" 2>/dev/null
    forget_pid "$hpid"
    j=$(grep '^{' "$TMP/hold.out" | tail -n 1)
    HOLD_RSS=$best
    HOLD_SUMMARY="$(json_get established "$j")/$(json_get requested "$j") established, $(json_get open "$j") open at end, $(json_get events "$j") events, $(json_get errors "$j") errors"
    log "  $name: RSS $((best / 1024)) MB; $HOLD_SUMMARY"
}

MEM_TARGETS=()
if ((MEMORY)); then
    # Restart the proxies so that "idle" is a fresh process, comparable between them.
    for t in "${TARGETS[@]}"; do
        case "$t" in
            trellis) stop_pid "$TRELLIS_PID"; start_trellis && SUT_PID[trellis]=$TRELLIS_PID && MEM_TARGETS+=(trellis) ;;
            nginx) stop_pid "$NGINX_PID"; start_nginx && SUT_PID[nginx]=$NGINX_PID && MEM_TARGETS+=(nginx) ;;
            haproxy) stop_pid "$HAPROXY_PID"; start_haproxy && SUT_PID[haproxy]=$HAPROXY_PID && MEM_TARGETS+=(haproxy) ;;
        esac
    done
    for t in "${MEM_TARGETS[@]}"; do
        pid=${SUT_PID[$t]}
        sleep 1
        MEM_IDLE[$t]=$(mem_kb "$pid")
        log "memory: $t idle RSS $((MEM_IDLE[$t] / 1024)) MB"
        hold_rss "$pid" "$t $IDLE_CONNS idle connections" --url "${H1_URL[$t]}" --hold "$IDLE_CONNS"
        MEM_CONNS[$t]=$HOLD_RSS; CONN_INFO[$t]=$HOLD_SUMMARY
        if [[ "$SSE_CLIENT" == h2c ]]; then
            hold_rss "$pid" "$t $SSE_STREAMS SSE streams (h2c)" --url "${H2_URL[$t]}sse?interval_ms=1000" \
                --hold "$SSE_STREAMS" --sse --h2 -m "$SSE_H2_STREAMS"
        else
            hold_rss "$pid" "$t $SSE_STREAMS SSE streams (h1)" --url "${H1_URL[$t]}sse?interval_ms=1000" \
                --hold "$SSE_STREAMS" --sse
        fi
        MEM_SSE[$t]=$HOLD_RSS; SSE_INFO[$t]=$HOLD_SUMMARY
    done
fi
# HTTP/1.1 SSE clients through a Trellis whose cluster speaks h2c to the origin (a fresh
# process): one client connection per stream, ~100 streams per upstream connection.
H2UP_IDLE=""; H2UP_SSE=""; H2UP_INFO=""
if ((MEMORY && SSE_H2UP_STREAMS > 0)) && [[ " ${MEM_TARGETS[*]} " == *" trellis "* ]]; then
    stop_pid "$TRELLIS_PID"
    if CLUSTER_PROTOCOL=http2 H2_CLUSTER_PROTOCOL=http2 start_trellis; then
        sleep 1
        H2UP_IDLE=$(mem_kb "$TRELLIS_PID")
        log "memory: trellis (h2c upstream) idle RSS $((H2UP_IDLE / 1024)) MB"
        hold_rss "$TRELLIS_PID" "trellis $SSE_H2UP_STREAMS SSE streams (h1 clients, h2c upstream)" \
            --url "http://127.0.0.1:$TRELLIS_PORT/sse?interval_ms=1000" --hold "$SSE_H2UP_STREAMS" --sse
        H2UP_SSE=$HOLD_RSS; H2UP_INFO=$HOLD_SUMMARY
        stop_pid "$TRELLIS_PID"
    fi
fi

# ---------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------
mkdir -p "$RESULTS"
REPORT="$TMP/report.md"
has() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }
{
    echo "# Trellis benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    if ((MEMORY_ONLY)); then
        echo "- Memory only (\`--memory-only\`): no throughput or latency loads."
    else
        echo "- $REPS interleaved repetition(s) × ${DURATION} s (+${WARMUP} s warm-up); medians with min–max."
    fi
    echo "- Load generator + origin (\`trellis-origin --threads 1\`) pinned on cpu0; each proxy alone on cpu1 with one worker/thread."
    echo "- Trellis cluster protocol: h1 scenario \`$CLUSTER_PROTOCOL\`, h2c scenario \`$H2_CLUSTER_PROTOCOL\`. nginx: upstream keepalive 64, HTTP/1.1 upstream. HAProxy: \`http-reuse always\`, HTTP/1.1 upstream, one thread."
    echo "- Machine: $(nproc) cores, $(uname -r), load average before the run: $START_LOADAVG; $(nginx -v 2>&1 | sed 's/.*: //'); wrk $WRK_VERSION; h2load $( ((HAVE_H2LOAD)) && h2load --version | awk '{print $2}' || echo none)."
    ((TRELLIS_OK)) && has trellis || echo "- **Trellis was not measured** (binary missing or not ready): only the other columns are meaningful."
    echo
    if ((${#LOADS[@]})); then
        echo "## Throughput (closed loop)"
        echo
        hdr="| load |"; sep="|---|"
        for t in "${TARGETS[@]}"; do hdr+=" $t RPS |"; sep+="---|"; done
        has trellis && has nginx && { hdr+=" trellis/nginx |"; sep+="---|"; }
        has trellis && has haproxy && { hdr+=" trellis/haproxy |"; sep+="---|"; }
        has trellis && has nginx && has haproxy && { hdr+=" trellis/best C proxy |"; sep+="---|"; }
        has trellis && { hdr+=" trellis/direct |"; sep+="---|"; }
        echo "$hdr"; echo "$sep"
        for load in "${LOADS[@]}"; do
            row="| $load |"
            for t in "${TARGETS[@]}"; do
                read -r m _ _ <<<"$(agg "$t" "$load" 4)"
                row+=" $(fmt_rps "$m") |"
            done
            if has trellis; then
                read -r tm _ _ <<<"$(agg trellis "$load" 4)"
                read -r dm _ _ <<<"$(agg direct "$load" 4)"
                nm=NA; hm=NA
                has nginx && { read -r nm _ _ <<<"$(agg nginx "$load" 4)"; row+=" $(ratio "$tm" "$nm") |"; }
                has haproxy && { read -r hm _ _ <<<"$(agg haproxy "$load" 4)"; row+=" $(ratio "$tm" "$hm") |"; }
                if has nginx && has haproxy; then
                    best=$(awk -v a="$nm" -v b="$hm" 'BEGIN { if (a == "NA") print b; else if (b == "NA" || a > b) print a; else print b }')
                    row+=" $(ratio "$tm" "$best") |"
                fi
                row+=" $(ratio "$tm" "$dm") |"
            fi
            echo "$row"
        done
        echo
        echo "Details (median, min–max over repetitions; SUT CPU% < 95 marks a lower bound: the SUT was not the bottleneck):"
        echo
        echo "| load | target | RPS | RPS min–max | p50 | p99 | p99 min–max | p99.9 | max | errors | SUT CPU% | ÷ direct |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
        for load in "${LOADS[@]}"; do
            read -r dm _ _ <<<"$(agg direct "$load" 4)"
            for t in "${TARGETS[@]}"; do
                read -r rm rlo rhi <<<"$(agg "$t" "$load" 4)"
                read -r p50 _ _ <<<"$(agg "$t" "$load" 5)"
                read -r p99 p99lo p99hi <<<"$(agg "$t" "$load" 7)"
                read -r p999 _ _ <<<"$(agg "$t" "$load" 8)"
                read -r mx _ mxhi <<<"$(agg "$t" "$load" 9)"
                errs=$(awk -F'\t' -v t="$t" -v l="$load" '$2==t && $3==l && $10!="NA" {n+=$10} END {print n+0}' "$RAW")
                read -r cpu _ _ <<<"$(agg "$t" "$load" 11)"
                flag=""
                [[ "$t" != direct && "$cpu" != NA ]] && awk -v c="$cpu" 'BEGIN { exit !(c < 95) }' && flag=" ⚠"
                echo "| $load | $t | $(fmt_rps "$rm") | $(fmt_rps "$rlo")–$(fmt_rps "$rhi") | $(fmt_ms "$p50") | $(fmt_ms "$p99") | $(fmt_ms "$p99lo")–$(fmt_ms "$p99hi") | $(fmt_ms "$p999") | $(fmt_ms "$mxhi") | $errs | ${cpu}%$flag | $(ratio "$rm" "$dm") |"
            done
        done
        echo
        echo "\"direct\" is the origin alone; its CPU% is the origin's, which shares cpu0 with the load generator."
        ((HAVE_TLS)) && echo "TLS loads: each proxy terminates TLS (TLS 1.3, the same P-256 certificate) and forwards plain HTTP/1.1 to the origin; the origin speaks no TLS, so there is no direct row."
        echo
    else
        echo "No throughput loads (\`--memory-only\`)."
        echo
    fi
    if [[ -n "$OPEN_BASE" ]]; then
        echo "## Added latency at half of ${OPEN_BASE}'s max load (open loop, trellis-load, no coordinated omission)"
        echo
        echo "Rate: h1 ${OPEN_RATE[h1]:-–} req/s over 64 connections; h2c ${OPEN_RATE[h2c]:-–} req/s over 8 connections × 8 streams. Added = p99 through the proxy − p99 direct, paired per repetition, median."
        echo
        echo "| proto | target | achieved RPS | p50 | p90 | p99 | p99.9 | max | added p99 | errors |"
        echo "|---|---|---|---|---|---|---|---|---|---|"
        for load in open-h1 open-h2c; do
            [[ -n "${OPEN_RATE[${load#open-}]:-}" ]] || continue
            for t in "${TARGETS[@]}"; do
                read -r rm _ _ <<<"$(agg "$t" "$load" 4)"
                read -r p50 _ _ <<<"$(agg "$t" "$load" 5)"
                read -r p90 _ _ <<<"$(agg "$t" "$load" 6)"
                read -r p99 _ _ <<<"$(agg "$t" "$load" 7)"
                read -r p999 _ _ <<<"$(agg "$t" "$load" 8)"
                read -r _ _ mx <<<"$(agg "$t" "$load" 9)"
                errs=$(awk -F'\t' -v t="$t" -v l="$load" '$2==t && $3==l && $10!="NA" {n+=$10} END {print n+0}' "$RAW")
                added="–"
                if [[ "$t" != direct ]]; then
                    added=$(awk -F'\t' -v t="$t" -v l="$load" '$3==l && $7!="NA" { if ($2=="direct") d[$1]=$7; if ($2==t) x[$1]=$7 }
                        END { for (r in x) if (r in d) print x[r] - d[r] }' "$RAW" | sort -g |
                        awk '{a[NR]=$1} END { if (NR == 0) { print "NA"; exit } print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
                    added=$(fmt_ms "$added")
                fi
                echo "| ${load#open-} | $t | $(fmt_rps "$rm") | $(fmt_ms "$p50") | $(fmt_ms "$p90") | $(fmt_ms "$p99") | $(fmt_ms "$p999") | $(fmt_ms "$mx") | $added | $errs |"
            done
        done
        echo
    fi
    echo "## Memory (RSS from /proc, process + children)"
    echo
    echo "| target | idle at start | peak under load (VmHWM) |"
    echo "|---|---|---|"
    for t in "${TARGETS[@]}"; do
        echo "| $t | $(awk -v k="${IDLE_RSS[$t]}" 'BEGIN { printf "%.1f MB", k / 1024 }') | $(awk -v k="${LOAD_RSS[$t]}" 'BEGIN { printf "%.1f MB", k / 1024 }') |"
    done
    echo
    if ((${#MEM_TARGETS[@]})); then
        if [[ "$SSE_CLIENT" == h2c ]]; then
            sse_how="h2c clients, $SSE_H2_STREAMS streams per connection, HTTP/1.1 upstream"
        else
            sse_how="HTTP/1.1 clients, one connection per stream"
        fi
        echo "Fresh process; $IDLE_CONNS idle keep-alive HTTP/1.1 client connections, then $SSE_STREAMS concurrent SSE streams (\`/sse?interval_ms=1000\`; $sse_how), each held ${HOLD_SECS} s once established:"
        echo
        echo "| target | idle | $IDLE_CONNS idle conns | KB/conn over idle | $SSE_STREAMS SSE streams | KB/stream over idle |"
        echo "|---|---|---|---|---|---|"
        for t in "${MEM_TARGETS[@]}"; do
            awk -v t="$t" -v i="${MEM_IDLE[$t]}" -v c="${MEM_CONNS[$t]}" -v s="${MEM_SSE[$t]}" \
                -v nc="$IDLE_CONNS" -v ns="$SSE_STREAMS" 'BEGIN {
                printf "| %s | %.1f MB | %.1f MB | %.1f | %.1f MB | %.1f |\n", t, i / 1024, c / 1024, (c - i) / nc, s / 1024, (s - i) / ns }'
        done
        echo
        for t in "${MEM_TARGETS[@]}"; do
            echo "- $t: idle connections: ${CONN_INFO[$t]}; SSE: ${SSE_INFO[$t]}."
        done
        echo
        if [[ -n "$H2UP_SSE" ]]; then
            echo "Trellis with an h2c upstream cluster (\`protocol: http2\`, 100 streams per upstream connection), fresh process; $SSE_H2UP_STREAMS concurrent SSE streams from HTTP/1.1 clients, one connection per stream:"
            echo
            echo "| target | idle | $SSE_H2UP_STREAMS SSE streams | KB/stream over idle |"
            echo "|---|---|---|---|"
            awk -v i="$H2UP_IDLE" -v s="$H2UP_SSE" -v ns="$SSE_H2UP_STREAMS" 'BEGIN {
                printf "| trellis (h2c upstream) | %.1f MB | %.1f MB | %.1f |\n", i / 1024, s / 1024, (s - i) / ns }'
            echo
            echo "- trellis (h2c upstream): SSE: $H2UP_INFO."
            echo
        fi
    fi
    echo "<details><summary>raw rows (rep, target, load, rps, p50, p90, p99, p99.9, max [us], errors, SUT CPU%)</summary>"
    echo
    echo '```'
    cat "$RAW"
    echo '```'
    echo "</details>"
} >"$REPORT"
cp "$REPORT" "$RESULTS/latest.md"
cat "$REPORT"
log "written to $RESULTS/latest.md"
