#!/usr/bin/env bash
# The release build of `trellis`: profile-guided (PGO), from the commit that is checked out.
# 1. builds an instrumented `trellis` (-Cprofile-generate) and the load tools (trellis-bench);
# 2. trains it on the workloads defined below (TRAINING): HTTP/1.1 and h2c keep-alive
#    forwarding to HTTP/1.1 and HTTP/2 upstreams, SSE streams, the mTLS sidecar pair and new
#    mesh handshakes, each for --train-secs seconds on 127.0.0.1;
# 3. merges the profile with llvm-profdata and builds `trellis` with it from a clean target
#    dir (`cargo build --release --locked`, paths remapped so the checkout's location is not
#    in the binary);
# 4. writes OUT/trellis, OUT/trellis.profdata, OUT/SHA256SUMS and OUT/MANIFEST (rustc and
#    LLVM versions, git commit, flags, sha256 of the binary and of the profile).
# Same source, same behaviour as `cargo build --release`; ~20% fewer instructions per request.
#
# Usage: scripts/release.sh [--out DIR] [--train-secs S] [--profile FILE | --profile-only]
#   --out DIR        where the artifact goes (default: dist/, git-ignored)
#   --train-secs S   seconds per training workload (default 6, as every published build)
#   --profile FILE   skip steps 1-2: build with this merged profile (e.g. the trellis.profdata
#                    of an earlier build, to reproduce that build bit for bit)
#   --profile-only   stop after steps 1-2: write OUT/trellis.profdata (to compare profiles)
# Needs git, curl, and llvm-profdata of rustc's LLVM major version ($LLVM_PROFDATA,
# rustup's llvm-tools component, or Debian's llvm-N). Listens on 127.0.0.1:2820x and
# 2992x; every process started here is ended by PID. Takes 20-30 minutes on 2 cores.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/dist"
SECS=6
PROFILE_IN=
PROFILE_ONLY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; shift ;;
        --train-secs) SECS="$2"; shift ;;
        --profile) PROFILE_IN="$2"; shift ;;
        --profile-only) PROFILE_ONLY=1 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "error: $*" >&2; exit 1; }
say() { echo "[release $(date -u +%T)] $*"; }
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || die "--train-secs takes a whole number of seconds, got '$SECS'"
[[ -z "$PROFILE_IN" ]] || ((PROFILE_ONLY == 0)) || die "--profile and --profile-only exclude each other"
if [[ -n "$PROFILE_IN" ]]; then
    [[ -f "$PROFILE_IN" ]] || die "--profile: no such file: $PROFILE_IN"
    PROFILE_IN=$(realpath "$PROFILE_IN")
fi

# ---- prerequisites ----------------------------------------------------------------------
for tool in cargo rustc git curl sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
# llvm-profdata must read the raw profiles rustc's LLVM writes: same major version.
llvm=$(cd "$ROOT" && rustc -vV | awk '/^LLVM version:/ {print $3}')
major=${llvm%%.*}
[[ -n "$major" ]] || die "cannot tell rustc's LLVM version (rustc -vV)"
find_profdata() {
    local c
    for c in "${LLVM_PROFDATA:-}" "$(cd "$ROOT" && rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata \
        "llvm-profdata-$major" "/usr/lib/llvm-$major/bin/llvm-profdata" llvm-profdata; do
        [[ -n "$c" ]] || continue
        command -v "$c" >/dev/null || continue
        # Accept only a tool of the same LLVM major version as rustc.
        "$c" --version 2>/dev/null | grep -Eq "LLVM version $major\." && { echo "$c"; return 0; }
    done
    return 1
}
PROFDATA=$(find_profdata) || die "no llvm-profdata of LLVM $major (rustc's LLVM is $llvm). Install one:
    rustup component add llvm-tools            # the toolchain's own (rustup installs)
    apt-get install --no-install-recommends llvm-$major   # Debian/Ubuntu (apt.llvm.org if your release lacks it)
  or point LLVM_PROFDATA at an llvm-profdata $major.x."
COMMIT=$(git -C "$ROOT" rev-parse HEAD) || die "$ROOT is not a git checkout"
DIRTY=no
[[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]] || {
    DIRTY=yes
    say "warning: the checkout has uncommitted changes; the manifest says so"
}

