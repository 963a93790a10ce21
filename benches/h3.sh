#!/usr/bin/env bash
# HTTP/3 edge benchmark (issue 17): one terminating edge listener with `http3: true`,
# Trellis alone on cpu1 (--threads 1); the origin (trellis-origin) and the load driver on
# cpu0. In one run, interleaved, against the same listener and the same origin (HTTP/1.1
# upstream): edge-load --proto h2 (HTTP/2 over TLS 1.3) and edge-load --proto h3 (QUIC),
# closed loop, C connections x M streams; h2load (TLS h2) once per repetition as a
# cross-check of the driver. Memory: the proxy's RSS idle with http3 off and on (same config
# otherwise), after the loads once their connections closed, and with N idle HTTP/3
# connections held.
#
# Usage: benches/h3.sh [--reps N] [--duration S] [-c C] [-m M] [--hold N] [--no-build]
# Env: TRELLIS_BIN (default target/release/trellis).
# Listens on 127.0.0.1:28441 (origin), 28443 (edge, TCP and UDP), 29943 (admin); processes
# started here are killed by PID.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release"
TRELLIS_BIN="${TRELLIS_BIN:-$BIN/trellis}"
REPS=3; DUR=8; CONNS=8; STREAMS=8; HOLD=1000; BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) REPS="$2"; shift ;;
        --duration) DUR="$2"; shift ;;
        -c) CONNS="$2"; shift ;;
        -m) STREAMS="$2"; shift ;;
        --hold) HOLD="$2"; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
