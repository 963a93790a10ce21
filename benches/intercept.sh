#!/usr/bin/env bash
# Sidecar-in-a-pod benchmark (DESIGN §9, issue 15): two network namespaces ("pods") on a
# bridge, the load driver in pod A, the origins in pod B, a `trellis proxy` in each pod
# (UID 2102, --threads 1) and `trellis proxy-init`'s redirect in both. In one run,
# interleaved:
#   direct       A -> B:8081, a port both pods skip: no proxy at all;
#   intercepted  A -> B:8080 as if no proxy were there: iptables -> A's transparent
#                outbound -> mTLS h2 -> B's transparent inbound -> 127.0.0.1:8080;
#   explicit     A -> 127.0.0.1:4150, today's explicit pair in the same two processes:
#                outbound listener -> mTLS h2 -> inbound listener B:4153 -> 127.0.0.1:8080.
# Closed loop (64 connections, HTTP/1.1) for RPS, then open loop at half of the
# intercepted pair's maximum for the added p50/p99; then opaque TCP: 1 MB messages echoed
# back, intercepted (over mTLS) vs direct. Steal time and the sidecars' CPU per run, the
# load average before and after.
#
# Layouts (--layout): shared (default) load driver and origins on cpu0, both sidecars on
# cpu1 (the proxies alone on one core, as BENCHMARKING.md pins a system under test);
# nodes: pod A (load driver, its sidecar) on cpu0, pod B (origins, its sidecar) on cpu1, as
# on two nodes.
# Usage: benches/intercept.sh [--reps N] [--lat-reps N] [--duration S] [--echo-conns N]
#                             [--layout shared|nodes] [--only http|opaque] [--no-build]
# Env: TRELLIS_BIN (default target/release/trellis). Needs root (namespaces, iptables);
# namespaces are named trl15b-<pid>-*, addresses 10.250.0.240/28; everything started here
# is ended by PID and every namespace deleted on exit.
set -uo pipefail

# Own session, so its autogroup can be given priority over other sessions' compiles.
if [[ -z "${TRELLIS_BENCH_IN_SESSION:-}" ]] && command -v setsid >/dev/null; then
    export TRELLIS_BENCH_IN_SESSION=1
    setsid bash "$0" "$@" </dev/null &
    child=$!
    trap 'kill -TERM "$child" 2>/dev/null' INT TERM HUP
    rc=0
    wait "$child" || rc=$?
    exit "$rc"
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release"
TRELLIS_BIN="${TRELLIS_BIN:-$BIN/trellis}"
REPS=3; LAT_REPS=3; DUR=6; BUILD=1; ECHO_CONNS=1; LAYOUT=shared; ONLY=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) REPS="$2"; shift ;;
        --lat-reps) LAT_REPS="$2"; shift ;;
        --duration) DUR="$2"; shift ;;
        --echo-conns) ECHO_CONNS="$2"; shift ;;
        --layout) LAYOUT="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
[[ $EUID -eq 0 ]] || { echo "error: needs root (network namespaces, iptables)" >&2; exit 2; }
case "$LAYOUT" in
    shared) A_CPU=0; B_CPU=0; A_PROXY_CPU=1; B_PROXY_CPU=1 ;;
    nodes) A_CPU=0; B_CPU=1; A_PROXY_CPU=0; B_PROXY_CPU=1 ;;
    *) echo "--layout: expected shared or nodes, got '$LAYOUT'" >&2; exit 2 ;;
