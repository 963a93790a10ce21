#!/usr/bin/env bash
# Sidecar-pair benchmark (issue "Identity"): app -> outbound sidecar (plaintext HTTP/1.1)
# -> one multiplexed mTLS HTTP/2 connection -> inbound sidecar -> origin, against the
# origin direct and (unless --no-nginx) an nginx mTLS pair, in one run. Measures:
# closed-loop RPS at 64 connections, open-loop latency at half of the Trellis pair's
# measured maximum (every target at the same rate, runs interleaved, steal time and the
# sidecars' CPU shown per run), new mTLS handshakes per second on the inbound (mesh)
# listener alone, and each sidecar's RSS.
#
# Layouts (--layout):
#   shared  (default) load driver and origin on cpu0, both sidecars (--threads 1) on cpu1:
#           the proxies alone on one core, as BENCHMARKING.md pins a system under test.
#           Every request crosses cores four times (direct: twice).
#   nodes   load driver and outbound sidecar on cpu0, inbound sidecar and origin on cpu1:
#           each sidecar on its app's core, as on two nodes. Only the mTLS hop crosses
#           cores, so the pair crosses as often as direct does.
# The nginx pair (two nginx, one worker each: HTTP/1.1 over TLS 1.3 with client
# certificates, upstream keepalive 64; nginx cannot proxy to an HTTP/2 upstream) runs in
# the same layout. It is the reference for what a mature proxy pair adds on this machine.
#
# Usage: benches/pair.sh [--reps N] [--lat-reps N] [--duration S] [--layout shared|nodes]
#                        [--no-nginx] [--no-build] [--rates R1,R2,...]
#   --rates  also run every pair open-loop at these fixed rates (e.g. 2000,6000,12000) and
#            report the sidecars' CPU per request, trellis pair ÷ nginx pair
#   --floor  with --rates: also two pairs that only relay bytes (plain TCP both hops, no
#            TLS, no HTTP): trellis `tcp` listeners, and nginx `stream` (when its module is
#            installed: libnginx-mod-stream). What two processes in the request's path cost
#            before any proxying work: the floor under the CPU-per-request ratio.
# Env: TRELLIS_BIN, the trellis binary measured (default target/release/trellis; e.g.
# target/pgo/trellis after benches/pgo.sh).
# Everything listens on 127.0.0.1:2814x/2815x/2809x/2990x; processes started here are
# killed by PID.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release"
TRELLIS_BIN="${TRELLIS_BIN:-$BIN/trellis}"   # e.g. target/pgo/trellis after benches/pgo.sh
REPS=3; LAT_REPS=5; DUR=6; BUILD=1; LAYOUT=shared; USE_NGINX=1; RATES=; FLOOR=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) REPS="$2"; shift ;;
        --lat-reps) LAT_REPS="$2"; shift ;;
        --duration) DUR="$2"; shift ;;
        --layout) LAYOUT="$2"; shift ;;
        --no-nginx) USE_NGINX=0 ;;
        --no-build) BUILD=0 ;;
        --rates) RATES="$2"; shift ;;
        --floor) FLOOR=1 ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
case "$LAYOUT" in
    shared) OUT_CPU=1; IN_CPU=1; ORIGIN_CPU=0 ;;
    nodes) OUT_CPU=0; IN_CPU=1; ORIGIN_CPU=1 ;;
    *) echo "--layout: expected shared or nodes, got '$LAYOUT'" >&2; exit 2 ;;
