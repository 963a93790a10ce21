#!/usr/bin/env bash
# Writes link/trellis.order, the code layout of the release `trellis` binary (build.rs):
# the functions it runs, counted by valgrind's callgrind, in the order of five scenarios,
# each scenario's new functions hottest first:
#   1. a proxy with a plain listener (benches' config) starting, answering /ready, one
#      HTTP/1.1 and one h2c request and /metrics, then idle;
#   2. an edge proxy terminating TLS: one HTTP/1.1 and one HTTP/2 request;
#   3. a sidecar pair (examples/sidecar-pair): one request over the mTLS HTTP/2 hop;
#   4. a proxy fed by the control plane (xDS), and one request through it;
#   5. the control plane itself (REST apply, discovery).
# Functions the binary runs in every deployment come first, so that code is contiguous.
#
#   scripts/link-order.sh           regenerate (builds with `cargo build --release -p trellis`,
#                                   the way users build, whose names the list must carry)
#   scripts/link-order.sh --check   how many listed functions target/release/trellis has, and
#                                   how many 64 KiB windows of code scenario 1's span
#
# Regenerate after a dependency or toolchain update (a stale list costs memory, nothing
# else; --check shows it). Needs valgrind and curl. Listens on 127.0.0.1:1837x; every process
# started here is ended by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/target/release
ORDER=$ROOT/link/trellis.order
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

# layout ORDER BINARY [CALLGRIND_FILE]: listed names the binary has, and the code pages the
# functions of a callgrind run occupy in it.
layout() {
    python3 - "$@" <<'PY'
import re, subprocess, sys
order, binary = sys.argv[1], sys.argv[2]
syms = {}
for line in subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True,
                           text=True, check=True).stdout.splitlines():
    f = line.split()
    if len(f) == 4 and f[2] in "tTWw":
        syms[f[3]] = (int(f[0], 16), int(f[1], 16))
listed = [l.split("#")[0].strip() for l in open(order)]
listed = [n for n in listed if n]
print(f"{sum(n in syms for n in listed)} of {len(listed)} listed functions are in {binary}")
if len(sys.argv) > 3:
    names = set()
    for line in open(sys.argv[3], errors="replace"):
        m = re.match(r"^c?fn=\(\d+\) (\S+)", line)
        if m and m.group(1) in syms:
            names.add(m.group(1))
    pages = {p for n in names for p in range(syms[n][0] >> 12, (sum(syms[n]) - 1 >> 12) + 1)}
    windows = {p >> 4 for p in pages}
    print(f"scenario 1 runs {len(names)} functions on {len(pages)} pages of code, "
          f"in {len(windows)} 64 KiB windows ({len(windows) * 64} kB)")
PY
}

CHECK=0
case ${1:-} in
    --check) CHECK=1 ;;
    "") ;;
    -h | --help) sed -n 2,18p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
esac
need_tools valgrind callgrind_control curl python3 nm

bench_workdir trellis-link-order
# until_ready URL: valgrind starts a program ~50× slower; waits up to 60 s.
until_ready() { wait_ready "$1" 60; }
# under_callgrind NAME ARGS...: runs trellis ARGS under callgrind (mangled names), output NAME.cg.
under_callgrind() {
    local name=$1
    shift
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$name.cg" \
        "$BIN/trellis" "$@" >"$name.log" 2>&1 &
    PIDS+=($!)
}
# finish NAME PID URL: writes the counts so far to NAME.cg (callgrind dumps on the process'
# next step: URL wakes it), then ends the process (its shutdown is not part of the layout).
finish() {
    callgrind_control -d "$2" >/dev/null 2>&1 &
    local c=$!
    sleep 0.5
    curl -s -o /dev/null "$3" || true
    wait "$c" || true
    kill -KILL "$2" 2>/dev/null || true
    wait "$2" 2>/dev/null || true
    mv "$1.cg.1" "$1.cg"
}

