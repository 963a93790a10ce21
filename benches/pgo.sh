#!/usr/bin/env bash
# Profile-guided (PGO) build of `trellis` for the benchmarks: scripts/release.sh (the
# release build: instrumented build, training workloads, llvm-profdata merge, rebuild with
# the profile) with its output in target/pgo/ instead of dist/. About a fifth fewer
# instructions and half the instruction-cache misses per request (benches/README.md, "PGO").
#
# Usage: benches/pgo.sh [--train-secs S] [--profile FILE]   (see scripts/release.sh --help)
# Output: target/pgo/trellis, target/pgo/trellis.profdata, target/pgo/MANIFEST.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${1:-}" in -h|--help) sed -n '2,8p' "$0"; exit 0 ;; esac
exec "$ROOT/scripts/release.sh" --out "$ROOT/target/pgo" "$@"
