#!/usr/bin/env bash
# Two MCP agents (planner, researcher) and an MCP tool server (official Python SDK: pip
# install mcp==2.3.0), each behind a sidecar: agent → its sidecar → mTLS → tools sidecar
# (policy by the agent's SPIFFE identity and by MCP method and tool) → tool server. Runs a
# real MCP session per agent: tools/list (filtered per agent), allowed and denied calls, and
# a chain: planner → researcher agent (its `research` tool) → tool server's `search`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
(cd "$root" && cargo build --release -q -p trellis)
bin="$root/target/release"
cd "$here"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

rm -rf pki
"$bin/trellis" certs init --dir pki >/dev/null
for sa in planner researcher tools; do
  "$bin/trellis" certs issue --dir pki --id "spiffe://trellis.local/ns/agents/sa/$sa" --out "pki/$sa" >/dev/null
done
python3 "$root/tests/mcp_server.py" 8000 & pids+=($!)
# The researcher agent: an MCP server with a `research` tool that calls the tool server's
# `search` through its own sidecar (passing x-trellis-hops on).
python3 "$root/tests/mcp_server.py" 8001 --upstream http://127.0.0.1:4141/mcp & pids+=($!)
"$bin/trellis" proxy --config tools.yaml & pids+=($!)
"$bin/trellis" proxy --config planner.yaml & pids+=($!)
"$bin/trellis" proxy --config researcher.yaml & pids+=($!)
for port in 9901 9902 9903; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
done
for port in 8000 8001; do
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

echo "== planner: tools/list shows add and search; search (allowed), delete_everything (denied)"
python3 "$root/tests/mcp_client.py" http://127.0.0.1:4140/mcp search delete_everything
echo "== researcher: tools/list shows countdown and search; countdown streams progress,"
echo "   add (the planner's tool) and the summarize prompt are denied"
python3 "$root/tests/mcp_client.py" http://127.0.0.1:4141/mcp countdown add prompt:summarize
echo "== chain: planner → researcher agent (research) → tool server (search, as the researcher)"
python3 "$root/tests/mcp_client.py" http://127.0.0.1:4142/mcp research search
echo "== a loop guard: a request that already passed 8 proxies"
curl -s -o /dev/null -w '%{http_code}\n' -H 'x-trellis-hops: 8' -X POST http://127.0.0.1:4140/mcp
echo "== MCP metrics of the tools sidecar"
curl -s http://127.0.0.1:9902/metrics | grep '^trellis_mcp_requests_total'