# ---- reproducible build settings ----------------------------------------------------------
# Flags are set here, not taken from the environment: a user's RUSTFLAGS or
# .cargo/config `rustflags` would change the binary. Paths of the checkout and of cargo's
# registry are remapped, so where they live is not in the binary (panic locations, debug
# line tables); std's paths are already /rustc/<commit>/. Build scripts that stamp a time
# read SOURCE_DATE_EPOCH: the commit's time.
unset RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_TARGET_DIR CARGO_BUILD_TARGET CARGO_INCREMENTAL
CARGO_HOME_DIR=${CARGO_HOME:-$HOME/.cargo}
BASE_FLAGS=("--remap-path-prefix=$ROOT=/trellis" "--remap-path-prefix=$CARGO_HOME_DIR=/cargo")
# The code generation flags of .cargo/config.toml, which CARGO_ENCODED_RUSTFLAGS replaces.
[[ "$(uname -m)" == x86_64 ]] && BASE_FLAGS+=("-Cllvm-args=--max-store-memcpy=32")
SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct HEAD)
export SOURCE_DATE_EPOCH
# cargo_build TARGET_DIR FLAG...: a locked release build of `trellis` with exactly these
# rustc flags (CARGO_ENCODED_RUSTFLAGS: paths with spaces stay one argument).
cargo_build() {
    local dir=$1 IFS=$'\x1f'
    shift
    (cd "$ROOT" && CARGO_ENCODED_RUSTFLAGS="${BASE_FLAGS[*]}${*:+$IFS$*}" \
        cargo build --release --locked -q -p trellis --target-dir "$dir")
}

WORK="$ROOT/target/pgo"   # intermediate builds and the raw profiles
PROFILE="$WORK/trellis.profdata"
RAW="$WORK/raw"
mkdir -p "$WORK" "$OUT" || die "cannot make $WORK or $OUT"
OUT=$(realpath "$OUT")

# ---- training -----------------------------------------------------------------------------
# The workloads the profile comes from. Their parameters are part of the build: change them
# only with a measured A/B (benches/README.md), and note it in CHANGELOG.md.
train() {
    local gen=$1 tools=$2
    # shellcheck source=benches/lib.sh
    source "$ROOT/benches/lib.sh"
    bench_workdir trellis-pgo
    # The profile is written when the proxy exits, so each proxy is drained with SIGTERM.
    stop() { kill -TERM "$@"; wait "$@"; }
    load() { "$tools/trellis-load" -d "${SECS}s" "$@" | head -n 1 | sed 's/^/[release]   /'; }
    export LLVM_PROFILE_FILE="$RAW/trellis-%p-%m.profraw"

    "$tools/trellis-origin" --listen 127.0.0.1:28201 --threads 1 >origin.log 2>&1 &
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
    say "training: plain proxy"
    "$gen" proxy --config proxy.yaml --threads 1 >proxy.log 2>&1 &
    local p=$!
    PIDS+=("$p")
    wait_ready http://127.0.0.1:29921/ready
    load --url http://127.0.0.1:28200/ -c 64                # HTTP/1.1 -> HTTP/1.1
    load --url http://127.0.0.1:28200/ -c 16 --h2 -m 8      # h2c -> HTTP/1.1
    load --url http://127.0.0.1:28202/ -c 32                # HTTP/1.1 -> HTTP/2
    "$tools/trellis-load" --url 'http://127.0.0.1:28200/sse?interval_ms=50' --hold 100 --sse -d 2s \
        2>/dev/null | tail -n 1 | sed 's/^/[release]   /'
    curl -sf http://127.0.0.1:29921/metrics >/dev/null
    stop "$p"

    say "training: mTLS sidecar pair"
    "$gen" certs init --dir pki >/dev/null || die "certs init failed"
    local sa
    for sa in frontend checkout; do
        "$gen" certs issue --dir pki --id "spiffe://trellis.local/ns/default/sa/$sa" --out "pki/$sa" \
            >/dev/null || die "certs issue failed"
    done
    # The sidecar pair of examples/sidecar-pair on this script's ports.
    sed 's/8080/28201/; s/9902/29922/; s/4143/28203/' "$ROOT/examples/sidecar-pair/checkout.yaml" >checkout.yaml
    sed 's/9901/29923/; s/4140/28204/; s/4143/28203/' "$ROOT/examples/sidecar-pair/frontend.yaml" >frontend.yaml
    "$gen" proxy --config checkout.yaml --threads 1 >inbound.log 2>&1 &
    local in=$!
    PIDS+=("$in")
    "$gen" proxy --config frontend.yaml --threads 1 >outbound.log 2>&1 &
    local outb=$!
    PIDS+=("$outb")
    wait_ready http://127.0.0.1:29922/ready
    wait_ready http://127.0.0.1:29923/ready
    load --url http://127.0.0.1:28204/api/x -c 64
    load --url http://127.0.0.1:28204/api/x -c 8 --h2 -m 8
    "$tools/tls-handshakes" --addr 127.0.0.1:28203 --cert pki/frontend.pem --key pki/frontend.key \
        --bundle pki/ca.pem --server-id spiffe://trellis.local/ns/default/sa/checkout -c 8 -d 3s |
        head -n 1 | sed 's/^/[release]   /'
    stop "$in" "$outb"
}

