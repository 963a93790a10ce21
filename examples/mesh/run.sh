#!/usr/bin/env bash
# A control plane and two proxies. Resources go in with `trellis ctl apply`; each proxy
# gets only the listener meant for its service; a second apply moves half the traffic to v2
# while requests keep flowing. Runs until Ctrl-C.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
# Two builds: built together, the proxy would lose its code layout (build.rs).
(cd "$root" && cargo build --release -q -p trellis && cargo build --release -q -p trellis-bench)
bin="$root/target/release"
cd "$here"
data=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT INT TERM

"$bin/trellis-origin" --listen 127.0.0.1:8091 --name v1 >/dev/null & pids+=($!)
"$bin/trellis-origin" --listen 127.0.0.1:8092 --name v2 >/dev/null & pids+=($!)
"$bin/trellis" control-plane --data-dir "$data" & pids+=($!)
for _ in $(seq 50); do curl -sf http://127.0.0.1:7070/healthz >/dev/null && break; sleep 0.1; done

echo "== apply the resources"
"$bin/trellis" ctl apply -f resources.yaml
"$bin/trellis" proxy --config web.yaml & pids+=($!)
"$bin/trellis" proxy --config api.yaml & pids+=($!)
for port in 9911 9912; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
done
"$bin/trellis" ctl proxies

count() { for _ in $(seq 20); do curl -s -D - -o /dev/null http://127.0.0.1:4150/ | grep -i '^x-origin' | tr -d '\r'; done | sort | uniq -c; }
echo "== 20 requests through the web proxy (all v1)"
count
echo "== the api proxy has only its own listener: web's port is not open there"
curl -s http://127.0.0.1:9912/config_dump | grep -o '"name": "[a-z-]*outbound"' | sort -u
echo "== live change: 50/50 canary"
"$bin/trellis" ctl apply -f canary.yaml
sleep 1
count
echo
echo "Try: trellis ctl get routes; trellis ctl get route echo -o json; trellis ctl proxies. Ctrl-C to stop."
wait
