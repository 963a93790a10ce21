#!/usr/bin/env bash
# Idle RSS of `trellis proxy` and where its bytes are (benches/README.md, session 15).
#
# For each binary and thread setting, N fresh proxies (the config of run.sh's start_trellis:
# one `protocol: auto` listener, one route, one http1 cluster to trellis-origin, the admin
# listener), each measured once it is ready and has served one request (+1 s): VmRSS,
# RssAnon, RssFile and the thread count; the last one of each set is broken down by mapping
# from /proc/PID/smaps. With --sidecar, the two proxies of examples/sidecar-pair instead
# (inbound: an mTLS listener with a policy; outbound: an mTLS HTTP/2 cluster), measured once
# one request has gone through both.
#
#   benches/idle_rss.sh [--bin PATH]... [--origin PATH] [--runs N] [--threads "1 default"]
#                       [--sidecar]
#
# --bin may be given several times (A/B of builds, alternated run by run); default
# target/release/trellis. --threads: a list of `--threads` values, `default` meaning no
# flag (one worker per CPU).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"

BINS=()
ORIGIN=""
RUNS=3
THREADS="1 default"
ROLES=plain
while (($#)); do
    case $1 in
        --bin) BINS+=("$(realpath "$2")"); shift 2 ;;
        --origin) ORIGIN=$(realpath "$2"); shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --sidecar) ROLES="inbound outbound"; shift ;;
        -h | --help) sed -n 2,18p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