esac
[[ "$TRELLIS_BIN" == /* ]] || TRELLIS_BIN="$PWD/$TRELLIS_BIN"

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
((BUILD)) && build_release -q || ((BUILD == 0)) || exit 1
bench_workdir trellis-pair

sidecar_pair_yaml "$BIN/trellis" 28090 29902 28143 29901 28140 || exit 1

# cpu_ns "PID...": CPU time of the processes, their threads and their children (nginx workers).
cpu_ns() {
    local t=0 p f a pids
    read -ra pids <<<"$1"
    for p in "${pids[@]}" $(pgrep -P "$(tr ' ' , <<<"$1")"); do
        for f in /proc/"$p"/task/*/schedstat; do read -r a _ 2>/dev/null <"$f" && t=$((t + a)); done
    done
    echo "$t"
}
rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' /proc/"$1"/status; }
# steal: "steal_ticks all_ticks" over cpu0 and cpu1 (time the hypervisor ran something else).
steal() { awk '/^cpu[01] / {s += $9; t += $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9} END {print s, t}' /proc/stat; }
# load URL ARGS...: one trellis-load JSON line.
load() { local url=$1; shift; taskset -c 0 "$BIN/trellis-load" --url "$url" -c 64 --warmup 1s --json "$@" | tail -1; }
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
ms() { awk -v u="$1" 'BEGIN {printf "%.2f", u / 1000}'; }
# med / range "N N ...": median, and min–max, of a space-separated list.
values() { tr -s ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g; }
med() { values "$1" | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
range() { values "$1" | awk 'NR == 1 {lo = $1} {hi = $1} END {print lo "–" hi}'; }

taskset -c "$ORIGIN_CPU" "$BIN/trellis-origin" --listen 127.0.0.1:28090 --threads 1 >origin.log 2>&1 &
PIDS+=($!)
taskset -c "$IN_CPU" "$TRELLIS_BIN" proxy --config checkout.yaml --threads 1 >inbound.log 2>&1 &
IN=$!; PIDS+=("$IN")
taskset -c "$OUT_CPU" "$TRELLIS_BIN" proxy --config frontend.yaml --threads 1 >outbound.log 2>&1 &
OUT=$!; PIDS+=("$OUT")
wait_ready http://127.0.0.1:29902/ready
wait_ready http://127.0.0.1:29901/ready

# nginx_pair NAME URL: starts nginx with $TMP/NAME-in/nginx.conf on the inbound sidecar's
# core and $TMP/NAME-out/nginx.conf on the outbound one, sets PAIR_IN and PAIR_OUT to their
# PIDs, and waits (5 s at most) for URL to answer 200 through them.
nginx_pair() {
    taskset -c "$IN_CPU" nginx -p "$TMP/$1-in" -c "$TMP/$1-in/nginx.conf" >"$1-in.log" 2>&1 &
    PAIR_IN=$!; PIDS+=("$PAIR_IN")
    taskset -c "$OUT_CPU" nginx -p "$TMP/$1-out" -c "$TMP/$1-out/nginx.conf" >"$1-out.log" 2>&1 &
    PAIR_OUT=$!; PIDS+=("$PAIR_OUT")
    for _ in $(seq 50); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$2") == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

# The nginx pair: outbound 127.0.0.1:28150 -> HTTP/1.1 over mTLS -> inbound 28153 -> origin.
# nginx verifies a DNS name, not a SPIFFE URI, so its server certificate also has one.
start_nginx_pair() {
    "$BIN/trellis" certs issue --dir pki --id spiffe://trellis.local/ns/default/sa/checkout \
        --dns checkout.mesh --out pki/checkout-dns >/dev/null || return 1
    local n
    for n in nginx-in nginx-out; do
        mkdir -p "$TMP/$n/tmp"
        {
            [[ $EUID -eq 0 ]] && echo "user root;"
            cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $TMP/$n/nginx.pid;
error_log $TMP/$n/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/$n/tmp/body;
    proxy_temp_path $TMP/$n/tmp/proxy;
    fastcgi_temp_path $TMP/$n/tmp/fastcgi;
    uwsgi_temp_path $TMP/$n/tmp/uwsgi;
    scgi_temp_path $TMP/$n/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
EOF
            if [[ $n == nginx-in ]]; then
                cat <<EOF
    upstream origin { server 127.0.0.1:28090; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:28153 ssl;
        ssl_protocols TLSv1.3;
        ssl_certificate $TMP/pki/checkout-dns.pem;
        ssl_certificate_key $TMP/pki/checkout-dns.key;
        ssl_verify_client on;
        ssl_client_certificate $TMP/pki/ca.pem;
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
            else
                cat <<EOF
    upstream inbound { server 127.0.0.1:28153; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:28150;
        location / {
            proxy_pass https://inbound;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_certificate $TMP/pki/frontend.pem;
            proxy_ssl_certificate_key $TMP/pki/frontend.key;
            proxy_ssl_trusted_certificate $TMP/pki/ca.pem;
            proxy_ssl_verify on;
            proxy_ssl_name checkout.mesh;
            proxy_ssl_session_reuse on;
        }
    }
}
EOF
            fi
        } >"$TMP/$n/nginx.conf"
    done
    nginx_pair nginx "${URL[nginx]}"
    local up=$?
    NIN=$PAIR_IN; NOUT=$PAIR_OUT
    ((up == 0)) && return 0
    echo "warning: the nginx pair did not answer; no nginx column" >&2
    cat nginx-in.log nginx-out.log "$TMP"/nginx-*/error.log >&2 2>/dev/null
    return 1
}
TARGETS=(direct trellis)
declare -A URL=([direct]=http://127.0.0.1:28090/api/x [trellis]=http://127.0.0.1:28140/api/x [nginx]=http://127.0.0.1:28150/api/x
    [trellis-tcp]=http://127.0.0.1:28160/api/x [nginx-tcp]=http://127.0.0.1:28170/api/x)
declare -A SIDECARS=([direct]="" [trellis]="$IN $OUT")
if ((USE_NGINX)) && command -v nginx >/dev/null && start_nginx_pair; then
    TARGETS+=(nginx); SIDECARS[nginx]="$NIN $NOUT"
fi

# The floor pairs (--floor): app -> relay -> relay -> origin, plain TCP both hops, in the
# same layout as the pairs. Ports: trellis 28160 -> 28163, nginx 28170 -> 28173.
FLOORS=()
floor_port() { case $1 in trellis-in) echo 28163 ;; trellis-out) echo 28160 ;; nginx-in) echo 28173 ;; nginx-out) echo 28170 ;; esac; }
start_floor() {
    local n
    for n in in out; do
        cat >"tcp-$n.yaml" <<EOF
admin: { address: "127.0.0.1:$([[ $n == in ]] && echo 29912 || echo 29911)" }
listeners:
  - { name: relay, address: "127.0.0.1:$(floor_port "trellis-$n")", protocol: tcp, cluster: next }
clusters:
  - { name: next, endpoints: [{ address: "127.0.0.1:$([[ $n == in ]] && echo 28090 || floor_port trellis-in)" }] }
EOF
    done
    taskset -c "$IN_CPU" "$TRELLIS_BIN" proxy --config tcp-in.yaml --threads 1 >tcp-in.log 2>&1 &
    TIN=$!; PIDS+=("$TIN")
    taskset -c "$OUT_CPU" "$TRELLIS_BIN" proxy --config tcp-out.yaml --threads 1 >tcp-out.log 2>&1 &
    TOUT=$!; PIDS+=("$TOUT")
    wait_ready http://127.0.0.1:29912/ready && wait_ready http://127.0.0.1:29911/ready || return 1
    FLOORS+=(trellis-tcp); SIDECARS[trellis-tcp]="$TIN $TOUT"
    local module=/usr/lib/nginx/modules/ngx_stream_module.so
    ((USE_NGINX)) && command -v nginx >/dev/null && [[ -f $module ]] || return 0
    for n in in out; do
        mkdir -p "$TMP/stream-$n"
        {
            echo "load_module $module;"
            [[ $EUID -eq 0 ]] && echo "user root;"
            cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $TMP/stream-$n/nginx.pid;
error_log $TMP/stream-$n/error.log warn;
events { worker_connections 4096; }
stream { server { listen 127.0.0.1:$(floor_port "nginx-$n"); proxy_pass 127.0.0.1:$([[ $n == in ]] && echo 28090 || floor_port nginx-in); } }
EOF
        } >"$TMP/stream-$n/nginx.conf"
    done
    if nginx_pair stream "${URL[nginx-tcp]}"; then
        FLOORS+=(nginx-tcp); SIDECARS[nginx-tcp]="$PAIR_IN $PAIR_OUT"
    else
        echo "warning: the nginx stream pair did not answer; no nginx-tcp floor" >&2
    fi
    SIN=$PAIR_IN; SOUT=$PAIR_OUT
}
if ((FLOOR)) && [[ -n $RATES ]]; then
    start_floor || echo "warning: the trellis tcp relays did not start; no floor" >&2
