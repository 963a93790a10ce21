"""WebSocket peer for the tests (Python `websockets`, pinned in .ci/requirements.txt).

    python3 ws_peer.py server       echo server on 127.0.0.1, a free port printed on stdout;
                                    text stays text, binary stays binary, any size.
    python3 ws_peer.py client       reads a JSON plan on stdin, prints a JSON answer.

Plan: {"url": "ws://...", "steps": [...], "headers": {...}} with steps
    {"text": "hi"}            send a text message, expect the same text back
    {"binary": N}             send N pattern bytes (i % 251) as binary, expect them back
    {"sleep": S}              stay idle S seconds
    {"close": true}           close handshake (code 1000); answer's "close_code" is the peer's
Answer: {"ok": bool, "echoes": [...], "close_code": int|null, "error": str|null}
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def echo(ws):
    try:
        async for msg in ws:
            await ws.send(msg)
    except Exception:
        pass


async def server():
    async with serve(echo, "127.0.0.1", 0, max_size=None, ping_interval=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


async def client(plan):
    answer = {"ok": False, "echoes": [], "close_code": None, "error": None}
    try:
        async with connect(
            plan["url"],
            max_size=None,
            ping_interval=None,
            open_timeout=10,
            close_timeout=10,
            # No permessage-deflate: the 1 MiB message crosses the proxy as 1 MiB.
            compression=None,
            additional_headers=plan.get("headers") or None,
        ) as ws:
            for step in plan["steps"]:
                if "text" in step:
                    await ws.send(step["text"])
                    got = await asyncio.wait_for(ws.recv(), 10)
                    answer["echoes"].append({"kind": "text", "same": got == step["text"]})
                elif "binary" in step:
                    data = bytes(i % 251 for i in range(step["binary"]))
                    await ws.send(data)
                    got = await asyncio.wait_for(ws.recv(), 20)
                    answer["echoes"].append(
                        {"kind": "binary" if isinstance(got, bytes) else "text", "len": len(got), "same": got == data}
                    )
                elif "sleep" in step:
                    await asyncio.sleep(step["sleep"])
                elif "close" in step:
                    await ws.close()
                    answer["close_code"] = ws.close_code
            answer["ok"] = True
    except Exception as e:  # reported, not raised: the test asserts on it
        answer["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server())
    else:
        asyncio.run(client(json.loads(sys.stdin.read())))