[[ "$TRELLIS_BIN" == /* ]] || TRELLIS_BIN="$PWD/$TRELLIS_BIN"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
if ((BUILD)); then
    build_release -q || exit 1
fi
bench_workdir trellis-h3

"$TRELLIS_BIN" certs init --dir pki >/dev/null
"$TRELLIS_BIN" certs issue --dir pki --id spiffe://trellis.local/ns/edge/sa/edge --dns edge.test --out pki/edge >/dev/null
config() { # config HTTP3(true|false)
    cat <<EOF
admin: { address: "127.0.0.1:29943" }
drain_timeout: 1s
listeners:
  - name: edge
    address: "127.0.0.1:28443"
    tls: { mode: terminate, certificates: [{ cert: pki/edge.pem, key: pki/edge.key }], http3: $1 }
    routes: [all]
$(forward_all_yaml 127.0.0.1:28441)
EOF
}
config false >off.yaml
config true >on.yaml

taskset -c 0 "$BIN/trellis-origin" --listen 127.0.0.1:28441 --threads 1 >origin.log 2>&1 &
PIDS+=($!)
LOAD=(taskset -c 0 "$BIN/edge-load" --addr 127.0.0.1:28443 --sni edge.test --ca pki/ca.pem)
PROXY=
start_proxy() { # start_proxy CONFIG
    taskset -c 1 "$TRELLIS_BIN" proxy --config "$1" --threads 1 >"proxy-$1.log" 2>&1 &
    PROXY=$!
    PIDS+=("$PROXY")
    wait_ready http://127.0.0.1:29943/ready
}
stop_proxy() {
    kill "$PROXY" 2>/dev/null
    wait "$PROXY" 2>/dev/null
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$PROXY/status"; }
h2_once() { curl -sk --http2 --resolve edge.test:28443:127.0.0.1 https://edge.test:28443/ -o /dev/null; }
json_field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"; }
proxy_ticks() { awk '{print $14 + $15}' "/proc/$PROXY/stat"; }
cpu_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t}' /proc/stat; }
steal_pct() { # steal_pct "STEAL0 TOTAL0": steal since then, in % of both CPUs' time
    local s0 t0 s1 t1
    read -r s0 t0 <<<"$1"; read -r s1 t1 < <(cpu_ticks)
    awk -v s=$((s1 - s0)) -v t=$((t1 - t0)) 'BEGIN {if (t > 0) printf "%.0f%%", 100 * s / t}'
}

echo "uptime before: $(uptime)"
# Idle RSS: http3 off vs on, each after one TLS h2 request (and, with http3, one HTTP/3
# connection that made a request and closed).
start_proxy off.yaml
h2_once; sleep 1
RSS_OFF=$(rss_kb)
stop_proxy
start_proxy on.yaml
h2_once
"${LOAD[@]}" --hold 1 -d 0.2s >/dev/null 2>&1
sleep 1
RSS_ON=$(rss_kb)

declare -a H2_RPS H3_RPS H2_P99 H3_P99 H2_PER H3_PER H2_CPU H3_CPU H2LOAD_RPS
for rep in $(seq "$REPS"); do
    for proto in h2 h3; do
        t0=$(cpu_ticks); p0=$(proxy_ticks); w0=$(date +%s.%N)
        out=$("${LOAD[@]}" --proto "$proto" -c "$CONNS" -m "$STREAMS" -d "${DUR}s" --warmup 2s --json 2>&1 | tail -1)
        busy=$(awk -v p=$(($(proxy_ticks) - p0)) -v w0="$w0" -v w1="$(date +%s.%N)" -v hz="$(getconf CLK_TCK)" \
            'BEGIN {printf "%.0f%%", 100 * p / hz / (w1 - w0)}')
        rps=$(json_field "$out" rps); rps=${rps%.*}; p99=$(json_field "$out" p99_us); errs=$(json_field "$out" errors)
        echo "rep $rep $proto: rps $rps p99 ${p99}us errors $errs (proxy CPU $busy, steal $(steal_pct "$t0"), load $(cut -d' ' -f1 /proc/loadavg))"
        # RPS per core the proxy used: comparable when something else held the proxy back.
        per=$(awk -v r="$rps" -v b="${busy%\%}" 'BEGIN {if (b > 0) printf "%.0f", r * 100 / b}')
        if [[ $proto == h2 ]]; then
            H2_RPS+=("$rps"); H2_P99+=("$p99"); H2_PER+=("$per"); H2_CPU+=("$busy")
        else
            H3_RPS+=("$rps"); H3_P99+=("$p99"); H3_PER+=("$per"); H3_CPU+=("$busy")
        fi
    done
    if command -v h2load >/dev/null; then
        r=$(taskset -c 0 h2load -c "$CONNS" -m "$STREAMS" -D "$DUR" --warm-up-time 2 https://127.0.0.1:28443/ 2>/dev/null |
            sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p')
        echo "rep $rep h2load (TLS h2): rps $r"
        H2LOAD_RPS+=("$r")
    fi
done
sleep 2
RSS_AFTER=$(rss_kb)

# N idle HTTP/3 connections.
"${LOAD[@]}" --hold "$HOLD" -d 6s >hold.log 2>&1 &
HOLDER=$!
PIDS+=("$HOLDER")
for _ in $(seq 600); do grep -q "hold: established" hold.log && break; sleep 0.1; done
sleep 2
RSS_HOLD=$(rss_kb)
HELD=$(sed -n 's/hold: established \([0-9]*\).*/\1/p' hold.log)
wait "$HOLDER"
echo "uptime after: $(uptime)"

M_H2=$(median "${H2_RPS[@]}"); M_H3=$(median "${H3_RPS[@]}")
P_H2=$(median "${H2_PER[@]}"); P_H3=$(median "${H3_PER[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b}'; }
{
    echo "## HTTP/3 vs TLS HTTP/2 on one edge listener ($(date -u +%F), $REPS reps x ${DUR}s, $CONNS conns x $STREAMS streams)"
    echo
    echo "| | TLS h2 (edge-load) | HTTP/3 (edge-load) | h3 / h2 | TLS h2 (h2load) |"
    echo "|---|---|---|---|---|"
    echo "| RPS, median | $M_H2 | $M_H3 | $(ratio "$M_H3" "$M_H2") | $(median "${H2LOAD_RPS[@]:-}") |"
    echo "| RPS, each rep | ${H2_RPS[*]} | ${H3_RPS[*]} | | ${H2LOAD_RPS[*]:-} |"
    echo "| proxy CPU, each rep | ${H2_CPU[*]} | ${H3_CPU[*]} | | |"
    echo "| RPS per proxy core, median | $P_H2 | $P_H3 | $(ratio "$P_H3" "$P_H2") | |"
    echo "| p99 µs, each rep | ${H2_P99[*]} | ${H3_P99[*]} | | |"
    echo
    echo "| proxy RSS | KiB |"
    echo "|---|---|"
    echo "| idle, http3 off | $RSS_OFF |"
    echo "| idle, http3 on | $RSS_ON (+$((RSS_ON - RSS_OFF))) |"
    echo "| after the loads, connections closed | $RSS_AFTER |"
    echo "| $HELD idle HTTP/3 connections | $RSS_HOLD ($(( (RSS_HOLD - RSS_AFTER) * 1024 / (HELD > 0 ? HELD : 1) )) bytes each) |"
} | tee "$ROOT/benches/results/h3-latest.md"
