"""A real MCP client session (official SDK) for tests/mcp.rs.

Usage: mcp_client.py URL TOOL [TOOL...]
Runs initialize (the legacy handshake), tools/list, then tools/call of each TOOL (a tool
may be named several times; `prompt:NAME` is prompts/get of NAME instead), and prints one
JSON object:
{"server", "tools", "calls": {TOOL: {"ok", "text"|"code","message", "ms", "progress"}},
 "texts": {TOOL: [text of each call]}, "results": [each call's object, in order]}.
"ms" is the call's duration, "progress" the milliseconds after the call started at which
each progress notification arrived.
"""
import asyncio
import json
import sys
import time

from mcp import Client
from mcp.shared.exceptions import MCPError

ARGS = {
    "search": {"query": "mesh"},
    "research": {"query": "mesh"},
    "add": {"a": 2, "b": 3},
    "slow": {"ms": 300},
    "countdown": {"steps": 4, "interval_ms": 400},
}


async def main(url, tools):
    out = {"calls": {}, "texts": {}, "results": []}
    async with Client(url, mode="legacy", read_timeout_seconds=10) as client:
        out["server"] = client.server_info.name if client.server_info else None
        listed = await client.list_tools()
        out["tools"] = sorted(t.name for t in listed.tools)
        for tool in tools:
            start = time.monotonic()
            progress = []

            async def on_progress(done, total, message, progress=progress, start=start):
                progress.append(round((time.monotonic() - start) * 1000))

            try:
                if tool.startswith("prompt:"):
                    p = await client.get_prompt(tool[len("prompt:"):], {})
                    text = "".join(getattr(m.content, "text", "") for m in p.messages)
                    call = {"ok": True, "text": text}
                else:
                    r = await client.call_tool(tool, ARGS.get(tool, {}), progress_callback=on_progress)
                    text = "".join(getattr(c, "text", "") for c in r.content)
                    call = {"ok": not r.is_error, "text": text}
            except MCPError as e:
                call = {"ok": False, "code": e.error.code, "message": e.error.message}
            call["ms"] = round((time.monotonic() - start) * 1000)
            call["progress"] = progress
            out["calls"][tool] = call
            out["texts"].setdefault(tool, []).append(call.get("text"))
            out["results"].append(call)
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2:]))
