#!/usr/bin/env python3
"""MCP benchmark (issue 19): what `mcp: {}` costs a route.

1. Requests per second of a small JSON-RPC `tools/call` POST (wrk, closed loop, HTTP/1.1
   keep-alive) through a listener whose route has `mcp: {}` and through one whose route is
   the same without it, same proxy process, same origin, runs interleaved (A B A B ...).
2. Memory per open MCP SSE session: N GET streams, each with its own `Mcp-Session-Id`
   (so each is also a session remembered for affinity), held open through the `mcp`
   route; the proxy's RSS growth divided by N; and the same N streams through the route
   without `mcp` (each figure from a fresh proxy process).

Layout: trellis-origin + wrk pinned on cpu0, the proxy (one worker) on cpu1. Bounded:
every step has a timeout; everything started here is stopped by its own handle.

    python3 benches/mcp.py [--bin target/release] [--reps 3] [--duration 8] [--sessions 5000]
"""
import argparse
import asyncio
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

CALL = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"query":"mesh"}}}'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_ready(url, secs=20):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 300:
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"error: {url} not ready in {secs}s")


def wrk(port, duration, tmp):
    script = os.path.join(tmp, "call.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write(f"wrk.body = '{CALL}'\n")
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
        f.write('wrk.headers["Accept"] = "application/json, text/event-stream"\n')
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", "-c64", f"-d{duration}s", "-s", script, f"http://127.0.0.1:{port}/mcp"],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"error: {errors.group(1)} non-2xx answers on port {port}:\n{out}")
    return rps


async def hold_sessions(port, n, settle):
    """Opens n SSE streams, each its own MCP session; returns the writers once all are
    streaming."""
    conns = []
    sem = asyncio.Semaphore(256)

    async def one(i):
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            w.write(
                (
                    f"GET /sse?interval_ms=1000 HTTP/1.1\r\nHost: mcp\r\nAccept: text/event-stream\r\n"
                    f"Mcp-Session-Id: bench-session-{i:08d}-0123456789abcdef\r\n\r\n"
                ).encode()
            )
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(head)
            conns.append((r, w))

    await asyncio.gather(*(one(i) for i in range(n)))
    await asyncio.sleep(settle)
    return conns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=5000)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * a.sessions + 1024)), hard))
    tmp = tempfile.mkdtemp(prefix="trellis-mcp-bench.")
    origin_port, plain, mcp, admin = free_port(), free_port(), free_port(), free_port()
    cfg = os.path.join(tmp, "trellis.yaml")
    with open(cfg, "w") as f:
        f.write(
            f"""admin: {{ address: "127.0.0.1:{admin}" }}
listeners:
  - {{ name: plain, address: "127.0.0.1:{plain}", routes: [plain] }}
  - {{ name: mcp, address: "127.0.0.1:{mcp}", routes: [mcp] }}
routes:
  - {{ name: plain, backends: [{{ cluster: origin }}] }}
  - {{ name: mcp, backends: [{{ cluster: origin }}], mcp: {{ max_sessions: 1000000 }} }}
clusters:
  - {{ name: origin, protocol: http1, endpoints: [{{ address: "127.0.0.1:{origin_port}" }}] }}
"""
        )
    started = []
    try:
        origin = subprocess.Popen(
            ["taskset", "-c", "0", f"{a.bin}/trellis-origin", "--listen", f"127.0.0.1:{origin_port}", "--threads", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(origin)
        proxy = subprocess.Popen(
            ["taskset", "-c", "1", f"{a.bin}/trellis", "proxy", "--config", cfg, "--threads", "1"],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, "trellis.log"), "w"),
        )
        started.append(proxy)
        wait_ready(f"http://127.0.0.1:{admin}/ready")
        wrk(plain, 2, tmp)
        wrk(mcp, 2, tmp)
        rows = []
        for rep in range(a.reps):
            order = [("plain", plain), ("mcp", mcp)] if rep % 2 == 0 else [("mcp", mcp), ("plain", plain)]
            got = {name: wrk(port, a.duration, tmp) for name, port in order}
            rows.append(got)
            print(f"rep {rep + 1}: without mcp {got['plain']:.0f} rps, with mcp {got['mcp']:.0f} rps "
                  f"({got['mcp'] / got['plain']:.3f}x)", flush=True)
        med = lambda k: sorted(r[k] for r in rows)[len(rows) // 2]
        print(f"median: without mcp {med('plain'):.0f} rps, with mcp {med('mcp'):.0f} rps "
              f"({med('mcp') / med('plain'):.3f}x)")

        proxy.kill()
        proxy.wait()
        # Memory: a fresh proxy per figure (freed memory stays with the allocator), the
        # same N streams through the route without mcp, then through the mcp route.
        for name, port in (("plain SSE streams (route without mcp)", plain), ("MCP SSE sessions", mcp)):
            proxy = subprocess.Popen(
                ["taskset", "-c", "1", f"{a.bin}/trellis", "proxy", "--config", cfg, "--threads", "1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            started.append(proxy)
            wait_ready(f"http://127.0.0.1:{admin}/ready")
            time.sleep(1)
            before = rss_kb(proxy.pid)
            loop = asyncio.new_event_loop()
            conns = loop.run_until_complete(asyncio.wait_for(hold_sessions(port, a.sessions, 3), 120))
            after = rss_kb(proxy.pid)
            print(f"{a.sessions} open {name}: proxy RSS {before} kB -> {after} kB, "
                  f"{(after - before) * 1024 / a.sessions / 1000:.2f} KB each", flush=True)
            for _, w in conns:
                w.close()
            loop.close()
            proxy.kill()
            proxy.wait()
    finally:
        for p in started:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