scenarios() {
    "$BIN/trellis-origin" --listen 127.0.0.1:18371 --threads 1 >origin.log 2>&1 &
    PIDS+=($!)
    until_ready http://127.0.0.1:18371/

    # 1. plain listener (run.sh's and idle_rss.sh's config)
    cat >plain.yaml <<EOF
admin: { address: 127.0.0.1:18372 }
listeners:
  - name: bench
    address: 127.0.0.1:18370
    protocol: auto
    routes: [all]
$(forward_all_yaml 127.0.0.1:18371)
EOF
    under_callgrind 1-plain proxy --config plain.yaml
    local p=${PIDS[-1]}
    until_ready http://127.0.0.1:18372/ready
    curl -sf -o /dev/null http://127.0.0.1:18370/
    curl -sf -o /dev/null --http2-prior-knowledge http://127.0.0.1:18370/
    curl -sf -o /dev/null http://127.0.0.1:18372/metrics
    sleep 2
    finish 1-plain "$p" http://127.0.0.1:18372/ready
    ((CHECK)) && return

    # 2. an edge proxy terminating TLS (benches/run.sh's TLS listener)
    edge_pki "$BIN/trellis" edge-pki || exit 1
    cat >edge.yaml <<EOF
admin: { address: 127.0.0.1:18382 }
listeners:
  - name: edge
    address: 127.0.0.1:18381
    tls: { mode: terminate, certificates: [{ cert: edge-pki/edge.pem, key: edge-pki/edge.key }] }
    routes: [all]
$(forward_all_yaml 127.0.0.1:18371)
EOF
    under_callgrind 2-edge proxy --config edge.yaml
    p=${PIDS[-1]}
    until_ready http://127.0.0.1:18382/ready
    curl -sfk -o /dev/null --http1.1 https://localhost:18381/
    curl -sfk -o /dev/null --http2 https://localhost:18381/
    sleep 1
    finish 2-edge "$p" http://127.0.0.1:18382/ready

    # 3. the sidecar pair, as in benches/pair.sh
    sidecar_pair_yaml "$BIN/trellis" 18371 18374 18375 18373 18376
    under_callgrind 3-inbound proxy --config checkout.yaml
    local inbound=${PIDS[-1]}
    under_callgrind 3-outbound proxy --config frontend.yaml
    local outbound=${PIDS[-1]}
    until_ready http://127.0.0.1:18374/ready
    until_ready http://127.0.0.1:18373/ready
    curl -sf -o /dev/null http://127.0.0.1:18376/api/x
    sleep 2
    finish 3-outbound "$outbound" http://127.0.0.1:18373/ready
    finish 3-inbound "$inbound" http://127.0.0.1:18374/ready

    # 4 and 5. the control plane and a proxy it configures
    under_callgrind 5-control-plane control-plane --data-dir cp \
        --api-addr 127.0.0.1:18377 --xds-addr 127.0.0.1:18378
    local cp=${PIDS[-1]}
    until_ready http://127.0.0.1:18377/healthz
    cat >resources.yaml <<EOF
kind: Cluster
name: origin
protocol: http1
endpoints: [{ address: 127.0.0.1:18371 }]
---
kind: Route
name: all
match: { path_prefix: / }
backends: [{ cluster: origin }]
---
kind: Listener
name: web
address: 127.0.0.1:18379
routes: [all]
EOF
    "$BIN/trellis" ctl --server http://127.0.0.1:18377 apply -f resources.yaml >/dev/null
    cat >xds.yaml <<EOF
node: { id: web-0, service: web }
admin: { address: 127.0.0.1:18380 }
control_plane: { address: "http://127.0.0.1:18378" }
EOF
    under_callgrind 4-xds proxy --config xds.yaml
    local xds=${PIDS[-1]}
    until_ready http://127.0.0.1:18380/ready
    until_ready http://127.0.0.1:18379/
    sleep 2
    finish 4-xds "$xds" http://127.0.0.1:18380/ready
    finish 5-control-plane "$cp" http://127.0.0.1:18377/healthz
}

if ((CHECK)); then
    [[ -x $BIN/trellis ]] || { echo "error: no $BIN/trellis (cargo build --release)" >&2; exit 1; }
    scenarios
    layout "$ORDER" "$BIN/trellis" 1-plain.cg
    exit 0
fi

# The names must be those of the build users make (`-p trellis` alone: see build_release):
# build, count, write, then link again with the new list (the names stay the same).
build_release -q
scenarios
python3 - "$BIN/trellis" "$ORDER" 1-plain.cg 2-edge.cg 3-inbound.cg 3-outbound.cg 4-xds.cg 5-control-plane.cg <<'PY'
import collections, re, subprocess, sys
binary, order, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
text = set()
for line in subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True,
                           check=True).stdout.splitlines():
    f = line.split()
    # With the names LLVM numbers (`name.123`): a number may name another function of that
    # name after the code changes, which then is the one placed here (no harm: a few pages).
    if len(f) == 3 and f[1] in "tTWw":
        text.add(f[2])

def self_costs(path):
    """Function name -> instructions spent in it (callgrind's compressed names resolved)."""
    names, cost, cur, call_line = {}, collections.Counter(), None, False
    for line in open(path, errors="replace"):
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (\S+))?", line)
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if m.group(1) == "fn":
                cur = m.group(2)
        elif line.startswith("calls="):
            call_line = True  # the next line is the call's inclusive cost, not this function's
        elif line[:1] in "0123456789+-*":
            if call_line:
                call_line = False
            elif cur is not None and len(line.split()) > 1:
                cost[cur] += int(line.split()[1])
    return {names[k]: v for k, v in cost.items() if k in names}

seen, out = set(), []
groups = [runs[0:1], runs[1:2], runs[2:4], runs[4:5], runs[5:6]]
for group in groups:
    total = collections.Counter()
    for run in group:
        total.update(self_costs(run))
    new = [n for n, _ in total.most_common() if n in text and n not in seen]
    seen.update(new)
    out.append((group, new))
with open(order, "w") as f:
    f.write("# The code layout of the release `trellis` binary (build.rs): written by\n"
            "# scripts/link-order.sh from callgrind runs, do not edit. One function a line, in\n"
            "# the order the linker places them.\n")
    for group, names in out:
        f.write(f"# {' + '.join(g.split('.')[0] for g in group)}: {len(names)} functions\n")
        f.writelines(n + "\n" for n in names)
print(f"{order}: {len(seen)} functions")
PY
(cd "$ROOT" && cargo build --release -q -p trellis)
layout "$ORDER" "$BIN/trellis" 1-plain.cg