fi

echo "## Sidecar pair ($(nproc) cores, layout $LAYOUT, load average $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "Layout: load driver cpu0, origin cpu$ORIGIN_CPU, outbound sidecar cpu$OUT_CPU, inbound sidecar cpu$IN_CPU." \
    "Pairs: trellis ($(basename "$TRELLIS_BIN"), h2 over mTLS between the sidecars)$([[ " ${TARGETS[*]} " == *" nginx "* ]] && echo ", nginx ($(nginx -v 2>&1 | sed 's/.*\///'), HTTP/1.1 over mTLS)")."
echo
# run TARGET ARGS...: one load run; prints "rps p50_us p99_us steal% sidecar_cpu% errors
# sidecar_cpu_us_per_request" (the CPU of both sidecars over the run, warm-up included, per
# request at the run's rate).
run() {
    local t=$1; shift
    local s0 t0 s1 t1 c0 c1 w0 w1 j
    read -r s0 t0 < <(steal); c0=$(cpu_ns "${SIDECARS[$t]:-$$}"); w0=$(date +%s%N)
    j=$(load "${URL[$t]}" "$@")
    read -r s1 t1 < <(steal); c1=$(cpu_ns "${SIDECARS[$t]:-$$}"); w1=$(date +%s%N)
    local cpu="-" per="-" rps
    rps=$(field rps <<<"$j")
    if [[ -n ${SIDECARS[$t]} ]]; then
        cpu=$(awk -v a="$c0" -v b="$c1" -v x="$w0" -v y="$w1" 'BEGIN {printf "%.0f", (b - a) * 100 / (y - x)}')
        per=$(awk -v a="$c0" -v b="$c1" -v x="$w0" -v y="$w1" -v r="$rps" \
            'BEGIN {if (r > 0) printf "%.1f", (b - a) / 1000 / (r * (y - x) / 1e9); else print "-"}')
    fi
    echo "$rps $(field p50_us <<<"$j") $(field p99_us <<<"$j") $(( (s1 - s0) * 100 / (t1 - t0 + 1) )) $cpu $(field errors <<<"$j") $per"
}

