#!/usr/bin/env bash
# Sourced by the benchmark scripts: a working directory that is removed on exit, processes
# recorded in PIDS that are ended by PID on exit, a readiness wait, a process tree's CPU
# time, and the configs several scripts share.

# bench_workdir NAME: makes /tmp/NAME.XXXXXX, sets TMP, arms the exit cleanup, cd's there.
bench_workdir() {
    TMP=$(mktemp -d "/tmp/$1.XXXXXX") || { echo "error: cannot make a temp dir" >&2; exit 1; }
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    cd "$TMP" || exit 1
}

bench_cleanup() {
    local p
    # `|| true`: under `set -e` a gone process, or `wait`'s non-zero status of a killed
    # one, would end the cleanup before the temp dir is removed.
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}

# wait_ready URL [SECONDS]: waits up to SECONDS (default 10) for URL to answer 2xx, else
# exits with an error.
wait_ready() {
    for _ in $(seq $((${2:-10} * 10))); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done
    echo "error: $1 not ready" >&2
    exit 1
}

# need_tools TOOL...: exits with an error naming the first one that is not installed.
need_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
    done
}

# build_release [CARGO_ARGS...]: the proxy built as users build it, then the load tools, from
# $ROOT. Two builds, not one: built together, trellis-bench's dependency features would change
# the proxy's symbol names, and its code layout (build.rs, link/trellis.order) would not apply.
build_release() {
    (cd "$ROOT" && cargo build --release "$@" -p trellis && cargo build --release "$@" -p trellis-bench)
}

# median VALUE...: the median of numbers (the lower middle one of an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# pid_tree PID: the process and all its descendants (nginx's workers under its master).
pid_tree() {
    local pid=$1 c
    [[ -d /proc/$pid ]] || return 0
    echo "$pid"
    for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        pid_tree "$c"
    done
}

# tree_ticks PID: "user system" CPU clock ticks summed over the process tree.
tree_ticks() {
    local p u=0 s=0 f a b
    for p in $(pid_tree "$1"); do
        # Fields after the ")" of the command name: utime is field 14, stime 15 overall.
        f=$(sed -E 's/^.*\) //' /proc/"$p"/stat 2>/dev/null) || continue
        read -r _ _ _ _ _ _ _ _ _ _ _ a b _ <<<"$f"
        u=$((u + a)); s=$((s + b))
    done
    echo "$u $s"
}

# forward_all_yaml ORIGIN: the routes and clusters of a proxy that forwards every request
# to one HTTP/1.1 origin (host:port); listeners name the route `all`.
forward_all_yaml() {
    printf 'routes:\n  - { name: all, match: { path_prefix: / }, backends: [{ cluster: origin }] }\n'
    printf 'clusters:\n  - { name: origin, protocol: http1, endpoints: [{ address: "%s" }] }\n' "$1"
}

# edge_pki TRELLIS DIR: a CA and the edge server certificate every TLS listener of the
# benchmarks uses (P-256, for `localhost`, made by TRELLIS), in DIR: edge.pem and edge.key,
# and edge.combined.pem (HAProxy's `crt` form). Fails (status 1) if a step does.
edge_pki() {
    "$1" certs init --dir "$2" >/dev/null &&
        "$1" certs issue --dir "$2" --id spiffe://trellis.local/ns/bench/sa/edge --dns localhost \
            --out "$2/edge" >/dev/null &&
        cat "$2/edge.pem" "$2/edge.key" >"$2/edge.combined.pem"
}

# sidecar_pair_yaml TRELLIS APP INBOUND_ADMIN INBOUND OUTBOUND_ADMIN OUTBOUND: the sidecar pair
# of examples/sidecar-pair on other ports (APP: the origin's port; INBOUND: the mTLS
# listener's; OUTBOUND: the app-facing listener's), with a mesh CA and both identities made
# by TRELLIS in ./pki; writes checkout.yaml (inbound) and frontend.yaml (outbound).
sidecar_pair_yaml() {
    local bin=$1 sa
    "$bin" certs init --dir pki >/dev/null || return 1
    for sa in frontend checkout; do
        "$bin" certs issue --dir pki --id "spiffe://trellis.local/ns/default/sa/$sa" --out "pki/$sa" >/dev/null ||
            return 1
    done
    sed "s/8080/$2/; s/9902/$3/; s/4143/$4/" "$ROOT/examples/sidecar-pair/checkout.yaml" >checkout.yaml
    sed "s/9901/$5/; s/4140/$6/; s/4143/$4/" "$ROOT/examples/sidecar-pair/frontend.yaml" >frontend.yaml
}

# haproxy_config THREADS MAXCONN ORIGIN BIND...: HAProxy in HTTP mode forwarding to ORIGIN
# (host:port) over reused HTTP/1.1 connections, one `bind` line per BIND argument.
haproxy_config() {
    local threads=$1 maxconn=$2 origin=$3 b
    shift 3
    printf 'global\n    nbthread %s\n    maxconn %s\n' "$threads" "$maxconn"
    printf 'defaults\n    mode http\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n    http-reuse always\n'
    printf 'frontend fe\n'
    for b in "$@"; do printf '    bind %s\n' "$b"; done
    printf '    default_backend be\nbackend be\n    server origin %s\n' "$origin"
}
