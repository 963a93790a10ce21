#!/usr/bin/env bash
# A Linkerd-style sidecar pair on one machine: app → frontend sidecar (plaintext) → mTLS
# HTTP/2 → checkout sidecar → checkout app. Issues a CA and two SPIFFE identities, starts
# everything, shows an allowed call, a denied one, and the single multiplexed mTLS
# connection; then keeps running until Ctrl-C.
# With --issuer, no certificate is issued here: a control plane (127.0.0.1:7070/7071) runs
# its CA and each sidecar gets and renews its own certificate from it (identity.issuer).
set -euo pipefail
issuer=0; [[ "${1:-}" == "--issuer" ]] && issuer=1
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
# Two builds: built together, the proxy would lose its code layout (build.rs).
(cd "$root" && cargo build --release -q -p trellis && cargo build --release -q -p trellis-bench)
bin="$root/target/release"
cd "$here"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

rm -rf pki
checkout=checkout.yaml; frontend=frontend.yaml
if ((issuer)); then
  rm -rf cp && mkdir -p cp pki && head -c 24 /dev/urandom | base64 >cp/token
  "$bin/trellis" control-plane --data-dir cp --token-file cp/token & pids+=($!)
  for _ in $(seq 50); do curl -sf http://127.0.0.1:7070/healthz >/dev/null && break; sleep 0.1; done
  # The same configs, with the identity asked from the control plane's CA.
  for sa in checkout frontend; do
    sed "s|^identity: .*|identity:\n  cert: pki/$sa.pem\n  key: pki/$sa.key\n  trust_bundle: cp/ca/ca.pem\n  issuer: { server: http://127.0.0.1:7070, id: spiffe://trellis.local/ns/default/sa/$sa, token_file: cp/token }|" \
      "$sa.yaml" >"pki/$sa-issuer.yaml"
  done
  checkout=pki/checkout-issuer.yaml; frontend=pki/frontend-issuer.yaml
else
  "$bin/trellis" certs init --dir pki >/dev/null
  "$bin/trellis" certs issue --dir pki --id spiffe://trellis.local/ns/default/sa/frontend --out pki/frontend >/dev/null
  "$bin/trellis" certs issue --dir pki --id spiffe://trellis.local/ns/default/sa/checkout --out pki/checkout >/dev/null
fi

"$bin/trellis-origin" --listen 127.0.0.1:8080 >/dev/null & pids+=($!)
"$bin/trellis" proxy --config "$checkout" & pids+=($!)
"$bin/trellis" proxy --config "$frontend" & pids+=($!)
for port in 9901 9902; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
done

echo
echo "== allowed: GET /api/orders through both sidecars"
curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:4140/api/orders
echo "== denied by checkout's policy: DELETE /api/orders"
curl -s -D - -o /dev/null -X DELETE http://127.0.0.1:4140/api/orders | grep -iE '^HTTP|x-trellis-error'
echo "== 20 HTTP/1.1 requests from the app; mTLS connections between the sidecars:"
for _ in $(seq 20); do curl -s -o /dev/null http://127.0.0.1:4140/api/x; done
ss -tn state established '( dport = :4143 )' | tail -n +2 | wc -l
echo "== the checkout sidecar's identity"
"$bin/trellis" certs inspect pki/checkout.pem | head -4
echo
echo "Admin: http://127.0.0.1:9901 (frontend), http://127.0.0.1:9902 (checkout). Ctrl-C to stop."
wait
