#!/usr/bin/env bash
# Profile-guided (PGO) release build of `trellis`: builds an instrumented binary, runs it
# through the workloads a proxy spends its time on (HTTP/1.1 and h2c keep-alive forwarding
# to HTTP/1.1 and HTTP/2 upstreams, SSE, the mTLS sidecar pair, new mesh handshakes),
# merges the profile with llvm-profdata and rebuilds with it. The result is the same
# program, laid out and inlined for the paths that run: about a fifth fewer instructions
# and half the instruction-cache misses per request (benches/README.md, "PGO").
#
# Usage: benches/pgo.sh [--train-secs S]
#   --train-secs S  seconds per training workload (default 6)
# Output: target/pgo/trellis (plus target/pgo/trellis.profdata). Needs llvm-profdata of
# rustc's LLVM major version: $LLVM_PROFDATA, rustup's llvm-tools component, or Debian's
# llvm-N package (apt-get install llvm-22 for rustc 1.95). Listens on 127.0.0.1:2820x and
# 2992x; every process started here is ended by PID. Takes 10-20 minutes on 2 cores.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=6
while [[ $# -gt 0 ]]; do
    case "$1" in
        --train-secs) SECS="$2"; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "error: $*" >&2; exit 1; }

# llvm-profdata must read the raw profiles rustc's LLVM writes: same major version.
major=$(rustc -vV | awk '/^LLVM version:/ {split($3, v, "."); print v[1]}')
[[ -n "$major" ]] || die "cannot tell rustc's LLVM version (rustc -vV)"
find_profdata() {
    local c
    for c in "${LLVM_PROFDATA:-}" "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata \
        "llvm-profdata-$major" "/usr/lib/llvm-$major/bin/llvm-profdata" llvm-profdata; do
        [[ -n "$c" ]] && command -v "$c" >/dev/null || continue
        # Accept only a tool of the same LLVM major version as rustc.
        "$c" --version 2>/dev/null | grep -Eq "LLVM version $major\." && { echo "$c"; return 0; }
    done
    return 1
}
PROFDATA=$(find_profdata) ||
    die "no llvm-profdata for LLVM $major: set LLVM_PROFDATA, or install llvm-$major (Debian) or rustup's llvm-tools component"

OUT="$ROOT/target/pgo"
RAW="$OUT/raw"
mkdir -p "$OUT"
rm -rf "$RAW"

echo "[pgo] building the load tools and an instrumented trellis (llvm-profdata: $PROFDATA)"
(cd "$ROOT" && cargo build --release -q -p trellis-bench) || die "building the benchmark tools failed"
TOOLS="$ROOT/target/release"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-generate=$RAW" cargo build --release -q -p trellis \
    --target-dir "$OUT/gen") || die "instrumented build failed"
GEN="$OUT/gen/release/trellis"

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_workdir trellis-pgo

# The profile is written when the proxy exits, so each proxy is drained with SIGTERM.
stop() { kill -TERM "$@"; wait "$@"; }
load() { "$TOOLS/trellis-load" -d "${SECS}s" "$@" | head -n 1 | sed 's/^/[pgo]   /'; }
export LLVM_PROFILE_FILE="$RAW/trellis-%p-%m.profraw"

"$TOOLS/trellis-origin" --listen 127.0.0.1:28201 --threads 1 >origin.log 2>&1 &
PIDS+=($!)

cat >proxy.yaml <<'YAML'
admin: { address: 127.0.0.1:29921 }
listeners:
  - { name: h1up, address: 127.0.0.1:28200, routes: [to-h1] }
  - { name: h2up, address: 127.0.0.1:28202, routes: [to-h2] }
routes:
  - { name: to-h1, match: { path_prefix: / }, backends: [{ cluster: origin-h1 }] }
  - { name: to-h2, match: { path_prefix: / }, backends: [{ cluster: origin-h2 }] }
clusters:
  - { name: origin-h1, protocol: http1, endpoints: [{ address: 127.0.0.1:28201 }] }
  - { name: origin-h2, protocol: http2, endpoints: [{ address: 127.0.0.1:28201 }] }
YAML
echo "[pgo] training: plain proxy"
"$GEN" proxy --config proxy.yaml --threads 1 >proxy.log 2>&1 &
P=$!; PIDS+=("$P")
wait_ready http://127.0.0.1:29921/ready
load --url http://127.0.0.1:28200/ -c 64
load --url http://127.0.0.1:28200/ -c 16 --h2 -m 8
load --url http://127.0.0.1:28202/ -c 32
"$TOOLS/trellis-load" --url 'http://127.0.0.1:28200/sse?interval_ms=50' --hold 100 --sse -d 2s 2>/dev/null |
    tail -n 1 | sed 's/^/[pgo]   /'
curl -sf http://127.0.0.1:29921/metrics >/dev/null
stop "$P"

echo "[pgo] training: mTLS sidecar pair"
"$GEN" certs init --dir pki >/dev/null || die "certs init failed"
for sa in frontend checkout; do
    "$GEN" certs issue --dir pki --id "spiffe://trellis.local/ns/default/sa/$sa" --out "pki/$sa" >/dev/null ||
        die "certs issue failed"
done
sed 's/8080/28201/; s/9902/29922/; s/4143/28203/' "$ROOT/examples/sidecar-pair/checkout.yaml" >checkout.yaml
sed 's/9901/29923/; s/4140/28204/; s/4143/28203/' "$ROOT/examples/sidecar-pair/frontend.yaml" >frontend.yaml
"$GEN" proxy --config checkout.yaml --threads 1 >inbound.log 2>&1 &
IN=$!; PIDS+=("$IN")
"$GEN" proxy --config frontend.yaml --threads 1 >outbound.log 2>&1 &
OUTB=$!; PIDS+=("$OUTB")
wait_ready http://127.0.0.1:29922/ready
wait_ready http://127.0.0.1:29923/ready
load --url http://127.0.0.1:28204/api/x -c 64
load --url http://127.0.0.1:28204/api/x -c 8 --h2 -m 8
"$TOOLS/tls-handshakes" --addr 127.0.0.1:28203 --cert pki/frontend.pem --key pki/frontend.key \
    --bundle pki/ca.pem --server-id spiffe://trellis.local/ns/default/sa/checkout -c 8 -d 3s |
    head -n 1 | sed 's/^/[pgo]   /'
stop "$IN" "$OUTB"

shopt -s nullglob
raws=("$RAW"/*.profraw)
((${#raws[@]} >= 3)) || die "expected a profile from each of 3 proxies, found ${#raws[@]}"
"$PROFDATA" merge -o "$OUT/trellis.profdata" "${raws[@]}" || die "llvm-profdata merge failed"

echo "[pgo] building trellis with the profile"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-use=$OUT/trellis.profdata" cargo build --release -q -p trellis \
    --target-dir "$OUT/use") || die "profile-guided build failed"
cp "$OUT/use/release/trellis" "$OUT/trellis"
echo "[pgo] done: $OUT/trellis"