((${#BINS[@]})) || BINS=("$ROOT/target/release/trellis")
[[ -n $ORIGIN ]] || ORIGIN=$(dirname "${BINS[0]}")/trellis-origin
[[ -x $ORIGIN ]] || ORIGIN=$ROOT/target/release/trellis-origin
for b in "${BINS[@]}" "$ORIGIN"; do
    [[ -x $b ]] || { echo "error: $b is not an executable (cargo build --release)" >&2; exit 1; }
done

ORIGIN_PORT=18181
PORT=18180
ADMIN=19911
bench_workdir idle-rss
cat >trellis.yaml <<EOF
admin: { address: 127.0.0.1:$ADMIN }
listeners:
  - name: bench
    address: 127.0.0.1:$PORT
    protocol: auto
    routes: [all]
$(forward_all_yaml "127.0.0.1:$ORIGIN_PORT")
EOF
"$ORIGIN" --listen 127.0.0.1:$ORIGIN_PORT --threads 1 >origin.log 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$ORIGIN_PORT/"
if [[ $ROLES != plain ]]; then
    sidecar_pair_yaml "${BINS[0]}" "$ORIGIN_PORT" "$ADMIN" 18182 19912 "$PORT" || exit 1
fi

# breakdown PID EXE: resident kB per kind of mapping, from smaps (markdown rows).
breakdown() {
    python3 - "$1" "$2" <<'PY'
import collections, sys
pid, exe = sys.argv[1], sys.argv[2]
k = collections.Counter()
stacks = 0
cur = None
def account(m):
    global stacks
    start, size, perms, path, rss, anon = m
    if path == exe:
        k["binary: code (file)" if "x" in perms else "binary: read-only data (file)"] += rss - anon
        k["binary: relocated data (RELRO), .data (anon)"] += anon
    elif path.startswith("/"):
        k["shared libraries (file)"] += rss - anon
        k["shared libraries: data (anon)"] += anon
    elif path == "[stack]":
        k["main thread stack (anon)"] += rss
    elif path == "[heap]":
        k["brk heap (anon)"] += rss
    elif path.startswith("["):
        k["kernel ([vdso], [vvar])"] += rss
    elif 2 << 40 <= start < 4 << 40:
        k["mimalloc arena (anon)"] += rss
    elif size == 2048 and perms == "rw-p":
        k["thread stacks, 2 MiB mappings (anon)"] += rss
        stacks += 1
    else:
        k["other anonymous (.bss, TLS, guard pages)"] += rss
for line in open(f"/proc/{pid}/smaps"):
    f = line.split()
    if "-" in f[0] and len(f) >= 5 and ":" in f[3]:
        a, b = (int(x, 16) for x in f[0].split("-"))
        cur = [a, (b - a) // 1024, f[1], f[5] if len(f) > 5 else "", 0, 0]
    elif f[0] == "Rss:":
        cur[4] = int(f[1])
    elif f[0] == "Anonymous:":
        cur[5] = int(f[1])
        account(cur)
for name, kb in k.most_common():
    if kb:
        print(f"| {name} | {kb} |")
print(f"| (2 MiB stack mappings: {stacks}) | |")
PY
}

# status PID: "rss anon file threads" of a process, in kB.
status() {
    awk '$1=="VmRSS:"{r=$2} $1=="RssAnon:"{a=$2} $1=="RssFile:"{f=$2} $1=="Threads:"{t=$2}
         END {print r, a, f, t}' "/proc/$1/status"
}

# start BIN THREADS CONFIG ADMIN_PORT: starts a proxy and waits until it is ready; sets PID.
start() {
    local args=(proxy --config "$3")
    [[ $2 == default ]] || args+=(--threads "$2")
    "$1" "${args[@]}" >>trellis.log 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_ready "http://127.0.0.1:$4/ready"
}

# one BIN THREADS: starts the proxy (or the sidecar pair), sends one request, measures each
# proxy a second later, stops them; writes "role rss anon file threads" lines to one.out
# (not a subshell: the exit cleanup must know the proxies' PIDs).
one() {
    local bin=$1 threads=$2 role pid
    local -A pids=()
    if [[ $ROLES == plain ]]; then
        start "$bin" "$threads" trellis.yaml "$ADMIN"
        pids[plain]=$PID
    else
        start "$bin" "$threads" checkout.yaml "$ADMIN"
        pids[inbound]=$PID
        start "$bin" "$threads" frontend.yaml 19912
        pids[outbound]=$PID
    fi
    curl -sf "http://127.0.0.1:$PORT/api/x" >/dev/null || { echo "error: no answer through the proxy" >&2; exit 1; }
    sleep 1
    : >one.out
    for role in $ROLES; do
        pid=${pids[$role]}
        echo "$role $(status "$pid")" >>one.out
        [[ -n ${BREAKDOWN:-} ]] || continue
        {
            echo
            echo "Breakdown, $LABEL, $role (kB resident):"
            echo
            echo "| mapping | kB |"
            echo "|---|---|"
            breakdown "$pid" "$bin"
            echo
            echo -n "threads: "
            for t in /proc/"$pid"/task/*; do cat "$t/comm"; done | sort | uniq -c | awk '{printf "%s ×%s; ", $2, $1}'
            echo
        } >>breakdowns.md
    done
    for role in $ROLES; do kill "${pids[$role]}"; done
    for role in $ROLES; do wait "${pids[$role]}" 2>/dev/null || true; done
}

echo "| binary | proxy | threads | VmRSS kB (runs) | RssAnon kB | RssFile kB | threads |"
echo "|---|---|---|---|---|---|---|"
for threads in $THREADS; do
    declare -A RSS=() ANON=() FILE=() THR=()
    for ((i = 1; i <= RUNS; i++)); do
        for bin in "${BINS[@]}"; do
            LABEL="$(basename "$(dirname "$bin")")/$(basename "$bin"), --threads $threads"
            BREAKDOWN=""
            if ((i == RUNS)); then BREAKDOWN=1; fi
            one "$bin" "$threads"
            while read -r role r a f t; do
                RSS[$bin $role]+="$r "
                ANON[$bin $role]+="$a "
                FILE[$bin $role]+="$f "
                THR[$bin $role]=$t
            done <one.out
        done
    done
    for bin in "${BINS[@]}"; do
        for role in $ROLES; do
            k="$bin $role"
            printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$bin" "$role" "$threads" \
                "${RSS[$k]% }" "${ANON[$k]% }" "${FILE[$k]% }" "${THR[$k]}"
        done
    done
    unset RSS ANON FILE THR
done
cat breakdowns.md