echo "closed loop, HTTP/1.1, 64 connections, ${DUR}s per run (sidecar CPU: both sidecars together, % of one core, warm-up included):"
declare -A RPS
for rep in $(seq "$REPS"); do
    for t in "${TARGETS[@]}"; do
        read -r rps p50 p99 st cpu err _ < <(run "$t" -d "${DUR}s")
        RPS[$t]+=" $rps"
        printf '  rep %d %-8s %9.0f rps, p50 %6s ms, p99 %6s ms, errors %s | steal %2d%%, sidecars %s%%\n' \
            "$rep" "$t:" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$err" "$st" "$cpu"
    done
done
DMED=$(med "${RPS[direct]}")
for t in "${TARGETS[@]}"; do
    m=$(med "${RPS[$t]}")
    echo "  median $t: $m rps ($(range "${RPS[$t]}")) = $(awk -v a="$m" -v b="$DMED" 'BEGIN {printf "%.2f", a / b}')x of direct"
done
[[ " ${TARGETS[*]} " == *" nginx "* ]] && echo "  trellis pair / nginx pair: $(awk -v a="$(med "${RPS[trellis]}")" -v b="$(med "${RPS[nginx]}")" 'BEGIN {printf "%.2f", a / b}')x"
echo "  RSS after load: inbound $(rss_mb "$IN") MB, outbound $(rss_mb "$OUT") MB;" \
    "mTLS connections between the sidecars: $(ss -Htn state established '( dport = :28143 )' | wc -l)"
