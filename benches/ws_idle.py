#!/usr/bin/env python3
"""Memory of idle WebSockets through the proxy (issue 17: 10,000 open idle WebSockets,
goal <= 10 KB per connection).

Starts an upstream on 127.0.0.1 that answers every upgrade with 101 and then holds the
connection, starts `trellis proxy` in front of it, opens N WebSocket handshakes through
the proxy (raw sockets: the handshake bytes only, so the client costs little), waits,
and reports the proxy's RSS growth per open stream. Bounded: every step has a timeout,
and everything it started is stopped (by its own handles) at the end.

    python3 benches/ws_idle.py --trellis target/release/trellis [--n 10000] [--threads 2]
"""
import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


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


HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nhost: bench\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
)


async def main(args):
    held = []

    async def upstream(reader, writer):
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
            await writer.drain()
            held.append(writer)
        except Exception:
            writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0, backlog=4096)
    up_port = server.sockets[0].getsockname()[1]
    listen, admin = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="trellis-ws-idle-")
    config = os.path.join(tmp, "trellis.yaml")
    with open(config, "w") as f:
        f.write(
            f"""admin: {{ address: "127.0.0.1:{admin}" }}
listeners:
  - {{ name: in, address: "127.0.0.1:{listen}", routes: [ws] }}
routes:
  - {{ name: ws, match: {{ path_prefix: / }}, idle_timeout: 600s, backends: [{{ cluster: ws }}] }}
clusters:
  - {{ name: ws, endpoints: [{{ address: "127.0.0.1:{up_port}" }}] }}
"""
        )
    proxy = subprocess.Popen(
        [args.trellis, "proxy", "--config", config, "--threads", str(args.threads)],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(tmp, "proxy.log"), "w"),
    )
    clients = []
    try:
        deadline = time.time() + 20
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).status == 200:
                    break
            except Exception:
                pass
            if time.time() > deadline or proxy.poll() is not None:
                sys.exit("proxy not ready")
            await asyncio.sleep(0.1)

        async def open_one():
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", listen), 30)
            w.write(HANDSHAKE)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(head[:40])
            clients.append(w)

        # Warm up (per-thread stocks, metrics series), then the baseline.
        await asyncio.gather(*(open_one() for _ in range(50)))
        for w in clients:
            w.close()
        clients.clear()
        await asyncio.sleep(1)
        base = rss_kb(proxy.pid)
        started = time.time()
        for at in range(0, args.n, 500):
            await asyncio.gather(*(open_one() for _ in range(min(500, args.n - at))))
        opened = time.time() - started
        await asyncio.sleep(3)
        rss = rss_kb(proxy.pid)
        per = (rss - base) / len(clients)
        print(f"streams open: {len(clients)} (opened in {opened:.1f} s), upstream held: {len(held)}")
        print(f"proxy RSS: {base} KiB before, {rss} KiB with the streams open")
        print(f"per idle WebSocket: {per:.2f} KiB ({per * 1024:.0f} B)")
    finally:
        for w in clients:
            w.close()
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--trellis", required=True)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    # Sockets: N client + N upstream here, 2N in the proxy (inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 4 * a.n + 1024)
    try:
        # As root the hard limit may be raised too.
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2 * a.n + 256:
        sys.exit(f"open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)} too low for --n {a.n}")
    asyncio.run(asyncio.wait_for(main(a), 300))