esac
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
need_tools ip iptables-restore setpriv taskset
[[ "$TRELLIS_BIN" == /* ]] || TRELLIS_BIN="$PWD/$TRELLIS_BIN"
((BUILD)) && { build_release -q || exit 1; }
echo -10 >/proc/self/autogroup 2>/dev/null || echo "warning: could not raise the autogroup priority" >&2

bench_workdir trellis-intercept
chmod 755 "$TMP"
P="trl15b-$$"; W="$P-w"; A="$P-a"; B="$P-b"
A_IP=10.250.0.242; B_IP=10.250.0.243
NAMESPACES=()
cleanup_all() {
    bench_cleanup
    local ns
    for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
}
trap cleanup_all EXIT

# The pods: one bridge in W, a veth per pod, a /28, no default route.
ip netns add "$W" && NAMESPACES+=("$W")
ip -n "$W" link add br0 type bridge && ip -n "$W" link set br0 up
for pod in "$A:$A_IP:va" "$B:$B_IP:vb"; do
    IFS=: read -r ns addr peer <<<"$pod"
    ip netns add "$ns" && NAMESPACES+=("$ns")
    ip link add eth0 netns "$ns" type veth peer name "$peer" netns "$W"
    ip -n "$W" link set "$peer" master br0 up
    ip -n "$ns" addr add "$addr/28" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
done

# The proxy runs as UID 2102: it needs to read its binary, config and identity files.
cp "$TRELLIS_BIN" "$TMP/trellis" && chmod 755 "$TMP/trellis"
"$TMP/trellis" certs init --dir pki >/dev/null
for sa in frontend checkout; do
    "$TMP/trellis" certs issue --dir pki --id "spiffe://trellis.local/ns/default/sa/$sa" --out "pki/$sa" >/dev/null
done
chmod 755 pki && chown 2102:2102 pki/*.pem pki/*.key
CHECKOUT=spiffe://trellis.local/ns/default/sa/checkout
sidecar() {
    cat <<EOF
admin: { address: 127.0.0.1:9901 }
identity: { cert: $TMP/pki/$1.pem, key: $TMP/pki/$1.key, trust_bundle: $TMP/pki/ca.pem }
listeners:
  - { name: outbound, address: "127.0.0.1:4140", transparent: true }
  - { name: inbound, address: "0.0.0.0:4143", transparent: true, tls: { mode: mesh }, policy: mesh }
  - { name: explicit-out, address: "127.0.0.1:4150", routes: [explicit] }
  - { name: explicit-in, address: "0.0.0.0:4153", tls: { mode: mesh }, policy: mesh, routes: [local] }
routes:
  - { name: explicit, match: { path_prefix: / }, backends: [{ cluster: checkout-explicit }] }
  - { name: local, match: { path_prefix: / }, backends: [{ cluster: app }] }
clusters:
  - name: checkout
    endpoints: [{ address: "$B_IP:8080", identity: "$CHECKOUT" }]
  - name: checkout-explicit
    protocol: http2
    tls: { mode: mesh, identity: "$CHECKOUT" }
    endpoints: [{ address: "$B_IP:4153" }]
  - { name: app, protocol: http1, endpoints: [{ address: "127.0.0.1:8080" }] }
policies:
  - { name: mesh, default: deny, rules: [{ from: ["spiffe://trellis.local/ns/default/*"] }] }
EOF
}
sidecar frontend >frontend.yaml
sidecar checkout >checkout.yaml
chmod 644 ./*.yaml

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# Started with `ip netns exec` itself (not through a function): it, taskset and setpriv
# exec, so $! is the process's own PID.
AS_PROXY=(setpriv --reuid 2102 --regid 2102 --clear-groups "$TMP/trellis" proxy --threads 1 --config)
ip netns exec "$B" taskset -c "$B_CPU" "$BIN/trellis-origin" --listen 0.0.0.0:8080 --threads 1 >origin-8080.log 2>&1 & PIDS+=($!)
ip netns exec "$B" taskset -c "$B_CPU" "$BIN/trellis-origin" --listen 0.0.0.0:8081 --threads 1 >origin-8081.log 2>&1 & PIDS+=($!)
ip netns exec "$B" taskset -c "$B_CPU" "$BIN/tcp-echo" --listen 0.0.0.0:7000 >echo-7000.log 2>&1 & PIDS+=($!)
ip netns exec "$B" taskset -c "$B_CPU" "$BIN/tcp-echo" --listen 0.0.0.0:7001 >echo-7001.log 2>&1 & PIDS+=($!)
ip netns exec "$A" taskset -c "$A_PROXY_CPU" "${AS_PROXY[@]}" frontend.yaml >frontend.log 2>&1 &
OUT=$!; PIDS+=("$OUT")
ip netns exec "$B" taskset -c "$B_PROXY_CPU" "${AS_PROXY[@]}" checkout.yaml >checkout.log 2>&1 &
IN=$!; PIDS+=("$IN")
in_ns "$A" "$TMP/trellis" proxy-init --skip-outbound-ports 8081,7001 2>/dev/null >/dev/null || { echo "error: proxy-init in A" >&2; exit 1; }
in_ns "$B" "$TMP/trellis" proxy-init --skip-inbound-ports 8081,7001,4153 2>/dev/null >/dev/null || { echo "error: proxy-init in B" >&2; exit 1; }
for ns in "$A" "$B"; do
    for _ in $(seq 100); do in_ns "$ns" curl -sf http://127.0.0.1:9901/ready >/dev/null && break; sleep 0.1; done
done

cpu_ns() {
    local t=0 p f a
    for p in $1; do
        for f in /proc/"$p"/task/*/schedstat; do read -r a _ 2>/dev/null <"$f" && t=$((t + a)); done
    done
    echo "$t"
}
steal() { awk '/^cpu[01] / {s += $9; t += $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9} END {print s, t}' /proc/stat; }
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
ms() { awk -v u="$1" 'BEGIN {printf "%.2f", u / 1000}'; }
values() { tr -s ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g; }
med() { values "$1" | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
range() { values "$1" | awk 'NR == 1 {lo = $1} {hi = $1} END {print lo "–" hi}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
SIDECARS="$IN $OUT"

TARGETS=(direct intercepted explicit)
declare -A URL=([direct]="http://$B_IP:8081/" [intercepted]="http://$B_IP:8080/" [explicit]="http://127.0.0.1:4150/")
# run TARGET ARGS...: "rps p50_us p99_us steal% sidecar_cpu% errors".
run() {
    local t=$1; shift
    local s0 t0 s1 t1 c0 c1 w0 w1 j cpu
    read -r s0 t0 < <(steal); c0=$(cpu_ns "$SIDECARS"); w0=$(date +%s%N)
    j=$(in_ns "$A" taskset -c "$A_CPU" "$BIN/trellis-load" --url "${URL[$t]}" -c 64 --warmup 1s --json "$@" | tail -1)
    read -r s1 t1 < <(steal); c1=$(cpu_ns "$SIDECARS"); w1=$(date +%s%N)
    cpu=$(awk -v a="$c0" -v b="$c1" -v x="$w0" -v y="$w1" 'BEGIN {printf "%.0f", (b - a) * 100 / (y - x)}')
    [[ $t == direct ]] && cpu="-"
    echo "$(field rps <<<"$j") $(field p50_us <<<"$j") $(field p99_us <<<"$j") $(( (s1 - s0) * 100 / (t1 - t0 + 1) )) $cpu $(field errors <<<"$j")"
}

echo "## Sidecar in a pod: interception vs direct vs the explicit pair ($(nproc) cores, $(date -u +%FT%TZ))"
echo
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); trellis: $TRELLIS_BIN; layout $LAYOUT: load driver cpu$A_CPU, origins cpu$B_CPU, sidecars cpu$A_PROXY_CPU (A) and cpu$B_PROXY_CPU (B)"
if [[ $ONLY != opaque ]]; then
echo
echo "closed loop, HTTP/1.1, 64 connections, ${DUR}s per run (sidecars: CPU of both, % of one core):"
declare -A RPS
for rep in $(seq "$REPS"); do
    for t in "${TARGETS[@]}"; do
        read -r rps p50 p99 st cpu err < <(run "$t" -d "${DUR}s")
        RPS[$t]+=" $rps"
        printf '  rep %d %-12s %9.0f rps, p50 %6s ms, p99 %6s ms, errors %s | steal %2d%%, sidecars %s%%\n' \
            "$rep" "$t:" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$err" "$st" "$cpu"
    done
done
for t in "${TARGETS[@]}"; do
    echo "  median $t: $(med "${RPS[$t]}") rps ($(range "${RPS[$t]}")) = $(ratio "$(med "${RPS[$t]}")" "$(med "${RPS[direct]}")")x of direct"
done
echo "  intercepted / explicit: $(ratio "$(med "${RPS[intercepted]}")" "$(med "${RPS[explicit]}")")x"

RATE=$(awk -v p="$(med "${RPS[intercepted]}")" 'BEGIN {printf "%d", p / 2}')
echo
echo "open loop at half of the intercepted pair's maximum ($RATE req/s), ${DUR}s per run, $LAT_REPS reps:"
declare -A P50 P99
for rep in $(seq "$LAT_REPS"); do
    for t in "${TARGETS[@]}"; do
        read -r rps p50 p99 st cpu err < <(run "$t" --rate "$RATE" -d "${DUR}s")
        P50[$t]+=" $p50"; P99[$t]+=" $p99"
        printf '  rep %d %-12s p50 %7s ms, p99 %8s ms, errors %s | steal %2d%%, sidecars %s%%\n' \
            "$rep" "$t:" "$(ms "$p50")" "$(ms "$p99")" "$err" "$st" "$cpu"
    done
done
for t in "${TARGETS[@]}"; do
    a50=$(med "${P50[$t]}"); a99=$(med "${P99[$t]}")
    line="  median $t: p50 $(ms "$a50") ms, p99 $(ms "$a99") ms"
    [[ $t != direct ]] && line+="; added: p50 $(ms $((a50 - $(med "${P50[direct]}")))) ms, p99 $(ms $((a99 - $(med "${P99[direct]}")))) ms"
    echo "$line"
done

fi
if [[ $ONLY != http ]]; then
echo
echo "opaque TCP, 1 MB messages echoed back, $ECHO_CONNS connection(s), ${DUR}s per run:"
declare -A MBPS=([direct]="" [intercepted]="")
declare -A ECHO=([direct]="$B_IP:7001" [intercepted]="$B_IP:7000")
for rep in $(seq "$REPS"); do
    for t in direct intercepted; do
        read -r s0 t0 < <(steal); c0=$(cpu_ns "$SIDECARS"); w0=$(date +%s%N)
        j=$(in_ns "$A" taskset -c "$A_CPU" "$BIN/tcp-echo" --connect "${ECHO[$t]}" -c "$ECHO_CONNS" -d "${DUR}s" --json | tail -1)
        read -r s1 t1 < <(steal); c1=$(cpu_ns "$SIDECARS"); w1=$(date +%s%N)
        cpu=$(awk -v a="$c0" -v b="$c1" -v x="$w0" -v y="$w1" 'BEGIN {printf "%.0f", (b - a) * 100 / (y - x)}')
        mb=$(field mb_per_s <<<"$j")
        MBPS[$t]+=" $mb"
        printf '  rep %d %-12s %8.0f MB/s each way, round trip p50 %6s ms, p99 %6s ms | steal %2d%%, sidecars %s%%\n' \
            "$rep" "$t:" "$mb" "$(ms "$(field p50_us <<<"$j")")" "$(ms "$(field p99_us <<<"$j")")" "$(( (s1 - s0) * 100 / (t1 - t0 + 1) ))" "$cpu"
    done
done
echo "  median: direct $(printf %.0f "$(med "${MBPS[direct]}")") MB/s, intercepted $(printf %.0f "$(med "${MBPS[intercepted]}")") MB/s = $(ratio "$(med "${MBPS[intercepted]}")" "$(med "${MBPS[direct]}")")x of direct"
fi
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "connections the sidecars counted (outbound: transparent by protocol and mesh):"
in_ns "$A" curl -s http://127.0.0.1:9901/metrics | grep -E '^trellis_transparent_connections_total' | sed 's/^/  A /'
in_ns "$B" curl -s http://127.0.0.1:9901/metrics | grep -E '^trellis_downstream_connections_total' | sed 's/^/  B /'