# open_loop RATE WHAT: LAT_REPS interleaved open-loop runs of every target at RATE req/s.
open_loop() {
    local rate=$1 t rep rps p50 p99 st cpu err a50 a99 line
    declare -A P50=() P99=()
    echo
    echo "open loop at $2 ($rate req/s), ${DUR}s per run, $LAT_REPS reps:"
    for rep in $(seq "$LAT_REPS"); do
        for t in "${TARGETS[@]}"; do
            read -r rps p50 p99 st cpu err _ < <(run "$t" --rate "$rate" -d "${DUR}s")
            P50[$t]+=" $p50"; P99[$t]+=" $p99"
            printf '  rep %d %-8s p50 %7s ms, p99 %8s ms, errors %s | steal %2d%%, sidecars %s%%\n' \
                "$rep" "$t:" "$(ms "$p50")" "$(ms "$p99")" "$err" "$st" "$cpu"
        done
    done
    for t in "${TARGETS[@]}"; do
        a50=$(med "${P50[$t]}"); a99=$(med "${P99[$t]}")
        line="  median $t: p50 $(ms "$a50") ms, p99 $(ms "$a99") ms (p99 range $(range "${P99[$t]}") us)"
        [[ $t != direct ]] && line+="; added: p50 $(ms $((a50 - $(med "${P50[direct]}")))) ms, p99 $(ms $((a99 - $(med "${P99[direct]}")))) ms"
        echo "$line"
    done
}
open_loop "$(awk -v p="$(med "${RPS[trellis]}")" 'BEGIN {printf "%d", p / 2}')" "half of the trellis pair's maximum"
# The same at a rate the nginx pair also keeps up with: each pair at most at half its maximum.
[[ " ${TARGETS[*]} " == *" nginx "* ]] && open_loop "$(awk -v p="$(med "${RPS[nginx]}")" 'BEGIN {printf "%d", p / 2}')" "half of the nginx pair's maximum"

# CPU per request at fixed open-loop rates: what a pair costs at a given traffic, the
# figure that decides how many cores a mesh takes from its apps.
if [[ -n $RATES ]]; then
    echo
    echo "CPU per request at fixed open-loop rates (both sidecars, us of CPU per request; ${DUR}s per run, $LAT_REPS reps, medians):"
    echo
    echo "| rate | pair | achieved RPS | sidecar CPU us/req | p99 | steal | pair ÷ nginx pair (CPU/req) |"
    echo "|---|---|---|---|---|---|---|"
    for rate in ${RATES//,/ }; do
        declare -A PER=() ACH=() Q99=() ST=()
        for rep in $(seq "$LAT_REPS"); do
            for t in "${TARGETS[@]}" "${FLOORS[@]}"; do
                [[ $t == direct ]] && continue
                read -r rps _ p99 st _ _ per < <(run "$t" --rate "$rate" -d "${DUR}s")
                PER[$t]+=" ${per/-/0}"; ACH[$t]+=" ${rps%.*}"; Q99[$t]+=" $p99"; ST[$t]+=" $st"
            done
        done
        for t in "${TARGETS[@]}" "${FLOORS[@]}"; do
            [[ $t == direct ]] && continue
            m=$(med "${PER[$t]}")
            r="–"
            if [[ $t != nginx && -n ${PER[nginx]:-} ]]; then
                n=$(med "${PER[nginx]}")
                r=$(awk -v a="$m" -v b="$n" 'BEGIN {if (b > 0) printf "%.2f×", a / b; else print "–"}')
            fi
            echo "| $rate | $t | $(med "${ACH[$t]}") | $m | $(ms "$(med "${Q99[$t]}")") ms | $(med "${ST[$t]}")% | $r |"
        done
    done
fi
[[ -n ${NOUT:-} ]] && kill "$NOUT" "$NIN" 2>/dev/null
[[ -n ${SOUT:-} ]] && kill "$SOUT" "$SIN" 2>/dev/null
[[ -n ${TOUT:-} ]] && kill "$TOUT" "$TIN" 2>/dev/null
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
