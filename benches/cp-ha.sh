#!/usr/bin/env bash
# Control plane on etcd at fleet scale: one etcd on loopback (temp data dir), N release
# `trellis control-plane --store etcd://…` replicas on it, and `cp-fleet` holding 1,000
# discovery streams spread over them (REST write → every proxy ACKed, one-endpoint change
# in a 10,000-endpoint cluster, replica RSS), then the store write rate. Everything it
# starts is ended by PID on exit.
#
#   benches/cp-ha.sh [REPLICAS=3] [PROXIES=1000]      (needs etcd: apt-get install etcd-server)
#   EMBEDDED=1 benches/cp-ha.sh 1                      (the embedded store, for comparison)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
REPLICAS=${1:-3}
PROXIES=${2:-1000}
TRELLIS=${TRELLIS_BIN:-$ROOT/target/release/trellis}
FLEET=$ROOT/target/release/cp-fleet
[ -x "$TRELLIS" ] || (cd "$ROOT" && cargo build --release --bin trellis)
[ -x "$FLEET" ] || (cd "$ROOT" && cargo build --release -p trellis-bench --bin cp-fleet)
bench_workdir trellis-cp-ha
ulimit -n 20000

STORE=()
if [ -z "${EMBEDDED:-}" ]; then
    ETCD=$(command -v etcd || echo /usr/bin/etcd)
    "$ETCD" --name bench --data-dir "$TMP/etcd" --listen-client-urls http://127.0.0.1:27379 \
        --advertise-client-urls http://127.0.0.1:27379 --listen-peer-urls http://127.0.0.1:27380 \
        --initial-advertise-peer-urls http://127.0.0.1:27380 --initial-cluster bench=http://127.0.0.1:27380 \
        --logger zap --log-level warn >"$TMP/etcd.log" 2>&1 &
    PIDS+=($!)
    wait_ready http://127.0.0.1:27379/health
    STORE=(--store etcd://127.0.0.1:27379)
fi

APIS=() XDS=() CPS=()
for i in $(seq 1 "$REPLICAS"); do
    "$TRELLIS" control-plane --data-dir "$TMP/r$i" "${STORE[@]}" \
        --api-addr "127.0.0.1:2${i}170" --xds-addr "127.0.0.1:2${i}171" --log warn >"$TMP/r$i.log" 2>&1 &
    PIDS+=($!) CPS+=($!)
    APIS+=("http://127.0.0.1:2${i}170") XDS+=("http://127.0.0.1:2${i}171")
    wait_ready "http://127.0.0.1:2${i}170/healthz"
done
join() { local IFS=,; echo "$*"; }
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); replicas: $REPLICAS (${STORE[*]:-embedded})"
"$FLEET" --api "$(join "${APIS[@]}")" --xds "$(join "${XDS[@]}")" --cp-pid "$(join "${CPS[@]}")" \
    --proxies "$PROXIES" --write-rate 2000
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
