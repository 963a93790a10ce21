#!/usr/bin/env bash
# Runs the basic example: three origins (v1 ×2, v2 ×1) and one trellis proxy in front,
# sends a few requests to show routing, then keeps running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Two builds: built together, the proxy would lose its code layout (build.rs).
cargo build --release -q -p trellis && cargo build --release -q -p trellis-bench
bin=target/release
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/trellis-origin" --listen 127.0.0.1:8081 --name v1-a >/dev/null & pids+=($!)
"$bin/trellis-origin" --listen 127.0.0.1:8082 --name v1-b >/dev/null & pids+=($!)
"$bin/trellis-origin" --listen 127.0.0.1:8083 --name v2 >/dev/null & pids+=($!)
"$bin/trellis" proxy --config examples/basic/trellis.yaml & pids+=($!)

for _ in $(seq 50); do curl -sf http://127.0.0.1:9901/ready >/dev/null && break; sleep 0.1; done
echo
echo "== 10 requests through the proxy (90/10 split; x-origin names the origin that answered)"
for _ in $(seq 10); do curl -s -o /dev/null -D - http://127.0.0.1:4140/ | grep -i '^x-origin' ; done
echo "== a canary request"
curl -s -D - -o /dev/null -H 'x-canary: 1' http://127.0.0.1:4140/ | grep -i '^x-origin'
echo "== h2c with prior knowledge"
curl -s --http2-prior-knowledge -o /dev/null -w '%{http_version} %{http_code}\n' http://127.0.0.1:4140/
echo "== three server-sent events"
curl -sN --max-time 3.5 'http://127.0.0.1:4140/sse?interval_ms=1000' || true
echo
echo "== no route → 404 (try a host/path no route matches: none here, every path matches 'api')"
echo "== admin: http://127.0.0.1:9901/metrics  /config_dump  /clusters  /ready"
curl -s http://127.0.0.1:9901/metrics | grep '^trellis_requests_total' || true
echo
echo "Edit examples/basic/trellis.yaml (or kill -HUP the proxy) to reload live. Ctrl-C to stop."
wait