# ---- the build ----------------------------------------------------------------------------
if [[ -n "$PROFILE_IN" ]]; then
    say "using the given profile $PROFILE_IN"
    [[ "$PROFILE_IN" == "$PROFILE" ]] || cp "$PROFILE_IN" "$PROFILE" || die "cannot copy the profile"
    SOURCE="given ($(basename "$PROFILE_IN"))"
else
    say "building the load tools and an instrumented trellis (llvm-profdata: $PROFDATA)"
    (cd "$ROOT" && cargo build --release --locked -q -p trellis-bench) || die "building the load tools failed"
    cargo_build "$WORK/gen" "-Cprofile-generate=$RAW" || die "instrumented build failed"
    rm -rf "$RAW"
    # In a subshell: the training's temp dir and processes are cleaned up when it ends.
    (train "$WORK/gen/release/trellis" "$ROOT/target/release") || die "training failed"
    shopt -s nullglob
    raws=("$RAW"/*.profraw)
    ((${#raws[@]} >= 3)) || die "expected a profile from each of 3 proxies, found ${#raws[@]}"
    if ((PROFILE_ONLY)); then
        # Not into $PROFILE: a profile-guided build may be reading it.
        "$PROFDATA" merge -o "$OUT/trellis.profdata" "${raws[@]}" || die "llvm-profdata merge failed"
        say "done: $OUT/trellis.profdata"
        exit 0
    fi
    "$PROFDATA" merge -o "$PROFILE" "${raws[@]}" || die "llvm-profdata merge failed"
    SOURCE="trained by scripts/release.sh, $SECS s per workload"
fi

say "building trellis with the profile (clean target dir)"
# Clean: cargo does not rebuild when only the profile's content changed.
rm -rf "$WORK/use"
cargo_build "$WORK/use" "-Cprofile-use=$PROFILE" || die "profile-guided build failed"

# ---- the artifact -------------------------------------------------------------------------
cp "$WORK/use/release/trellis" "$OUT/trellis.tmp" || die "cannot write $OUT/trellis"
mv "$OUT/trellis.tmp" "$OUT/trellis" || die "cannot write $OUT/trellis"
[[ "$PROFILE" -ef "$OUT/trellis.profdata" ]] || cp "$PROFILE" "$OUT/trellis.profdata" ||
    die "cannot write $OUT/trellis.profdata"
(cd "$OUT" && sha256sum trellis trellis.profdata >SHA256SUMS) || die "sha256sum failed"
sha() { awk -v f="$1" '$2 == f {print $1}' "$OUT/SHA256SUMS"; }
{
    echo "artifact: trellis $("$OUT/trellis" --version 2>/dev/null | awk '{print $NF}')"
    echo "target: $(cd "$ROOT" && rustc -vV | awk '/^host:/ {print $2}')"
    echo "git commit: $COMMIT"
    echo "uncommitted changes: $DIRTY"
    echo "rustc: $(cd "$ROOT" && rustc -V)"
    echo "LLVM: $llvm"
    echo "llvm-profdata: $("$PROFDATA" --version | awk '/LLVM version/ {print $3}')"
    echo "cargo: $(cd "$ROOT" && cargo -V)"
    echo "build: cargo build --release --locked -p trellis (Cargo.toml [profile.release])"
    echo "rustflags: ${BASE_FLAGS[*]} -Cprofile-use=<target>/pgo/trellis.profdata"
    echo "SOURCE_DATE_EPOCH: $SOURCE_DATE_EPOCH"
    echo "profile: $SOURCE"
    echo "profile sha256: $(sha trellis.profdata)"
    echo "trellis sha256: $(sha trellis)"
} >"$OUT/MANIFEST"
sed 's/^/[release]   /' "$OUT/MANIFEST"
say "done in $((SECONDS / 60)) min: $OUT/trellis"
